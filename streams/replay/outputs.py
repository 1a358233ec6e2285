"""Where a replay's records go (``--out``): a sink behind the one sink interface (sinks.base).

- ``none``: :class:`sinks.base.NullSink` (counts only, e.g. a backtest with ``--compare``);
- ``jsonl``: :class:`sinks.jsonl.JsonlSink`, one ``bypass.hits`` record per line, to a file
  (cut back to its checkpointed size on ``--resume``) or stdout;
- ``clickhouse``: :class:`sinks.clickhouse.ClickHouseSink`, the live writer's own code (the
  same row conversion and ``insert_deduplication_token`` mechanism).

The ClickHouse sink's dedup token is the table plus the (topic, partition, min-max offset)
ranges of a batch.  Replay hands it records under a pseudo-topic that namespaces the run
(``replay|<run id>|<rule-set version + content hash>|<source topic>``), at the source
event's partition and offset.  Batches end on chunk boundaries and all hits of one event
are in one chunk, so two batches of one namespace have the same ranges only when they
hold the same hits: a retried or re-run batch is dropped, never a different one.

With ``--out clickhouse`` the decision records (``bypass.decisions``, pass ones sampled by
``BYPASS_DECISION_SAMPLE`` exactly as live) go to ``risk_decisions`` too, under the run id.

Only a live backfill (``--run-id live``) also writes blacklist entries (to
``risk_blacklist``, which has no run id: a backtest must not add entries that were never
in effect). With ``--emit-blacklist`` (live backfills only) :class:`BlacklistEmitter` also
produces them to the blacklist topic, as the live worker does, so the Redis mirror
applies them and inline services see the backfilled labels.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from sinks.base import RecordError, SinkBackpressureError, SourceRecord
from sinks.records import BlacklistRecord, DecisionRecord, HitRecord, blacklist_key
from streams.core.step import Emitted
from streams.replay.options import LIVE_RUN_ID, ReplayError

if TYPE_CHECKING:
    from sinks.clickhouse import InsertClient

__all__ = ["BlacklistEmitter", "ReplayOutput", "entry_id", "open_output"]

log = logging.getLogger(__name__)

#: flush attempts before a replay gives up on a sink that keeps refusing (back-off 0.5 s .. 10 s)
FLUSH_ATTEMPTS = 6


class _Sink(Protocol):
    def add(self, record: SourceRecord) -> None: ...
    def flush(self) -> int: ...
    def pending(self) -> int: ...


class ReplayOutput:
    """Adds a replay's hit (and, for a live backfill, blacklist) records to one sink."""

    def __init__(
        self,
        sink: _Sink,
        *,
        target: str,
        hit_prefix: str = "",
        blacklist_prefix: str | None = None,
        decision_prefix: str | None = None,
        flush_rows: int = 50_000,
    ) -> None:
        self.sink = sink
        self.target = target
        self._hit_prefix = hit_prefix
        self._bl_prefix = blacklist_prefix
        self._decision_prefix = decision_prefix
        self.wants_blacklist = blacklist_prefix is not None
        self.wants_decisions = decision_prefix is not None
        self._flush_rows = flush_rows

    def hit(self, emitted: Emitted[HitRecord]) -> None:
        self._add(self._hit_prefix, emitted, "hit")

    def blacklist(self, emitted: Emitted[BlacklistRecord]) -> None:
        if self._bl_prefix is not None:
            self._add(self._bl_prefix, emitted, "blacklist entry")

    def decision(self, emitted: Emitted[DecisionRecord]) -> None:
        if self._decision_prefix is not None:
            self._add(self._decision_prefix, emitted, "decision")

    def _add(
        self,
        prefix: str,
        emitted: Emitted[HitRecord] | Emitted[BlacklistRecord] | Emitted[DecisionRecord],
        what: str,
    ) -> None:
        source = emitted.source
        record = SourceRecord(prefix + source.topic, source.partition, source.offset, None, emitted.value)
        try:
            self.sink.add(record)
        except RecordError as exc:  # a record the processor made that the writer refuses: a bug, say so
            name = emitted.record.get("hit_id") or f"{emitted.entity}:{emitted.key}"
            raise ReplayError(f"{what} {name} does not fit {self.target}: {exc.message}") from exc
        if self.sink.pending() >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered, retrying a refusing sink with back-off, then giving up
        with a ReplayError (the checkpoint holds everything up to the last written batch)."""
        delay = 0.5
        for attempt in range(FLUSH_ATTEMPTS):
            try:
                self.sink.flush()
                return
            except SinkBackpressureError as exc:
                if attempt == FLUSH_ATTEMPTS - 1:
                    raise ReplayError(
                        f"{exc.message}. The replay stopped; the checkpoint holds everything up to "
                        "the last written batch: fix the target and run again with --resume",
                    ) from exc
                log.warning("writing to %s failed, retrying in %.1fs: %s", self.target, delay, exc.message)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def position(self) -> int | None:
        """Bytes written to an output file (jsonl), for the checkpoint; None otherwise."""
        position = getattr(self.sink, "position", None)
        return position() if position is not None else None

    def close(self) -> None:
        self.flush()
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()


def entry_id(record: BlacklistRecord) -> str:
    """A blacklist entry's deterministic id: sha256 of (entity, key, label, rule-set version,
    event id), the same fields ``risk_blacklist`` is keyed by. The same event under the same
    rules always gives the same id, however often it is replayed."""
    parts = (record["entity"], record["key"], record["label"], record["ruleset_version"], record["event_id"])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class BlacklistEmitter:
    """``--emit-blacklist``: a live backfill's blacklist records produced to the blacklist
    topic with the live worker's key and value, so the Redis mirror applies them.

    - Idempotent end to end: the records are those live would have produced (same value),
      and the mirror's merge is idempotent, so replaying twice changes nothing in Redis;
      each message carries ``bypass.entry_id`` (:func:`entry_id`) and ``bypass.run_id``.
    - An entry already expired by the wall clock is not produced (it could block no one).
    - :meth:`flush` waits for the broker's acknowledgements; the replay calls it before
      each checkpoint, so a resumed run never skips an entry (at-least-once).
    """

    def __init__(self, producer: Any, topic: str, run_id: str) -> None:
        self._producer = producer
        self.topic = topic
        self._run_id = run_id.encode()
        self.produced = 0
        self.expired = 0
        self._failed: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def add(self, emitted: Emitted[BlacklistRecord]) -> None:
        record = emitted.record
        if record["expires_at"] <= time.time_ns() // 1_000_000:
            self.expired += 1
            return
        self._producer.produce(
            self.topic,
            key=blacklist_key(record["entity"], record["key"]).encode(),
            value=emitted.value,
            headers=[("bypass.entry_id", entry_id(record).encode()), ("bypass.run_id", self._run_id)],
            on_delivery=self._delivered,
        )
        self._producer.poll(0)
        self.produced += 1

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker has every entry produced so far, or raise ReplayError."""
        left = self._producer.flush(timeout_s)
        if left or self._failed:
            failed, self._failed = self._failed, []
            raise ReplayError(
                f"the blacklist topic {self.topic} did not take {left + len(failed)} entries "
                f"({failed[0] if failed else 'no answer within ' + str(int(timeout_s)) + ' s'}); "
                "the replay stopped: run it again with --resume once Kafka answers"
            )


