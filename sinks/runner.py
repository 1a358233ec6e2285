"""Feed a sink from Kafka: consume, ``add()``, ``flush()``, then commit.

The loop (one thread, one confluent-kafka consumer with manual commits)::

    consume up to the batch size ──▶ sink.add(record)
                                      └─ RecordError ──▶ DLQ (original bytes + the headers
                                                         of sinks.dlq: reason code, error text)
    batch full or old enough ──▶ DLQ delivered? ──▶ sink.flush() ──▶ commit offsets
                                                     └─ SinkBackpressureError: pause the
                                                        partitions, back off, retry the same
                                                        batch (lag grows, nothing dropped)

Offsets are committed only after the sink accepted the batch; a crash between the
two re-delivers the batch, which the idempotent sink absorbs. A rebalance while a
batch is pending drops the batch from memory (eager rebalance: every partition is
revoked, and each new owner resumes from the committed offsets).

While it runs, the runner raises the young-generation threshold of Python's cyclic GC
(``GC_YOUNG_THRESHOLD`` allocations instead of 700): every consumed batch allocates a
few container objects per record (the Kafka messages, decoded JSON), and with the
default threshold the messages still alive mid-batch were promoted to the oldest
generation, triggering a full collection every few batches - measured at ~30% of the
ClickHouse writer's CPU. Garbage cycles are still collected, only in larger steps.

Progress is logged every ``progress_every_s`` only when something changed (written, dead
letters, failed flushes, lag): an idle sink stays quiet.  With a :class:`SinkMetrics` the
runner also keeps Prometheus metrics (``bypass sink ...`` serves them on
BYPASS_SINK_METRICS_PORT)::

    bypass_sink_consumed_total{sink}           records read
    bypass_sink_written_total{sink}            records the sink accepted (flushed)
    bypass_sink_dead_letters_total{sink}       records sent to the DLQ
    bypass_sink_failed_flushes_total{sink}     flushes refused (each one backs off)
    bypass_sink_backoff_seconds{sink}          current back-off before the next retry (0: none)
    bypass_sink_lag{sink}                      records not read yet on its partitions
    bypass_sink_last_flush_timestamp_seconds{sink}  unix time of the last accepted flush
"""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

from sinks.base import PipelinedSink, RecordError, Sink, SinkBackpressureError, SourceRecord
from sinks.dlq import dlq_headers

log = logging.getLogger(__name__)


class SinkMetrics:
    """Prometheus metrics of one sink runner (its own registry), every series at 0 from the start."""

    def __init__(self, sink: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        label = {"sink": sink}
        self.consumed = Counter("bypass_sink_consumed", "records read", ["sink"], registry=r).labels(**label)
        self.written = Counter(
            "bypass_sink_written", "records the sink accepted", ["sink"], registry=r
        ).labels(**label)
        self.dead_letters = Counter(
            "bypass_sink_dead_letters", "records sent to the DLQ", ["sink"], registry=r
        ).labels(**label)
        self.failed_flushes = Counter(
            "bypass_sink_failed_flushes", "flushes refused (each backs off)", ["sink"], registry=r
        ).labels(**label)
        self.backoff = Gauge(
            "bypass_sink_backoff_seconds", "current back-off before the next retry", ["sink"], registry=r
        ).labels(**label)
        self.lag = Gauge(
            "bypass_sink_lag", "records not read yet on the sink's partitions", ["sink"], registry=r
        ).labels(**label)
        self.last_flush = Gauge(
            "bypass_sink_last_flush_timestamp_seconds",
            "unix time of the last accepted flush",
            ["sink"],
            registry=r,
        ).labels(**label)


GC_YOUNG_THRESHOLD = 50_000

#: Kafka message headers as confluent-kafka hands them over (a list of pairs when consumed).
Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]


@dataclass
class RunnerStats:
    consumed: int = 0
    written: int = 0
    dead_lettered: int = 0
    flushes: int = 0
    failed_flushes: int = 0
    commits: int = 0
    lag: int | None = None


@dataclass
class _InFlight:
    writer: PipelinedSink
    batches: Any  # the PipelinedSink's own batch type
    offsets: dict[tuple[str, int], int]
    thread: threading.Thread | None = None
    written: int = 0
    error: SinkBackpressureError | None = None


