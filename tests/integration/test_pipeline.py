"""The live pipeline (``bypass worker``) on the real local stack.

Workers run as subprocesses (``python -m streams worker``) with the fixture settings as
BYPASS_* variables; the tests read the real ``hits`` / ``blacklist`` / ``dlq`` topics.
Group joins on Tansu take about the rebalance timeout, so the workers use 2 s.  The crash,
restart, two-worker and eviction tests run with both table stores (``STORES``: memory://
and rocksdb://, same assertions).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition

import rules
from streams.core import kafka
from streams.local.simulate import SimConfig, Simulator
from streams.producer import EventProducer
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "examples" / "features.yaml"
T0 = 1_763_856_000_000
MIN = 60_000
HOUR = 3_600_000

SCENARIO_RULES = """
version: "scenario-1"
decisions: {reject: 80, review: 50}
rules:
  - id: resale_phone_churn
    entity: user
    when: phone_changes_30d > 3 and property_views_total < 1
    events: [contract_sign]
    score: 90
    label: account_resale
    action: blacklist
    ttl: 30d
  - id: shared_device
    entity: device
    when: device_users_7d >= 5
    score: 70
    label: device_farm
    action: blacklist
    ttl: 7d
  - id: impossible_travel
    entity: user
    when: travel_kmh_24h > 1000
    events: [login]
    score: 60
    label: impossible_travel
    action: blacklist
    ttl: 1d
"""

USER_RULES = """
version: "{version}"
decisions: {{reject: 80, review: 50}}
rules:
  - id: churn
    entity: user
    when: phone_changes_30d > 1
    score: 40
    label: churn
    action: blacklist
    ttl: 30d
  - id: cities
    entity: user
    when: login_cities_7d > 1
    events: [login]
    score: 30
    label: many_cities
  - id: big_orders
    entity: user
    when: order_amount_1h > 2000
    events: [order]
    score: 50
    label: big_orders
    mode: shadow
  - id: viewer
    entity: user
    when: property_views_total > 15
    events: [property_view]
    score: 10
    label: heavy_viewer
