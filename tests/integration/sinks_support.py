"""Helpers for the sink tests: produce contract records, run writers, wait for rows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.core import kafka
from streams.settings import Settings


def sink_settings(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sink_batch_ms": 200,
        "sink_session_timeout_ms": 2000,
        "sink_retry_max_ms": 1000,
        "sink_batch_size": 1000,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


def produce(settings: Settings, topic: str, records: Iterable[dict[str, Any] | bytes]) -> int:
    kafka.ensure_topics(settings, [topic])
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    n = 0
    for rec in records:
        value = rec if isinstance(rec, bytes) else orjson.dumps(rec)
        key = None if isinstance(rec, bytes) else f"{rec.get('entity')}:{rec.get('key')}".encode()
        producer.produce(topic, value, key=key)
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0
    return n


def wait_for(fn: Callable[[], Any], expected: Any, timeout: float = 60.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:
            last = exc
        if last == expected:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {expected!r}; last value {last!r}")


@dataclass
class ThreadedRunner:
    runner: Any
    stop: threading.Event
    thread: threading.Thread

    def close(self, timeout: float = 30) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "sink runner did not stop"


def start_in_thread(runner: Any) -> ThreadedRunner:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return ThreadedRunner(runner, stop, thread)


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment running ``bypass`` against exactly ``settings``."""
    env = dict(os.environ)
    env.update(settings.to_env())
    return env


def bypass(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams", *args],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_all(settings: Settings, topic: str, timeout: float = 10) -> list[Any]:
    """Every message of ``topic`` from the start (assign, no group)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "reader", "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10)
    parts = list(meta.topics[topic].partitions)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while sum(ends.values()) > len(out) and time.monotonic() < deadline:
        out.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
    consumer.close()
    return out