class SinkRunner:
    """Runs ``sink`` from ``consumer`` (already configured with its group and manual commits)."""

    def __init__(
        self,
        consumer: Consumer,
        sink: Sink,
        topics: list[str],
        *,
        name: str,
        dlq_producer: Producer,
        dlq_topic: str,
        batch_size: int,
        batch_ms: int,
        retry_max_ms: int = 30_000,
        retry_base_ms: int = 200,
        progress_every_s: float = 10.0,
        crash_after_flushes: int | None = None,
        from_beginning: bool = False,
        clock: Callable[[], float] = time.monotonic,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.sink = sink
        self.topics = topics
        self.name = name
        self.dlq_producer = dlq_producer
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.retry_max_ms = retry_max_ms
        self.retry_base_ms = retry_base_ms
        self.progress_every_s = progress_every_s
        self.crash_after_flushes = crash_after_flushes
        self.from_beginning = from_beginning
        self._rewound: set[tuple[str, int]] = set()
        self.clock = clock
        self.stats = RunnerStats()
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._batch_started: float | None = None
        self._dlq_errors: list[str] = []
        self._revoked = False
        self._assigned_at: float | None = None
        self._inflight: _InFlight | None = None
        # a sink with take()/write() is written in a thread while the next batch is read
        self._writer: PipelinedSink | None = sink if isinstance(sink, PipelinedSink) else None
        self.pipelined = self._writer is not None
        self._last_progress = clock()
        self._last_written = 0
        self._last_logged: tuple[int, ...] | None = None
        self.metrics = metrics

    # --- rebalance ----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = self.clock()
        if self.from_beginning:  # re-apply everything once per partition (e.g. Redis lost its data)
            fresh = [p for p in partitions if (p.topic, p.partition) not in self._rewound]
            if fresh:
                for p in fresh:
                    p.offset = OFFSET_BEGINNING
                    self._rewound.add((p.topic, p.partition))
                consumer.assign(partitions)
        log.info("%s: assigned %s", self.name, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        flight, self._inflight = self._inflight, None
        if flight is not None and flight.thread is not None:
            flight.thread.join()
            if flight.error is None:
                self._commit(flight.offsets)
            else:
                log.warning("%s: revoke with a failed batch in flight; it will be re-read", self.name)
        if self.sink.pending() or self._next_offsets:
            try:
                self._flush_once()
                self._commit()
            except Exception as exc:
                log.warning("%s: revoke with an unflushed batch (%s); it will be re-read", self.name, exc)
            self.sink.clear()
            self._next_offsets.clear()
            self._batch_started = None
        self._revoked = True

    # --- dead letters -------------------------------------------------------
    def _on_dlq_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._dlq_errors.append(str(err))

    def dead_letter(self, record: SourceRecord, error: RecordError, headers: Headers | None) -> None:
        """The record's original bytes to the DLQ, its own ``headers`` followed by those of
        :mod:`sinks.dlq` (``bypass.reason`` the error's code, ``bypass.error`` its message,
        ``bypass.sink``)."""
        hdrs: list[tuple[str, str | bytes | None]] = (
            list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        )
        hdrs += dlq_headers(
            error.reason,
            error.message,
            record.topic,
            record.partition,
            record.offset,
            timestamp_ms=record.timestamp_ms,
            sink=self.name,
        )
        while True:
            try:
                self.dlq_producer.produce(
                    self.dlq_topic,
                    value=record.value,
                    key=record.key,
                    headers=hdrs,
                    on_delivery=self._on_dlq_delivery,
                )
                break
            except BufferError:
                self.dlq_producer.poll(0.1)
        self.stats.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.dead_letters.inc()
        log.warning(
            "%s: %s[%d]@%d -> %s: %s (%s)",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            self.dlq_topic,
            error.reason,
            error.message,
        )

    # --- flushing -----------------------------------------------------------
    def _flush_once(self, write: Callable[[], int] | None = None) -> int:
        if self.stats.dead_lettered:
            remaining = self.dlq_producer.flush(10)
            if remaining or self._dlq_errors:
                errors, self._dlq_errors = self._dlq_errors, []
                raise SinkBackpressureError(
                    f"dead letters not delivered to {self.dlq_topic}: {errors or 'timeout'}", retry_after=1.0
                )
        written = self.sink.flush() if write is None else write()
        take_rejected = getattr(self.sink, "take_rejected", None)
        rejected = take_rejected() if take_rejected is not None else []
        if rejected:  # rows the target refused for their data: dead-letter them before the commit
            for record, error in rejected:
                self.dead_letter(record, error, None)
            if self.dlq_producer.flush(10) or self._dlq_errors:
                errors, self._dlq_errors = self._dlq_errors, []
                raise SinkBackpressureError(
                    f"dead letters not delivered to {self.dlq_topic}: {errors or 'timeout'}", retry_after=1.0
                )
        self.stats.flushes += 1
        self.stats.written += written
        if self.metrics is not None:
            self.metrics.written.inc(written)
            self.metrics.backoff.set(0)
            self.metrics.last_flush.set(time.time())
        if self.crash_after_flushes is not None and self.stats.flushes >= self.crash_after_flushes:
            log.error(
                "%s: test hook: exiting after flush %d, before the commit", self.name, self.stats.flushes
            )
            os._exit(17)
        return written

    def _commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        if offsets is None:
            offsets, self._next_offsets = self._next_offsets, {}
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # the rows are in the sink already; a re-read batch is absorbed by idempotency
            log.warning("%s: commit failed (%s); the batch may be re-read", self.name, exc)

    def flush_and_commit(
        self,
        stop: threading.Event | None = None,
        write: Callable[[], int] | None = None,
        offsets: dict[tuple[str, int], int] | None = None,
    ) -> bool:
        """Flush the pending batch (or run ``write``), retrying with back-off while the sink
        refuses; then commit (``offsets``, default the current batch's).

        Returns False when stopped (or revoked) before the batch was written."""
        attempt = 0
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    self._flush_once(write)
                    break
                except SinkBackpressureError as exc:
                    self.stats.failed_flushes += 1
                    attempt += 1
                    if not paused:
                        paused = list(self.consumer.assignment())
                        if paused:
                            self.consumer.pause(paused)
                    delay_ms = min(self.retry_max_ms, self.retry_base_ms * 2 ** min(attempt, 20))
                    delay_ms = max(delay_ms * (0.5 + random.random() / 2), exc.retry_after * 1000 / 4)  # noqa: S311
                    if self.metrics is not None:
                        self.metrics.failed_flushes.inc()
                        self.metrics.backoff.set(delay_ms / 1000)
                    log.warning(
                        "%s: flush failed (attempt %d), retrying in %.1fs: %s",
                        self.name,
                        attempt,
                        delay_ms / 1000,
                        exc.message,
                    )
                    deadline = self.clock() + delay_ms / 1000
                    self._revoked = False
                    while self.clock() < deadline:
                        if stop is not None and stop.is_set():
                            return False
                        self.consumer.poll(0.1)  # keeps the group membership; paused -> no records
                        if self._revoked:
                            return False
        finally:
            if paused and not self._revoked:
                try:
                    self.consumer.resume(paused)
                except KafkaException:
                    pass
        self._commit(offsets)
        if offsets is None:
            self._batch_started = None
        return True

    # --- pipelining: one batch written in a thread while the next one is read ---------
    def _start_inflight(self, writer: PipelinedSink) -> None:
        batches = writer.take()
        flight = _InFlight(writer=writer, batches=batches, offsets=dict(self._next_offsets))
        self._next_offsets.clear()
        self._batch_started = None

        def work() -> None:
            try:
                flight.written = writer.write(batches)
            except SinkBackpressureError as exc:
                flight.error = exc

        flight.thread = threading.Thread(target=work, name=f"{self.name}-write", daemon=True)
        self._inflight = flight
        flight.thread.start()

    def _finish_inflight(self, stop: threading.Event | None = None) -> bool:
        """Wait for the batch in flight; retry it while the sink refuses; commit its offsets."""
        flight, self._inflight = self._inflight, None
        if flight is None:
            return True
        if flight.thread is not None:
            flight.thread.join()
        if flight.error is None:
            done = flight.written
            return self.flush_and_commit(stop, write=lambda: done, offsets=flight.offsets)
        log.warning("%s: %s", self.name, flight.error.message)
        self.stats.failed_flushes += 1
        if self.metrics is not None:
            self.metrics.failed_flushes.inc()
        return self.flush_and_commit(
            stop,
            write=lambda: flight.writer.write(flight.batches),
            offsets=flight.offsets,
        )

    # --- main loop ----------------------------------------------------------
    def _progress(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_progress < self.progress_every_s:
            return
        lag = 0
        try:  # cached watermarks (from the last fetch responses): no broker round trip
            assignment = self.consumer.assignment()
            positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assignment)}
            for tp in assignment:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    continue
                pos = positions.get((tp.topic, tp.partition), -1)
                lag += max(0, high - (pos if pos is not None and pos >= 0 else max(low, 0)))
        except KafkaException:
            pass
        self.stats.lag = lag
        if self.metrics is not None:
            self.metrics.lag.set(lag)
        rate = (self.stats.written - self._last_written) / max(1e-9, now - self._last_progress)
        state = (self.stats.written, self.stats.dead_lettered, self.stats.failed_flushes, lag)
        quiet = not force and state == self._last_logged
        self._last_logged = state
        self._last_progress = now
        self._last_written = self.stats.written
        if quiet:  # nothing changed since the last line: an idle sink says nothing
            return
        log.info(
            "%s: written %d (%.0f/s), dead letters %d, flushes %d (failed %d), lag %d",
            self.name,
            self.stats.written,
            rate,
            self.stats.dead_lettered,
            self.stats.flushes,
            self.stats.failed_flushes,
            lag,
        )

    def run(self, stop: threading.Event | None = None, *, idle_exit_s: float | None = None) -> RunnerStats:
        """Run until ``stop`` is set (or, with ``idle_exit_s``, until nothing came for that long)."""
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        last_record = self.clock()
        gc_before = gc.get_threshold()
        if gc_before[0] < GC_YOUNG_THRESHOLD:
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc_before[1:])
        try:
            while stop is None or not stop.is_set():
                want = max(1, min(10_000, self.batch_size - self.sink.pending()))
                msgs = self.consumer.consume(num_messages=want, timeout=0.1)
                consumed_before = self.stats.consumed
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("%s: consumer error: %s", self.name, err)
                        continue
                    self._handle(msg)
                if self.metrics is not None and self.stats.consumed != consumed_before:
                    self.metrics.consumed.inc(self.stats.consumed - consumed_before)
                if msgs:
                    last_record = self.clock()
                elif self._assigned_at is None:
                    last_record = self.clock()  # the idle clock starts once partitions are assigned
                flight = self._inflight
                if flight is not None and flight.thread is not None and not flight.thread.is_alive():
                    self._finish_inflight(stop)
                if self._next_offsets:
                    age_ms = (self.clock() - (self._batch_started or self.clock())) * 1000
                    if self.sink.pending() >= self.batch_size or age_ms >= self.batch_ms:
                        if self._writer is not None:
                            self._finish_inflight(stop)  # at most one batch in flight, commits in order
                            if self._next_offsets:
                                self._start_inflight(self._writer)
                        else:
                            self.flush_and_commit(stop)
                self._progress()
                if (
                    idle_exit_s is not None
                    and self.clock() - last_record > idle_exit_s
                    and not self._next_offsets
                    and self._inflight is None
                ):
                    break
            self._finish_inflight(stop)
            if self._next_offsets:
                self.flush_and_commit(stop)
        finally:
            if gc.get_threshold()[0] == GC_YOUNG_THRESHOLD != gc_before[0]:
                gc.set_threshold(*gc_before)
            self._progress(force=True)
            self.dlq_producer.flush(10)
            self.consumer.close()
        return self.stats

    def _handle(self, msg: Message) -> None:
        ts_type, ts = msg.timestamp()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:  # only error events lack them
            log.warning("%s: consumed a message without coordinates; skipped", self.name)
            return
        # positional: a NamedTuple built with keywords costs about twice as much (once per record)
        record = SourceRecord(topic, partition, offset, msg.key(), msg.value(), ts if ts_type else None)
        self.stats.consumed += 1
        if self._batch_started is None:
            self._batch_started = self.clock()
        try:
            self.sink.add(record)
        except RecordError as exc:
            self.dead_letter(record, exc, msg.headers())
        except Exception as exc:  # no record may stop a sink: whatever else fails, it is this record's
            log.exception("%s: record %s[%s]@%s could not be converted", self.name, topic, partition, offset)
            failure = RecordError(f"{type(exc).__name__}: {exc}", reason="unconvertible")
            self.dead_letter(record, failure, msg.headers())
        self._next_offsets[(topic, partition)] = offset + 1
