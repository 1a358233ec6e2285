"""Batching and commit discipline of SinkRunner, with in-memory stand-ins (no server)."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import TopicPartition

from sinks.base import RecordError, SinkBackpressureError, SourceRecord
from sinks.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_REASON, H_SINK, H_TIMESTAMP, H_TOPIC
from sinks.runner import SinkRunner


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return self._v

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self._o)

    def headers(self) -> None:
        return None


class _Consumer:
    """Hands out the queued messages, ``per_call`` at a time; records commits and pauses."""

    def __init__(self, msgs: list[_Msg], per_call: int = 1000) -> None:
        self.msgs = msgs
        self.per_call = per_call
        self.commits: list[list[tuple[str, int, int]]] = []
        self.paused = 0
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        on_assign(self, [])

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        n = min(num_messages, self.per_call)
        out, self.msgs = self.msgs[:n], self.msgs[n:]
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0)]

    def pause(self, tps: list[Any]) -> None:
        self.paused += 1

    def resume(self, tps: list[Any]) -> None:
        pass

    def poll(self, timeout: float) -> None:
        return None

    def position(self, tps: list[Any]) -> list[Any]:
        return tps

    def get_watermark_offsets(self, tp: Any, cached: bool = True) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        self.closed = True


class _Sink:
    def __init__(self, fail_times: int = 0) -> None:
        self.buf: list[SourceRecord] = []
        self.written: list[list[int]] = []
        self.fail_times = fail_times

    def add(self, record: SourceRecord) -> None:
        if record.value == b"bad":
            raise RecordError("bad record: no good", reason="bad_test")
        self.buf.append(record)

    def flush(self) -> int:
        if self.fail_times:
            self.fail_times -= 1
            raise SinkBackpressureError("down", retry_after=0.0)
        self.written.append([r.offset for r in self.buf])
        n, self.buf = len(self.buf), []
        return n

    def pending(self) -> int:
        return len(self.buf)

    def clear(self) -> None:
        self.buf = []


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []

    def produce(self, topic: str, value: bytes | None, key: Any, headers: Any, on_delivery: Any) -> None:
        self.sent.append((topic, value, dict(headers)))
        on_delivery(None, None)

    def flush(self, timeout: float = 0) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def _runner(consumer: _Consumer, sink: _Sink, producer: _Producer, **kw: Any) -> SinkRunner:
    args: dict[str, Any] = {"batch_size": 10, "batch_ms": 1000, "retry_base_ms": 1, "retry_max_ms": 2}
    args.update(kw)
    return SinkRunner(
        consumer, sink, ["t"], name="test", dlq_producer=producer, dlq_topic="dlq", clock=_Clock(), **args
    )


def _msgs(n: int, bad: set[int] | None = None) -> list[_Msg]:
    return [_Msg("t", 0, i, b"bad" if i in (bad or set()) else b"{}") for i in range(n)]


def test_batches_by_size_and_commits_next_offset_after_each_flush() -> None:
    consumer, sink, producer = _Consumer(_msgs(25)), _Sink(), _Producer()
    stats = _runner(consumer, sink, producer).run(idle_exit_s=0.05)
    assert [len(w) for w in sink.written] == [10, 10, 5]
    assert [c[-1][2] for c in consumer.commits] == [10, 20, 25]
    assert stats.written == 25 and consumer.closed


def test_partial_batch_flushes_when_old_enough() -> None:
    consumer, sink, producer = _Consumer(_msgs(3)), _Sink(), _Producer()
    runner = _runner(consumer, sink, producer, batch_size=1000, batch_ms=5)
    runner.run(idle_exit_s=1.0)
    assert sink.written == [[0, 1, 2]]
    assert consumer.commits == [[("t", 0, 3)]]


def test_failed_flush_is_retried_and_nothing_is_committed_before_it_succeeds() -> None:
    consumer, sink, producer = _Consumer(_msgs(10)), _Sink(fail_times=3), _Producer()
    stats = _runner(consumer, sink, producer).run(idle_exit_s=0.05)
    assert stats.failed_flushes == 3 and consumer.paused == 1
    assert sink.written == [list(range(10))]
    assert consumer.commits == [[("t", 0, 10)]]


def test_stop_during_retries_commits_nothing() -> None:
    consumer, sink, producer = _Consumer(_msgs(10)), _Sink(fail_times=10**9), _Producer()
    stop = threading.Event()
    runner = _runner(consumer, sink, producer, retry_base_ms=50, retry_max_ms=50)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    runner.run(stop)
    timer.cancel()
    assert consumer.commits == [] and sink.written == []


def test_bad_record_goes_to_dlq_with_reason_and_its_offset_is_committed() -> None:
    consumer, sink, producer = _Consumer(_msgs(5, bad={2})), _Sink(), _Producer()
    stats = _runner(consumer, sink, producer).run(idle_exit_s=0.05)
    assert stats.dead_lettered == 1
    topic, value, headers = producer.sent[0]
    assert topic == "dlq" and value == b"bad"
    # the worker's header contract (sinks.dlq): a code, the text, dotted source coordinates
    assert headers[H_REASON] == b"bad_test" and headers[H_ERROR] == b"bad record: no good"
    assert (headers[H_TOPIC], headers[H_PARTITION], headers[H_OFFSET]) == (b"t", b"0", b"2")
    assert headers[H_TIMESTAMP] == b"1002" and headers[H_SINK] == b"test"
    assert not any(name.startswith("bypass.source_") for name in headers)
    assert sink.written == [[0, 1, 3, 4]]
    assert consumer.commits[-1] == [("t", 0, 5)]


class _PipelinedSink(_Sink):
    """take()/write(): the runner writes one batch in a thread while it reads the next."""

    def take(self) -> list[SourceRecord]:
        taken, self.buf = self.buf, []
        return taken

    def write(self, batch: list[SourceRecord]) -> int:
        if self.fail_times:
            self.fail_times -= 1
            raise SinkBackpressureError("down", retry_after=0.0)
        self.written.append([r.offset for r in batch])
        n = len(batch)
        batch.clear()
        return n


def test_pipelined_sink_commits_every_batch_in_order_after_its_write() -> None:
    consumer, sink, producer = _Consumer(_msgs(35), per_call=5), _PipelinedSink(), _Producer()
    runner = _runner(consumer, sink, producer)
    assert runner.pipelined
    stats = runner.run(idle_exit_s=0.05)
    assert [w[-1] for w in sink.written] == [9, 19, 29, 34]
    assert [c[-1][2] for c in consumer.commits] == [10, 20, 30, 35]
    assert stats.written == 35


def test_pipelined_failed_write_is_retried_before_its_commit() -> None:
    consumer, sink, producer = _Consumer(_msgs(20), per_call=5), _PipelinedSink(fail_times=2), _Producer()
    stats = _runner(consumer, sink, producer).run(idle_exit_s=0.05)
    assert sorted(o for w in sink.written for o in w) == list(range(20))
    assert [c[-1][2] for c in consumer.commits] == [10, 20]
    assert stats.failed_flushes >= 2


class _ExplodingSink(_Sink):
    """A sink whose conversion fails on one record in a way nobody foresaw."""

    def add(self, record: SourceRecord) -> None:
        if record.value == b"boom":
            raise TypeError("Recursion limit reached")
        super().add(record)


def test_a_record_that_breaks_conversion_is_dead_lettered_and_the_sink_goes_on() -> None:
    """Before: a TypeError from one hit record stopped `bypass sink clickhouse` on every restart."""
    msgs = _msgs(5)
    msgs[2] = _Msg("t", 0, 2, b"boom")
    consumer, sink, producer = _Consumer(msgs), _ExplodingSink(), _Producer()
    stats = _runner(consumer, sink, producer).run(idle_exit_s=0.05)
    assert stats.dead_lettered == 1
    topic, value, headers = producer.sent[0]
    assert (topic, value, headers[H_REASON]) == ("dlq", b"boom", b"unconvertible")
    assert b"Recursion limit" in headers[H_ERROR]
    assert sink.written == [[0, 1, 3, 4]]
    assert consumer.commits[-1] == [("t", 0, 5)]
