"""Replay's archive reader (``--source archive``): the events ``risk_events`` holds, beyond
Kafka's retention, in the order a Kafka replay reads them.

The ClickHouse writer archives every valid raw event after ingest (personal fields already
hashed) with its source topic, partition and offset. This reader has the interface of
:class:`streams.replay.reader.ReplayReader`:

* partitions are the (source topic, partition) pairs the archive holds for ``topics``;
* each partition's events are read in offset order, a page at a time (keyset pagination on
  the offset, ``FINAL`` so a redelivered or replayed copy counts once), from the first
  offset whose event time is at or after the warm-up start minus the skew, up to the first
  whose event time is at or after ``T2`` + skew;
* the partitions are merged by the one ordering code of live and replay
  (:class:`streams.core.order.OrderBuffer` over :class:`~streams.core.order.RunningMax`
  keys), so the records come out in the order a Kafka replay gives them and the hits have
  the same ids;
* the events are used as archived (they were decoded at ingest; decoding them again would
  hash the hashed phone twice). Malformed messages were never archived: a replay from the
  archive has none to count or dead-letter.

Positions are source offsets, like a Kafka replay's, so ``--resume`` works the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from streams.core.order import TOP, OrderBuffer, RunningMax
from streams.replay.checkpoint import TP
from streams.replay.options import ReplayError
from streams.replay.reader import Record
from streams.settings import Settings

__all__ = ["ArchiveReader", "event_from_row"]

log = logging.getLogger(__name__)

PAGE = 20_000
_COLUMNS = (
    "event_id, event_type, toUnixTimestamp64Milli(event_time), user_id, device_id, ip, phone, "
    "geo_lat, geo_lon, geo_city, attrs, source_offset"
)


def event_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``risk_events`` row (``_COLUMNS`` order, without the offset) -> the event as the
    worker decoded it: fields the archive stores empty are left out, as the event had them."""
    event_id, etype, ts, user, device, ip, phone, lat, lon, city, attrs = row[:11]
    event: dict[str, Any] = {"event_id": event_id, "type": etype, "ts": int(ts), "user_id": user}
    if device:
        event["device_id"] = device
    if ip:
        event["ip"] = ip
    if phone:
        event["phone"] = phone
    if lat is not None or lon is not None or city:
        geo: dict[str, Any] = {}
        if lat is not None:
            geo["lat"] = lat
        if lon is not None:
            geo["lon"] = lon
        if city:
            geo["city"] = city
        event["geo"] = geo
    if attrs:
        event["attrs"] = orjson.loads(attrs)
    return event