"""


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(settings: Settings, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env.update(settings.to_env())
    env.update({f"BYPASS_{k.upper()}": str(v) for k, v in extra.items()})
    return env


#: The table stores the key tests run with (``@pytest.mark.parametrize("psettings", STORES,
#: indirect=True)``, same assertions); the other tests use the default, memory://.
STORES = [
    pytest.param("memory://", id="memory"),
    pytest.param("rocksdb://", id="rocksdb"),
]


@pytest.fixture
def psettings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return settings.model_copy(
        update={
            "table_store": getattr(request, "param", "memory://"),
            "features_spec": FEATURES,
            "topic_partitions": 4,
            "consumer_session_timeout_ms": 10_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "log_level": "INFO",
        }
    )


#: Seconds a worker may take to stop cleanly on SIGTERM before it is killed (a stop commits
#: offsets and flushes the producers; a slow CI machine took more than 15).
STOP_TIMEOUT_S = 40


class Worker:
    """A ``bypass worker`` subprocess with its own metrics port and log file."""

    def __init__(self, settings: Settings, log: Path, **extra: Any) -> None:
        self.port = _free_port()
        self.log = log
        env = _env(settings, metrics_port=self.port, **extra)
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env,
            cwd=str(ROOT),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def metric(self, name: str, labels: str = "") -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def publish(
    settings: Settings, text: str, tmp_path: Path, name: str = "rules.yaml"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "streams", "rules", "publish", str(path)],
        env=_env(settings),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 60.0,
    settle_s: float = 2.0,
) -> list[Any]:
    """All messages of ``topic``: read until ``until(messages)`` holds and no message came
    for ``settle_s`` (a quiet period, so a writer still at work is waited for)."""
    consumer = kafka.consumer(settings, group_id=f"{settings.app_id}-reader-{time.monotonic_ns()}")
    try:
        deadline = time.monotonic() + timeout_s
        meta = None
        while time.monotonic() < deadline:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            time.sleep(0.2)
        assert meta is not None and meta.partitions, f"topic {topic} never appeared"
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Any] = []
        settled_at: float | None = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                out.append(msg)
                settled_at = None
                continue
            if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                continue
            if until(out):
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle_s:
                    return out
        return out
    finally:
        consumer.close()


def values(messages: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    with EventProducer(settings) as producer:
        producer.send_many(events)
    # the context manager flushed; check nothing failed
    report = producer.flush()
    report.raise_for_errors()


def ev(eid: str, etype: str, ts: int, user: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": etype, "ts": ts, "user_id": user, **extra}


def scenario_events() -> list[dict[str, Any]]:
    """Account resale, a device shared by many users, impossible travel, and a normal user."""
    out: list[dict[str, Any]] = []
    # account resale: four phone changes within a day, then a contract sign, no property view
    for i in range(4):
        out.append(
            ev(f"rs-pc{i}", "phone_change", T0 + i * HOUR, "u-resale", phone=f"+86 138 0000 00{i:02d}")
        )
    out.append(ev("rs-sign", "contract_sign", T0 + 5 * HOUR, "u-resale", phone="+86-138-0000-0003"))
    # a normal user: same phone churn but views properties first -> no resale hit
    out.append(ev("n-view", "property_view", T0, "u-normal"))
    for i in range(4):
        out.append(
            ev(f"n-pc{i}", "phone_change", T0 + (i + 1) * HOUR, "u-normal", phone=f"+8613900000{i:03d}")
        )
    out.append(ev("n-sign", "contract_sign", T0 + 6 * HOUR, "u-normal"))
    # a device shared by five users: the fifth distinct user trips the rule (only the fifth)
    for i in range(5):
        out.append(ev(f"farm-{i}", "login", T0 + i * MIN, f"u-farm{i}", device_id="d-farm"))
    # impossible travel: Beijing, then Shanghai (~1,070 km) 30 minutes later
    beijing = {"lat": 39.9042, "lon": 116.4074, "city": "Beijing"}
    shanghai = {"lat": 31.2304, "lon": 121.4737, "city": "Shanghai"}
    out.append(ev("tr-1", "login", T0, "u-travel", geo=beijing, device_id="d-travel"))
    out.append(ev("tr-2", "login", T0 + 30 * MIN, "u-travel", geo=shanghai, device_id="d-travel"))
    return out


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_bad_input_goes_to_dlq_and_scenario_gives_exactly_the_expected_hits(
    psettings: Settings, tmp_path: Path
) -> None:
    s = psettings
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, SCENARIO_RULES, tmp_path).returncode == 0
    worker = Worker(s, tmp_path / "worker.log")
    try:
        raw = s.raw_topics[0]
        bad = [
            (b"{not json", "not_json"),
            (orjson.dumps({"event_id": "x1", "type": "login", "ts": T0}), "missing_field"),
            (
                orjson.dumps({"event_id": "x2", "type": "login", "ts": "yesterday", "user_id": "u"}),
                "wrong_type",
            ),
            (orjson.dumps({**ev("x3", "login", T0, "u"), "attrs": {"blob": "x" * 70_000}}), "too_large"),
        ]
        producer = Producer({**s.kafka_config(), "message.max.bytes": 2_000_000})
        for value, _reason in bad:
            producer.produce(raw, key=b"u-resale", value=value, headers=[("origin", b"test")])
        assert producer.flush(15) == 0
        dlq = read_topic(s, s.dlq_topic, lambda m: len(m) >= len(bad), timeout_s=90)
        assert len(dlq) == len(bad)
        by_value = {m.value(): dict(m.headers()) for m in dlq}
        for value, reason in bad:
            headers = by_value[value]  # the original bytes, unchanged
            assert headers["bypass.reason"] == reason.encode()
            assert headers["bypass.error"]
            assert headers["bypass.source.topic"] == raw.encode()
            assert int(headers["bypass.source.partition"]) in range(4)
            assert int(headers["bypass.source.offset"]) >= 0
            assert headers["origin"] == b"test"  # the original headers are kept

        # the worker is consuming now (it has dead-lettered the bad messages)
        # The device-farm logins come from five users, i.e. from different raw partitions,
        # sent one after the other as apps would send them (the worker applies them in
        # event-time order across partitions; tests/integration/test_order.py tests that).
        scripted = scenario_events()
        produce(s, [e for e in scripted if e.get("device_id") != "d-farm"])
        for event in (e for e in scripted if e.get("device_id") == "d-farm"):
            produce(s, [event])
            time.sleep(0.3)

        expected_hits = {
            ("resale_phone_churn", "user", "u-resale", "rs-sign"),
            ("shared_device", "device", "d-farm", "farm-4"),
            ("impossible_travel", "user", "u-travel", "tr-2"),
        }
        hits = values(read_topic(s, s.hits_topic, lambda m: len(m) >= 3, timeout_s=60, settle_s=3))
        assert {(h["rule_id"], h["entity"], h["key"], h["event_id"]) for h in hits} == expected_hits
        assert len(hits) == 3
        for h in hits:
            assert h["hit_id"] == rules.hit_id(h["event_id"], h["rule_id"], "scenario-1")
            assert h["run_id"] == "live" and h["ruleset_version"] == "scenario-1"
            assert h["source_topic"] == raw and h["mode"] == "active" and h["counted"]
        resale = next(h for h in hits if h["rule_id"] == "resale_phone_churn")
        assert resale["features"] == {"phone_changes_30d": 4, "property_views_total": 0}
        assert resale["event_ts"] == T0 + 5 * HOUR and resale["decision"] == "reject"
        travel = next(h for h in hits if h["rule_id"] == "impossible_travel")
        assert travel["features"]["travel_kmh_24h"] > 2000

        blacklist = read_topic(s, s.blacklist_topic, lambda m: len(m) >= 3, timeout_s=30, settle_s=1)
        entries = {(m.key().decode(), orjson.loads(m.value())["label"]) for m in blacklist}
        assert entries == {
            ("user:u-resale", "account_resale"),
            ("device:d-farm", "device_farm"),
            ("user:u-travel", "impossible_travel"),
        }
        resale_entry = next(orjson.loads(m.value()) for m in blacklist if m.key() == b"user:u-resale")
        assert resale_entry["expires_at"] == T0 + 5 * HOUR + 30 * 24 * HOUR
        assert resale_entry["rule_ids"] == ["resale_phone_churn"]

        # no raw phone number anywhere downstream of ingest
        downstream = b"".join(m.value() for m in read_topic(s, s.hits_topic, lambda m: True, settle_s=0))
        assert b"138" not in downstream and b"+86" not in downstream
        assert worker.metric("bypass_dlq_total", 'reason="not_json"') == 1.0
        assert (worker.metric("bypass_hits_total", 'mode="active",rule_id="shared_device"') or 0) >= 1.0
    finally:
        worker.stop()


def _sim_events(
    seed: int, users: int = 60, rate: float = 100, duration_s: float = 30
) -> list[dict[str, Any]]:
    return list(Simulator(SimConfig(users=users, rate=rate, duration_s=duration_s, seed=seed)).events())


def _hits_by_id(messages: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in values(messages):
        previous = out.setdefault(record["hit_id"], record)
        assert previous == record, "a hit delivered twice must be identical"
    return out


def _reference(s: Settings) -> Settings:
    """Settings of a reference worker: its own group, hits and blacklist topics, same input."""
    return s.model_copy(
        update={
            "app_id": s.app_id + "_ref",
            "hits_topic": s.hits_topic + ".ref",
            "blacklist_topic": s.blacklist_topic + ".ref",
        }
    )


def _read_reference(ref: Settings) -> dict[str, dict[str, Any]]:
    """Every hit of the reference run, by id (read until it has been quiet for 4 s)."""
    return _hits_by_id(read_topic(ref, ref.hits_topic, lambda m: len(m) > 20, timeout_s=120, settle_s=4))


def _read_as_many(s: Settings, want: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The hits on ``s.hits_topic`` by id, once there are at least as many distinct ids as in
    ``want`` and the topic has been quiet for 3 s."""
    return _hits_by_id(
        read_topic(
            s,
            s.hits_topic,
            lambda m: len({orjson.loads(x.value())["hit_id"] for x in m}) >= len(want),
            timeout_s=120,
            settle_s=3,
        )
    )


