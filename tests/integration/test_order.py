"""Event-time order across partitions, on the real stack: device and IP labels that do not
depend on consumer timing.

A backlog of about 9,000 events of users, shared devices and IPs (some late inside their
partition, some redelivered) sits on 4 raw partitions; one partition is produced only
after the worker started (uneven lag).  The live worker - alone, as two workers joining
mid-backlog, or killed with SIGKILL mid-backlog and restarted - must give exactly the hits
of ``bypass replay`` and of an offline run of the batch step over the stream sorted into
the processing order (streams.core.order), hit id by hit id.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import FEATURES, Worker, publish, read_topic

from streams.core import kafka
from streams.core.assembly import build_processor, load_for_spec, load_spec
from streams.core.envelope import EnvelopeDecoder
from streams.core.order import RunningMax, SourceEvent
from streams.core.step import BatchStep, MemoryStore
from streams.replay import Replay, ReplayOptions, iter_hits_jsonl
from streams.settings import Settings

T0 = 1_763_856_000_000
SEC = 1_000
MIN = 60 * SEC
PARTITIONS = 4

RULES = """
version: "order-1"
decisions: {reject: 80, review: 50}
rules:
  - id: device_farm
    entity: device
    when: device_users_7d >= 4
    score: 70
    label: device_farm
    action: blacklist
    ttl: 7d
  - id: credential_stuffing
    entity: ip
    when: ip_failed_users_1h >= 3
    events: [login_failed]
    score: 60
    label: credential_stuffing
  - id: churn
    entity: user
    when: phone_changes_30d >= 2
    score: 40
    label: churn
"""


def backlog(seed: int = 5, n: int = 9_000) -> dict[int, list[dict[str, Any]]]:
    """Per raw partition (user index % 4), the events in produce order."""
    rnd = random.Random(seed)
    users = [f"u{i:03d}" for i in range(400)]
    devices = [f"d{i:02d}" for i in range(60)]
    ips = [f"10.0.0.{i}" for i in range(20)]
    owned = {u: rnd.sample(devices, rnd.randint(1, 2)) for u in users}
    kinds = ["login"] * 6 + ["login_failed"] * 2 + ["property_view", "phone_change", "order", "contract_sign"]
    out: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    ts = T0
    for i in range(n):
        ts += rnd.randint(0, 5 * SEC)
        u = rnd.randrange(len(users))
        kind = rnd.choice(kinds)
        event: dict[str, Any] = {
            "event_id": f"o{seed}-{i}",
            "type": kind,
            "ts": ts,
            "user_id": users[u],
            "device_id": rnd.choice(owned[users[u]]),
            "ip": rnd.choice(ips),
        }
        if kind == "phone_change":
            event["phone"] = f"+86138{rnd.randrange(10**8):08d}"
        if kind == "order":
            event["attrs"] = {"amount": rnd.randint(1, 500)}
        if rnd.random() < 0.03:  # late inside its partition (within the allowed lateness)
            event["ts"] = ts - rnd.randint(1, 20) * MIN
        part = u % PARTITIONS
        out[part].append(event)
        if rnd.random() < 0.01:  # redelivered a little later by its producer
            out[part].append(dict(event))
    return out


def produce(settings: Settings, topic: str, events_by_partition: dict[int, list[dict[str, Any]]]) -> None:
    producer = kafka.producer(settings)
    for partition, events in events_by_partition.items():
        for event in events:
            producer.produce(
                topic,
                orjson.dumps(event),
                key=event["user_id"].encode(),
                partition=partition,
                timestamp=max(event["ts"], 0),
            )
            producer.poll(0)
    assert producer.flush(30) == 0


@pytest.fixture
def osettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": PARTITIONS,
            "consumer_session_timeout_ms": 10_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_size": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "replay_batch_size": 2_000,
            "log_level": "INFO",
            # the fourth raw partition gets its backlog a few seconds after the worker took it
            # over; within this bound it holds the others back (the guarantee under test). The
            # 5 s default let a loaded CI machine release the others first, once in three runs:
            # the documented "silent since the take-over" case, not the lag this test is about
            "order_idle_ms": 60_000,
        }
    )


def offline_hits(settings: Settings) -> dict[str, str]:
    """hit id -> entity kind: the batch step over every raw message, sorted into the
    processing order."""
    spec = load_spec(settings)
    step = BatchStep(build_processor(settings, spec, load_for_spec(RULES, spec), run_id="live"))
    decoder = EnvelopeDecoder(settings.require_phone_hash_key())
    messages = sorted(
        read_topic(settings, settings.raw_topics[0], lambda m: True, timeout_s=30, settle_s=1),
        key=lambda m: (m.partition(), m.offset()),
    )
    clock = RunningMax()
    keyed = []
    for m in messages:
        event = decoder.decode(m.value())
        key = clock.key(m.topic(), m.partition(), m.offset(), event["ts"])
        keyed.append((key, SourceEvent(event, m.topic(), m.partition(), m.offset(), m.timestamp()[1])))
    keyed.sort(key=lambda item: item[0])
    result = step.run([source for _, source in keyed], MemoryStore())
    return {h.record["hit_id"]: h.entity for h in result.hits}


def replay_hits(settings: Settings, tmp_path: Path, events: list[dict[str, Any]]) -> set[str]:
    rules_file = tmp_path / "replay-rules.yaml"
    rules_file.write_text(RULES, encoding="utf-8")
    out = tmp_path / "replay.jsonl"
    first = min(e["ts"] for e in events)
    last = max(e["ts"] for e in events)
    options = ReplayOptions(
        from_ms=first, to_ms=last + 1, rules_file=rules_file, out="jsonl", out_file=out, progress=False
    )
    Replay(settings, options).run()
    return {h["hit_id"] for h in iter_hits_jsonl(out)}


def live_hits(settings: Settings, want: set[str], timeout_s: float = 240) -> set[str]:
    """The hit ids on the hits topic once they include ``want`` (then a quiet period, so an
    unexpected extra hit would show too)."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        messages = read_topic(settings, settings.hits_topic, lambda m: True, timeout_s=30, settle_s=0.5)
        seen = {orjson.loads(m.value())["hit_id"] for m in messages}
        if want <= seen:
            time.sleep(3)
            messages = read_topic(settings, settings.hits_topic, lambda m: True, timeout_s=30, settle_s=1)
            return {orjson.loads(m.value())["hit_id"] for m in messages}
        time.sleep(2)
    return seen


