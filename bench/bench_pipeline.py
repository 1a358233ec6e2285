"""bench_pipeline: the live Faust pipeline against two plain Faust agents, same broker, one run.

Workload: simulated traffic (``streams.local.simulate``, example feature spec) pre-produced to a
4-partition raw topic with the SDK (key = user id); then, one after the other, each
variant runs as its own worker process (``python bench/bench_pipeline.py --child ...``)
that consumes the whole backlog from the beginning with a fresh consumer group:

(a) ``bare``   a Faust agent that only decodes each event (``orjson.loads``);
(b) ``naive``  a Faust agent that decodes and updates a plain table per event
               (``table[user_id] += 1``): the textbook stateful Faust agent;
(c) ``pipeline`` this pipeline (``bypass worker``: ingest + DLQ check + re-key to user,
               device and ip + features + a 50-rule set + hits and blacklist topics);
(d) the same pipeline with ``BYPASS_EVENT_TIME_ORDER=false`` (arrival order, the behaviour
    before event-time order): the cost of ordering, goal <= 10%;
(e) ``quix`` a Quix Streams app (bench/quix_app.py: one stateful apply per user, 4 windowed
    features, 3 threshold rules, hits to a topic, RocksDB state with changelog,
    at-least-once) on the same broker and backlog: the external baseline, goal (c) >= 0.50x.
    It runs with the first interpreter that has ``quixstreams``: BENCH_QUIX_PYTHON, this
    one, or ``.venv-bench/bin/python`` (see bench/README.md); without one its rows are left
    out and the reason is printed;
(f) ``bypass worker --processes 2`` against ``--processes 1`` (the CLI, a supervisor and its
    children), on the first 30,000 of the same events: both join first, then the events
    are produced to a fresh raw topic; throughput = events / (produce start -> every
    entity's events applied), read from the children's /metrics; CPU = the children's CPU
    time over that span, beside the cores the whole node, the broker, Redis and the rest
    used (what limits a second process on a 2-core machine).

Throughput = events / (time the last event was done - time the first event was read),
so group-join time is not counted; ``events_per_cpu_s`` divides by the CPU time the worker
process (all threads) used over the same span instead, steadier on a shared machine.
Goal: (c) >= 70% of (a) and >= 2.5x (b).

Latency: a fresh pipeline worker, then 2,000 events/s produced at a steady pace (event
time = now) for a while; every 20th event is a ``bench_probe`` that a rule blacklists;
latency = time the blacklist record is read back - time the probe was handed to the
producer; the reader waits on fetches like bypass's own consumers
(BYPASS_CONSUMER_FETCH_MAX_WAIT_MS).  Goal: p99 < 500 ms.  Run twice, with event-time
order and without (arrival order): goal p99 within 10%; and both again, shorter, at 800
events/s (below saturation on a slow machine, where 2,000 events/s only measures a queue).

Runs a private Tansu broker and Redis (``streams.local.stack``) unless BYPASS_KAFKA_BOOTSTRAP
(and BYPASS_REDIS_URL) is set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
sys.path.insert(0, str(ROOT))

BUDGET_S = 480
QUICK_BUDGET_S = 150
FEATURES = ROOT / "examples" / "features.yaml"
PARTITIONS = 4
PROBE_TYPE = "bench_probe"
LIGHT_RATE = 800  # events/s: a latency run well below what one worker takes
PROCESSES_EVENTS = 30_000  # events of the --processes 2 vs 1 runs
#: Quix Streams copies the input topic's retention.ms to its changelog topic and Tansu
#: describes only the configs given at creation: the raw topic is created with it.
RAW_TOPIC_CONFIG = {"retention.ms": str(7 * 24 * 3_600_000)}


# --------------------------------------------------------------------------- rules


def rules_50() -> str:
    """50 rules over the example features (most rarely fire), plus the latency probe rule."""
    lines = ['version: "bench-50"', "decisions: {reject: 80, review: 50}", "rules:"]
    user_rules = [
        ("phone_changes_30d > {t}", [2, 3, 4, 5, 6]),
        ("distinct_phones_30d > {t}", [2, 3, 4, 5, 6]),
        ("login_cities_7d > {t}", [2, 3, 4, 5]),
        ("login_spread_km_24h > {t}", [500, 1000, 2000, 3000]),
        ("travel_kmh_24h > {t}", [800, 1000, 1500, 2000]),
        ("order_amount_1h > {t}", [2000, 5000, 10000, 20000]),
        ("phone_changes_30d > {t} and property_views_total < 1", [1, 2, 3, 4]),
        ("change_then_sign_1h == 1 and phone_changes_30d > {t}", [0, 1, 2]),
        ("ms_since_phone_change < hours({t}) and order_amount_1h > 1000", [1, 2, 6]),
    ]
    n = 0
    for template, thresholds in user_rules:
        for t in thresholds:
            n += 1
            lines += [
                f"  - id: user_rule_{n:02d}",
                "    entity: user",
                f"    when: {template.format(t=t)}",
                f"    score: {10 + n % 50}",
                f"    label: user_label_{n % 7}",
                f"    action: {'blacklist' if n % 5 == 0 else 'review'}",
                "    ttl: 7d",
            ]
    while n < 49:
        n += 1
        lines += [
            f"  - id: device_rule_{n:02d}",
            "    entity: device",
            f"    when: device_users_7d > {3 + n % 20}",
            f"    score: {20 + n % 40}",
            "    label: device_farm",
            "    action: blacklist",
            "    ttl: 7d",
        ]
    lines += [
        "  - id: bench_probe",
        "    entity: user",
        "    when: coalesce(phone_changes_30d, 0) >= 0",
        f"    events: [{PROBE_TYPE}]",
        "    score: 1",
        "    label: probe",
        "    action: blacklist",
        "    ttl: 1h",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- children


def _settings() -> Any:
    from streams.settings import Settings

    return Settings()


def _faust_app(name: str) -> Any:
    import faust

    from streams.live.setup import faust_base_options

    s = _settings()
    datadir = Path(s.state_dir) / name
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        s.app_id,
        **faust_base_options(s),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=PARTITIONS,
    )


def _report(result: dict[str, Any]) -> None:
    """One JSON line on the real stdout (Faust redirects sys.stdout to its log), then exit."""
    os.write(1, orjson.dumps(result) + b"\n")
    os._exit(0)


class _Clock:
    """first/last timestamps and a count, reported as one JSON line when ``expected`` is reached."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.first: float | None = None
        self.first_cpu = 0.0
        self.count = 0

    def tick(self, n: int = 1) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()
        self.count += n
        if self.count >= self.expected:
            self.done()

    def done(self) -> None:
        last = time.perf_counter()
        assert self.first is not None
        cpu = time.process_time() - self.first_cpu
        _report({"seconds": last - self.first, "cpu_seconds": cpu, "count": self.count})