def open_output(
    out: str,
    *,
    run_id: str,
    namespace: str,
    topics: list[str],
    database: str,
    flush_rows: int,
    out_file: Path | None = None,
    resume_at: int | None = None,
    stdout: IO[bytes] | None = None,
    clickhouse: InsertClient | None = None,
) -> ReplayOutput:
    """The output for ``--out``: ``namespace`` is the rule-set version plus a hash of what
    decides the hits (ClickHouse dedup tokens), ``clickhouse`` a connected client."""
    if out == "jsonl":
        from sinks.jsonl import JsonlSink

        jsonl = JsonlSink(out_file, stream=stdout, resume_at=resume_at)
        return ReplayOutput(jsonl, target=jsonl.target, flush_rows=flush_rows)
    if out == "clickhouse":
        from sinks.clickhouse import ClickHouseSink

        hit_prefix = f"replay|{run_id}|{namespace}|"
        bl_prefix = f"replay-blacklist|{run_id}|{namespace}|" if run_id == LIVE_RUN_ID else None
        decision_prefix = f"replay-decisions|{run_id}|{namespace}|"
        kinds = {hit_prefix + t: "hits" for t in topics}
        kinds.update({decision_prefix + t: "decisions" for t in topics})
        if bl_prefix is not None:
            kinds.update({bl_prefix + t: "blacklist" for t in topics})
        if clickhouse is None:
            raise ReplayError("--out clickhouse needs a ClickHouse client")
        sink = ClickHouseSink(clickhouse, database, kinds)
        return ReplayOutput(
            sink,
            target=f"ClickHouse {database}.risk_hits",
            hit_prefix=hit_prefix,
            blacklist_prefix=bl_prefix,
            decision_prefix=decision_prefix,
            flush_rows=flush_rows,
        )
    from sinks.base import NullSink

    return ReplayOutput(NullSink(), target="nothing written", flush_rows=flush_rows)
