"""``make chaos``: the whole pipeline on the local stack under faults and hostile input (issue 14).

    python bench/chaos.py [--minutes 5] [--events 50000] [--quick] [--seed 1] [--out bench/results.json]

What it does, in one run (own private stack under a temporary directory, own names):

1. starts a private local stack (Tansu, ClickHouse from chdb, Redis; ``streams.local.stack``),
   migrates ClickHouse, publishes the rule set (``examples/rules.yaml`` plus one ``in_list``
   rule over a Redis list of devices) and tries to publish broken rule sets (a ``|`` in a
   label, an id with a newline, a 100000-day TTL, a division by zero): each must be refused
   with a nonzero exit while the good set stays active;
2. starts ``bypass worker``, ``bypass sink clickhouse`` and ``bypass sink redis`` as child
   processes;
3. produces ``--events`` simulated events (``streams.local.simulate``, event time covering
   the last 20 hours, ending now) spread evenly over 85% of the run, interleaved (three
   rounds) with every bad input: a deeply nested event, a far-future time, not JSON, not an
   object, a missing field, a wrong type, a bad value, an unknown field carrying a phone
   number under ``attrs``, a too-large event; valid events with type confusion
   (``"amount": "50000"``) and with a phone under ``attrs``; and, straight to the output
   topics, a hit record with 300-deep ``features`` and records that are not JSON (for the
   sinks);
4. meanwhile injects faults on a schedule: the worker SIGKILLed 3 times (restarted a few
   seconds later), ClickHouse stopped for 30 s, Redis stopped for 30 s (while the
   ``in_list`` rule needs it), the ClickHouse writer and the Redis mirror SIGKILLed once
   each (and restarted);
5. runs the offline processor (``bypass replay``'s ``Replay``, in process, all events
   evaluated) over the same raw topic: the expected hits and blacklist entries;
6. waits until ClickHouse and Redis converge (or a timeout), then compares and prints a
   table; the rows go into ``bench/results.json`` (bench ``chaos``; other entries kept).

How to read the table:

- ``faults injected``: what was done and when (seconds since the traffic started).
- ``bad inputs sent`` and ``DLQ ... by reason``: per reason, how many were sent, how many
  DLQ messages carry that reason, and from how many distinct source records (a writer
  worker or writer killed before its commit dead-letters a record again on restart: more
  messages than sources is at-least-once delivery, not a fault). ``worker`` rows are dead-lettered by
  the live worker, ``sink-clickhouse`` / ``sink-redis`` rows by a writer.
- ``hits expected``: distinct hit ids of the offline processor. ``in ClickHouse after
  FINAL``: distinct hit ids in ``risk_hits FINAL`` (run id ``live``). ``lost`` = expected
  ids not in ClickHouse. ``duplicated`` = hit ids in ClickHouse that the offline processor
  did not produce (a redelivered event applied twice would make them) plus rows ``FINAL``
  did not collapse (``count() - uniqExact(hit_id)`` after FINAL). Both must be 0. ``rows
  before FINAL`` shows redelivered rows not merged away yet; ``hit records on the hits
  topic`` how many records the worker produced for how many ids (redeliveries after a
  SIGKILL, which the sinks absorb by hit_id).
- ``blacklist entries``: (entity, key, label) of the offline processor's blacklist records
  whose expiry is still ahead, against the labels live in Redis under the run's prefix.
- checks: each must say ok; the exit code is 1 otherwise (2: the run could not be carried
  out, e.g. a part did not start; 130: interrupted). Ctrl-C or SIGTERM tear everything down.

``--quick`` is a smoke run: 1 minute, 5,000 events, 8 s outages, the same checks
(``tests/integration/test_chaos.py`` runs it for 30 s).

Every process of the run (worker, writers, CLI steps, the stack's ClickHouse server and the
offline processor) runs a copy of ``features/ rules/ sinks/ streams/ examples/`` taken at
the start, so edits to the working tree during the minutes of the run (a restarted writer
picking up a half-made change) can not mix versions; ``--no-snapshot`` runs the tree itself.

The phone hash covers ``attrs.phone`` here (``BYPASS_PII_FIELDS=attrs.phone``, as an
operator would configure it): the run checks the raw number appears in no DLQ message and
no internal topic.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results.json"
# the code every process of the run uses: a copy taken at the start (see snapshot_code)
CODE_DIRS = ("features", "rules", "sinks", "streams", "examples")
CODE = ROOT
MAX_UNPLANNED = 5  # a child exiting by itself more often than this ends the run
RULESET_VERSION = "chaos-1"
LIST_NAME = "chaos_devices"
HOUR_MS = 3_600_000
SPAN_MS = 20 * HOUR_MS  # event time of the stream: the last 20 hours (1 d TTLs stay live)
# one wall-clock second is 4 minutes of event time here: the fraction of a second by which the
# re-keyed (device, ip) streams reorder must stay inside the allowed lateness (as in make demo)
LATENESS_MS = 6 * HOUR_MS
PARTITIONS = 4
RAW_PHONE = "+8613800000000"
PHONE_NEEDLE = b"8613800000000"  # the raw number, with or without its '+'
FIELDS = ("name", "value", "unit", "baseline_name", "baseline_value", "ratio", "bench")
# the reasons the worker must dead-letter (one bad input each per round)
WORKER_REASONS = (
    "too_deep",
    "ts_out_of_bounds",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_field",
    "too_large",
)

console = Console(width=None if sys.stdout.isatty() else 130)


def snapshot_code(dest: Path) -> Path:
    """Copy the packages and examples to ``dest`` and run everything from there.

    The run takes minutes and restarts its processes several times: a copy keeps every
    incarnation (and the offline processor at the end) on the code of the start, even
    while the working tree is being edited. Must run before any project module is imported.
    """
    global CODE
    for name in CODE_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    CODE = dest
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest), os.environ.get("PYTHONPATH")]))
    return dest


class ChaosError(Exception):
    """A step of the chaos run failed (not a finding: the run could not be carried out)."""


# --------------------------------------------------------------------------- processes
# one `bypass` child per part: streams.local.demo.Child, run from the code snapshot (CODE)

if TYPE_CHECKING:
    from streams.local.demo import Child


# --------------------------------------------------------------------------- bad inputs


@dataclass(frozen=True)
class BadInput:
    """One hostile message: where it goes, its bytes, and what must become of it."""

    kind: str
    topic: str  # "raw" | "hits" | "blacklist"
    value: bytes
    reason: str | None  # the DLQ reason the worker gives it; None: valid or for the sinks
    key: bytes = b"u-chaos"
    via_sdk: bool = False  # a valid event: sent with the producer SDK (Kafka time = event time)


def bad_inputs(ts: int, round_no: int) -> list[BadInput]:
    """Every bad input of issue 14 (and the malformed ones the DLQ handles), event time ``ts``."""
    r = round_no
    deep = (
        b'{"event_id":"deep' + str(r).encode() + b'","type":"login","ts":' + str(ts).encode()
        + b',"user_id":"u-a","attrs":{"x":' + b"[" * 300 + b"]" * 300 + b"}}"
    )  # fmt: skip

    def ev(eid: str, **extra: Any) -> dict[str, Any]:
        return {"event_id": f"chaos-{eid}-{r}", "type": "login", "ts": ts, "user_id": "u-chaos", **extra}

    poison_hit = (
        b'{"hit_id":"poison-' + str(r).encode() + b'","event_id":"poison-ev-' + str(r).encode()
        + b'","event_type":"login","event_ts":' + str(ts).encode()
        + b',"user_id":"u-p","entity":"user","key":"u-p","rule_id":"impossible_travel",'
        b'"label":"impossible_travel","score":50,"mode":"active","action":"review","counted":true,'
        b'"suppressed":false,"rollout_excluded":false,"error":null,"features":{"f":'
        + b"[" * 300 + b"]" * 300
        + b'},"decision":"pass","total_score":50,"ruleset_version":"chaos-1","source_topic":"x",'
        b'"source_partition":0,"source_offset":0,"run_id":"live"}'
    )  # fmt: skip
    return [
        BadInput("deeply nested attrs (300 levels)", "raw", deep, "too_deep", key=b"u-a"),
        BadInput(
            "far-future time (year 9999)",
            "raw",
            orjson.dumps(ev("future", ts=253402300799999)),
            "ts_out_of_bounds",
        ),
        BadInput("not JSON", "raw", b"{not json", "not_json"),
        BadInput("not an object", "raw", b"[1, 2, 3]", "not_object"),
        BadInput(
            "missing field (user_id)",
            "raw",
            orjson.dumps({"event_id": f"chaos-miss-{r}", "type": "login", "ts": ts}),
            "missing_field",
        ),
        BadInput("wrong type (ts as text)", "raw", orjson.dumps(ev("wt", ts="yesterday")), "wrong_type"),
        BadInput(
            "bad value (lat 999)", "raw", orjson.dumps(ev("bv", geo={"lat": 999, "lon": 1})), "bad_value"
        ),
        BadInput(
            "unknown field, phone under attrs",
            "raw",
            orjson.dumps(ev("uf", mobile="x", attrs={"phone": RAW_PHONE})),
            "unknown_field",
        ),
        BadInput(
            "too large (70 kB)", "raw", orjson.dumps(ev("big", attrs={"blob": "x" * 70_000})), "too_large"
        ),
        # valid events: harmless (processed like any other)
        BadInput(
            "phone under attrs (valid, hashed)",
            "raw",
            orjson.dumps(ev("phone", attrs={"phone": RAW_PHONE})),
            None,
            via_sdk=True,
        ),
        *(
            BadInput(
                f"type confusion amount={amount!r} (valid)",
                "raw",
                orjson.dumps(
                    {
                        "event_id": f"chaos-amt{i}-{r}",
                        "type": "order",
                        "ts": ts,
                        "user_id": "u-chaos",
                        "attrs": {"amount": amount},
                    }
                ),
                None,
                via_sdk=True,
            )
            for i, amount in enumerate(("50000", True, [1, 2], {"v": 50000}))
        ),
        # for the writers
        BadInput("hit with 300-deep features (sinks)", "hits", poison_hit, None, key=b"user:u-p"),
        BadInput("hit record not JSON (sinks)", "hits", b"\x00not json", None, key=b"user:u-p"),
        BadInput("blacklist record not JSON (sinks)", "blacklist", b"{oops", None, key=b"user:u-p"),
    ]


BAD_RULE_SETS: dict[str, tuple[str, str]] = {
    # name -> (text replaced in the good set, replacement)
    "'|' in a label": ("label: account_resale\n    action: blacklist\n    ttl: 30d\n    priority: 20",
                       "label: account|resale\n    action: blacklist\n    ttl: 30d\n    priority: 20"),
    "id with a newline": ("- id: device_farm\n", '- id: "device_farm\\n"\n'),
    "ttl 100000d": ("ttl: 7d", "ttl: 100000d"),
    "division by zero": ("when: order_amount_1h > 5000", "when: order_amount_1h / 0 > 1"),
}  # fmt: skip


def good_rules() -> str:
    text = (CODE / "examples" / "rules.yaml").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.startswith("version:")]
    return (
        f'version: "{RULESET_VERSION}"\n'
        + "\n".join(lines)
        + "\n\n"
        + "  # chaos: needs Redis at every device event (in_list while Redis is down)\n"
        + "  - id: listed_device\n"
        + "    entity: device\n"
        + f'    when: in_list("{LIST_NAME}", event.device_id)\n'
        + "    score: 10\n"
        + "    label: listed_device\n"
        + "    action: review\n"
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Fault:
    at_s: float
    what: str
    detail: str = ""


@dataclass
class Outcome:
    faults: list[Fault] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # bad input kind -> count
    sent_reasons: Counter[str] = field(default_factory=Counter)  # worker reason -> count
    sink_poison: Counter[str] = field(default_factory=Counter)  # topic -> count
    events: int = 0
    rule_sets_refused: dict[str, bool] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)  # rule set -> first problem reported
    unplanned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    redis_waiting_seen: float = 0.0  # max of bypass_dependency_waiting while Redis was down
    redis_retries: float = 0.0  # max of bypass_dependency_retries_total (one worker) then


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = f"chaos_{time.strftime('%H%M%S', time.gmtime())}_{secrets.token_hex(2)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="bypass-chaos-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.stack: Any = None
        self.env: dict[str, str] = {}
        self.procs: dict[str, Child] = {}
        self.incarnation: Counter[str] = Counter()
        self.metrics_ports: dict[str, int] = {}
        self.out = Outcome()
        self.t0 = 0.0
        self.lock = threading.Lock()
        self.killed: set[str] = set()  # children down on purpose right now
        self.down: set[str] = set()  # stack parts stopped on purpose right now

    # -- setup --------------------------------------------------------------------

    def names(self) -> dict[str, str]:
        t = self.tag
        return {
            "BYPASS_APP_ID": t,
            "BYPASS_RAW_TOPICS": f"{t}.events",
            "BYPASS_HITS_TOPIC": f"{t}.hits",
            "BYPASS_BLACKLIST_TOPIC": f"{t}.blacklist",
            "BYPASS_DLQ_TOPIC": f"{t}.dlq",
            "BYPASS_RULES_TOPIC": f"{t}.rules",
            "BYPASS_CLICKHOUSE_DATABASE": t,
            "BYPASS_REDIS_KEY_PREFIX": f"bypass:{t}:",
        }

    def up(self) -> None:
        from streams.local.stack import Stack

        self.stack = Stack(self.tmp / "stack", die_with_parent=True, health_timeout_s=90.0)
        with console.status("starting a private local stack (Tansu, ClickHouse, Redis)"):
            result = self.stack.up()
        console.print(f"[green]✓[/] stack up in {result.seconds:.1f} s: {result.addresses}", highlight=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
        env.update(self.stack.env())
        env.update(self.names())
        env.update(
            {
                "BYPASS_FEATURES_SPEC": str(CODE / "examples" / "features.yaml"),
                "BYPASS_STATE_DIR": str(self.tmp / "state"),
                "BYPASS_TOPIC_PARTITIONS": str(PARTITIONS),
                "BYPASS_ALLOWED_LATENESS_MS": str(LATENESS_MS),
                "BYPASS_PII_FIELDS": "attrs.phone",
                "BYPASS_CONSUMER_SESSION_TIMEOUT_MS": "6000",
                "BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS": "3000",
                "BYPASS_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
                "BYPASS_SINK_SESSION_TIMEOUT_MS": "6000",
                "BYPASS_SINK_RETRY_MAX_MS": "5000",
                "BYPASS_TABLE_STANDBY_REPLICAS": "0",
                "BYPASS_LOG_LEVEL": "INFO",
                "BYPASS_METRICS_PORT": "0",
                # the faults hit "the worker" and "the writer" processes themselves
                "BYPASS_WORKER_PROCESSES": "1",
                "BYPASS_SINK_PROCESSES": "1",
            }
        )
        self.env = env
        # this process talks to the same stack (producers, replay, ClickHouse, Redis)
        for k in [k for k in os.environ if k.startswith("BYPASS_")]:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("BYPASS_")})

    def settings(self) -> Any:
        from streams.settings import Settings

        return Settings()

    def cli(self, args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env=self.env,
            cwd=CODE,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def prepare(self, events: list[dict[str, Any]]) -> None:
        from sinks.redis_lists import add as add_to_list
        from sinks.redis_mirror import redis_client
        from streams.core import kafka

        s = self.settings()
        done = self.cli(["clickhouse", "migrate"])
        if done.returncode != 0:
            raise ChaosError(f"bypass clickhouse migrate failed:\n{done.stdout}{done.stderr}")
        kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic])
        kafka.ensure_dlq(s)
        good = good_rules()
        path = self.tmp / "rules.yaml"
        path.write_text(good, encoding="utf-8")
        done = self.cli(["rules", "publish", str(path)])
        if done.returncode != 0:
            raise ChaosError(f"publishing the good rule set failed:\n{done.stdout}{done.stderr}")
        console.print(f"[green]✓[/] rule set {RULESET_VERSION} published ({good.count('- id:')} rules)")
        # the in_list rule: the five busiest devices of the stream are listed
        devices = Counter(e["device_id"] for e in events if "device_id" in e)
        listed = [d for d, _ in devices.most_common(5)]
        add_to_list(redis_client(s.redis_url), s.redis_key_prefix, LIST_NAME, listed)

    def refuse_bad_rule_sets(self) -> None:
        """Publish each broken rule set (in parallel): each must be refused, nonzero exit."""
        good = good_rules()
        bad_paths: dict[str, Path] = {}
        for i, (name, (old, new)) in enumerate(BAD_RULE_SETS.items()):
            if old not in good:
                raise ChaosError(f"bad rule set {name!r}: {old!r} is not in examples/rules.yaml")
            bad_paths[name] = self.tmp / f"bad-{i}.yaml"
            text = good.replace(old, new, 1).replace(RULESET_VERSION, f"{RULESET_VERSION}-bad")
            bad_paths[name].write_text(text, encoding="utf-8")
        with ThreadPoolExecutor(max_workers=len(bad_paths)) as pool:  # each refusal is independent
            runs = pool.map(lambda path: self.cli(["rules", "publish", str(path)]), bad_paths.values())
            for name, done in zip(bad_paths, runs, strict=True):
                self.out.rule_sets_refused[name] = done.returncode != 0
                problem = (done.stdout + done.stderr).strip().splitlines()[:1]
                # "<file>:<line>:<col>: rule x: what is wrong" -> "rule x: what is wrong"
                self.out.refusals[name] = (
                    problem[0].split(": ", 1)[-1].split(" (", 1)[0][:70] if problem else ""
                )
                self.out.sent[f"rule set: {name}"] += 1

    def start(self, name: str) -> None:
        args = {
            "worker": ["worker"],
            "sink-clickhouse": ["sink", "clickhouse"],
            "sink-redis": ["sink", "redis"],
        }
        self.incarnation[name] += 1
        env = dict(self.env)
        if name == "worker":
            from streams.local.demo import free_port

            port = free_port()
            self.metrics_ports[name] = port
            env["BYPASS_METRICS_PORT"] = str(port)
        log = self.logs / f"{name}-{self.incarnation[name]}.log"
        from streams.local.demo import Child  # after snapshot_code: never before

        self.procs[name] = Child(name, args[name], env, log, cwd=CODE, append=True)

    def worker_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from streams.local.demo import scrape

        port = self.metrics_ports.get("worker")
        return scrape(port) if port else {}

    def wait_active(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        with console.status("waiting for the worker to join its group and load the rule set"):
            while time.monotonic() < deadline:
                if not self.procs["worker"].alive():
                    raise ChaosError(f"the worker exited:\n{self.procs['worker'].tail(15)}")
                samples = self.worker_metrics()
                if any(n == "bypass_ruleset_info" and v for (n, _), v in samples.items()):
                    console.print("[green]✓[/] worker active; writers started")
                    return
                time.sleep(0.5)
        raise ChaosError(f"the worker did not activate a rule set:\n{self.procs['worker'].tail(15)}")

    # -- traffic ------------------------------------------------------------------

    def simulate(self) -> tuple[Any, list[dict[str, Any]]]:
        from streams.local.simulate import SimConfig, Simulator

        traffic_s = self.traffic_s()
        now_ms = time.time_ns() // 1_000_000
        config = SimConfig(
            users=max(200, self.args.events // 25),
            rate=self.args.events / traffic_s,
            duration_s=traffic_s,
            seed=self.args.seed,
            start_ms=now_ms - SPAN_MS,
            time_scale=SPAN_MS / 1000 / traffic_s,
        )
        sim = Simulator(config)
        return sim, list(sim.events())

    def run_s(self) -> float:
        return float(self.args.minutes) * 60.0

    def traffic_s(self) -> float:
        return self.run_s() * 0.85

    def produce(self, events: list[dict[str, Any]], errors: list[BaseException]) -> None:
        """Pace ``events`` over the traffic time; three rounds of bad inputs in between."""
        try:
            from streams.core import kafka
            from streams.producer import EventProducer

            s = self.settings()
            raw = s.raw_topics[0]
            topics = {"raw": raw, "hits": s.hits_topic, "blacklist": s.blacklist_topic}
            sdk = EventProducer(s, topic=raw)
            plain = kafka.producer(s, message_max_bytes=2_000_000)
            n = len(events)
            rounds = {int(n * f): i for i, f in enumerate((0.10, 0.50, 0.85), start=1)}
            traffic_s = self.traffic_s()
            start = time.monotonic()
            for i, event in enumerate(events):
                if i in rounds:
                    for bad in bad_inputs(event["ts"], rounds[i]):
                        if bad.via_sdk:
                            sdk.send(orjson.loads(bad.value))
                        else:
                            plain.produce(topics[bad.topic], key=bad.key, value=bad.value)
                        with self.lock:
                            self.out.sent[bad.kind] += 1
                            if bad.reason:
                                self.out.sent_reasons[bad.reason] += 1
                            if bad.topic != "raw":
                                self.out.sink_poison[bad.topic] += 1
                    plain.poll(0)
                sdk.send(event)
                if i % 500 == 0:
                    sdk.poll(0)
                    delay = start + traffic_s * (i + 1) / n - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            sdk.flush(60.0).raise_for_errors()
            if plain.flush(60):
                raise ChaosError("bad inputs not delivered to Kafka")
            self.out.events = n
        except BaseException as exc:
            errors.append(exc)

    # -- faults -------------------------------------------------------------------

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def record(self, what: str, detail: str = "") -> None:
        self.out.faults.append(Fault(self.now_s(), what, detail))
        console.print(f"[yellow]⚡ {self.now_s():6.1f} s[/] {what} {detail}", highlight=False)

    def kill(self, name: str) -> None:
        with self.lock:
            self.killed.add(name)
        proc = self.procs[name]
        proc.kill()
        self.record(f"SIGKILL {name}", f"(pid {proc.pid})")

    def restart(self, name: str) -> None:
        self.start(name)
        with self.lock:
            self.killed.discard(name)
        console.print(
            f"  {self.now_s():6.1f} s  {name} restarted (pid {self.procs[name].pid})", highlight=False
        )

    def stop_part(self, part: str) -> None:
        self.stack.stop_part(part)
        self.down.add(part)
        self.record(f"stop {part}")

    def start_part(self, part: str) -> None:
        self.sample_outage()
        self.down.discard(part)
        self.stack.start_part(part)
        console.print(f"  {self.now_s():6.1f} s  {part} started again", highlight=False)

    def schedule(self) -> list[tuple[float, Callable[[], None]]]:
        run = self.run_s()
        outage = 8.0 if self.args.quick else float(self.args.outage)
        gap = 3.0 if self.args.quick else 5.0
        plan: list[tuple[float, Callable[[], None]]] = []
        for f in (0.13, 0.36, 0.56):
            plan += [(run * f, lambda: self.kill("worker")), (run * f + gap, lambda: self.restart("worker"))]
        plan += [
            (run * 0.23, lambda: self.stop_part("clickhouse")),
            (run * 0.23 + outage, lambda: self.start_part("clickhouse")),
            (run * 0.43, lambda: self.stop_part("redis")),
            (run * 0.43 + outage, lambda: self.start_part("redis")),
            (run * 0.63, lambda: self.kill("sink-clickhouse")),
            (run * 0.63 + gap, lambda: self.restart("sink-clickhouse")),
            (run * 0.70, lambda: self.kill("sink-redis")),
            (run * 0.70 + gap, lambda: self.restart("sink-redis")),
        ]
        return sorted(plan, key=lambda p: p[0])

    def check_children(self) -> None:
        """A child that died without being killed here is restarted, and reported."""
        for name, proc in list(self.procs.items()):
            with self.lock:
                planned = name in self.killed
            if not planned and not proc.alive():
                self.out.unplanned.append(
                    f"{name} exited by itself (code {proc.proc.returncode}) at {self.now_s():.0f} s; "
                    f"see {proc.log}"
                )
                console.print(f"[red]! {self.out.unplanned[-1]}[/]\n{proc.tail(15)}", highlight=False)
                if sum(u.startswith(f"{name} ") for u in self.out.unplanned) > MAX_UNPLANNED:
                    raise ChaosError(
                        f"{name} exited by itself more than {MAX_UNPLANNED} times; last log {proc.log}:\n"
                        f"{proc.tail(30)}"
                    )
                time.sleep(1.0)
                self.start(name)

    def sample_outage(self) -> None:
        """While Redis is down: did the worker wait for it (in_list) rather than dead-letter?"""
        if "redis" not in self.down:
            return
        samples = self.worker_metrics()
        waiting = sum(v for (n, _), v in samples.items() if n == "bypass_dependency_waiting")
        retries = sum(v for (n, _), v in samples.items() if n == "bypass_dependency_retries_total")
        self.out.redis_waiting_seen = max(self.out.redis_waiting_seen, waiting)
        self.out.redis_retries = max(self.out.redis_retries, retries)

    def run_faults(self, producer: threading.Thread) -> None:
        for at_s, action in self.schedule():
            while self.now_s() < at_s:
                self.check_children()
                self.sample_outage()
                time.sleep(min(1.0, max(0.05, at_s - self.now_s())))
            action()
        while self.now_s() < self.run_s() or producer.is_alive():
            self.check_children()
            time.sleep(1.0)
        self.check_children()

    # -- expected -----------------------------------------------------------------

    def offline(self, start_ms: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], Any]:
        """Hits (by id) and blacklist records of the offline processor over the raw topic."""
        from streams.replay import Replay, ReplayOptions

        hits: dict[str, dict[str, Any]] = {}
        blacklist: list[dict[str, Any]] = []

        class Offline(Replay):
            """Replay whose output (``--out none``) also hands every record to this run."""

            def _open_output(self, params: Any, checkpoint: Any, run_id: str) -> Any:
                output: Any = super()._open_output(params, checkpoint, run_id)
                pass_hit, pass_blacklist = output.hit, output.blacklist

                def hit(emitted: Any) -> None:
                    hits[emitted.record["hit_id"]] = emitted.record
                    pass_hit(emitted)

                def blacklist_entry(emitted: Any) -> None:
                    blacklist.append(emitted.record)
                    pass_blacklist(emitted)

                output.hit, output.blacklist = hit, blacklist_entry
                return output

        now_ms = time.time_ns() // 1_000_000
        options = ReplayOptions(
            from_ms=start_ms - HOUR_MS,
            to_ms=now_ms + HOUR_MS,
            rules_version=RULESET_VERSION,
            warmup="0",
            out="none",
            run_id="chaos-offline",
            progress=False,
        )
        with console.status("offline processor (replay) over the raw topic"):
            summary = Offline(self.settings(), options).run()
        return hits, blacklist, summary

    # -- actual -------------------------------------------------------------------

    def ch_hits(self) -> tuple[set[str], int, int]:
        """(distinct hit ids after FINAL, rows after FINAL, rows before FINAL) of run id live."""
        from sinks.clickhouse_schema import check_identifier
        from streams.core.outputs import clickhouse_client

        s = self.settings()
        db = check_identifier(s.clickhouse_database)
        ch = clickhouse_client(s)
        table = f"{db}.risk_hits"  # db passed check_identifier
        where = "WHERE run_id = 'live'"
        ids = {str(r[0]) for r in ch.query(f"SELECT hit_id FROM {table} FINAL {where}").result_rows}  # noqa: S608
        final_rows = int(ch.query(f"SELECT count() FROM {table} FINAL {where}").result_rows[0][0])  # noqa: S608
        raw_rows = int(ch.query(f"SELECT count() FROM {table} {where}").result_rows[0][0])  # noqa: S608
        return ids, final_rows, raw_rows

    def redis_entries(self) -> set[tuple[str, str, str]]:
        """(entity, key, label) live in Redis now under the run's prefix."""
        from sinks.redis_mirror import redis_client

        s = self.settings()
        client = redis_client(s.redis_url)
        prefix = f"{s.redis_key_prefix}bl:"
        now_ms = time.time_ns() // 1_000_000
        out: set[tuple[str, str, str]] = set()
        for raw_key in client.scan_iter(match=f"{prefix}*", count=1000):
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            entity, _, ekey = key[len(prefix) :].partition(":")
            for label, value in client.hgetall(key).items():
                label_s = label.decode() if isinstance(label, bytes) else label
                value_s = value.decode() if isinstance(value, bytes) else value
                if int(value_s.split("|", 1)[0]) > now_ms:
                    out.add((entity, ekey, label_s))
        return out

    def converge(self, expected: set[str], bl_expected: set[tuple[str, str, str]]) -> None:
        """Until ClickHouse and Redis hold what is expected and stay so, or nothing moves."""
        deadline = time.monotonic() + self.args.converge_timeout
        last: tuple[int, int, int] | None = None
        changed_at = time.monotonic()
        matched_at: float | None = None
        printed_at = time.monotonic()
        settle_s = 3.0 if self.args.quick else 10.0  # matched and unchanged this long: done
        with console.status("waiting for ClickHouse and Redis to converge") as status:
            while time.monotonic() < deadline:
                self.check_children()
                try:
                    ids, final_rows, _ = self.ch_hits()
                    redis = self.redis_entries()
                except Exception as exc:  # a part still coming back
                    status.update(f"waiting for ClickHouse and Redis ({type(exc).__name__})")
                    time.sleep(2)
                    continue
                state = (len(ids), final_rows, len(redis))
                if state != last:
                    last, changed_at = state, time.monotonic()
                ok = expected <= ids and bl_expected <= redis
                matched_at = (matched_at or time.monotonic()) if ok else None
                line = (
                    f"ClickHouse {len(ids & expected):,}/{len(expected):,} expected hits "
                    f"({len(ids - expected)} unexpected); "
                    f"Redis {len(redis & bl_expected)}/{len(bl_expected)} "
                    f"blacklist entries; {time.monotonic() - changed_at:.0f} s without change"
                )
                status.update(line)
                if time.monotonic() - printed_at >= 15:
                    console.print(f"  {self.now_s():6.1f} s  {line}", highlight=False)
                    printed_at = time.monotonic()
                if matched_at is not None and time.monotonic() - matched_at >= settle_s:
                    return
                if time.monotonic() - changed_at >= self.args.stall_s:
                    console.print(
                        f"[yellow]! nothing changed for {self.args.stall_s:.0f} s: comparing now[/]"
                    )
                    return
                time.sleep(2)
        console.print(f"[yellow]! not converged within {self.args.converge_timeout:.0f} s: comparing now[/]")

    def read_topics(self, topics: list[str]) -> list[Any]:
        """Every message of ``topics`` up to their ends now, read with one consumer.

        The ends are taken first (``kafka.end_offsets``: right on Tansu too); the workers'
        repartition topics get order heartbeats all the time, so "until nothing comes" or
        "until partition EOF" would never end."""
        from confluent_kafka import TopicPartition

        from streams.core import kafka

        s = self.settings()
        consumer = kafka.consumer(s, group_id=f"{s.app_id}-chaos-reader-{secrets.token_hex(3)}")
        try:
            reported: dict[tuple[str, int], int] = {}
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                for p in meta.partitions if meta is not None else ():
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    reported[(topic, p)] = int(high)
            ends = kafka.end_offsets(s, reported)
            left = {tp for tp, end in ends.items() if end > 0}
            if not left:
                return []
            consumer.assign([TopicPartition(t, p, 0) for t, p in sorted(left)])
            out: list[Any] = []
            deadline = time.monotonic() + 180
            while left and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                tp = (str(msg.topic()), int(msg.partition() or 0))
                if tp not in left:
                    continue
                out.append(msg)
                if int(msg.offset() or 0) + 1 >= ends[tp]:
                    left.discard(tp)
            if left:
                self.out.notes.append(f"topics not read to their end within 180 s: {sorted(left)}")
            return out
        finally:
            consumer.close()

    def internal_topics(self) -> list[str]:
        from streams.core import kafka

        s = self.settings()
        client = kafka.admin(s)
        names = client.list_topics(timeout=10).topics
        return sorted(t for t in names if t.startswith(self.tag) and t != s.raw_topics[0])


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # what, value, check
    failures: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def add(self, what: str, value: str, ok: bool | None = None) -> None:
        check = "" if ok is None else ("[green]ok[/]" if ok else "[red]FAIL[/]")
        self.rows.append((what, value, check))
        if ok is False:
            self.failures.append(f"{what}: {value}")

    def metric(self, name: str, value: float, unit: str, **extra: Any) -> None:
        self.results.append(
            {
                **dict.fromkeys(FIELDS),
                "name": name,
                "value": float(value),
                "unit": unit,
                "bench": "chaos",
                **extra,
            }
        )

    def table(self, title: str) -> Table:
        t = Table(title=title, header_style="bold", show_lines=False)
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_column("check")
        for what, value, check in self.rows:
            t.add_row(what, value, check)
        return t


