"""Sinks: ClickHouse hit tables, the Redis blacklist mirror and named lists.

Every writer follows the ``add()`` / ``flush()`` interface of :mod:`sinks.base` and is
fed by :class:`sinks.runner.SinkRunner`, which commits Kafka offsets only after a
flush succeeded. Modules (imported lazily by the CLI; nothing here pulls in a client):

- ``sinks.clickhouse_schema``: versioned, idempotent migrations (``bypass clickhouse migrate``)
- ``sinks.clickhouse``: record -> row conversion, dedup tokens, :class:`ClickHouseSink`
- ``sinks.redis_mirror``: :class:`RedisBlacklistSink`, ``lookup`` (``bypass lists check``)
- ``sinks.redis_lists``: named lists and :class:`PrefetchingListProvider` for ``in_list()``
- ``sinks.analytics``: the queries behind ``bypass hits top | entity``
"""

from sinks.base import RecordError, SinkBackpressureError, SinkError, SourceRecord

__all__ = ["RecordError", "SinkBackpressureError", "SinkError", "SourceRecord"]