def _wait_metric(
    worker: Worker, names: tuple[str, ...], labels: str, at_least: float, timeout_s: float = 90
) -> None:
    """Wait until the sum of ``names`` (each with ``labels``) on ``worker`` reaches ``at_least``."""

    def total() -> float:
        return sum(worker.metric(name, labels) or 0 for name in names)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if total() >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"{names}{{{labels}}} never reached {at_least}: {total()}")


@pytest.mark.slow
@pytest.mark.parametrize("psettings", STORES, indirect=True)
def test_sigkill_and_restart_give_the_hits_of_a_run_without_crash(
    psettings: Settings, tmp_path: Path
) -> None:
    s = psettings
    ref = _reference(s)
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, ref.hits_topic])
    assert publish(s, USER_RULES.format(version="u-1"), tmp_path).returncode == 0
    events = _sim_events(seed=3)
    reference = Worker(ref, tmp_path / "ref.log")
    # tiny batches: the backlog takes the crashing worker long enough to be killed mid-stream
    crashing = Worker(s, tmp_path / "crash-1.log", worker_batch_size=5)
    restarted = None
    try:
        produce(s, events)
        # kill the worker as soon as it has emitted hits: it is in the middle of the stream
        first = read_topic(s, s.hits_topic, lambda m: len(m) >= 1, timeout_s=90, settle_s=0)
        assert first, "the worker emitted no hit"
        crashing.kill()
        before = _hits_by_id(read_topic(s, s.hits_topic, lambda m: True, timeout_s=30, settle_s=1))
        restarted = Worker(s, tmp_path / "crash-2.log")
        want = _read_reference(ref)
        assert len(want) > 20
        assert len(before) < len(want), "the worker was not killed mid-stream"
        deadline = time.monotonic() + 90
        while "ready in " not in restarted.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        got = _read_as_many(s, want)
        missing = [want[h] for h in set(want) - set(got)]
        unexpected = [got[h] for h in set(got) - set(want)]
        assert not missing and not unexpected, (
            f"{len(missing)} hits missing, {len(unexpected)} unexpected; e.g. {(missing + unexpected)[:3]}"
        )
        for hit_id, record in want.items():
            assert got[hit_id] == record
        assert "ready in " in restarted.text()
        redelivered = restarted.metric("bypass_events_duplicate_total", 'entity="user"')
        print(f"\nhits before the kill {len(before)} of {len(want)}; redelivered (no-ops): {redelivered}")
    finally:
        reference.stop()
        crashing.stop()
        if restarted is not None:
            restarted.stop()


