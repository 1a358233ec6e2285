"""bench_state: the table stores, memory:// vs rocksdb://, holding N user states.

Per store, on a private Tansu broker (``streams.local.stack``), one ``bypass worker``
process (``BYPASS_WORKER_PROCESSES=1``, 4 partitions, no standby):

1. N user states (serialized by the example feature spec's engine from ~30 events of
   mixed types each; 200 distinct templates reused) are written straight to the user
   table's changelog, as a worker would have;
2. worker A starts on an empty state directory and restores them (``fresh``): time to
   ready (spawn -> its ``ready in`` log line), RSS when ready;
3. A is killed (SIGKILL), ``E`` events of known users go to the raw topic, worker B starts
   on A's state directory: **time to ready after the SIGKILL** (spawn -> ready; the
   consumer-group join on Tansu, about half the 6 s session timeout, is in both stores'
   figure), RSS when ready;
4. throughput: B's backlog of E events (user entity; each loads a state the worker has not
   decoded yet) from ready to the last one applied (``bypass_events_applied_total``).

``state_bytes_per_{user,device,ip}`` (the mean serialized states of the templates, each
user with its own device and IP) and ``changelog_restore_per_s_memory`` (N / fresh time to
ready, memory store) are the scale model's inputs with the rows above
(bench/scale_model.py).

N = 200,000 (100,000 with ``--quick``; ``BENCH_STATE_USERS`` sets it).  Not measured here:
1 M and 5 M states (a full restore runs at a few thousand states/s on 2 cores, so a 1 M
memory:// run needs several minutes per start, beyond this benchmark's budget:
``BENCH_STATE_USERS=1000000 python bench/bench_state.py`` runs it), and a standby replica
(two workers: ``python bench/bench_state.py --standby`` runs the failover with and without
one, both stores; on Tansu the survivor has not resumed the dead worker's raw partitions
within 240 s after the rebalance in any of them, a hang left to investigate).
``BENCH_STATE_DIR`` keeps the workers' logs and tables.
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
from pathlib import Path
from typing import Any

BUDGET_S = 420
QUICK_BUDGET_S = 200

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ROOT / "examples" / "features.yaml"
PARTITIONS = 4
STORES = os.environ.get("BENCH_STATE_STORES", "memory://,rocksdb://").split(",")
T0 = 1_763_856_000_000
DAY = 86_400_000
PHONE_KEY = "bench-state-phone-key"
RULES = """
version: "bench-state-1"
decisions: {reject: 80, review: 50}
rules:
  - id: churn
    entity: user
    when: phone_changes_30d > 3
    score: 40
    label: churn
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(bootstrap: str, state: Path, prefix: str, store: str) -> Any:
    from streams.settings import Settings

    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"{prefix}-app",
        raw_topics=[f"{prefix}.events"],
        hits_topic=f"{prefix}.hits",
        blacklist_topic=f"{prefix}.blacklist",
        dlq_topic=f"{prefix}.dlq",
        decisions_topic=f"{prefix}.decisions",
        rules_topic=f"{prefix}.rules",
        features_spec=FEATURES,
        phone_hash_key=PHONE_KEY,
        state_dir=state,
        topic_partitions=PARTITIONS,
        table_store=store,
        table_standby_replicas=0,
        consumer_session_timeout_ms=6_000,
        consumer_rebalance_timeout_ms=3_000,
        consumer_heartbeat_interval_ms=500,
        worker_processes=1,
        worker_status_s=0,
        log_level="INFO",
        evict_every_batches=int(os.environ.get("BENCH_STATE_EVICT_EVERY", "100")),
    )