def child_bare(expected: int) -> None:
    import faust

    app = _faust_app("bare")
    topic = app.topic(*_settings().raw_topics, key_serializer="raw", value_serializer="raw")
    clock = _Clock(expected)

    @app.agent(topic)
    async def bare(stream: Any) -> None:
        async for value in stream:
            orjson.loads(value)
            clock.tick()

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def child_naive(expected: int) -> None:
    import faust

    app = _faust_app("naive")
    topic = app.topic(*_settings().raw_topics, key_serializer="raw", value_serializer="raw")
    table = app.Table("naive-counts", default=int, partitions=PARTITIONS)
    clock = _Clock(expected)

    @app.agent(topic)
    async def naive(stream: Any) -> None:
        async for value in stream:
            event = orjson.loads(value)
            table[event["user_id"]] += 1
            clock.tick()

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def child_pipeline(expected: dict[str, int]) -> None:
    from streams.live.worker import LiveWorker

    worker = LiveWorker(_settings())
    m = worker.metrics
    raw_in = m.events_in.labels(topic=worker.settings.raw_topics[0])
    # read the counters' values directly (a registry collect every 5 ms would steal the GIL)
    done_counters = {
        entity: [getattr(m, kind).labels(entity=entity) for kind in ("applied", "duplicates", "late")]
        for entity in expected
    }
    first: list[float] = []  # wall clock, process CPU time

    def watch() -> None:
        while True:
            time.sleep(0.005)
            if not first:
                if raw_in._value.get():
                    first.extend((time.perf_counter(), time.process_time()))
                continue
            if all(
                sum(c._value.get() for c in counters) >= expected[entity]
                for entity, counters in done_counters.items()
            ):
                seconds = time.perf_counter() - first[0]
                cpu = time.process_time() - first[1]
                batches = {
                    labels["agent"]: value
                    for metric in m.batch_size.collect()
                    for sample in metric.samples
                    if sample.name.endswith("_count")
                    for labels, value in [(sample.labels, sample.value)]
                }
                _report(
                    {"seconds": seconds, "cpu_seconds": cpu, "count": expected["user"], "batches": batches}
                )

    threading.Thread(target=watch, daemon=True).start()
    worker.run()