class ArchiveReader:
    """Reads ``topics``' archived events from ClickHouse, in processing order, in chunks."""

    def __init__(self, settings: Settings, topics: list[str], *, warn: Callable[[str], None]) -> None:
        from sinks.clickhouse_schema import check_identifier
        from streams.core.outputs import clickhouse_client

        self.settings = settings
        self.topics = topics
        self._warn = warn
        self.db = check_identifier(settings.clickhouse_database)
        self.client = clickhouse_client(settings)
        self.partitions: list[TP] = []
        self.starts: dict[TP, int] = {}
        self.ends: dict[TP, int] = {}
        self.marks: dict[TP, tuple[int, int]] = {}
        self.finished = False
        self.clock = RunningMax()
        self._stop_offset: dict[TP, int] = {}

    def close(self) -> None:
        self.client.close()

    def eviction_time(self) -> int | None:
        tops = [top for top in (self.clock.peek(*tp) for tp in self.partitions) if top is not None]
        return min(max(tops), time.time_ns() // 1_000_000) if tops else None

    def _query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]
        except Exception as exc:
            raise ReplayError(
                f"cannot read the event archive {self.db}.risk_events ({str(exc).splitlines()[0][:300]}); "
                "is the schema migrated (`bypass clickhouse migrate`) and the archive on "
                "(BYPASS_ARCHIVE_EVENTS)?"
            ) from None

    # --- set-up ----------------------------------------------------------------
    def discover(self) -> list[TP]:
        rows = self._query(
            f"SELECT DISTINCT source_topic, source_partition FROM {self.db}.risk_events "  # noqa: S608
            "WHERE source_topic IN {topics:Array(String)} ORDER BY source_topic, source_partition",
            topics=list(self.topics),
        )
        self.partitions = [(str(t), int(p)) for t, p in rows]
        if not self.partitions:
            raise ReplayError(
                f"the event archive {self.db}.risk_events holds no event of {', '.join(self.topics)}: "
                "replay from Kafka (--source kafka), or check BYPASS_ARCHIVE_EVENTS on the ClickHouse writer",
            )
        return self.partitions

    def find_offsets(self, start_ms: int, stop_ms: int) -> None:
        """Per partition: the first offset at or after ``start_ms`` (event time), the first at
        or after ``stop_ms`` (where reading stops), and the (lowest, highest + 1) archived."""
        rows = self._query(
            "SELECT source_topic, source_partition, min(source_offset), max(source_offset) + 1, "  # noqa: S608
            "minIf(source_offset, event_time >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')), "
            "countIf(event_time >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')), "
            "minIf(source_offset, event_time >= fromUnixTimestamp64Milli({b:Int64}, 'UTC')), "
            "countIf(event_time >= fromUnixTimestamp64Milli({b:Int64}, 'UTC')) "
            f"FROM {self.db}.risk_events FINAL "
            "WHERE source_topic IN {topics:Array(String)} GROUP BY source_topic, source_partition",
            a=max(start_ms, 0),
            b=max(stop_ms, 0),
            topics=list(self.topics),
        )
        for topic, part, low, high, start, n_start, stop, n_stop in rows:
            tp = (str(topic), int(part))
            self.marks[tp] = (int(low), int(high))
            self.starts[tp] = int(start) if n_start else int(high)
            self._stop_offset[tp] = int(stop) if n_stop else int(high)
            self.ends[tp] = max(self._stop_offset[tp], self.starts[tp])
        for tp in self.partitions:
            self.marks.setdefault(tp, (0, 0))
            self.starts.setdefault(tp, 0)
            self.ends.setdefault(tp, 0)
            self._stop_offset.setdefault(tp, 0)

    def is_empty(self) -> bool:
        return all(hi <= lo for lo, hi in self.marks.values())

    # --- reading ---------------------------------------------------------------
    def _page(self, tp: TP, after: int, stop: int) -> list[tuple[Any, ...]]:
        return self._query(
            f"SELECT {_COLUMNS} FROM {self.db}.risk_events FINAL "  # noqa: S608
            "WHERE source_topic = {t:String} AND source_partition = {p:Int32} "
            "AND source_offset >= {a:Int64} AND source_offset < {b:Int64} "
            "ORDER BY source_offset LIMIT {n:UInt32}",
            t=tp[0],
            p=tp[1],
            a=after,
            b=stop,
            n=PAGE,
        )

    def records(
        self,
        positions: dict[TP, int],
        *,
        stop_ms: int,
        to_ms: int,
        skew_ms: int,
        select_from_ms: int,
        chunk_size: int,
        retention_edge: set[TP],
        should_stop: Callable[[], bool] = lambda: False,
        stop_offsets: dict[TP, int] | None = None,
    ) -> Iterator[list[Record]]:
        """Chunks of at most ``chunk_size`` records in processing order (see the module).
        ``stop_offsets``: a partition also ends before this source offset (a warm start
        reads the archive below what the raw topics still retain)."""
        if stop_offsets is not None:
            for tp in self.partitions:
                self._stop_offset[tp] = min(self._stop_offset.get(tp, 0), stop_offsets.get(tp, 0))
        tps = self.partitions
        order: OrderBuffer[TP, Record] = OrderBuffer(tps)
        clock = self.clock
        next_offset = {tp: positions[tp] for tp in tps}
        finished: set[TP] = set()
        pending: list[Record] = []
        high_mark = max(chunk_size * 2, PAGE)
        while len(finished) < len(tps) or len(order) or pending:
            if should_stop():
                return
            for tp in tps:
                if tp in finished or order.held(tp) >= high_mark:
                    continue
                rows = self._page(tp, next_offset[tp], self._stop_offset[tp])
                for row in rows:
                    offset = int(row[11])
                    event = event_from_row(row)
                    key = clock.key(tp[0], tp[1], offset, event["ts"])
                    order.add(tp, key, Record(event["ts"], tp[0], tp[1], offset, event, timestamp_ms=None))
                    order.advance(tp, (key[0], tp[0], tp[1], offset + 1))
                    next_offset[tp] = offset + 1
                if len(rows) < PAGE:
                    finished.add(tp)
                    order.advance(tp, TOP)
            pending.extend(order.release())
            while len(pending) >= chunk_size:
                yield pending[:chunk_size]
                del pending[:chunk_size]
            if len(finished) == len(tps) and not len(order) and pending:
                yield pending[:]
                pending.clear()
        self.finished = True
