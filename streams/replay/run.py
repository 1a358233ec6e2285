"""Replay and backfill: re-run the raw topics over ``[T1, T2)`` through the live code path.

``bypass replay`` (CLI in ``streams.cli.replay``) reads the raw topics with its own
confluent-kafka consumer and feeds the events, merged into the order the live pipeline
applies them, to the very same :class:`streams.core.processor.Processor` the Faust agents
use (same envelope decoder, same features/ engine, same rules/ rule set). Same events +
same rule set -> same hits, with the same ``hit_id`` s.

How it reads
------------
* Manual assignment (``assign``, never ``subscribe``), ``enable.auto.commit=false``, a
  group id of its own (``<app_id>-replay-<run id>``) that is never committed: the live
  consumer group is never joined, never rebalanced, and its offsets never move.
* Start offsets come from ``offsets_for_times(T1 - warm-up - skew)``; a partition ends at
  the first message whose Kafka timestamp is ``>= T2 + skew`` (exactly what
  ``offsets_for_times(T2 + skew)`` would return) or at its end. The SDK producer sets the
  Kafka timestamp to the event time; for other producers the skew margin
  (``BYPASS_REPLAY_SKEW_MS``, default 1 h) absorbs the difference. A broker that answers
  ``offsets_for_times`` with too small an offset (the local Tansu broker answers 0) only
  makes replay read more; the events themselves are then selected by their own time.
* Selection by event time: events with ``ts`` in ``[T1 - warm-up, T2)`` are applied to
  the state; only events with ``ts`` in ``[T1, T2)`` produce hits. Warm-up events rebuild
  window state only: a key's leading warm-up events go straight to the processor's
  features/ engine (``processor.engine.apply``, the same call the processor makes) without
  rule evaluation, since they cannot hit; the rest of the key's events go through
  ``Processor.process_many`` (hits of any late warm-up event among them are dropped).
  ``--warmup auto`` is the spec's longest window (``FeatureSpec.max_window_ms()``).
  Features without a window (all-time counts) can only be exact if the warm-up covers
  the whole history.
* ``in_list`` rules read the named lists through the live provider (Redis) as they are
  *now*, not as they were at event time: a list changed since then changes those hits.

Order (and the one case where replay and live can differ)
---------------------------------------------------------
Each partition is read in offset order; the partitions of all topics are merged by a
k-way heap merge on ``(event ts, topic, partition, offset)``: a head is emitted only when
every unfinished partition has a buffered head, so the merged order is a pure function
of the partitions' contents (independent of fetch timing, batch sizes, interruptions).
Per entity key, events are then applied in that merged order, in fixed-size chunks
grouped by key like the live agents do.

Live applies one entity's events in *arrival* order: within one source partition that is
offset order, as here, and within one ingest batch the live agent merges the partitions
by event time exactly like this merge (``streams.core.processor.merge_sources``). The one
case where they can differ: events of one entity that sit in *different* partitions or
topics, arrive out of event-time order, and fall into *different* live ingest batches.
Live applies them in arrival order, replay in event-time order. Every feature value
computed *for such an event* can then differ, because each is computed over the events
applied before it: in live, an event that arrives before an older one of the same entity
does not see that older one in its window (a count or distinct is lower), and the
order-dependent features differ too: ``max_speed`` (speed between consecutive logins),
``since``, ``sequence`` steps, and lateness rejection (an event older than the entity's
newest by more than ``allowed_lateness_ms`` can be rejected on one path and accepted on
the other). Once both events are applied, the window contents agree again. How large:
only pairs of one entity's events whose event times are closer than the cross-partition
skew of the live consumer can swap - the skew is how far the live worker's read
positions in the partitions were apart in event time (normally milliseconds to seconds;
while a lagging worker catches up on a backlog it can reach the backlog's span). Only
hits on such events (and on later events whose ``since`` / ``max_speed`` / ``sequence``
value involves them) can change. With the SDK's Kafka key (the user id), one user's
events on one topic share a partition, so within one topic this concerns the device / ip
entities, and users only across topics.

Output, ``run_id`` and ``hit_id``
---------------------------------
Hit records are the live ``bypass.hits`` records with ``run_id`` set to the replay's run
id (``--run-id`` or ``replay-<UTC time>-<random>``). ``hit_id`` is a function of
(event id, rule id, rule-set version) only, so a replayed hit has the live hit's id and
the two can be joined on it.

``--out clickhouse`` inserts through the live writer's own code
(``sinks.clickhouse.ClickHouseSink``: the same row conversion, the same
``insert_deduplication_token`` mechanism, with a token namespace of the run id, the
rule-set version and a hash of the rules text and the spec). ``risk_hits`` is a
ReplacingMergeTree whose sort key ends in ``hit_id``: a second run of the same replay
adds no rows after ``FINAL``. A replay with a *new* rule-set version gets new hit ids,
so its rows sit beside the live rows (``run_id`` and ``ruleset_version`` tell them
apart). A replay with the *same* version as live produces the same rows; with
``risk_hits`` keyed by ``hit_id`` alone the newest insert wins, i.e. the replayed copy
(identical but for ``run_id``) replaces the live one. That is what a backfill after an
outage wants (use ``--run-id live`` so the filled rows read as live); for any other run
id replay warns first, with the number of live rows it would relabel. ``--compare``
therefore reads the live side *before* writing anything, and compares by (rule id, event
id), which is stable across rule-set versions.

Only a live backfill also writes the blacklist entries to ``risk_blacklist`` (same
writer; that table has no run id, so a backtest must not add entries that were never in
effect); other runs count them in the summary. Nothing is produced to the Kafka topics
(``bypass.hits``, ``bypass.blacklist``), so the Redis mirror is not fed by a replay.

Checkpoints
-----------
Every ``BYPASS_REPLAY_CHECKPOINT_S`` seconds, and on Ctrl-C, the replay writes
``<state_dir>/replay/<run id>.json``: the run's parameters (with the rule-set text
itself and the spec's hash, so a resumed run uses exactly the same rules), the
per-partition next offsets, the serialized entity states (``engine.dumps``), the
counters, the live and replayed hit keys (for ``--compare``) and the size of the
``--out-file``. Offsets are only those of processed
chunks, outputs are flushed before the file is (atomically) replaced, and the merge
order does not depend on where it was stopped, so ``--resume`` gives the same result as
an uninterrupted run (a jsonl file is cut back to its checkpointed size first).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import logging
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from features.errors import BypassError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CompareRow",
    "PartitionMerge",
    "Record",
    "Replay",
    "ReplayError",
    "ReplayOptions",
    "ReplayStats",
    "ReplaySummary",
    "at_retention_edge",
    "checkpoint_path",
    "compare_hits",
    "format_duration",
    "format_ms",
    "load_checkpoint",
    "new_run_id",
    "parse_duration_ms",
    "parse_time_ms",
    "retention_gap_ms",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT: Final = "bypass-replay-checkpoint/1"
OUT_KINDS: Final = ("clickhouse", "jsonl", "none")
LIVE_RUN_ID: Final = "live"
_RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class ReplayError(BypassError):
    """A replay can not start or go on; the message says why and what to do."""


# --------------------------------------------------------------------------- time


_DURATION_UNITS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION_PART: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")


def parse_time_ms(text: str, *, option: str = "--from") -> int:
    """``"2026-11-01T10:00:00Z"`` / ``"2026-11-01 10:00"`` (UTC when no zone) /
    ``"2026-11-01"`` / ``"1793527200000"`` (epoch ms) -> epoch milliseconds."""
    value = text.strip()
    if re.fullmatch(r"\d+", value):
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReplayError(
            f"{option} {text!r} is not a time: give ISO 8601 (2026-11-01T10:00:00Z; "
            "UTC when no zone is given) or epoch milliseconds (1793527200000)",
            option=option,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_duration_ms(text: str, *, option: str = "--warmup") -> int:
    """``"30d"``, ``"1h30m"``, ``"90s"``, ``"500ms"``, ``"2w"`` or plain milliseconds -> ms."""
    value = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+", value):
        return int(value)
    if value and _DURATION_PART.sub("", value) == "":
        return sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    raise ReplayError(
        f"{option} {text!r} is not a duration: use e.g. 30d, 12h, 1h30m, 90s, 500ms "
        "or a number of milliseconds",
        option=option,
    )


def format_ms(ms: int) -> str:
    """Epoch ms -> ``2026-11-01T10:00:00.000Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def format_duration(ms: int) -> str:
    """``90061000`` -> ``1d 1h 1m 1s`` (``0s`` for 0; sub-second as ms)."""
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    rest = ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return " ".join(parts)