def merge_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` into results.json, keeping every other bench's entries."""
    old: list[Any] = []
    if path.exists():
        try:
            old = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            old = []
    kept = [r for r in old if isinstance(r, dict) and r.get("bench") != "chaos"]
    merged = sorted(kept + rows, key=lambda r: str(r.get("bench")))
    path.write_bytes(orjson.dumps(merged, option=orjson.OPT_INDENT_2) + b"\n")


def run(args: argparse.Namespace) -> int:
    chaos = Chaos(args)
    report = Report()
    wall0 = time.monotonic()
    try:
        if not args.no_snapshot:
            snapshot_code(chaos.tmp / "code")
        chaos.up()
        sim, events = chaos.simulate()
        console.print(
            f"{len(events):,} simulated events ({sim.config.users:,} users, event time "
            f"{SPAN_MS / HOUR_MS:.0f} h ending now) over {chaos.traffic_s():.0f} s "
            f"of a {chaos.run_s():.0f} s run"
        )
        chaos.prepare(events)
        for name in ("worker", "sink-clickhouse", "sink-redis"):
            chaos.start(name)
        chaos.refuse_bad_rule_sets()  # while the worker starts
        chaos.wait_active()
        errors: list[BaseException] = []
        chaos.t0 = time.monotonic()
        producer = threading.Thread(target=chaos.produce, args=(events, errors), daemon=True)
        producer.start()
        chaos.run_faults(producer)
        producer.join()
        if errors:
            raise errors[0]
        fault_end = chaos.now_s()
        console.print(f"[green]✓[/] traffic and faults done at {fault_end:.0f} s")

        hits, bl_records, summary = chaos.offline(sim.config.start_ms)
        expected = set(hits)
        now_ms = time.time_ns() // 1_000_000
        latest: dict[tuple[str, str, str], int] = {}
        for rec in bl_records:
            k = (str(rec["entity"]), str(rec["key"]), str(rec["label"]))
            latest[k] = max(latest.get(k, 0), int(rec["expires_at"]))
        bl_expected = {k for k, exp in latest.items() if exp > now_ms + 60_000}
        chaos.converge(expected, bl_expected)
        ids, final_rows, raw_rows = chaos.ch_hits()
        redis = chaos.redis_entries()
        converged_s = chaos.now_s()

        # ---- the DLQ
        with console.status("reading the DLQ"):
            dlq = chaos.read_topics([chaos.settings().dlq_topic])
        by_reason: Counter[tuple[str, str]] = Counter()
        sources: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        phone_in_dlq = 0
        for m in dlq:
            h = {
                k: (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
                for k, v in (m.headers() or [])
            }
            who = h["bypass.sink"] if "bypass.sink" in h else "worker"
            reason = h.get("bypass.reason", "?")
            by_reason[(who, reason)] += 1
            src = (
                h.get("bypass.source.topic", ""),
                h.get("bypass.source.partition", ""),
                h.get("bypass.source.offset", ""),
            )
            sources.setdefault((who, reason), set()).add(src)
            phone_in_dlq += PHONE_NEEDLE in (m.value() or b"")
        # ---- the raw phone in internal / output topics
        phone_hits: Counter[str] = Counter()
        scanned = 0
        hits_topic = chaos.settings().hits_topic
        hit_records: list[str] = []
        with console.status("scanning the output and internal topics for the raw phone number"):
            internal = [t for t in chaos.internal_topics() if t != chaos.settings().dlq_topic]
            for m in chaos.read_topics(internal):
                scanned += 1
                if PHONE_NEEDLE in (m.value() or b"") or PHONE_NEEDLE in (m.key() or b""):
                    phone_hits[str(m.topic())] += 1
                if m.topic() == hits_topic and not (m.value() or b"").startswith(b'{"hit_id":"poison-'):
                    # the worker's hit records, redeliveries included
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
                        hit_records.append(str(orjson.loads(m.value() or b"")["hit_id"]))

        # ---- the table
        out = chaos.out
        wall_s = time.monotonic() - wall0
        report.add(
            "run",
            f"{chaos.tag}; traffic + faults {fault_end:.0f} s, converged at {converged_s:.0f} s, "
            f"wall {wall_s:.0f} s",
        )
        report.add(
            "events produced (simulator)",
            f"{out.events:,}",
            out.events == args.events,
        )
        kinds = Counter(f.what for f in out.faults)
        for what, n in sorted(kinds.items()):
            at = ", ".join(f"{f.at_s:.0f}" for f in out.faults if f.what == what)
            report.add(f"fault: {what}", f"{n}× at {at} s")
        report.add("faults injected", f"{len(out.faults)}")
        report.add("unplanned exits (restarted)", f"{len(out.unplanned)}", not out.unplanned)
        for note in out.unplanned:
            report.add("  unplanned", note)
        total_bad = sum(out.sent.values())
        report.add("bad inputs sent", f"{total_bad} ({len(out.sent)} kinds)")
        valid = sum(n for kind, n in out.sent.items() if "(valid" in kind)
        report.add("  of which valid events (type confusion, phone under attrs)", f"{valid}")
        for name, refused in out.rule_sets_refused.items():
            report.add(
                f"  rule set with {name}",
                f"refused at publish: {out.refusals.get(name, '')}" if refused else "ACCEPTED",
                refused,
            )
        for reason in WORKER_REASONS:
            key = ("worker", reason)
            sent = out.sent_reasons[reason]
            got, distinct = by_reason.get(key, 0), len(sources.get(key, ()))
            report.add(
                f"DLQ worker {reason}",
                f"sent {sent}, DLQ {got} msgs / {distinct} sources",
                distinct >= sent > 0,
            )
        sink_rows = sorted(k for k in by_reason if k[0] != "worker")
        for key in sink_rows:
            report.add(f"DLQ {key[0]} {key[1]}", f"{by_reason[key]} msgs / {len(sources[key])} sources")
        for key in sorted(k for k in by_reason if k[0] == "worker" and k[1] not in WORKER_REASONS):
            report.add(f"DLQ worker {key[1]} (unexpected)", f"{by_reason[key]} msgs", False)
        hit_poison_sent = out.sink_poison["hits"]
        ch_dead = {s for k, v in sources.items() if "clickhouse" in k[0] for s in v if s[0] == hits_topic}
        report.add(
            "sink poison (hits topic) dead-lettered by the ClickHouse writer",
            f"sent {hit_poison_sent}, dead-lettered {len(ch_dead)}",
            len(ch_dead) >= hit_poison_sent > 0,
        )
        bl_poison_sent = out.sink_poison["blacklist"]
        redis_dead = {s for k, v in sources.items() if k[0] != "worker" and "redis" in k[0] for s in v}
        report.add(
            "sink poison (blacklist topic) dead-lettered by the Redis mirror",
            f"sent {bl_poison_sent}, dead-lettered {len(redis_dead)}",
            len(redis_dead) >= bl_poison_sent > 0,
        )
        report.add("DLQ messages (all)", f"{len(dlq)}")
        report.add("raw phone in DLQ messages", f"{phone_in_dlq}", phone_in_dlq == 0)
        report.add(
            "raw phone in output/internal topics",
            f"{sum(phone_hits.values())} of {scanned:,} messages"
            + (f" ({dict(phone_hits)})" if phone_hits else ""),
            not phone_hits,
        )
        rs = summary.stats
        report.add(
            "offline processor (replay)",
            f"{rs.messages:,} messages, {rs.applied:,} applied, {rs.malformed} malformed, "
            f"{rs.processing_errors} processing errors, {rs.late_rejected} late",
        )
        lost = expected - ids
        unexpected = ids - expected
        dup = len(unexpected) + (final_rows - len(ids))
        report.add("hits expected (offline)", f"{len(expected):,}")
        report.add("hits in ClickHouse after FINAL", f"{len(ids):,} (rows before FINAL {raw_rows:,})")
        report.add(
            "  hit records on the hits topic",
            f"{len(hit_records):,} for {len(set(hit_records)):,} hit ids (the rest: redelivered, absorbed)",
        )
        report.add("hits lost", f"{len(lost):,}", not lost)
        report.add(
            "hits duplicated",
            f"{dup:,} ({len(unexpected)} unexpected ids, {final_rows - len(ids)} uncollapsed rows)",
            dup == 0,
        )
        by_rule = Counter(h["rule_id"] for h in hits.values())
        report.add("  expected by rule", ", ".join(f"{r} {n}" for r, n in sorted(by_rule.items())))
        bl_missing = bl_expected - redis
        bl_extra = redis - bl_expected
        report.add("blacklist entries expected (offline, live now)", f"{len(bl_expected):,}")
        report.add("blacklist entries in Redis", f"{len(redis):,}")
        report.add(
            "blacklist entries missing / extra in Redis",
            f"{len(bl_missing)} / {len(bl_extra)}",
            not bl_missing and not bl_extra,
        )
        samples = chaos.worker_metrics()
        active = [
            dict(ls).get("version") for (n, ls), v in samples.items() if n == "bypass_ruleset_info" and v
        ]
        report.add(
            "rule set active at the end",
            ", ".join(str(a) for a in active) or "?",
            active == [RULESET_VERSION],
        )
        report.add(
            "worker during the Redis outage (in_list)",
            f"waiting for Redis: {'yes' if out.redis_waiting_seen else 'no'}, "
            f"{out.redis_retries:.0f} dependency retries",
        )
        for note in out.notes:
            report.add("note", note)
        for example in sorted(lost)[:5]:
            h = hits[example]
            report.add(
                "  lost e.g.",
                f"{h['rule_id']} {h['entity']}:{h['key']} event {h['event_id']} ts {h['event_ts']}",
            )
        if unexpected:
            report.add("  unexpected e.g.", ", ".join(sorted(unexpected)[:5]))

        report.metric("chaos_hits_lost", len(lost), "hits", goal="== 0", expected=len(expected))
        report.metric("chaos_hits_duplicated", dup, "hits", goal="== 0")
        report.metric("chaos_hits_expected", len(expected), "hits")
        report.metric("chaos_hits_in_clickhouse_final", len(ids), "hits")
        report.metric("chaos_blacklist_expected", len(bl_expected), "entries")
        report.metric(
            "chaos_blacklist_in_redis", len(redis), "entries", missing=len(bl_missing), extra=len(bl_extra)
        )
        report.metric(
            "chaos_faults_injected",
            len(out.faults),
            "faults",
            faults=[f"{f.at_s:.0f}s {f.what}" for f in out.faults],
        )
        report.metric("chaos_bad_inputs_sent", total_bad, "messages")
        report.metric(
            "chaos_dlq_messages",
            len(dlq),
            "messages",
            by_reason={f"{w} {r}": n for (w, r), n in sorted(by_reason.items())},
        )
        report.metric("chaos_events", out.events, "events", quick=bool(args.quick))
        report.metric("chaos_wall_seconds", wall_s, "s", checks_failed=len(report.failures))
        console.print(report.table(f"chaos run ({'quick' if args.quick else 'full'})"))
        if not args.no_results:
            merge_results(args.out, report.results)
            console.print(f"results in {args.out} (bench 'chaos'); logs were in {chaos.logs}")
        if report.failures:
            console.print("[red]FAILED:[/] " + "; ".join(report.failures), highlight=False)
            return 1
        console.print("[green]all checks passed[/]")
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except ChaosError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except Exception as exc:  # the run could not be carried out: say why, then tear down
        import traceback

        console.print(f"[red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        console.print(traceback.format_exc(), highlight=False, markup=False)
        return 2
    finally:
        teardown(chaos, keep_logs=args.keep_logs)


def teardown(chaos: Chaos, keep_logs: bool) -> None:
    for proc in chaos.procs.values():
        with contextlib.suppress(Exception):
            proc.stop()
    if chaos.stack is not None:
        with contextlib.suppress(Exception):
            chaos.stack.down(purge=True)
    if keep_logs:
        console.print(f"logs kept in {chaos.logs}", highlight=False)
    else:
        shutil.rmtree(chaos.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/chaos.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of traffic + faults (default 5)")
    parser.add_argument("--events", type=int, default=50_000, help="simulated events (default 50000)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds ClickHouse / Redis stay down")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 minute, 5000 events, 8 s outages")
    parser.add_argument(
        "--converge-timeout", type=float, default=300.0, help="seconds to wait for ClickHouse/Redis"
    )
    parser.add_argument(
        "--stall-s", type=float, default=90.0, help="stop waiting after this long without change"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (rows of bench 'chaos')")
    parser.add_argument("--no-results", action="store_true", help="do not write the results file")
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the working tree itself, not a copy taken at the start",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with the logs")
    args = parser.parse_args(argv)
    if args.quick:
        if args.minutes == 5.0:
            args.minutes = 1.0
        if args.events == 50_000:
            args.events = 5_000
    # Ctrl-C or a SIGTERM: tear down (children, stack) on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    return run(args)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