def _templates(n: int = 200) -> tuple[list[bytes], dict[str, float]]:
    """Serialized user states of ``n`` users with 20-40 events each over 30 days, and the
    mean serialized state size per entity kind (each user with its own device and IP)."""
    import random
    from collections import defaultdict

    import features
    import rules
    from streams.core.assembly import build_engine
    from streams.core.envelope import EnvelopeDecoder
    from streams.core.order import SourceEvent
    from streams.core.processor import Processor
    from streams.settings import Settings

    settings = Settings(phone_hash_key=PHONE_KEY, features_spec=FEATURES)
    spec = features.load_spec(FEATURES)
    processor = Processor(
        spec, build_engine(spec, settings), rules.load_ruleset(RULES, spec.schema()), run_id="bench"
    )
    decoder = EnvelopeDecoder(settings.require_phone_hash_key(), max_bytes=settings.event_max_bytes)
    rng = random.Random(7)
    cities = [("Beijing", 39.9, 116.4), ("Shanghai", 31.2, 121.5), ("Shenzhen", 22.5, 114.1)]
    users: list[bytes] = []
    sizes: dict[str, list[int]] = defaultdict(list)
    for t in range(n):
        events = []
        for i in range(rng.randint(20, 40)):
            ts = T0 + rng.randrange(30 * DAY)
            kind = rng.choice(["login", "login", "property_view", "order", "phone_change"])
            city, lat, lon = rng.choice(cities)
            raw: dict[str, Any] = {"event_id": f"tpl{t}-{i}", "type": kind, "ts": ts, "user_id": f"tpl{t}"}
            raw["geo"] = {"lat": lat, "lon": lon, "city": city}
            raw["device_id"] = f"d{t}"
            raw["ip"] = f"10.0.{t // 250}.{t % 250}"
            if kind == "order":
                raw["attrs"] = {"amount": rng.randint(10, 900)}
            if kind == "phone_change":
                raw["phone"] = f"+86138{rng.randrange(10**8):08d}"
            events.append(raw)
        events.sort(key=lambda e: e["ts"])
        per_key: dict[tuple[str, str], list[SourceEvent]] = defaultdict(list)
        for i, e in enumerate(events):
            event = decoder.decode(_json(e))
            for entity, key in spec.entity_keys(event):
                per_key[(entity, str(key))].append(SourceEvent(event, "t", 0, i))
        for (entity, key), sources in per_key.items():
            data = processor.dumps(processor.process(entity, key, None, sources).state)
            sizes[entity].append(len(data))
            if entity == "user":
                users.append(data)
    return users, {entity: sum(v) / len(v) for entity, v in sizes.items()}


def _json(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)