def _persisted_offsets(s: Settings, entity: str) -> dict[int, int]:
    """Partition -> the changelog offset its RocksDB database of ``entity`` holds up to
    (the worker that wrote them must have stopped: a database is locked while open)."""
    from rocksdict import AccessType, Options, Rdict

    out: dict[int, int] = {}
    for path in (Path(s.state_dir) / "faust" / s.app_id).glob(f"*/tables/entity-{entity}-*.db"):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            offset = db.get(b"__faust\x00offset__")
        finally:
            db.close()
        if offset is not None:
            out[int(path.name.rsplit("-", 1)[1].removesuffix(".db"))] = int(offset)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("psettings", STORES, indirect=True)
def test_restart_restores_every_state_from_the_changelog(psettings: Settings, tmp_path: Path) -> None:
    """A worker stopped cleanly after half the events, then a new one for the second half:
    the new worker's states come from the changelog (and the few redeliveries Faust's last
    uncommitted offsets cause must be no-ops), so
    its hits equal one uninterrupted run's only if the restore read the changelog to its
    true end.  (Tansu answers ListOffsets with the base offset of the last record batch + 1;
    trusting it restored states older than their last write.)"""
    s = psettings
    ref = _reference(s)
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, ref.hits_topic])
    assert publish(s, USER_RULES.format(version="u-1"), tmp_path).returncode == 0
    events = _sim_events(seed=7, duration_s=20)
    half = len(events) // 2
    first = Worker(s, tmp_path / "first.log")
    second = reference = None
    try:
        produce(s, events[:half])
        _wait_metric(first, ("bypass_events_in_total",), f'topic="{s.raw_topics[0]}"', half)
        applied = 'entity="user"'
        _wait_metric(first, ("bypass_events_applied_total", "bypass_events_late_total"), applied, half)
        first.stop()  # SIGTERM: Faust flushes and commits
        assert first.proc.returncode == 0, first.text()[-6000:]  # a stall logs where it waits
        if s.table_store == "rocksdb://":
            # each partition's database holds its changelog to the end (the offset it
            # holds is the last one): the second worker replays nothing it has
            changelog = f"{s.app_id}-entity-user-changelog"
            last: dict[int, int] = {}
            for m in read_topic(s, changelog, lambda m: len(m) > 0, settle_s=0.5):
                last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
            assert last and _persisted_offsets(s, "user") == last
        second = Worker(s, tmp_path / "second.log")
        produce(s, events[half:])
        reference = Worker(ref, tmp_path / "ref.log")
        want = _read_reference(ref)
        got = _read_as_many(s, want)
        assert set(got) == set(want)
        for hit_id, record in want.items():
            assert got[hit_id] == record
        # the states came from the changelog: no first-half event was applied again (the few
        # the first worker had not committed yet come back as duplicates)
        assert (second.metric("bypass_events_applied_total", applied) or 0) <= len(events) - half
    finally:
        for w in (first, second, reference):
            if w is not None:
                w.stop()