def new_run_id(now_ms: int | None = None) -> str:
    """``replay-20261123T154000Z-3fa9c2``: sortable, unique enough, safe in file names."""
    now = time.time() * 1000 if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(now / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"replay-{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id):
        raise ReplayError(
            f"--run-id {run_id!r} is not usable: 1-128 characters of letters, digits, '.', '_', ':', '-'",
            option="--run-id",
        )
    return run_id


def at_retention_edge(start_offset: int, low_watermark: int) -> bool:
    """True when the replay starts at the oldest offset the broker still holds and older
    ones were deleted (low watermark > 0): the warm-up may be missing history."""
    return low_watermark > 0 and start_offset <= low_watermark


def retention_gap_ms(wanted_from_ms: int, earliest_available_ms: int) -> int:
    """How much history the warm-up misses: ``earliest - wanted`` when positive, else 0."""
    return max(0, earliest_available_ms - wanted_from_ms)


# --------------------------------------------------------------------------- merge


class Record:
    """One raw message in the merge: ``event`` when it decoded, else ``reason``/``raw``."""

    __slots__ = (
        "event",
        "headers",
        "key",
        "message",
        "offset",
        "partition",
        "raw",
        "reason",
        "sort_key",
        "timestamp_ms",
    )

    def __init__(
        self,
        ts_ms: int,
        topic: str,
        partition: int,
        offset: int,
        event: dict[str, Any] | None = None,
        *,
        timestamp_ms: int | None = None,
        raw: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        self.sort_key = (ts_ms, topic, partition, offset)
        self.partition = partition
        self.offset = offset
        self.event = event
        self.timestamp_ms = timestamp_ms
        self.raw = raw
        self.key = key
        self.headers = headers
        self.reason = reason
        self.message = message

    @property
    def ts_ms(self) -> int:
        return self.sort_key[0]

    @property
    def topic(self) -> str:
        return self.sort_key[1]

    def __repr__(self) -> str:
        return f"Record{self.sort_key}"


TP = tuple[str, int]


class PartitionMerge:
    """k-way merge of per-partition streams, in ``(ts, topic, partition, offset)`` order.

    Each partition's records are pushed in offset order. :meth:`pop_ready` yields the
    smallest head while every unfinished partition has a buffered record (a partition
    with nothing buffered might still deliver a smaller one), so the output depends
    only on the partitions' contents, not on how they were fetched.
    """

    def __init__(self, partitions: Iterable[TP]) -> None:
        self._buf: dict[TP, deque[Record]] = {tp: deque() for tp in partitions}
        self._open: set[TP] = set(self._buf)  # not finished
        self._empty_open: set[TP] = set(self._buf)  # open and nothing buffered
        self._heap: list[tuple[tuple[str | int, ...], TP]] = []

    def push(self, tp: TP, record: Record) -> None:
        buf = self._buf[tp]
        if tp not in self._open:
            raise ValueError(f"partition {tp} is finished")
        if not buf:
            heapq.heappush(self._heap, (record.sort_key, tp))
            self._empty_open.discard(tp)
        buf.append(record)

    def finish(self, tp: TP) -> None:
        """No more records will come from ``tp``."""
        self._open.discard(tp)
        self._empty_open.discard(tp)

    def is_finished(self, tp: TP) -> bool:
        return tp not in self._open

    def buffered(self, tp: TP) -> int:
        return len(self._buf[tp])

    @property
    def waiting_for(self) -> set[TP]:
        """Open partitions with nothing buffered: the merge waits for them."""
        return set(self._empty_open)

    @property
    def done(self) -> bool:
        return not self._open and not self._heap

    def pop_ready(self, limit: int | None = None) -> list[Record]:
        out: list[Record] = []
        heap = self._heap
        bufs = self._buf
        while heap and not self._empty_open and (limit is None or len(out) < limit):
            _, tp = heapq.heappop(heap)
            buf = bufs[tp]
            out.append(buf.popleft())
            if buf:
                heapq.heappush(heap, (buf[0].sort_key, tp))
            elif tp in self._open:
                self._empty_open.add(tp)
        return out


# --------------------------------------------------------------------------- checkpoint


@dataclass
class Checkpoint:
    """What ``--resume`` needs to continue exactly where a replay stopped."""

    run_id: str
    params: dict[str, Any]
    positions: dict[TP, int]
    states: dict[tuple[str, str], bytes] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, list[str]] | None = None
    live: dict[str, list[str]] | None = None
    out_bytes: int | None = None
    complete: bool = False
    written_ms: int = 0

    def to_bytes(self) -> bytes:
        doc = {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "complete": self.complete,
            "written_ms": self.written_ms,
            "params": self.params,
            "positions": [[t, p, o] for (t, p), o in sorted(self.positions.items())],
            "out_bytes": self.out_bytes,
            "stats": self.stats,
            "replayed": self.replayed,
            "live": self.live,
            "states": [
                [entity, key, base64.b64encode(data).decode("ascii")]
                for (entity, key), data in self.states.items()
            ],
        }
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "checkpoint") -> Checkpoint:
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
            positions = {(str(t), int(p)): int(o) for t, p, o in doc["positions"]}
            states = {(str(e), str(k)): base64.b64decode(b) for e, k, b in doc["states"]}
            return cls(
                run_id=str(doc["run_id"]),
                params=dict(doc["params"]),
                positions=positions,
                states=states,
                stats=dict(doc.get("stats") or {}),
                replayed=doc.get("replayed"),
                live=doc.get("live"),
                out_bytes=doc.get("out_bytes"),
                complete=bool(doc.get("complete")),
                written_ms=int(doc.get("written_ms") or 0),
            )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ReplayError(
                f"{source} is not a readable replay checkpoint ({exc}); start the replay again "
                "without --resume (or with another --run-id)",
                path=source,
            ) from None