def child_serve() -> None:
    """A plain live worker (latency run)."""
    from streams.live.worker import LiveWorker

    LiveWorker(_settings()).run()


# --------------------------------------------------------------------------- driver


def _bench_spec(state: Path) -> Path:
    """The example spec with the probe's event type declared (a rule naming an undeclared
    type is refused)."""
    path = state / "features.yaml"
    text = FEATURES.read_text(encoding="utf-8")
    if "\nevents: [" in text:
        text = text.replace("\nevents: [", f"\nevents: [{PROBE_TYPE}, ", 1)
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _env(
    bootstrap: str, state: Path, prefix: str, raw: str, phone_key: str, *, ordered: bool = True
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env.update(
        {
            "BYPASS_KAFKA_BOOTSTRAP": bootstrap,
            # the rules' lists and unblock overrides are looked up in Redis, as in production
            "BYPASS_REDIS_URL": os.environ.get("BYPASS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "BYPASS_RAW_TOPICS": raw,
            "BYPASS_APP_ID": f"{prefix}-app",
            "BYPASS_HITS_TOPIC": f"{prefix}.hits",
            "BYPASS_BLACKLIST_TOPIC": f"{prefix}.blacklist",
            "BYPASS_DLQ_TOPIC": f"{prefix}.dlq",
            "BYPASS_RULES_TOPIC": f"{prefix}.rules",
            "BYPASS_FEATURES_SPEC": str(_bench_spec(state)),
            "BYPASS_PHONE_HASH_KEY": phone_key,
            "BYPASS_STATE_DIR": str(state / prefix),
            "BYPASS_TOPIC_PARTITIONS": str(PARTITIONS),
            "BYPASS_CONSUMER_SESSION_TIMEOUT_MS": "10000",
            "BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS": "3000",
            "BYPASS_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
            "BYPASS_METRICS_PORT": "0",
            "BYPASS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "BYPASS_TABLE_STANDBY_REPLICAS": "0",
            "BYPASS_EVENT_TIME_ORDER": "true" if ordered else "false",
        }
    )
    return env


def _run_child(variant: str, arg: Any, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        "--arg",
        orjson.dumps(arg).decode(),
    ]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=str(ROOT))
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.decode(errors="replace").splitlines():
        if '{"seconds"' in line:  # Faust's spinner may precede it
            result: dict[str, Any] = orjson.loads(line[line.index('{"seconds"') :])
            return result
    raise RuntimeError(
        f"{variant} child failed (exit {proc.returncode}): {stderr.decode(errors='replace')[-3000:]}"
    )


def _publish(env: dict[str, str], text: str, state: Path) -> None:
    path = state / f"rules-{secrets.token_hex(3)}.yaml"
    path.write_text(text, encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "streams", "rules", "publish", str(path)],
        env=env,
        check=True,
        cwd=str(ROOT),
        capture_output=True,
    )


def _expected(events: list[dict[str, Any]]) -> dict[str, int]:
    import features

    spec = features.load_spec(FEATURES)
    counts: dict[str, int] = dict.fromkeys(spec.entities, 0)
    for event in events:
        for entity, _key in spec.entity_keys(event):
            counts[entity] += 1
    return counts


