"""Replay's Kafka reader: the raw topics' partitions over a time range, in processing order.

* Manual assignment (``assign``, never ``subscribe``), ``enable.auto.commit=false``, a
  group id of its own (``<app_id>-replay-<run id>``) that is never committed: the live
  consumer group is never joined, never rebalanced, and its offsets never move.
* Start offsets come from ``offsets_for_times(T1 - warm-up - skew)``; a partition ends at
  the first message whose Kafka timestamp is ``>= T2 + skew`` (exactly what
  ``offsets_for_times(T2 + skew)`` would return) or at its end (``PARTITION_EOF``: a
  broker's ListOffsets end can be too low).  The SDK producer sets the Kafka timestamp to
  the event time; for other producers the skew margin (``BYPASS_REPLAY_SKEW_MS``) absorbs
  the difference.  A broker that answers ``offsets_for_times`` with too small an offset
  (the local Tansu broker answers 0) only makes replay read more.
* Every message is decoded here (``streams.core.envelope``): a :class:`Record` holds the
  event, or the reason it is malformed with the original bytes.
* The partitions are merged by the one ordering code of live and replay
  (:class:`streams.core.order.OrderBuffer` over :class:`~streams.core.order.RunningMax`
  keys), so the order of the records yielded depends only on the partitions' contents.  A
  partition far ahead of the others is paused (flow control) until they catch up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from features import format_duration, format_ms
from streams.core import kafka
from streams.core.envelope import EnvelopeDecoder, InvalidEventError
from streams.core.order import TOP, OrderBuffer, RunningMax
from streams.replay.checkpoint import TP
from streams.replay.options import ReplayError, retention_gap_ms
from streams.settings import Settings

__all__ = ["Record", "ReplayReader", "retention_warning"]

log = logging.getLogger(__name__)

#: the clock of a partition whose first message is malformed (before every real key)
BOTTOM_TS = -(2**62) + 1

#: consume() calls in a row that returned nothing before the reader gives up (1 s each)
IDLE_POLLS = 30


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


class ReplayReader:
    """Reads ``topics`` from per-partition start offsets up to ``stop_ms`` (Kafka timestamp)
    and yields the records in processing order, in chunks."""

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        run_id: str,
        decoder: EnvelopeDecoder,
        *,
        warn: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.decoder = decoder
        self._warn = warn
        group = f"{settings.app_id}-replay-{run_id}"
        if group == settings.app_id:  # pragma: no cover - impossible by construction
            raise ReplayError("replay must not use the live consumer group")
        self.consumer: Consumer = kafka.consumer(
            settings,
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
        self.partitions: list[TP] = []
        self.starts: dict[TP, int] = {}
        self.ends: dict[TP, int] = {}
        self.marks: dict[TP, tuple[int, int]] = {}
        self.finished = False  # True once every partition was read to its end
        self.clock = RunningMax()  # each partition's running maximum of event time

    def close(self) -> None:
        self.consumer.close()

    def eviction_time(self) -> int | None:
        """The event time to evict at: the largest read so far, never beyond the clock (an
        outlier in the future cannot move it; the live workers do the same)."""
        tops = [top for top in (self.clock.peek(*tp) for tp in self.partitions) if top is not None]
        return min(max(tops), time.time_ns() // 1_000_000) if tops else None

    # --- set-up ----------------------------------------------------------------
    def discover(self) -> list[TP]:
        """The partitions of the topics (a clear ReplayError for a missing topic)."""
        kafka.check_reachable(self.settings)  # one clear line within seconds, not a 15 s wait
        try:
            metadata = self.consumer.list_topics(timeout=15)
        except KafkaException as exc:
            raise ReplayError(
                f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc.args[0]}. Is the broker up "
                "(`bypass stack status`) and BYPASS_KAFKA_BOOTSTRAP right?",
            ) from None
        out: list[TP] = []
        for topic in self.topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                known = sorted(t for t in metadata.topics if not t.startswith("__"))
                raise ReplayError(
                    f"topic {topic!r} does not exist on {self.settings.kafka_bootstrap} "
                    f"(topics there: {', '.join(known[:20]) or 'none'}); check --topics / BYPASS_RAW_TOPICS",
                    topic=topic,
                )
            out.extend((topic, p) for p in sorted(meta.partitions))
        self.partitions = out
        return out

    def find_offsets(self, start_ms: int, stop_ms: int) -> None:
        """Start offsets, end estimates (for progress) and (low, high) watermarks."""
        tps = self.partitions
        consumer = self.consumer
        marks = {tp: consumer.get_watermark_offsets(TopicPartition(*tp), timeout=15) for tp in tps}
        starts_q = consumer.offsets_for_times(
            [TopicPartition(t, p, max(start_ms, 0)) for t, p in tps], timeout=15
        )
        ends_q = consumer.offsets_for_times(
            [TopicPartition(t, p, max(stop_ms, 0)) for t, p in tps], timeout=15
        )
        for tp, s_q, e_q in zip(tps, starts_q, ends_q, strict=True):
            low, high = marks[tp]
            start = s_q.offset if s_q.offset >= 0 else high
            self.starts[tp] = max(start, low)
            end = e_q.offset if e_q.offset > self.starts[tp] else high
            self.ends[tp] = max(end, self.starts[tp])
        self.marks = {tp: (int(lo), int(hi)) for tp, (lo, hi) in marks.items()}

    def is_empty(self) -> bool:
        """True when no partition holds any message at all."""
        return all(hi <= lo for lo, hi in self.marks.values())

    # --- reading ---------------------------------------------------------------
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
        clock: RunningMax | None = None,
    ) -> Iterator[list[Record]]:
        """Chunks of at most ``chunk_size`` records, in processing order, from ``positions``.

        The caller advances ``positions`` for the records it processed (for checkpoints);
        :attr:`finished` turns True after the last chunk.  ``should_stop`` is asked after
        every fetch: True ends the iteration early (``finished`` stays False).
        ``stop_offsets``: a partition also ends before this offset (a warm start reads the
        history before a cut); ``clock``: the running maxima to continue from (the default
        starts each partition's afresh).
        """
        consumer = self.consumer
        tps = self.partitions
        order: OrderBuffer[TP, Record] = OrderBuffer(tps)
        clock = self.clock = clock if clock is not None else RunningMax()
        finished: set[TP] = set()

        def finish(tp: TP) -> None:
            finished.add(tp)
            order.advance(tp, TOP)
            consumer.pause([TopicPartition(*tp)])

        consumer.assign([TopicPartition(t, p, positions[(t, p)]) for t, p in tps])
        if stop_offsets is not None:
            for tp in tps:
                if positions[tp] >= stop_offsets.get(tp, positions[tp] + 1):
                    finish(tp)
        paused: set[TP] = set()
        high_mark = max(chunk_size * 2, 1000)
        pending: list[Record] = []
        batch_n = max(chunk_size, 500)
        idle_polls = 0
        decode = self.decoder.decode
        while len(finished) < len(tps) or len(order) or pending:
            if should_stop():
                return
            if len(finished) < len(tps):
                messages = consumer.consume(num_messages=batch_n, timeout=1.0)
                if not messages:
                    idle_polls += 1
                    if idle_polls >= IDLE_POLLS:
                        waiting = ", ".join(f"{t}[{p}]" for t, p in sorted(order.lagging()))
                        raise ReplayError(
                            f"no data from {waiting} for {IDLE_POLLS} s although the partition is not at "
                            "its end; is the broker healthy? Resume later with --resume",
                        )
                else:
                    idle_polls = 0
            else:
                messages = []
            now_ms = time.time_ns() // 1_000_000
            for m in messages:
                err = m.error()
                tp = (str(m.topic()), int(m.partition() or 0))
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if tp in positions and tp not in finished:
                            finish(tp)
                        continue
                    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise ReplayError(
                            f"topic {m.topic()!r} disappeared during the replay", topic=m.topic()
                        )
                    if err.fatal():
                        raise ReplayError(f"Kafka error: {err.str()}")
                    log.warning("Kafka: %s", err.str())
                    continue
                if tp in finished:
                    continue
                if stop_offsets is not None and int(m.offset() or 0) >= stop_offsets.get(tp, 2**62):
                    finish(tp)
                    continue
                ts_type, kafka_ts = m.timestamp()
                kts = kafka_ts if ts_type != 0 and kafka_ts >= 0 else None
                if kts is not None and kts >= stop_ms:
                    finish(tp)
                    self._check_stop_message(m, kts, to_ms, skew_ms)
                    continue
                raw = m.value()
                offset = int(m.offset() or 0)
                try:
                    event = decode(raw, kts, now_ms=now_ms)
                except InvalidEventError as exc:
                    # a malformed message keeps its place, and moves no partition's clock
                    # (the live ingest dead-letters it before it reaches the clock)
                    top = clock.peek(*tp)
                    key = (top if top is not None else BOTTOM_TS, tp[0], tp[1], offset)
                    rec = Record(
                        kts if kts is not None else select_from_ms,
                        tp[0],
                        tp[1],
                        offset,
                        None,
                        timestamp_ms=kts,
                        raw=raw,
                        key=m.key(),
                        headers=_headers(m),
                        reason=exc.reason,
                        message=exc.message,
                    )
                else:
                    key = clock.key(tp[0], tp[1], offset, event["ts"])
                    rec = Record(event["ts"], tp[0], tp[1], offset, event, timestamp_ms=kts)
                    if tp in retention_edge:
                        retention_edge.discard(tp)
                        self._check_retention(tp, select_from_ms, event["ts"])
                order.add(tp, key, rec)
                order.advance(tp, (key[0], tp[0], tp[1], offset + 1))  # nothing smaller can follow
            pending.extend(order.release())
            while len(pending) >= chunk_size:
                yield pending[:chunk_size]
                del pending[:chunk_size]
            if len(finished) == len(tps) and not len(order) and pending:
                yield pending[:]
                pending.clear()
            # flow control: pause partitions far ahead of the others
            for tp in tps:
                if tp in finished:
                    continue
                n = order.held(tp)
                if tp not in paused and n >= high_mark:
                    consumer.pause([TopicPartition(*tp)])
                    paused.add(tp)
                elif tp in paused and n < high_mark // 2:
                    consumer.resume([TopicPartition(*tp)])
                    paused.discard(tp)
        self.finished = True

    # --- warnings ----------------------------------------------------------------
    def _check_stop_message(self, message: Any, kafka_ts: int, to_ms: int, skew_ms: int) -> None:
        """A partition ends at the first message stamped ``>= T2 + skew``; if that message's
        own event time is still inside the range, the producer's timestamps do not follow
        event time and later in-range events may be missed: say so."""
        try:
            event_ts = int(self.decoder.decode(message.value())["ts"])
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
        warning = retention_warning(tp, select_from, earliest_ms)
        if warning:
            self._warn(warning)


def _headers(message: Message) -> list[tuple[str, bytes]]:
    raw = message.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v) for k, v in items if isinstance(v, bytes)]


def retention_warning(tp: TP, select_from: int, earliest_ms: int) -> str | None:
    """What to say when the earliest event a partition still holds is after the warm-up start."""
    gap = retention_gap_ms(select_from, earliest_ms)
    if not gap:
        return None
    return (
        f"{tp[0]}[{tp[1]}]: retention no longer holds the warm-up range: the earliest "
        f"available event is at {format_ms(earliest_ms)}, the warm-up starts at "
        f"{format_ms(select_from)}: {format_duration(gap)} of state is missing, so windowed "
        "features near T1 may be lower than live; `--source archive` reads the event archive "
        "in ClickHouse (risk_events) instead, beyond Kafka's retention"
    )
