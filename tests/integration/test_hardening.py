"""Hostile input and dependency outages on the real stack: one bad message costs only itself,
an outlier time poisons nothing, and a Redis outage delays labels without losing any."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import FEATURES, Worker, publish, read_topic, values

from sinks.redis_lists import add as add_to_list
from sinks.redis_mirror import redis_client
from streams.core import kafka
from streams.producer import EventProducer
from streams.settings import Settings

MIN = 60_000

RULES = """
version: "hardening-1"
decisions: {reject: 80, review: 50}
rules:
  - id: seen_login
    entity: user
    when: property_views_total >= 0
    events: [login]
    score: 1
    label: seen
  - id: listed_device
    entity: device
    when: in_list("bad_devices", event.device_id)
    score: 80
    label: listed_device
"""


@pytest.fixture
def hsettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 10_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "order_idle_ms": 500,
        }
    )


def login(i: int, ts: int, user: str = "u-h", device: str = "d-ok") -> dict[str, Any]:
    return {"event_id": f"h-{user}-{i}", "type": "login", "ts": ts, "user_id": user, "device_id": device}


def hits_of(settings: Settings, rule: str, n: int, timeout_s: float = 60) -> set[str]:
    messages = read_topic(
        settings,
        settings.hits_topic,
        lambda m: sum(orjson.loads(x.value())["rule_id"] == rule for x in m) >= n,
        timeout_s=timeout_s,
        settle_s=2,
    )
    return {h["event_id"] for h in values(messages) if h["rule_id"] == rule}


@pytest.mark.slow
def test_a_deeply_nested_event_and_a_far_future_time_cost_only_themselves(
    hsettings: Settings, tmp_path: Path
) -> None:
    """Before: the ~700-byte nested event crashed the ingest agent and the 10 valid events of
    its batch gave no hits, ever; the year-9999 event made every later event of its user late."""
    s = hsettings
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [raw, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, RULES, tmp_path).returncode == 0
    now = time.time_ns() // 1_000_000
    t = now - 30 * MIN
    before = [login(i, t + i * 1000) for i in range(5)]
    after = [login(i, t + 10_000 + i * 1000) for i in range(5, 10)]
    deep = (
        b'{"event_id":"deep1","type":"login","ts":'
        + str(t + 6_000).encode()
        + b',"user_id":"u-h","attrs":{"x":'
        + b"[" * 300
        + b"]" * 300
        + b"}}"
    )
    future = orjson.dumps(
        {"event_id": "atk-1", "type": "login", "ts": 253402300799999, "user_id": "u-h", "device_id": "d-ok"}
    )
    later = login(99, t + 60_000)
    # a valid event whose amount is text: the sum skips it, and says so in a metric
    text_amount = {
        "event_id": "amt-1",
        "type": "order",
        "ts": t + 20_000,
        "user_id": "u-h",
        "attrs": {"amount": "50000"},
    }
    # one backlog, so the bad messages share an ingest batch with the good ones
    with EventProducer(s, topic=raw) as producer:
        producer.send_many(before)
    plain = kafka.producer(s)
    plain.produce(raw, deep, key=b"u-h")
    with EventProducer(s, topic=raw) as producer:
        producer.send_many(after)
    plain.produce(raw, future, key=b"u-h")  # a client stamping the wall clock
    plain.produce(raw, future, key=b"u-h", timestamp=253402300799999)  # one stamping the event time
    assert plain.flush(10) == 0
    with EventProducer(s, topic=raw) as producer:
        producer.send_many([text_amount, later])
    worker = Worker(s, tmp_path / "worker.log")
    try:
        got = hits_of(s, "seen_login", 11)
        dlq = read_topic(s, s.dlq_topic, lambda m: len(m) >= 3, timeout_s=30, settle_s=1)
        skipped = worker.metric("bypass_feature_values_skipped_total", 'feature="order_amount_1h"')
    finally:
        worker.stop()
    assert skipped == 1.0
    assert got == {e["event_id"] for e in [*before, *after, later]}, worker.text()[-3000:]
    reasons = sorted(dict(m.headers())["bypass.reason"].decode() for m in dlq)
    assert reasons == ["too_deep", "ts_out_of_bounds", "ts_out_of_bounds"]
    assert {m.value() for m in dlq} == {deep, future}  # the original bytes


@pytest.mark.slow
def test_redis_down_delays_labels_and_loses_none(stack: Any, hsettings: Settings, tmp_path: Path) -> None:
    """Before: with Redis unreachable every event of an entity kind with an in_list rule went
    to the DLQ as processing_error, and no state was written."""
    assert stack.restartable("redis"), "this test needs the local stack (its Redis is stopped)"
    s = hsettings
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [raw, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, RULES, tmp_path).returncode == 0
    add_to_list(redis_client(s.redis_url), s.redis_key_prefix, "bad_devices", ["d-bad"])
    now = time.time_ns() // 1_000_000
    worker = Worker(s, tmp_path / "worker.log")
    try:
        with EventProducer(s, topic=raw) as producer:
            producer.send_many([login(0, now - 10 * MIN, user="u-warm", device="d-bad")])
        assert hits_of(s, "listed_device", 1) == {"h-u-warm-0"}  # running, lists answered
        stack.stop_part("redis")
        try:
            events = [login(i, now - 9 * MIN + i * 1000, user=f"u{i % 3}", device="d-bad") for i in range(6)]
            events += [login(i, now - 8 * MIN + i * 1000, user=f"u{i % 3}") for i in range(6, 10)]
            with EventProducer(s, topic=raw) as producer:
                producer.send_many(events)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                worker.metric("bypass_dependency_retries_total", 'entity="device"') or 0
            ):
                time.sleep(0.5)
            assert (worker.metric("bypass_dependency_retries_total", 'entity="device"') or 0) > 0
            assert worker.metric("bypass_dependency_waiting") == 1.0
            # visible in health: degraded, waiting on the device kind's dependency (still 200:
            # shorter than BYPASS_HEALTH_MAX_WAIT_MS)
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=5) as r:
                health = orjson.loads(r.read())
            assert health["status"] == "degraded" and health["ready"], health
            assert health["dependency"]["waiting"] and "device" in health["dependency"]["entity"], health
            time.sleep(3)
            assert read_topic(s, s.dlq_topic, lambda m: True, timeout_s=5, settle_s=0) == []
            listed = hits_of(s, "listed_device", 1, timeout_s=3)
            assert listed == {"h-u-warm-0"}  # nothing new while Redis is down
        finally:
            stack.start_part("redis")
        listed = hits_of(s, "listed_device", 7, timeout_s=90)
        seen = hits_of(s, "seen_login", 11, timeout_s=30)
        assert worker.metric("bypass_dependency_waiting") == 0.0
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=5) as r:
            assert orjson.loads(r.read())["dependency"]["waiting"] is False
    finally:
        worker.stop()
    assert listed == {"h-u-warm-0", *(e["event_id"] for e in events if e["device_id"] == "d-bad")}
    assert seen == {"h-u-warm-0", *(e["event_id"] for e in events)}
    assert read_topic(s, s.dlq_topic, lambda m: True, timeout_s=5, settle_s=0) == []
    assert "retrying" in worker.text()