def _throughput(
    bootstrap: str, state: Path, phone_key: str, quick: bool, part_pids: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    from streams.core import kafka
    from streams.local.simulate import SimConfig, Simulator
    from streams.producer import EventProducer
    from streams.settings import Settings

    run = secrets.token_hex(3)
    raw = f"bench{run}.events"
    n_s = 20 if quick else 60
    events = list(Simulator(SimConfig(users=2000, rate=1000, duration_s=n_s, seed=11)).events())
    base = Settings(kafka_bootstrap=bootstrap, raw_topics=(raw,), topic_partitions=PARTITIONS)
    kafka.ensure_topics(base, [raw], config=RAW_TOPIC_CONFIG)
    producer = EventProducer(base, topic=raw)
    producer.send_many(events)
    producer.flush().raise_for_errors()
    n = len(events)
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}  # events per CPU second of the worker process (all its threads)
    timeout = 120.0
    env_a = _env(bootstrap, state, f"bench{run}a", raw, phone_key)
    env_b = _env(bootstrap, state, f"bench{run}b", raw, phone_key)
    env_c = _env(bootstrap, state, f"bench{run}c", raw, phone_key)
    env_d = _env(bootstrap, state, f"bench{run}d", raw, phone_key, ordered=False)
    _publish(env_c, rules_50(), state)
    _publish(env_d, rules_50(), state)
    for variant, name, arg, env in (
        ("bare", "bare", n, env_a),
        ("naive", "naive", n, env_b),
        ("pipeline", "pipeline", _expected(events), env_c),
        ("pipeline", "arrival", _expected(events), env_d),
    ):
        result = _run_child(variant, arg, env, timeout)
        out[name] = n / result["seconds"]
        cpu[name] = n / result["cpu_seconds"]
    quix_rows = _quix_rows(bootstrap, state, run, raw, n, out["pipeline"], cpu["pipeline"], timeout)
    # (f) on the first PROCESSES_EVENTS of the same events (both runs the same ones): each
    # run has a start and a group join of its own, and the whole benchmark a time budget
    some = events[:PROCESSES_EVENTS]
    processes = [
        _run_processes(k, bootstrap, state, f"bench{run}p{k}", phone_key, some, timeout, part_pids or {})
        for k in (1, 2)
    ]
    return [
        {
            "name": "faust_bare_decode_events_per_s",
            "value": out["bare"],
            "unit": "events/s",
            "events": n,
            "events_per_cpu_s": cpu["bare"],
        },
        {
            "name": "faust_naive_table_events_per_s",
            "value": out["naive"],
            "unit": "events/s",
            "events": n,
            "events_per_cpu_s": cpu["naive"],
        },
        {
            "name": "pipeline_vs_bare",
            "value": out["pipeline"],
            "unit": "events/s",
            "baseline_name": "(a) bare Faust agent, decode only, same broker and run",
            "baseline_value": out["bare"],
            "ratio": out["pipeline"] / out["bare"],
            "goal": "ratio >= 0.70",
            "events_per_cpu_s": cpu["pipeline"],
            "cpu_ratio": cpu["pipeline"] / cpu["bare"],
        },
        {
            "name": "pipeline_vs_naive",
            "value": out["pipeline"],
            "unit": "events/s",
            "baseline_name": "(b) naive Faust agent, table update per event, same broker and run",
            "baseline_value": out["naive"],
            "ratio": out["pipeline"] / out["naive"],
            "goal": "ratio >= 2.5",
            "cpu_ratio": cpu["pipeline"] / cpu["naive"],
        },
        {
            "name": "pipeline_event_time_order_vs_arrival",
            "value": out["pipeline"],
            "unit": "events/s",
            "baseline_name": "(d) the same pipeline in arrival order (BYPASS_EVENT_TIME_ORDER=false)",
            "baseline_value": out["arrival"],
            "ratio": out["pipeline"] / out["arrival"],
            "goal": "ratio >= 0.90",
            "cpu_ratio": cpu["pipeline"] / cpu["arrival"],
        },
        *quix_rows,
        _processes_row(*processes, len(some)),
    ]


# --------------------------------------------------------------------------- (e) Quix Streams


def _quix_python() -> tuple[str | None, str]:
    """An interpreter with quixstreams and where it came from, or None and why not."""
    explicit = os.environ.get("BENCH_QUIX_PYTHON")
    if explicit:
        return explicit, "BENCH_QUIX_PYTHON"
    if importlib.util.find_spec("quixstreams") is not None:
        return sys.executable, "this interpreter"
    venv = ROOT / ".venv-bench" / "bin" / "python"
    if venv.exists():
        return str(venv), ".venv-bench"
    return None, (
        "quixstreams is not installed: `pip install -e '.[bench]'`, or a separate venv "
        "(python -m venv .venv-bench && .venv-bench/bin/pip install quixstreams; see bench/README.md)"
    )