def _write_changelog(settings: Any, n: int, templates: list[bytes]) -> float:
    """N user states straight onto the user table's changelog; returns seconds taken."""
    from confluent_kafka import Producer

    from streams.core import kafka
    from streams.live.setup import bundle_partition

    topic = f"{settings.app_id}-entity-user-changelog"
    kafka.ensure_topics(settings, [topic], partitions=PARTITIONS, compacted=True)
    started = time.monotonic()
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "batch.size": 1_000_000})
    for i in range(n):
        key = f"u{i}".encode()
        while True:
            try:
                producer.produce(
                    topic, key=key, value=templates[i % len(templates)], partition=bundle_partition(key, 4)
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0, "changelog records not delivered"
    return time.monotonic() - started


def _events(n_users: int, count: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(11)
    return [
        {
            "event_id": f"be-{i}",
            "type": "login",
            "ts": T0 + 31 * DAY + i,
            "user_id": f"u{rng.randrange(n_users)}",
            "geo": {"lat": 39.9, "lon": 116.4, "city": "Beijing"},
        }
        for i in range(count)
    ]


#: BENCH_VERBOSE=1: the workers log Faust's and aiokafka's INFO lines too (rebalances, recovery).
VERBOSE = ["--verbose"] if os.environ.get("BENCH_VERBOSE") else []


class _Worker:
    def __init__(self, settings: Any, log: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
        env.update(settings.to_env())
        env["BYPASS_METRICS_PORT"] = str(self.port)
        env["BYPASS_WORKER_PROCESSES"] = "1"
        self.log = log
        self._out = log.open("ab")
        self.started = time.monotonic()
        self.reported = float("nan")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", *VERBOSE],
            env=env,
            cwd=str(ROOT),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from spawn to the worker's ``ready in`` line (``self.reported``: its own
        figure, from its start to the end of the table restore)."""
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"ready in ([0-9.]+) s", self.log.read_text(errors="replace"))
            if found:
                self.reported = float(found.group(1))
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self._tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready within {timeout_s} s: {self._tail()}")

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def applied(self) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith('bypass_events_applied_total{entity="user"} '):
                return float(line.split()[-1])
        return 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


def _publish(settings: Any, state: Path) -> None:
    path = state / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env.update(settings.to_env())
    subprocess.run(
        [sys.executable, "-m", "streams", "rules", "publish", str(path)],
        env=env,
        cwd=str(ROOT),
        check=True,
        capture_output=True,
        timeout=60,
    )


def _one_store(
    bootstrap: str, base: Path, store: str, n: int, n_events: int, templates: list[bytes]
) -> dict[str, float]:
    from streams.core import kafka
    from streams.producer import EventProducer

    name = store.split(":")[0]
    prefix = f"bs-{name}-{os.getpid()}"
    state = base / name
    state.mkdir(parents=True, exist_ok=True)
    settings = _settings(bootstrap, state, prefix, store)
    kafka.ensure_topics(settings, [*settings.raw_topics, settings.hits_topic, settings.blacklist_topic])
    _publish(settings, state)
    out: dict[str, float] = {"changelog_write_s": _write_changelog(settings, n, templates)}
    a = _Worker(settings, state / "a.log")
    try:
        out["ready_fresh_s"] = a.wait_ready(max(240.0, n / 1000))
        out["ready_fresh_reported_s"] = a.reported
        time.sleep(1.0)
        out["rss_fresh_mb"] = a.rss_mb()
    finally:
        a.kill()
    events = _events(n, n_events)
    with EventProducer(settings) as producer:
        producer.send_many(events)
    b = _Worker(settings, state / "b.log")
    try:
        out["ready_after_kill_s"] = b.wait_ready(max(240.0, n / 1000))
        out["ready_after_kill_reported_s"] = b.reported
        ready_at = time.monotonic()
        out["rss_after_kill_mb"] = b.rss_mb()
        deadline = ready_at + 180
        while b.applied() < n_events and time.monotonic() < deadline:
            time.sleep(0.1)
        done = b.applied()
        out["events_per_s"] = done / (time.monotonic() - ready_at)
        out["rss_after_events_mb"] = b.rss_mb()
    finally:
        b.stop()
    disk = sum(p.stat().st_size for p in (state / "faust").rglob("*") if p.is_file())
    out["disk_mb"] = disk / 1e6
    return out


def _failover(
    bootstrap: str, base: Path, store: str, standbys: int, n: int, templates: list[bytes]
) -> dict[str, float]:
    """Two workers (own state directories, ``standbys`` standby replicas) share N states;
    one is killed; seconds from the SIGKILL until the survivor has applied a batch of
    events of every partition (session timeout, rebalance and the restore of the dead
    worker's partitions: a changelog replay, or a standby's tail)."""
    from streams.core import kafka
    from streams.producer import EventProducer

    name = f"{store.split(':')[0]}-s{standbys}"
    prefix = f"bf-{name}-{os.getpid()}"
    state = base / name
    state.mkdir(parents=True, exist_ok=True)
    settings = _settings(bootstrap, state, prefix, store).model_copy(
        update={"table_standby_replicas": standbys}
    )
    kafka.ensure_topics(settings, [*settings.raw_topics, settings.hits_topic, settings.blacklist_topic])
    _publish(settings, state)
    _write_changelog(settings, n, templates)
    a = _Worker(settings.model_copy(update={"state_dir": state / "a"}), state / "a.log")
    b = _Worker(settings.model_copy(update={"state_dir": state / "b"}), state / "b.log")
    out: dict[str, float] = {}
    try:
        a.wait_ready(max(240.0, n / 1000))
        b.wait_ready(max(240.0, n / 1000))
        # the rebalance and the standbys' restore (no metric says when a standby is done)
        time.sleep(15 + n / 4_000)
        a.kill()
        killed = time.monotonic()
        events = _events(n, 2_000)
        with EventProducer(settings) as producer:
            producer.send_many(events)
        deadline = killed + max(240.0, n / 1000)
        while b.applied() < len(events) and time.monotonic() < deadline:
            time.sleep(0.1)
        out["failover_s"] = time.monotonic() - killed
        out["applied"] = b.applied()
    finally:
        b.stop()
        if a.proc.poll() is None:
            a.stop()
    return out


def standby_rows(n: int) -> list[dict[str, Any]]:
    """Failover after a SIGKILL with and without a standby replica, both stores (not part
    of ``run``: four two-worker runs exceed the budget; ``--standby`` runs them)."""
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from _common import stack_parts

    templates, _ = _templates()
    got: dict[tuple[str, int], float] = {}
    with stack_parts("kafka") as parts, tempfile.TemporaryDirectory(prefix="bench-standby-") as tmp:
        for store in STORES:
            for standbys in (0, 1):
                r = _failover(parts.addresses["kafka"], Path(tmp), store, standbys, n, templates)
                print(store, standbys, r, flush=True)
                got[(store, standbys)] = r["failover_s"]
    label = f"{n // 1000}k"
    return [
        {
            "name": f"failover_s_{label}_{store.split(':')[0]}_standby",
            "value": round(got[(store, 1)], 2),
            "unit": "s",
            "baseline_name": f"{store} without a standby",
            "baseline_value": round(got[(store, 0)], 2),
            "users": n,
        }
        for store in STORES
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from _common import stack_parts

    n = 100_000 if quick else int(os.environ.get("BENCH_STATE_USERS", "200000"))
    n_events = 5_000 if quick else 10_000
    templates, per_entity = _templates()
    results: dict[str, dict[str, float]] = {}
    keep = os.environ.get("BENCH_STATE_DIR")  # keep the workers' logs and tables there
    with stack_parts("kafka") as parts, tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        bootstrap = parts.addresses["kafka"]
        for store in STORES:
            results[store] = _one_store(bootstrap, Path(keep or tmp), store, n, n_events, templates)
            print(store, {k: round(v, 2) for k, v in results[store].items()}, flush=True)
    mem, rocks = results["memory://"], results["rocksdb://"]
    label = f"{n // 1000}k"
    rows: list[dict[str, Any]] = [
        {
            "name": f"state_bytes_per_{entity}",
            "value": round(size, 1),
            "unit": "B",
            "note": "200 users with 20-40 events each over 30 days, one device and IP each",
        }
        for entity, size in sorted(per_entity.items())
    ]
    rows += [
        {
            "name": "changelog_restore_per_s_memory",
            "value": round(n / mem["ready_fresh_s"], 1),
            "unit": "states/s",
            "note": f"{n} states / fresh time to ready (group join included)",
        },
    ]
    for key, unit, what in (
        ("ready_after_kill_s", "s", "time to ready after SIGKILL"),
        ("ready_fresh_s", "s", "time to ready, empty state dir (full restore)"),
        ("rss_after_kill_mb", "MB", "worker RSS when ready after SIGKILL"),
        ("rss_after_events_mb", "MB", "worker RSS after the backlog"),
        ("disk_mb", "MB", "table files on disk"),
    ):
        rows.append(
            {
                "name": f"{key}_{label}_rocksdb",
                "value": round(rocks[key], 2),
                "unit": unit,
                "baseline_name": f"memory:// ({what})",
                "baseline_value": round(mem[key], 2),
                "users": n,
            }
        )
    rows.append(
        {
            "name": f"events_per_s_{label}_rocksdb",
            "value": round(rocks["events_per_s"], 1),
            "unit": "events/s",
            "baseline_name": f"memory:// (backlog of {n_events} login events after the restart)",
            "baseline_value": round(mem["events_per_s"], 1),
            "users": n,
        }
    )
    return rows


if __name__ == "__main__":
    if "--standby" in sys.argv:
        rows = standby_rows(int(os.environ.get("BENCH_STATE_USERS", "100000")))
    else:
        rows = run(quick="--quick" in sys.argv)
    for row in rows:
        print(row)