def _wait_consuming(worker: Worker, topic: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (worker.metric("bypass_events_in_total", f'topic="{topic}"') or 0) > 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the worker consumed nothing in {timeout_s} s:\n{worker.text()[-2000:]}")


def _wait_some_hits(settings: Settings, n: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(read_topic(settings, settings.hits_topic, lambda m: True, timeout_s=10, settle_s=0)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} hits after {timeout_s} s")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["one_worker", "two_workers", "sigkill", "capped"])
def test_live_device_and_ip_hits_equal_replay_and_offline_whatever_the_lag(
    osettings: Settings, tmp_path: Path, mode: str
) -> None:
    # capped: at most 300 held events, so the partitions running ahead get paused
    s = osettings.model_copy(update={"order_max_held": 300}) if mode == "capped" else osettings
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [raw], partitions=PARTITIONS)
    kafka.ensure_topics(s, [s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, RULES, tmp_path).returncode == 0
    parts = backlog()
    events = [e for evs in parts.values() for e in evs]
    assert len(events) >= 8_000
    produce(s, raw, {p: parts[p] for p in range(PARTITIONS - 1)})  # three partitions first ...

    workers = [Worker(s, tmp_path / "worker-1.log")]
    try:
        _wait_consuming(workers[0], raw)
        time.sleep(1.0)
        produce(s, raw, {PARTITIONS - 1: parts[PARTITIONS - 1]})  # ... the fourth while it consumes
        offline = offline_hits(s)
        expected = set(offline)
        if mode == "two_workers":
            workers.append(Worker(s, tmp_path / "worker-2.log"))  # joins mid-backlog: a rebalance
        elif mode == "sigkill":
            _wait_some_hits(s, 300)
            workers[0].kill()
            workers[0] = Worker(s, tmp_path / "worker-1b.log")
        got = live_hits(s, expected)
        pauses = workers[0].metric("bypass_order_pauses_total") or 0
    finally:
        for worker in workers:
            worker.stop()
    logs = "\n".join(w.text()[-2000:] for w in workers)
    kinds: dict[str, int] = {}
    for kind in offline.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("device", 0) > 100 and kinds.get("ip", 0) > 100 and kinds.get("user", 0) > 100, kinds
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"{mode}: {len(missing)} expected hits missing "
        f"({', '.join(f'{k} {sum(offline[h] == k for h in missing)}' for k in sorted(kinds))}), "
        f"{len(extra)} unexpected; worker logs:\n{logs}"
    )
    assert replay_hits(s, tmp_path, events) == expected
    if mode == "capped":
        assert pauses > 0, "the cap never paused a partition"
        assert "pausing" in logs or "pausing" in workers[0].text()