def checkpoint_path(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "replay" / f"{check_run_id(run_id)}.json"


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash leaves the previous checkpoint or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(checkpoint.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReplayError(
            f"no replay checkpoint at {path}: nothing to resume. Check --run-id (the id printed "
            "when the replay stopped) and BYPASS_STATE_DIR",
            path=str(path),
        ) from None
    return Checkpoint.from_bytes(data, source=str(path))


# --------------------------------------------------------------------------- options / results


@dataclass(frozen=True)
class ReplayOptions:
    """What ``bypass replay`` was asked to do (times in epoch ms)."""

    from_ms: int | None
    to_ms: int | None
    topics: tuple[str, ...] = ()
    rules_file: Path | None = None
    rules_version: str | None = None
    warmup: str = "auto"  # "auto" or a duration text
    out: str = "none"
    out_file: Path | None = None
    run_id: str | None = None
    compare: bool = False
    resume: bool = False
    dlq: bool = False
    progress: bool = True


@dataclass
class ReplayStats:
    messages: int = 0
    applied: int = 0
    warmup_events: int = 0
    in_range_events: int = 0
    outside_range: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    dlq_sent: int = 0
    duplicates: int = 0
    late_rejected: int = 0
    rule_errors: int = 0
    hits: int = 0
    hits_by_rule: dict[str, int] = field(default_factory=dict)
    blacklist: int = 0
    min_ts_ms: int | None = None
    max_ts_ms: int | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class CompareRow:
    rule_id: str
    live: int
    replayed: int
    added: int
    removed: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@dataclass
class ReplaySummary:
    run_id: str
    from_ms: int
    to_ms: int
    warmup_ms: int
    topics: tuple[str, ...]
    partitions: int
    ruleset_version: str
    out: str
    out_target: str
    stats: ReplayStats
    interrupted: bool = False
    checkpoint: Path | None = None
    warnings: list[str] = field(default_factory=list)
    compare: list[CompareRow] | None = None
    blacklist_written: bool = False


def compare_hits(live: dict[str, set[str]], replayed: dict[str, set[str]]) -> list[CompareRow]:
    """Per rule: live hits, replayed hits, added (replay only), removed (live only)."""
    rows = []
    for rule_id in sorted(set(live) | set(replayed)):
        a = live.get(rule_id, set())
        b = replayed.get(rule_id, set())
        rows.append(CompareRow(rule_id, len(a), len(b), len(b - a), len(a - b)))
    return rows


# --------------------------------------------------------------------------- outputs


class _NoOutput:
    target = "nothing written"
    wants_blacklist = False

    def write_blacklist(self, entries: list[tuple[dict[str, Any], str, int, int]]) -> None:
        pass

    def write(self, hits: list[dict[str, Any]]) -> None:
        pass

    def flush(self) -> None:
        pass

    def position(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class _JsonlOutput:
    """One ``bypass.hits`` JSON object per line, to a file (appendable, cut back on resume) or stdout."""

    def __init__(self, path: Path | None, stream: IO[bytes] | None, resume_at: int | None) -> None:
        self.path = path
        self._own = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_at is not None and path.exists():
                fh: IO[bytes] = open(path, "r+b")  # closed in close()
                fh.truncate(resume_at)
                fh.seek(resume_at)
            else:
                fh = open(path, "wb")
            self._fh = fh
            self._own = True
            self.target = str(path)
        else:
            if stream is None:
                import sys

                stream = sys.stdout.buffer
            self._fh = stream
            self.target = "stdout"
        self._buf: list[bytes] = []

    wants_blacklist = False

    def write_blacklist(self, entries: list[tuple[dict[str, Any], str, int, int]]) -> None:
        pass

    def write(self, hits: list[dict[str, Any]]) -> None:
        dumps = orjson.dumps
        self._buf.extend(dumps(h) + b"\n" for h in hits)

    def flush(self) -> None:
        if self._buf:
            self._fh.write(b"".join(self._buf))
            self._buf.clear()
        self._fh.flush()

    def position(self) -> int | None:
        if self._own:
            return self._fh.tell()
        return None

    def close(self) -> None:
        self.flush()
        if self._own:
            self._fh.close()


class _ClickHouseOutput:
    """Hits into ``risk_hits`` through the live writer's ``ClickHouseSink`` (same rows, same
    dedup-token mechanism; tokens namespaced by run id, rule-set version and content hash).

    The sink's token is the table plus the (pseudo-topic, partition, min-max offset) ranges
    of a batch. Batches here always end on chunk boundaries and all hits of one event are
    in one chunk, so two batches of one namespace have the same ranges only when they hold
    the same hits: a retried or re-run batch is dropped, never a different one."""

    def __init__(
        self,
        client: Any,
        database: str,
        run_id: str,
        ruleset_version: str,
        flush_rows: int,
        topics: Iterable[str],
    ) -> None:
        from sinks.clickhouse import ClickHouseSink

        # the token namespace: run id + what decides the hits (rule-set version, its text and
        # the spec), so a re-run with other rules or features is never taken for a retry
        self._prefix = f"replay|{run_id}|{ruleset_version}|"
        self._bl_prefix = f"replay-blacklist|{run_id}|{ruleset_version}|"
        topics = list(topics)
        kinds = {self._prefix + t: "hits" for t in topics}
        # risk_blacklist has no run id: only a backfill of the live labels may write there
        self.wants_blacklist = run_id == LIVE_RUN_ID
        if self.wants_blacklist:
            kinds.update({self._bl_prefix + t: "blacklist" for t in topics})
        self._sink = ClickHouseSink(client, database, kinds)
        self._flush_rows = flush_rows
        self.target = f"ClickHouse {database}.risk_hits"

    def write(self, hits: list[dict[str, Any]]) -> None:
        from sinks.base import RecordError, SourceRecord

        for hit in hits:
            topic = self._prefix + str(hit["source_topic"])
            record = SourceRecord(
                topic, int(hit["source_partition"]), int(hit["source_offset"]), None, orjson.dumps(hit)
            )
            try:
                self._sink.add(record)
            except RecordError as exc:  # a processor record the writer refuses: a bug, say so
                raise ReplayError(
                    f"hit {hit.get('hit_id')} does not fit risk_hits: {exc.message}", hit_id=hit.get("hit_id")
                ) from exc
        if self._sink.pending() >= self._flush_rows:
            self.flush()

    def write_blacklist(self, entries: list[tuple[dict[str, Any], str, int, int]]) -> None:
        """Blacklist records with their source event's coordinates (``--run-id live`` only)."""
        from sinks.base import RecordError, SourceRecord

        for entry, topic, partition, offset in entries:
            record = SourceRecord(self._bl_prefix + topic, partition, offset, None, orjson.dumps(entry))
            try:
                self._sink.add(record)
            except RecordError as exc:
                raise ReplayError(f"a blacklist entry does not fit risk_blacklist: {exc.message}") from exc

    def flush(self) -> None:
        from sinks.base import SinkBackpressureError

        delay = 0.5
        for attempt in range(6):
            try:
                self._sink.flush()
                return
            except SinkBackpressureError as exc:
                if attempt == 5:
                    raise ReplayError(
                        f"{exc.message}. The replay stopped; the checkpoint holds everything up to "
                        "the last written batch: fix ClickHouse and run again with --resume",
                    ) from exc
                log.warning("ClickHouse insert failed, retrying in %.1fs: %s", delay, exc.message)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def position(self) -> int | None:
        return None

    def close(self) -> None:
        self.flush()


# --------------------------------------------------------------------------- the replay


def _sha(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


class Replay:
    """One replay run. Build it, call :meth:`run`; :meth:`request_stop` (e.g. from a
    SIGINT handler) makes it finish the current chunk, checkpoint and return."""

    def __init__(
        self,
        settings: Any,
        options: ReplayOptions,
        *,
        stdout: IO[bytes] | None = None,
        console: Any = None,
        on_chunk: Callable[[ReplayStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self._stdout = stdout
        self._console = console
        self._on_chunk = on_chunk  # called after each processed chunk (tests, embedding)
        self._stop = False
        self.warnings: list[str] = []

    # -- control ---------------------------------------------------------
    def request_stop(self) -> None:
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._console is not None:
            self._console.print(f"[yellow]warning:[/] {message}", highlight=False)
        else:
            log.warning(message)

    # -- setup -----------------------------------------------------------
    def _resolve(self) -> tuple[dict[str, Any], Checkpoint | None]:
        """Check the options and return the run parameters (from the checkpoint on --resume)."""
        o = self.options
        s = self.settings
        if o.out not in OUT_KINDS:
            raise ReplayError(f"--out {o.out!r}: choose one of {', '.join(OUT_KINDS)}", option="--out")
        if o.out_file is not None and o.out != "jsonl":
            raise ReplayError("--out-file only goes with --out jsonl", option="--out-file")
        if o.rules_file is not None and o.rules_version is not None:
            raise ReplayError("give either --rules FILE or --rules-version V, not both", option="--rules")
        checkpoint: Checkpoint | None = None
        if o.resume:
            if not o.run_id:
                raise ReplayError(
                    "--resume needs --run-id: the id printed when the replay stopped "
                    f"(checkpoints are in {Path(s.state_dir) / 'replay'})",
                    option="--resume",
                )
            checkpoint = load_checkpoint(checkpoint_path(s.state_dir, o.run_id))
            if checkpoint.complete:
                raise ReplayError(
                    f"replay {o.run_id} already finished; nothing to resume (start a new run instead)",
                    run_id=o.run_id,
                )
            params = dict(checkpoint.params)
            for name, given in (("from_ms", o.from_ms), ("to_ms", o.to_ms)):
                if given is not None and given != params[name]:
                    flag = "--from" if name == "from_ms" else "--to"
                    raise ReplayError(
                        f"{flag} differs from the run being resumed ({format_ms(params[name])}); "
                        f"drop {flag} or start a new run",
                        option=flag,
                    )
            if o.topics and tuple(o.topics) != tuple(params["topics"]):
                raise ReplayError("--topics differs from the run being resumed", option="--topics")
            return params, checkpoint
        if o.from_ms is None or o.to_ms is None:
            raise ReplayError("--from and --to are required (unless --resume)", option="--from")
        if o.to_ms <= o.from_ms:
            raise ReplayError(
                f"--to ({format_ms(o.to_ms)}) must be after --from ({format_ms(o.from_ms)})",
                option="--to",
            )
        run_id = check_run_id(o.run_id) if o.run_id else new_run_id()
        params = {
            "run_id": run_id,
            "from_ms": o.from_ms,
            "to_ms": o.to_ms,
            "topics": list(o.topics or s.raw_topics),
            "warmup": o.warmup,
            "skew_ms": int(s.replay_skew_ms),
            "out": o.out,
            "out_file": str(o.out_file) if o.out_file else None,
            "compare": o.compare,
            "dlq": o.dlq,
            "rules_file": str(o.rules_file) if o.rules_file else None,
            "rules_version": o.rules_version,
            "chunk": int(s.replay_batch_size),
        }
        return params, None

    def _load_core(self, params: dict[str, Any], checkpoint: Checkpoint | None) -> tuple[Any, Any, Any, Any]:
        """spec, engine, ruleset, processor: built by the live worker's own helpers."""
        from streams.core.processor import Processor
        from streams.core.rulestore import load_for_spec, load_spec
        from streams.live.worker import build_engine, list_provider

        s = self.settings
        spec = load_spec(s)
        spec_sha = _sha(Path(s.features_spec).read_bytes())
        if checkpoint is not None:
            rules_text = str(params["rules_text"])
            source = str(params.get("rules_source") or "checkpoint")
            if params.get("spec_sha") != spec_sha:
                raise ReplayError(
                    f"the feature spec {s.features_spec} changed since replay {params['run_id']} started; "
                    "a resumed run must use the same spec: restore it or start a new run",
                    path=str(s.features_spec),
                )
        else:
            rules_text, source = self._rules_text(params)
            params["rules_text"] = rules_text
            params["rules_source"] = source
            params["spec_sha"] = spec_sha
        ruleset = load_for_spec(rules_text, spec, source=source)
        params["ruleset_version"] = str(ruleset.version)
        engine = build_engine(spec, s)
        processor = Processor(spec, engine, ruleset, run_id=str(params["run_id"]), lists=list_provider(s))
        return spec, engine, ruleset, processor

    def _rules_text(self, params: dict[str, Any]) -> tuple[str, str]:
        """The rule-set YAML to replay with: --rules FILE, --rules-version V, or the latest."""
        from streams.core.rulestore import read_versions

        if params.get("rules_file"):
            path = Path(params["rules_file"])
            try:
                return path.read_text(encoding="utf-8"), str(path)
            except OSError as exc:
                raise ReplayError(f"cannot read --rules {path}: {exc.strerror}", path=str(path)) from None
        topic = self.settings.rules_topic
        wanted = params.get("rules_version")
        records = read_versions(self.settings)
        if not records:
            raise ReplayError(
                f"no rule set is published on {topic}: publish one with "
                "`bypass rules publish RULES.yaml` or give --rules FILE",
                topic=topic,
            )
        if wanted is None:
            record = records[-1]
            return record.text, f"{topic}@{record.version}"
        for record in reversed(records):
            if record.version == str(wanted):
                return record.text, f"{topic}@{record.version}"
        known = ", ".join(dict.fromkeys(r.version for r in records[-10:]))
        raise ReplayError(
            f"rule-set version {wanted!r} is not on {topic} (published there: {known})",
            version=wanted,
        )

    # -- kafka -----------------------------------------------------------
    def _consumer(self, run_id: str) -> Any:
        from streams.core.kafka import consumer

        group = f"{self.settings.app_id}-replay-{run_id}"
        if group == self.settings.app_id:  # pragma: no cover - impossible by construction
            raise ReplayError("replay must not use the live consumer group")
        return consumer(
            self.settings,
            group_id=group,
            **{
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 52_428_800,
                "queued.max.messages.kbytes": 262_144,
            },
        )

    def _partitions(self, consumer: Any, topics: list[str]) -> list[TP]:
        from confluent_kafka import KafkaException

        try:
            metadata = consumer.list_topics(timeout=15)
        except KafkaException as exc:
            raise ReplayError(
                f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc.args[0]}. Is the broker up "
                "(`bypass stack status`) and BYPASS_KAFKA_BOOTSTRAP right?",
            ) from None
        out: list[TP] = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                known = sorted(t for t in metadata.topics if not t.startswith("__"))
                raise ReplayError(
                    f"topic {topic!r} does not exist on {self.settings.kafka_bootstrap} "
                    f"(topics there: {', '.join(known[:20]) or 'none'}); check --topics / BYPASS_RAW_TOPICS",
                    topic=topic,
                )
            out.extend((topic, p) for p in sorted(meta.partitions))
        return out

    def _offsets(
        self, consumer: Any, tps: list[TP], start_ms: int, stop_ms: int
    ) -> tuple[dict[TP, int], dict[TP, int], dict[TP, tuple[int, int]]]:
        """(start offsets, end estimates for progress, (low, high) watermarks)."""
        from confluent_kafka import TopicPartition

        marks = {tp: consumer.get_watermark_offsets(TopicPartition(*tp), timeout=15) for tp in tps}
        starts_q = consumer.offsets_for_times(
            [TopicPartition(t, p, max(start_ms, 0)) for t, p in tps], timeout=15
        )
        ends_q = consumer.offsets_for_times(
            [TopicPartition(t, p, max(stop_ms, 0)) for t, p in tps], timeout=15
        )
        starts: dict[TP, int] = {}
        ends: dict[TP, int] = {}
        for tp, s_q, e_q in zip(tps, starts_q, ends_q, strict=True):
            low, high = marks[tp]
            start = s_q.offset if s_q.offset >= 0 else high
            starts[tp] = max(start, low)
            end = e_q.offset if e_q.offset > starts[tp] else high
            ends[tp] = max(end, starts[tp])
        return starts, ends, marks

    # -- run -------------------------------------------------------------
    def run(self) -> ReplaySummary:
        from confluent_kafka import KafkaError, TopicPartition

        from streams.core.envelope import EnvelopeDecoder, InvalidEventError
        from streams.core.processor import KeyBatch, SourceEvent

        settings = self.settings
        params, checkpoint = self._resolve()
        run_id = str(params["run_id"])
        spec, engine, _ruleset, processor = self._load_core(params, checkpoint)
        if checkpoint is None:
            warmup = params["warmup"]
            if str(warmup).strip().lower() == "auto":
                warmup_ms = int(spec.max_window_ms())
                unbounded = _unbounded_features(spec)
                if unbounded:
                    self._warn(
                        f"features without a window (all-time): {', '.join(unbounded)}; --warmup auto "
                        f"({format_duration(warmup_ms)}) covers the windowed ones only: these count from "
                        "T1 - warm-up (give a longer --warmup to cover more history)"
                    )
            else:
                warmup_ms = parse_duration_ms(str(warmup))
            params["warmup_ms"] = warmup_ms
        warmup_ms = int(params["warmup_ms"])
        from_ms, to_ms, skew_ms = int(params["from_ms"]), int(params["to_ms"]), int(params["skew_ms"])
        select_from = from_ms - warmup_ms
        stop_ms = to_ms + skew_ms
        topics = list(params["topics"])
        chunk_size = int(params.get("chunk") or settings.replay_batch_size)
        ckpt_path = checkpoint_path(settings.state_dir, run_id)

        decoder = EnvelopeDecoder(settings.require_phone_hash_key(), max_bytes=settings.event_max_bytes)
        stats = ReplayStats.from_dict(checkpoint.stats) if checkpoint else ReplayStats()
        prior_elapsed = stats.elapsed_s
        states: dict[tuple[str, str], Any] = {}
        if checkpoint is not None:
            for (entity, key), data in checkpoint.states.items():
                states[(entity, key)] = engine.loads(entity, data)
        replayed: dict[str, set[str]] = {}
        if checkpoint is not None and checkpoint.replayed:
            replayed = {r: set(ids) for r, ids in checkpoint.replayed.items()}

        # the live side of --compare is read before anything is written
        live: dict[str, set[str]] | None = None
        if params.get("compare"):
            if checkpoint is not None and checkpoint.live is not None:
                live = {r: set(ids) for r, ids in checkpoint.live.items()}
            else:
                live = read_live_hits(settings, from_ms, to_ms, topics)

        if params["out"] == "clickhouse" and run_id != LIVE_RUN_ID and checkpoint is None:
            shared = count_live_hits(settings, from_ms, to_ms, topics, str(params["ruleset_version"]))
            if shared:
                self._warn(
                    f"{shared:,} live hits in the range were made by the same rule-set version "
                    f"{params['ruleset_version']}: risk_hits is keyed by hit_id, so the replayed copies "
                    f"(identical but for run_id) replace them and they will read run_id={run_id!r}. "
                    "For a backfill of the live labels use --run-id live"
                )

        consumer = self._consumer(run_id)
        dlq_producer = None
        output: Any = None
        try:
            tps = self._partitions(consumer, topics)
            starts, ends, marks = self._offsets(consumer, tps, select_from - skew_ms, stop_ms)
            if checkpoint is None and all(marks[tp][1] <= marks[tp][0] for tp in tps):
                raise ReplayError(
                    f"no data: the topics {', '.join(topics)} hold no messages at all "
                    f"(range {format_ms(from_ms)} .. {format_ms(to_ms)})",
                    topics=topics,
                )
            if checkpoint is not None:
                for tp in tps:
                    if tp not in checkpoint.positions:
                        raise ReplayError(
                            f"partition {tp[0]}[{tp[1]}] is not in the checkpoint (partitions were added?); "
                            "start a new run",
                        )
                starts = {tp: checkpoint.positions[tp] for tp in tps}
                ends = {tp: max(ends[tp], starts[tp]) for tp in tps}
            retention_edge = (
                {tp for tp in tps if at_retention_edge(starts[tp], marks[tp][0])}
                if checkpoint is None
                else set()
            )

            positions = dict(starts)
            merge = PartitionMerge(tps)
            consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in tps])
            paused: set[TP] = set()
            high_mark = max(chunk_size * 2, 1000)

            output = self._open_output(params, checkpoint, run_id)
            if params.get("dlq"):
                from streams.core.kafka import producer

                dlq_producer = producer(settings)

            progress = _Progress(
                self._console if self.options.progress else None,
                total=sum(ends[tp] - starts[tp] for tp in tps),
                description=f"replay {run_id}",
            )
            t_start = time.monotonic()
            last_ckpt = t_start
            pending: list[Record] = []
            max_applied_ts = stats.max_ts_ms or 0

            def save(complete: bool) -> None:
                output.flush()
                stats.elapsed_s = prior_elapsed + (time.monotonic() - t_start)
                ck = Checkpoint(
                    run_id=run_id,
                    params=params,
                    positions=dict(positions),
                    states={k: engine.dumps(v) for k, v in states.items()},
                    stats=stats.to_dict(),
                    replayed={r: sorted(ids) for r, ids in replayed.items()} if live is not None else None,
                    live={r: sorted(ids) for r, ids in live.items()} if live is not None else None,
                    out_bytes=output.position(),
                    complete=complete,
                    written_ms=int(time.time() * 1000),
                )
                save_checkpoint(ckpt_path, ck)

            def process(chunk: list[Record]) -> None:
                nonlocal max_applied_ts
                by_entity: dict[str, dict[str, list[Any]]] = {}
                engine_apply = processor.engine.apply
                want_coords = output.wants_blacklist
                coords: dict[str, tuple[str, int, int]] = {}
                for rec in chunk:
                    stats.messages += 1
                    event = rec.event
                    if event is None:
                        stats.malformed += 1
                        reason = rec.reason or "invalid"
                        stats.malformed_by_reason[reason] = stats.malformed_by_reason.get(reason, 0) + 1
                        if dlq_producer is not None:
                            self._send_dlq(dlq_producer, rec, run_id)
                            stats.dlq_sent += 1
                        continue
                    ts = rec.sort_key[0]
                    if ts < select_from or ts >= to_ms:
                        stats.outside_range += 1
                        continue
                    if ts >= from_ms:
                        stats.in_range_events += 1
                    else:
                        stats.warmup_events += 1
                    if stats.min_ts_ms is None or ts < stats.min_ts_ms:
                        stats.min_ts_ms = ts
                    if ts > max_applied_ts:
                        max_applied_ts = ts
                    source = SourceEvent(event, rec.sort_key[1], rec.partition, rec.offset, rec.timestamp_ms)
                    if want_coords:
                        coords[event["event_id"]] = (rec.sort_key[1], rec.partition, rec.offset)
                    for entity, raw_key in spec.entity_keys(event):
                        by_entity.setdefault(entity, {}).setdefault(str(raw_key), []).append(source)
                stats.max_ts_ms = max_applied_ts or None
                hits_out: list[dict[str, Any]] = []
                blacklist_out: list[tuple[dict[str, Any], str, int, int]] = []
                for entity, keyed in by_entity.items():
                    batches = []
                    for key, evs in keyed.items():
                        state = states.get((entity, key))
                        # the warm-up prefix of a key's events can hit nothing: straight into
                        # features/ (the processor's own apply step), no rule evaluation
                        n = 0
                        while n < len(evs) and evs[n].event["ts"] < from_ms:
                            n += 1
                        if n:
                            state = processor.load_state(entity, state)
                            for src in evs[:n]:
                                status = engine_apply(entity, state, src.event).status
                                if status == "applied":
                                    stats.applied += 1
                                elif status == "duplicate":
                                    stats.duplicates += 1
                                else:
                                    stats.late_rejected += 1
                            states[(entity, key)] = state
                        if n < len(evs):
                            batches.append(KeyBatch(key, state, evs[n:]))
                    for result in processor.process_many(entity, batches):
                        states[(entity, result.key)] = result.state
                        stats.applied += result.applied
                        stats.duplicates += result.duplicates
                        stats.late_rejected += len(result.late)
                        stats.rule_errors += result.rule_errors
                        for hit in result.hits:
                            if from_ms <= hit["event_ts"] < to_ms:
                                hits_out.append(hit)
                        for entry in result.blacklist:
                            if from_ms <= entry["event_ts"] < to_ms:
                                stats.blacklist += 1
                                if output.wants_blacklist:
                                    topic, partition, offset = coords[entry["event_id"]]
                                    blacklist_out.append((entry, topic, partition, offset))
                for hit in hits_out:
                    rule = hit["rule_id"]
                    stats.hits_by_rule[rule] = stats.hits_by_rule.get(rule, 0) + 1
                    if live is not None:
                        replayed.setdefault(rule, set()).add(hit["event_id"])
                stats.hits += len(hits_out)
                if hits_out:
                    output.write(hits_out)
                if blacklist_out:
                    output.write_blacklist(blacklist_out)
                for rec in chunk:
                    tp = (rec.sort_key[1], rec.partition)
                    positions[tp] = rec.offset + 1
                if self._on_chunk is not None:
                    self._on_chunk(stats)

            def evict() -> None:
                if not max_applied_ts:
                    return
                gone = [k for k, st in states.items() if engine.evictable(st, max_applied_ts)]
                for k in gone:
                    del states[k]

            batch_n = max(chunk_size, 500)
            idle_polls = 0
            with progress:
                while not merge.done:
                    messages = consumer.consume(num_messages=batch_n, timeout=1.0)
                    if not messages:
                        idle_polls += 1
                        if idle_polls >= 30:
                            waiting = ", ".join(f"{t}[{p}]" for t, p in sorted(merge.waiting_for))
                            raise ReplayError(
                                f"no data from {waiting} for 30 s although the partition is not at its end; "
                                "is the broker healthy? Resume later with --resume",
                            )
                    else:
                        idle_polls = 0
                    for m in messages:
                        err = m.error()
                        if err is not None:
                            tp = (m.topic(), m.partition())
                            if err.code() == KafkaError._PARTITION_EOF:
                                if tp in positions and not merge.is_finished(tp):
                                    merge.finish(tp)
                                    consumer.pause([TopicPartition(*tp)])
                                continue
                            if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                                raise ReplayError(
                                    f"topic {m.topic()!r} disappeared during the replay", topic=m.topic()
                                )
                            if err.fatal():
                                raise ReplayError(f"Kafka error: {err.str()}")
                            log.warning("Kafka: %s", err.str())
                            continue
                        tp = (m.topic(), m.partition())
                        if merge.is_finished(tp):
                            continue
                        ts_type, kafka_ts = m.timestamp()
                        kts = kafka_ts if ts_type != 0 and kafka_ts >= 0 else None
                        if kts is not None and kts >= stop_ms:
                            merge.finish(tp)
                            consumer.pause([TopicPartition(*tp)])
                            self._check_stop_message(decoder, m, kts, to_ms, skew_ms)
                            continue
                        raw = m.value()
                        try:
                            event = decoder.decode(raw)
                        except InvalidEventError as exc:
                            rec = Record(
                                kts if kts is not None else select_from,
                                tp[0],
                                tp[1],
                                m.offset(),
                                None,
                                timestamp_ms=kts,
                                raw=raw,
                                key=m.key(),
                                headers=list(m.headers() or []),
                                reason=exc.reason,
                                message=exc.message,
                            )
                        else:
                            rec = Record(event["ts"], tp[0], tp[1], m.offset(), event, timestamp_ms=kts)
                            if tp in retention_edge:
                                retention_edge.discard(tp)
                                self._check_retention(tp, select_from, event["ts"])
                        merge.push(tp, rec)
                    pending.extend(merge.pop_ready())
                    while len(pending) >= chunk_size and not self._stop:
                        process(pending[:chunk_size])
                        del pending[:chunk_size]
                    if merge.done and pending and not self._stop:
                        process(pending)
                        pending.clear()
                    # flow control: pause partitions far ahead of the merge
                    for tp in tps:
                        if merge.is_finished(tp):
                            continue
                        n = merge.buffered(tp)
                        if tp not in paused and n >= high_mark:
                            consumer.pause([TopicPartition(*tp)])
                            paused.add(tp)
                        elif tp in paused and n < high_mark // 2:
                            consumer.resume([TopicPartition(*tp)])
                            paused.discard(tp)
                    done_offsets = sum(positions[tp] - starts[tp] for tp in tps)
                    progress.update(done_offsets, stats.messages, time.monotonic() - t_start)
                    now = time.monotonic()
                    if self._stop:
                        break
                    if now - last_ckpt >= settings.replay_checkpoint_s:
                        evict()
                        save(False)
                        last_ckpt = now
            interrupted = self._stop and (not merge.done or bool(pending))
            if dlq_producer is not None:
                dlq_producer.flush(30)
            if interrupted:
                save(False)
            else:
                output.flush()
                stats.elapsed_s = prior_elapsed + (time.monotonic() - t_start)
                if stats.in_range_events == 0:
                    seen = (
                        f"the events read span {format_ms(stats.min_ts_ms)} .. "
                        f"{format_ms(stats.max_ts_ms or 0)}"
                        if stats.min_ts_ms is not None
                        else f"no event at all was found around that range ({stats.messages} messages read)"
                    )
                    stamps = [w for w in self.warnings if "does not stamp" in w]
                    if stamps:
                        seen += f". {stamps[0]}"
                    save(True)
                    raise ReplayError(
                        f"no data: no event with event time in [{format_ms(from_ms)}, {format_ms(to_ms)}) on "
                        f"{', '.join(topics)}; {seen}",
                        topics=topics,
                    )
                save(True)
        finally:
            if output is not None:
                with contextlib.suppress(Exception):
                    output.close()
            with contextlib.suppress(Exception):
                consumer.close()

        return ReplaySummary(
            run_id=run_id,
            from_ms=from_ms,
            to_ms=to_ms,
            warmup_ms=warmup_ms,
            topics=tuple(topics),
            partitions=len(tps),
            ruleset_version=str(params["ruleset_version"]),
            out=str(params["out"]),
            out_target=output.target,
            stats=stats,
            interrupted=interrupted,
            checkpoint=ckpt_path,
            warnings=list(self.warnings),
            compare=compare_hits(live, replayed) if live is not None and not interrupted else None,
            blacklist_written=bool(output.wants_blacklist),
        )

    def _open_output(self, params: dict[str, Any], checkpoint: Checkpoint | None, run_id: str) -> Any:
        out = params["out"]
        if out == "jsonl":
            path = Path(params["out_file"]) if params.get("out_file") else None
            resume_at = checkpoint.out_bytes if checkpoint is not None else None
            if checkpoint is not None and path is None:
                self._warn(
                    "resuming a jsonl replay to stdout: only the hits after the checkpoint are written"
                )
            return _JsonlOutput(path, self._stdout, resume_at)
        if out == "clickhouse":
            client = clickhouse_client(self.settings)
            return _ClickHouseOutput(
                client,
                self.settings.clickhouse_database,
                run_id,
                f"{params['ruleset_version']}|{_sha(str(params['rules_text']) + str(params['spec_sha']))}",
                int(getattr(self.settings, "sink_batch_size", 50_000)),
                params["topics"],
            )
        return _NoOutput()

    def _check_stop_message(
        self, decoder: Any, message: Any, kafka_ts: int, to_ms: int, skew_ms: int
    ) -> None:
        """A partition ends at the first message stamped ``>= T2 + skew``; if that message's
        own event time is still inside the range, the producer's timestamps do not follow
        event time and later in-range events may be missed: say so."""
        try:
            event_ts = int(decoder.decode(message.value())["ts"])
        except Exception:  # a malformed message: no event time to compare
            return
        if event_ts < to_ms:
            self._warn(
                f"{message.topic()}[{message.partition()}] offset {message.offset()}: Kafka timestamp "
                f"{format_ms(kafka_ts)} but event time {format_ms(event_ts)} (inside the range): this "
                "producer does not stamp messages with the event time, so the replay may stop reading "
                f"too early. Raise BYPASS_REPLAY_SKEW_MS (now {format_duration(skew_ms)}) above the gap"
            )

    def _check_retention(self, tp: TP, select_from: int, earliest_ms: int) -> None:
        gap = retention_gap_ms(select_from, earliest_ms)
        if gap:
            self._warn(
                f"{tp[0]}[{tp[1]}]: retention no longer holds the warm-up range: the earliest "
                f"available event is at {format_ms(earliest_ms)}, the warm-up starts at "
                f"{format_ms(select_from)}: {format_duration(gap)} of state is missing, so windowed "
                "features near T1 may be lower than live"
            )

    def _send_dlq(self, producer: Any, rec: Record, run_id: str) -> None:
        """The live DLQ format (``streams.live.app.DLQ_HEADERS``) plus ``bypass.run_id``."""
        headers = list(rec.headers or [])
        headers += [
            ("bypass.reason", (rec.reason or "invalid").encode()),
            ("bypass.error", (rec.message or "").encode()),
            ("bypass.source.topic", rec.topic.encode()),
            ("bypass.source.partition", str(rec.partition).encode()),
            ("bypass.source.offset", str(rec.offset).encode()),
            (
                "bypass.source.timestamp",
                str(rec.timestamp_ms if rec.timestamp_ms is not None else -1).encode(),
            ),
            ("bypass.run_id", run_id.encode()),
        ]
        producer.produce(self.settings.dlq_topic, key=rec.key, value=rec.raw, headers=headers)
        producer.poll(0)


def _unbounded_features(spec: Any) -> list[str]:
    """Names of the all-time aggregates (no window). ``since`` and ``sequence`` are left
    out: a rule compares them with thresholds that a warm-up as long as the longest
    window covers."""
    names = []
    for feature in getattr(spec, "features", ()) or ():
        if getattr(feature, "window_ms", 0) is None and getattr(feature, "agg", None) not in (
            "since",
            "sequence",
        ):
            names.append(str(getattr(feature, "name", "?")))
    return names


# --------------------------------------------------------------------------- ClickHouse


def clickhouse_client(settings: Any) -> Any:
    from sinks.clickhouse import connect

    try:
        return connect(
            settings.clickhouse_url,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
            database=settings.clickhouse_database,
        )
    except Exception as exc:
        from streams.settings import mask_url

        raise ReplayError(
            f"cannot reach ClickHouse at {mask_url(settings.clickhouse_url)} ({type(exc).__name__}); "
            "is it up (`bypass stack status`) and migrated (`bypass clickhouse migrate`)?",
        ) from None


def count_live_hits(settings: Any, from_ms: int, to_ms: int, topics: list[str], ruleset_version: str) -> int:
    """How many live hits in ``[from, to)`` from ``topics`` were made by ``ruleset_version``."""
    client = clickhouse_client(settings)
    db = settings.clickhouse_database
    try:
        result = client.query(
            f"SELECT count() FROM {db}.risk_hits FINAL "  # noqa: S608 - db is a checked identifier
            "WHERE run_id = {run:String} AND ruleset_version = {v:String} "
            "AND event_time >= fromUnixTimestamp64Milli({t1:Int64}, 'UTC') "
            "AND event_time < fromUnixTimestamp64Milli({t2:Int64}, 'UTC') "
            "AND source_topic IN {topics:Array(String)}",
            parameters={
                "run": LIVE_RUN_ID,
                "v": ruleset_version,
                "t1": from_ms,
                "t2": to_ms,
                "topics": topics,
            },
        )
    except Exception as exc:
        raise ReplayError(
            f"cannot read {db}.risk_hits ({str(exc)[:300]}); "
            "is the schema migrated (`bypass clickhouse migrate`)?",
        ) from None
    return int(result.result_rows[0][0])


def read_live_hits(settings: Any, from_ms: int, to_ms: int, topics: list[str]) -> dict[str, set[str]]:
    """rule id -> event ids of the live hits (``run_id = 'live'``) in ``[from, to)`` from ``topics``."""
    client = clickhouse_client(settings)
    db = settings.clickhouse_database
    try:
        result = client.query(
            f"SELECT rule_id, event_id FROM {db}.risk_hits FINAL "  # noqa: S608 - db is a checked identifier
            "WHERE run_id = {run:String} "
            "AND event_time >= fromUnixTimestamp64Milli({t1:Int64}, 'UTC') "
            "AND event_time < fromUnixTimestamp64Milli({t2:Int64}, 'UTC') "
            "AND source_topic IN {topics:Array(String)}",
            parameters={"run": LIVE_RUN_ID, "t1": from_ms, "t2": to_ms, "topics": list(topics)},
        )
    except Exception as exc:
        raise ReplayError(
            f"--compare could not read the live hits from {db}.risk_hits ({str(exc)[:300]}); "
            "is the schema migrated (`bypass clickhouse migrate`)?",
        ) from None
    live: dict[str, set[str]] = {}
    for rule_id, event_id in result.result_rows:
        live.setdefault(str(rule_id), set()).add(str(event_id))
    return live


# --------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr: offsets done / total (ETA by offsets), events, events/s."""

    def __init__(self, console: Any, *, total: int, description: str) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None
        self._total = max(total, 1)
        self._description = description

    def __enter__(self) -> _Progress:
        if self._console is not None:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[events]:,} events"),
                TextColumn("{task.fields[rate]:,.0f} ev/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self._description, total=self._total, events=0, rate=0.0)
        return self

    def update(self, done: int, events: int, elapsed_s: float) -> None:
        if self._progress is not None:
            total = max(self._total, done)
            rate = events / elapsed_s if elapsed_s > 0 else 0.0
            self._progress.update(self._task, completed=done, total=total, events=events, rate=rate)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def iter_hits_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read back a ``--out jsonl`` file (for tests and tools)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)