@pytest.mark.slow
@pytest.mark.parametrize("psettings", STORES, indirect=True)
def test_two_workers_split_partitions_and_hot_reload(psettings: Settings, tmp_path: Path) -> None:
    s = psettings
    ref = _reference(s)
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, ref.hits_topic])
    assert publish(s, USER_RULES.format(version="u-1"), tmp_path).returncode == 0
    # a broken set is never published, and says why
    broken = publish(
        s,
        USER_RULES.format(version="u-broken").replace("phone_changes_30d > 1", "phone_chnges > 1"),
        tmp_path,
        "broken.yaml",
    )
    assert broken.returncode == 1
    assert "churn" in broken.stdout and "phone_changes_30d" in broken.stdout  # rule id + did-you-mean
    assert "nothing published" in broken.stderr

    events = _sim_events(seed=5)
    reference = Worker(ref, tmp_path / "ref.log")
    # each worker its own state directory (RocksDB databases are locked by their process)
    one = Worker(s, tmp_path / "w1.log", state_dir=tmp_path / "w1")
    two = Worker(s, tmp_path / "w2.log", state_dir=tmp_path / "w2")
    try:
        produce(s, events)
        want = _read_reference(ref)
        got = _read_as_many(s, want)
        assert got == want
        raw_topic = s.raw_topics[0]
        seen = [w.metric("bypass_events_in_total", f'topic="{raw_topic}"') or 0.0 for w in (one, two)]
        assert all(n > 0 for n in seen), f"partitions were not split: {seen}"
        assert sum(seen) >= len(events)

        # a broken set that appears on the topic anyway is rejected; u-1 stays active
        p = Producer(s.kafka_config())
        bad = {"version": "u-bad", "text": "version: u-bad\nrules: [{id: x, when: nope(}]", "published_ms": 1}
        p.produce(s.rules_topic, key=b"u-bad", value=orjson.dumps(bad))
        p.flush(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all((w.metric("bypass_ruleset_rejected_total") or 0) >= 1 for w in (one, two)):
                break
            time.sleep(0.1)
        for w in (one, two):
            assert w.metric("bypass_ruleset_rejected_total") == 1.0
            assert w.metric("bypass_ruleset_info", 'version="u-1"') == 1.0
            assert "rejected, version 'u-1' stays active" in w.text()

        # hot reload: publish u-2, both workers switch; measure publish -> active
        started = time.monotonic()
        assert publish(s, USER_RULES.format(version="u-2"), tmp_path, "v2.yaml").returncode == 0
        active: dict[int, float] = {}
        while len(active) < 2 and time.monotonic() - started < 30:
            for i, w in enumerate((one, two)):
                if i not in active and w.metric("bypass_ruleset_info", 'version="u-2"') == 1.0:
                    active[i] = time.monotonic() - started
            time.sleep(0.02)
        assert len(active) == 2, "a worker did not activate u-2"
        delays = [w.metric("bypass_ruleset_publish_to_active_seconds") for w in (one, two)]
        print(f"\npublish-to-active: {delays} s (seen by the test after {sorted(active.values())} s)")
        assert all(d is not None and 0 <= d < 5 for d in delays)
        # events after the swap use u-2
        later = [
            ev(f"late-{i}", "phone_change", T0 + 400 * HOUR + i, "u-reload", phone=f"+861370000{i:04d}")
            for i in range(3)
        ]
        produce(s, later)
        hits = values(
            read_topic(
                s,
                s.hits_topic,
                lambda m: any(orjson.loads(x.value())["event_id"] == "late-2" for x in m),
                timeout_s=60,
                settle_s=1,
            )
        )
        reload_hits = [h for h in hits if h["key"] == "u-reload"]
        assert reload_hits and {h["ruleset_version"] for h in reload_hits} == {"u-2"}
    finally:
        for w in (reference, one, two):
            w.stop()


def _raw_split(workers: list[Worker], topic: str, timeout_s: float = 120.0) -> list[str]:
    """Wait until the workers' logs say they split ``topic``'s partitions (each its last
    "ready in" / "rebalanced" line: disjoint, none empty); returns those lines' lists."""
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    while time.monotonic() < deadline:
        last = []
        for w in workers:
            lines = [ln for ln in w.text().splitlines() if "raw partitions" in ln]
            found = re.search(re.escape(topic) + r"\[([0-9,\-]+)\]", lines[-1]) if lines else None
            last.append(found.group(1) if found else "")
        if all(last) and len(set(last)) == len(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"the workers never split {topic}: {last}")


@pytest.mark.slow
def test_a_worker_killed_before_its_first_commit_loses_no_event(psettings: Settings, tmp_path: Path) -> None:
    """Two workers split the raw partitions; one is SIGKILLed before it ever committed an
    offset (nothing had come yet), and the events come while the survivor takes its
    partitions over: the survivor's hits equal a single worker's.  (Faust drops the
    records it fetched during a rebalance and seeks back to the committed offsets; a
    partition without one stayed past them: every event of the dead worker's partitions
    was lost.)"""
    s = psettings
    ref = _reference(s)
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, ref.hits_topic])
    assert publish(s, USER_RULES.format(version="u-1"), tmp_path).returncode == 0
    events = _sim_events(seed=11, duration_s=20)
    reference = Worker(ref, tmp_path / "ref.log")
    doomed = Worker(s, tmp_path / "doomed.log", state_dir=tmp_path / "doomed")
    survivor = Worker(s, tmp_path / "survivor.log", state_dir=tmp_path / "survivor")
    try:
        split = _raw_split([doomed, survivor], s.raw_topics[0])
        doomed.kill()
        doomed.proc.wait(10)
        produce(s, events)
        want = _read_reference(ref)
        assert want, "the reference run gave no hit"
        got = _read_as_many(s, want)
        assert got == want, f"partitions split {split}: {len(got)} hits of {len(want)}"
        raw = s.raw_topics[0]
        deadline = time.monotonic() + 60
        while (survivor.metric("bypass_events_in_total", f'topic="{raw}"') or 0) < len(events):
            assert time.monotonic() < deadline, "the survivor did not read every event"
            time.sleep(0.2)
    finally:
        for w in (reference, doomed, survivor):
            w.stop()