def _run_quix(
    python: str, bootstrap: str, state: Path, prefix: str, raw: str, n: int, timeout_s: float
) -> dict[str, Any]:
    cmd = [
        python,
        str(BENCH_DIR / "quix_app.py"),
        *("--bootstrap", bootstrap, "--topic", raw, "--hits", f"{prefix}.hits"),
        *("--group", f"{prefix}-quix", "--state-dir", str(state / prefix / "quix"), "--expected", str(n)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYPASS_", "PYTHON"))}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=str(ROOT))
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith('{"seconds"'):
            result: dict[str, Any] = orjson.loads(line)
            return result
    raise RuntimeError(
        f"the Quix Streams app failed (exit {proc.returncode}): {stderr.decode(errors='replace')[-3000:]}"
    )


def _quix_rows(
    bootstrap: str,
    state: Path,
    run: str,
    raw: str,
    n: int,
    pipeline: float,
    pipeline_cpu: float,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """(e): the Quix app over the same backlog; no rows (and the reason on stderr) when it
    cannot run: a number is never made up."""
    python, origin = _quix_python()
    if python is None:
        print(f"bench_pipeline: no Quix Streams baseline: {origin}", file=sys.stderr)
        return []
    try:
        result = _run_quix(python, bootstrap, state, f"bench{run}e", raw, n, timeout_s)
    except RuntimeError as exc:
        print(f"bench_pipeline: no Quix Streams baseline: {exc}", file=sys.stderr)
        return []
    quix, quix_cpu = n / result["seconds"], n / result["cpu_seconds"]
    return [
        {
            "name": "quix_app_events_per_s",
            "value": quix,
            "unit": "events/s",
            "events": n,
            "hits": result["hits"],
            "events_per_cpu_s": quix_cpu,
            "note": "Quix Streams app (bench/quix_app.py, " + origin + "): one stateful apply per user, "
            "4 windowed features, 3 rules, hits topic, RocksDB + changelog, at-least-once",
        },
        {
            "name": "pipeline_vs_quix",
            "value": pipeline,
            "unit": "events/s",
            "baseline_name": "(e) Quix Streams app, 4 features + 3 rules per user, same broker and run",
            "baseline_value": quix,
            "ratio": pipeline / quix,
            "goal": "ratio >= 0.50",
            "events_per_cpu_s": pipeline_cpu,
            "cpu_ratio": pipeline_cpu / quix_cpu,
            "note": "bypass does more per event: 3 entity kinds behind a repartition hop, dedup, "
            "lateness, event-time order, DLQ checks, 50 rules, decisions",
        },
    ]


# --------------------------------------------------------------------------- (f) --processes


def _free_ports(k: int) -> int:
    """A port p with p .. p + k - 1 free (worker i serves on BYPASS_METRICS_PORT + i)."""
    import socket

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        try:
            for i in range(1, k):
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", base + i))  # noqa: S104 - as the worker binds
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {k} consecutive free ports")


def _get(url: str) -> bytes | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:  # 503 while starting
        body = exc.read()
    except OSError:
        return None
    return body


def _applied(port: int) -> dict[str, float]:
    """Per entity: events applied + duplicates + late, from one worker's /metrics."""
    text = _get(f"http://127.0.0.1:{port}/metrics")
    out: dict[str, float] = {}
    for line in (text or b"").decode().splitlines():
        if (
            line.startswith(
                (
                    "bypass_events_applied_total{",
                    "bypass_events_duplicate_total{",
                    "bypass_events_late_total{",
                )
            )
            and 'entity="' in line
        ):
            entity = line.split('entity="', 1)[1].split('"', 1)[0]
            out[entity] = out.get(entity, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _node_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _run_processes(
    k: int,
    bootstrap: str,
    state: Path,
    prefix: str,
    phone_key: str,
    events: list[dict[str, Any]],
    timeout_s: float,
    part_pids: dict[str, int],
) -> dict[str, Any]:
    """(f): ``bypass worker --processes k``; once every child is ready and the raw partitions
    are split, the events go to its fresh raw topic; until every entity's events are applied."""
    from streams.core import kafka
    from streams.settings import Settings

    raw = f"{prefix}.events"
    env = _env(bootstrap, state, prefix, raw, phone_key)
    base_port = _free_ports(k)
    env.update({"BYPASS_METRICS_PORT": str(base_port), "BYPASS_WORKER_STATUS_S": "0"})
    settings = Settings(kafka_bootstrap=bootstrap, raw_topics=(raw,), topic_partitions=PARTITIONS)
    kafka.ensure_topics(settings, [raw], config=RAW_TOPIC_CONFIG)
    _publish(env, rules_50(), state)
    expected = _expected(events)
    ports = [base_port + i for i in range(k)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "--processes", str(k)],
            env=env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            pids: list[int] = []
            split: list[list[int]] = []
            while time.monotonic() < deadline and proc.poll() is None:
                bodies = [_get(f"http://127.0.0.1:{p}/healthz") for p in ports]
                health = [orjson.loads(b) for b in bodies if b]
                if len(health) == k and all(h.get("ready") for h in health):
                    split = [h["partitions"].get(raw, []) for h in health]
                    if all(split) and sum(map(len, split)) == PARTITIONS:
                        pids = [int(h["pid"]) for h in health]
                        break
                time.sleep(0.5)
            if not pids:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"--processes {k}: the workers never split the partitions: {tail}")
            # the messages EventProducer would send (key = user id, Kafka timestamp = ts),
            # encoded before the clock starts: the bench's producer takes as little of the
            # two cores as it can while the workers run
            messages = [(str(e["user_id"]).encode(), orjson.dumps(e), int(e["ts"])) for e in events]
            producer = kafka.producer(settings)
            # the local stack's parts (if ours), and the supervisor (k = 1: no supervisor)
            others = {**part_pids, **({"supervisor": proc.pid} if k > 1 else {})}
            cpu0, busy0 = sum(_cpu_s(pid) for pid in pids), _node_busy_s()
            others0 = {name: _cpu_s(pid) for name, pid in others.items()}
            bench0 = time.process_time()
            t0 = time.perf_counter()
            for key, value, ts in messages:
                while True:
                    try:
                        producer.produce(raw, key=key, value=value, timestamp=ts)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush(60)
            produce_s = time.perf_counter() - t0
            done = time.monotonic() + timeout_s
            while time.monotonic() < done:
                totals: dict[str, float] = {}
                for port in ports:
                    for entity, count in _applied(port).items():
                        totals[entity] = totals.get(entity, 0.0) + count
                if all(totals.get(entity, 0.0) >= want for entity, want in expected.items()):
                    break
                time.sleep(0.25)
            else:
                raise RuntimeError(f"--processes {k}: not every event applied: {totals} of {expected}")
            seconds = time.perf_counter() - t0
            cpu = sum(_cpu_s(pid) for pid in pids) - cpu0
            busy = _node_busy_s() - busy0
            cores = {f"{name}_cores": (_cpu_s(pid) - others0[name]) / seconds for name, pid in others.items()}
            cores["bench_cores"] = (time.process_time() - bench0) / seconds
        finally:
            proc.terminate()  # SIGTERM: the supervisor stops its children
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "processes": k,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "partitions": split,
        "produce_seconds": produce_s,
        "worker_cores": cpu / seconds,
        "node_busy_cores": busy / seconds,
        **cores,
    }


def _processes_note(one: dict[str, Any], two: dict[str, Any]) -> str:
    """What the node's cores did during the two runs (1 / 2 processes)."""

    def pair(name: str) -> str:
        a, b = one.get(name), two.get(name)
        return f"{a:.2f} / {b:.2f}" if a is not None and b is not None else "?"

    rest = [
        one["node_busy_cores"]
        - one["worker_cores"]
        - sum(one.get(f"{n}_cores", 0.0) for n in ("kafka", "redis")),
        two["node_busy_cores"]
        - two["worker_cores"]
        - sum(two.get(f"{n}_cores", 0.0) for n in ("kafka", "redis")),
    ]
    return (
        f"cores busy on the {os.cpu_count()}-core node with 1 / 2 worker processes: all "
        f"{pair('node_busy_cores')}, the workers {pair('worker_cores')}, the Tansu broker "
        f"{pair('kafka_cores')}, Redis {pair('redis_cores')}, the rest (this bench, the supervisor, "
        f"other people's work on the machine) {rest[0]:.2f} / {rest[1]:.2f}. A worker is CPU-bound "
        "(Python, one core each); the broker needs little, so two processes scale until the node's "
        "cores are full: here the 2 cores themselves are the limit, shared with whatever else runs"
    )


def _processes_row(one: dict[str, Any], two: dict[str, Any], n: int) -> dict[str, Any]:
    eps1, eps2 = n / one["seconds"], n / two["seconds"]
    return {
        "name": "pipeline_processes_2_vs_1",
        "value": eps2,
        "unit": "events/s",
        "baseline_name": "(f) `bypass worker --processes 1`, same events, same run",
        "baseline_value": eps1,
        "ratio": eps2 / eps1,
        "events": n,
        "events_per_cpu_s": n / two["cpu_seconds"],
        "baseline_events_per_cpu_s": n / one["cpu_seconds"],
        "cpu_seconds": two["cpu_seconds"],
        "baseline_cpu_seconds": one["cpu_seconds"],
        "raw_partitions": two["partitions"],
        "produce_seconds": [one["produce_seconds"], two["produce_seconds"]],
        # cores in use over each run: the workers' own, and the whole machine's (broker,
        # Redis, this bench, anyone else's work on it)
        "worker_cores": [one["worker_cores"], two["worker_cores"]],
        "node_busy_cores": [one["node_busy_cores"], two["node_busy_cores"]],
        "node_cores": os.cpu_count(),
        # the rest of the node's busy cores, per part: the broker, Redis, the supervisor,
        # this bench (producing and reading /metrics); what is left is other people's work
        **{
            name: [one.get(name), two.get(name)]
            for name in ("kafka_cores", "redis_cores", "supervisor_cores", "bench_cores")
            if name in one or name in two
        },
        "note": _processes_note(one, two),
    }


def _latency(
    bootstrap: str, state: Path, phone_key: str, quick: bool, rate: int = 2000, *, ordered: bool = True
) -> list[float]:
    """Sorted produce -> blacklist latencies (seconds) of the probes."""
    from confluent_kafka import OFFSET_END, TopicPartition

    from streams.core import kafka
    from streams.local.simulate import SimConfig, Simulator
    from streams.producer import EventProducer
    from streams.settings import Settings

    run = secrets.token_hex(3)
    prefix = f"lat{run}"
    raw = f"{prefix}.events"
    env = _env(bootstrap, state, prefix, raw, phone_key, ordered=ordered)
    base = Settings(
        kafka_bootstrap=bootstrap,
        raw_topics=(raw,),
        topic_partitions=PARTITIONS,
        blacklist_topic=f"{prefix}.blacklist",
        hits_topic=f"{prefix}.hits",
        dlq_topic=f"{prefix}.dlq",
    )
    kafka.ensure_topics(base, [raw, base.blacklist_topic, base.hits_topic, base.dlq_topic])
    _publish(env, rules_50(), state)
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", "serve", "--arg", "null"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # read the blacklist as bypass's own consumers do (the Redis mirror's fetch wait), not
    # with librdkafka's 500 ms default, which a broker that holds fetches adds to every read
    consumer = kafka.consumer(
        base, group_id=f"{prefix}-reader", fetch_wait_max_ms=base.consumer_fetch_max_wait_ms
    )
    meta = consumer.list_topics(base.blacklist_topic, timeout=10).topics[base.blacklist_topic]
    consumer.assign([TopicPartition(base.blacklist_topic, p, OFFSET_END) for p in meta.partitions])
    producer = EventProducer(base, topic=raw, **{"linger.ms": 1})
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    try:
        # wait until the worker answers a probe (group joined, rules loaded)
        deadline = time.monotonic() + 60
        ready = False
        k = 0
        while not ready and time.monotonic() < deadline:
            k += 1
            eid = f"{prefix}-warm-{k}"
            producer.send(
                {"event_id": eid, "type": PROBE_TYPE, "ts": int(time.time() * 1000), "user_id": "warm"}
            )
            producer.poll(0)
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end and not ready:
                msg = consumer.poll(0.1)
                if msg is not None and not msg.error():
                    ready = True
        if not ready:
            raise RuntimeError("the latency worker never answered a probe")
        seconds = 8 if quick else 20
        sim = Simulator(SimConfig(users=2000, rate=rate, duration_s=max(seconds, 12), seed=5)).events()
        total = rate * seconds
        stop = threading.Event()

        def produce() -> None:
            start = time.perf_counter()
            for i in range(total):
                event = next(sim)
                event = {**event, "event_id": f"{prefix}-{i}", "ts": int(time.time() * 1000)}
                if i % 20 == 0:
                    event["type"] = PROBE_TYPE
                    sent_at[event["event_id"]] = time.perf_counter()
                producer.send(event)
                target = start + (i + 1) / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.flush()
            stop.set()

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        wanted = total // 20
        deadline = time.monotonic() + seconds + 30
        while len(latencies) < wanted and time.monotonic() < deadline:
            msg = consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            record = orjson.loads(msg.value())
            t0 = sent_at.get(record.get("event_id"))
            if t0 is not None:
                latencies.append(time.perf_counter() - t0)
        thread.join(timeout=5)
    finally:
        worker.kill()
        worker.wait()
        consumer.close()
    if not latencies:
        raise RuntimeError("no probe came back")
    latencies.sort()
    return latencies


def _pct(latencies: list[float], q: float) -> float:
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000


def _latency_rows(ordered: list[float], arrival: list[float], rate: int = 2000) -> list[dict[str, Any]]:
    return [
        {
            "name": "latency_produce_to_blacklist_p50",
            "value": _pct(ordered, 0.50),
            "unit": "ms",
            "rate": rate,
        },
        {
            "name": "latency_produce_to_blacklist_p99",
            "value": _pct(ordered, 0.99),
            "unit": "ms",
            "goal": "< 500",
            "probes": len(ordered),
        },
        {
            "name": "latency_p99_event_time_order_vs_arrival",
            "value": _pct(ordered, 0.99),
            "unit": "ms",
            "baseline_name": "the same latency run in arrival order (BYPASS_EVENT_TIME_ORDER=false)",
            "baseline_value": _pct(arrival, 0.99),
            "ratio": _pct(ordered, 0.99) / max(_pct(arrival, 0.99), 1e-9),
            "goal": "ratio <= 1.10",
        },
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    from streams.local.stack import Stack

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        state = Path(tmp)
        bootstrap = os.environ.get("BYPASS_KAFKA_BOOTSTRAP")
        stack = None
        if not bootstrap:
            # Redis too: the workers look up the rules' lists and unblock overrides in it
            no_clickhouse = {"clickhouse": "http://127.0.0.1:1"}
            stack = Stack(state / "stack", external=no_clickhouse, die_with_parent=True)
            addresses = stack.up().addresses
            bootstrap = addresses["kafka"]
            os.environ["BYPASS_REDIS_URL"] = addresses["redis"]
        phone_key = secrets.token_urlsafe(24)
        try:
            part_pids = {p.name: p.pid for p in stack.status() if p.pid} if stack is not None else {}
            results = _throughput(bootstrap, state, phone_key, quick, part_pids)
            ordered = _latency(bootstrap, state, phone_key, quick)
            arrival = _latency(bootstrap, state, phone_key, quick, ordered=False)
            results += _latency_rows(ordered, arrival)
            # the same comparison below saturation: on a slow or shared machine 2,000
            # events/s can be more than one worker takes, and then both runs only queue
            light_ordered = _latency(bootstrap, state, phone_key, True, rate=LIGHT_RATE)
            light_arrival = _latency(bootstrap, state, phone_key, True, rate=LIGHT_RATE, ordered=False)
            results.append(
                {
                    "name": f"latency_p99_at_{LIGHT_RATE}_event_time_order_vs_arrival",
                    "value": _pct(light_ordered, 0.99),
                    "unit": "ms",
                    "baseline_name": f"the same at {LIGHT_RATE} events/s in arrival order",
                    "baseline_value": _pct(light_arrival, 0.99),
                    "ratio": _pct(light_ordered, 0.99) / max(_pct(light_arrival, 0.99), 1e-9),
                    "goal": "ratio <= 1.10",
                }
            )
        finally:
            if stack is not None:
                stack.down(purge=True)
    return results


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--arg", default="null")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.child:
        sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv
        arg = orjson.loads(args.arg)
        {"bare": child_bare, "naive": child_naive, "pipeline": child_pipeline}.get(
            args.child, lambda _a: child_serve()
        )(arg)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == "__main__":
    _main()
