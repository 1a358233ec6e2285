"""Sinks: the record contracts, ClickHouse hit tables, the Redis blacklist mirror, named
lists and the JSON Lines output of replay.

Every writer follows the ``add()`` / ``flush()`` interface of :mod:`sinks.base`. The topic
writers are fed by :class:`sinks.runner.SinkRunner`, which commits Kafka offsets only after
a flush succeeded; replay feeds its output (ClickHouse, JSON Lines or
:class:`sinks.base.NullSink`) itself. Modules (imported lazily by the CLI; nothing here
pulls in a client):

- ``sinks.records``: the ``bypass.hits`` / ``bypass.blacklist`` contracts: fields, builders, checks
- ``sinks.clickhouse_schema``: versioned, idempotent migrations (``bypass clickhouse migrate``)
- ``sinks.clickhouse``: record -> row conversion, dedup tokens, :class:`ClickHouseSink`
- ``sinks.redis_mirror``: :class:`RedisBlacklistSink`, ``lookup`` (``bypass lists check``)
- ``sinks.redis_lists``: named lists and :class:`PrefetchingListProvider` for ``in_list()``
- ``sinks.analytics``: the queries behind ``bypass hits top | entity``
- ``sinks.jsonl``: :class:`JsonlSink`, record values as JSON Lines (``bypass replay --out jsonl``)
"""

from sinks.base import RecordError, SinkBackpressureError, SinkError, SourceRecord

__all__ = ["RecordError", "SinkBackpressureError", "SinkError", "SourceRecord"]