EVICTION_RULES = """
version: "evict-1"
decisions: {reject: 80, review: 50}
rules:
  - id: shared_device
    entity: device
    when: device_users_7d >= 2
    score: 70
    label: device_farm
    action: blacklist
    ttl: 7d
"""


def _reference_hits(settings: Settings, text: str, events: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """The hits of the in-process Processor over ``events`` (each key's events in the given
    order, states kept for ever: no eviction)."""
    import features
    from streams.core.assembly import build_engine
    from streams.core.envelope import EnvelopeDecoder
    from streams.core.order import SourceEvent
    from streams.core.processor import Processor

    spec = features.load_spec(FEATURES)
    processor = Processor(
        spec, build_engine(spec, settings), rules.load_ruleset(text, spec.schema()), run_id="live"
    )
    decoder = EnvelopeDecoder(settings.require_phone_hash_key(), max_bytes=settings.event_max_bytes)
    states: dict[tuple[str, str], Any] = {}
    out: set[tuple[Any, ...]] = set()
    for i, raw in enumerate(events):
        event = decoder.decode(orjson.dumps(raw))
        for entity, key in spec.entity_keys(event):
            result = processor.process(
                entity, str(key), states.get((entity, str(key))), [SourceEvent(event, "t", 0, i)]
            )
            states[(entity, str(key))] = result.state
            out |= {(h["hit_id"], h["entity"], h["key"], orjson.dumps(h["features"])) for h in result.hits}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("psettings", STORES, indirect=True)
def test_eviction_drops_evictable_keys_only_and_changes_no_result(
    psettings: Settings, tmp_path: Path
) -> None:
    """A device last seen 8 days before the watermark (longest device window: 7 d) and an IP
    last seen over a day before it (dedup horizon) are deleted - a tombstone each on their
    table's changelog - while a fresh device and every user (whole-history feature) stay;
    the hits equal the processor's without any eviction."""
    s = psettings
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, EVICTION_RULES, tmp_path).returncode == 0
    day = 24 * HOUR
    phase1 = [
        ev("ev-1", "login", T0, "u-e1", device_id="d-old", ip="10.9.0.1"),
        ev("ev-2", "login", T0 + MIN, "u-e2", device_id="d-old", ip="10.9.0.1"),  # hit: 2 users
    ]
    phase2 = [
        ev("ev-3", "login", T0 + 8 * day, "u-e3", device_id="d-new", ip="10.9.0.2"),
        ev("ev-4", "login", T0 + 8 * day + MIN, "u-e4", device_id="d-new", ip="10.9.0.2"),  # hit
    ]
    # after the eviction: d-old again, with a new user; its old users are outside the 7 d
    # window either way, so the fresh state gives the same (no) hit as the kept one would
    phase3 = [ev("ev-5", "login", T0 + 8 * day + 2 * MIN, "u-e5", device_id="d-old", ip="10.9.0.1")]
    worker = Worker(s, tmp_path / "worker.log", evict_every_batches=1)
    changelog = f"{s.app_id}-entity-device-changelog"
    try:
        produce(s, phase1)
        read_topic(s, s.hits_topic, lambda m: len(m) >= 1, timeout_s=90, settle_s=0.5)
        produce(s, phase2)
        read_topic(s, s.hits_topic, lambda m: len(m) >= 2, timeout_s=30, settle_s=0.5)

        def tombstoned(messages: list[Any]) -> set[bytes]:
            return {m.key() for m in messages if m.value() is None}

        device_log = read_topic(s, changelog, lambda m: b"d-old" in tombstoned(m), timeout_s=30, settle_s=1)
        assert tombstoned(device_log) == {b"d-old"}  # d-new stays
        ip_log = read_topic(
            s,
            f"{s.app_id}-entity-ip-changelog",
            lambda m: b"10.9.0.1" in tombstoned(m),
            timeout_s=30,
            settle_s=0,
        )
        assert tombstoned(ip_log) == {b"10.9.0.1"}
        user_log = read_topic(s, f"{s.app_id}-entity-user-changelog", lambda m: len(m) >= 4, settle_s=0)
        assert tombstoned(user_log) == set()  # whole-history feature: never evictable
        assert (worker.metric("bypass_state_evicted_total", 'entity="device"') or 0) == 1.0
        assert (worker.metric("bypass_state_evicted_total", 'entity="ip"') or 0) == 1.0
        assert worker.metric("bypass_state_evicted_total", 'entity="user"') in (None, 0.0)

        produce(s, phase3)
        device_log = read_topic(
            s, changelog, lambda msgs: sum(m.key() == b"d-old" for m in msgs) >= 3, timeout_s=30, settle_s=0
        )
        # d-old's new state (written after its tombstone) holds only the new event
        last = [m for m in device_log if m.key() == b"d-old"][-1]
        assert last.value() is not None
        hits = values(read_topic(s, s.hits_topic, lambda m: len(m) >= 2, timeout_s=30, settle_s=3))
        got = {(h["hit_id"], h["entity"], h["key"], orjson.dumps(h["features"])) for h in hits}
        assert got == _reference_hits(s, EVICTION_RULES, phase1 + phase2 + phase3)
        assert {(h["key"], h["event_id"]) for h in hits} == {("d-old", "ev-2"), ("d-new", "ev-4")}
    finally:
        worker.stop()
