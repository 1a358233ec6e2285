"""``make demo``: the whole analyzer end to end on the local stack, in one command.

    python -m streams.local.demo [--keep] [--users N] [--rate R] [--duration D] [--seed S]

1. brings up the local stack (``streams.local.stack``: Tansu, ClickHouse from chdb, Redis);
2. migrates ClickHouse and publishes ``examples/rules.yaml`` (``bypass clickhouse migrate``,
   ``bypass rules publish``);
3. starts ``bypass worker``, ``bypass sink clickhouse`` and ``bypass sink redis`` as child
   processes and waits until the worker has the rule set active;
4. simulates about a minute of traffic with ground truth (``streams.local.simulate``) into the
   raw topic through the producer SDK, with a progress bar;
5. waits until the worker applied every event and the ClickHouse writer caught up, then
   prints: events/s, hits per rule, blacklisted entities (ClickHouse and live in Redis),
   precision and recall per scenario against the simulator's truth (computed by
   ``streams.local.evaluate`` from the counted hits in ClickHouse, never asserted), and two
   analyst queries;
6. stops everything it started - or, with ``--keep``, leaves it running and prints how
   to query it and how to stop it.

Every run uses its own names (topics, consumer groups, ClickHouse database, Redis key
prefix: ``demo_<time>_<random>``), so runs never mix, even on a stack left up by an
earlier ``--keep``. Event time ends at the current minute (``--start now``), so blacklist
TTLs in Redis behave as in production: entries whose event time + TTL is already past are
in ClickHouse but no longer live in Redis. The simulated traffic compresses time (one
second of traffic is one hour of event time); the workers are given an allowed lateness
of 6 hours of event time so the few hundred milliseconds of reordering between partitions
of the re-keyed (device, ip) streams are not rejected as late.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from features.errors import BypassError

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "examples" / "rules.yaml"
FEATURES_FILE = ROOT / "examples" / "features.yaml"
LATENESS_MS = 6 * 3_600_000
# every (event, entity) ends in one of these worker counters
_SETTLED = ("bypass_events_applied_total", "bypass_events_duplicate_total", "bypass_events_late_total")

console = Console(width=None if sys.stdout.isatty() else 120)


class DemoError(BypassError):
    """A step of the demo failed; the message names the step and where its log is."""


# --------------------------------------------------------------------------- processes


class Child:
    """A ``bypass`` subprocess in its own process group, logging to the file ``log`` (appended
    to with ``append``), run from ``cwd`` (the chaos run uses a snapshot of the code)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log: Path,
        *,
        cwd: Path = ROOT,
        append: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        self._fh: IO[bytes] = self.log.open("ab" if append else "wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "streams", *args],
            env=env,
            cwd=cwd,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (no goodbye, no commit)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._fh.close()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._fh.close()


def run_step(title: str, args: list[str], env: dict[str, str], log_dir: Path, timeout_s: float = 120) -> str:
    """Run one ``bypass`` command to completion; DemoError with its output if it fails."""
    log = log_dir / f"{args[0]}-{args[1] if len(args) > 1 else ''}.log".replace("/", "_")
    with console.status(title):
        done = subprocess.run(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "streams", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    output = (done.stdout + done.stderr).decode(errors="replace")
    log.write_text(output)
    if done.returncode != 0:
        raise DemoError(
            f"{title} failed (bypass {' '.join(args)}, exit {done.returncode}):\n{output.strip()}"
        )
    console.print(f"[green]✓[/] {title}: {output.strip().splitlines()[-1] if output.strip() else 'ok'}")
    return output


def _sql(db: str, template: str) -> str:
    """``$db`` in ``template`` -> the database name (checked with ``check_identifier`` by callers)."""
    return template.replace("$db", db)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's Prometheus samples: (name, sorted labels) -> value ({} when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def metric_sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


# --------------------------------------------------------------------------- the demo


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = f"demo_{time.strftime('%H%M%S', time.gmtime())}_{secrets.token_hex(2)}"
        self.children: list[Child] = []
        self.started_parts: tuple[str, ...] = ()
        self.stack: Any = None
        self.env: dict[str, str] = {}
        self.run_dir = Path()
        self.metrics_port = 0

    # -- setup ----------------------------------------------------------------

    def names(self) -> dict[str, str]:
        t = self.tag
        return {
            "BYPASS_APP_ID": t,
            "BYPASS_RAW_TOPICS": f"{t}.events",
            "BYPASS_HITS_TOPIC": f"{t}.hits",
            "BYPASS_BLACKLIST_TOPIC": f"{t}.blacklist",
            "BYPASS_DLQ_TOPIC": f"{t}.dlq",
            "BYPASS_RULES_TOPIC": f"{t}.rules",
            "BYPASS_DECISIONS_TOPIC": f"{t}.decisions",
            "BYPASS_CLICKHOUSE_DATABASE": t,
            "BYPASS_REDIS_KEY_PREFIX": f"bypass:{t}:",
        }

    def up(self) -> None:
        from streams.local.stack import Stack, external_from_settings
        from streams.settings import Settings

        base = Settings()
        self.run_dir = (Path(base.state_dir) / "demo" / self.tag).absolute()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.stack = Stack(base.state_dir, external=external_from_settings(base), health_timeout_s=60.0)
        with console.status("starting the local stack (Kafka-protocol broker, ClickHouse, Redis)"):
            result = self.stack.up()
        self.started_parts = tuple(result.started)
        for name, address in result.addresses.items():
            how = (
                "started"
                if name in result.started
                else ("external" if name in result.external else "running")
            )
            console.print(f"[green]✓[/] {name:<10} {how:<8} {address}")
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.update(self.stack.env())
        if base.phone_hash_key is not None and base.phone_hash_key.get_secret_value():
            env["BYPASS_PHONE_HASH_KEY"] = base.phone_hash_key.get_secret_value()  # the user's own key wins
        env.update(self.names())
        env.update(
            {
                "BYPASS_FEATURES_SPEC": str(FEATURES_FILE),
                "BYPASS_STATE_DIR": str(self.run_dir / "state"),
                "BYPASS_METRICS_PORT": str(self.metrics_port),
                # one worker and one writer: the walk-through reads the one metrics port
                "BYPASS_WORKER_PROCESSES": "1",
                "BYPASS_SINK_PROCESSES": "1",
                "BYPASS_ALLOWED_LATENESS_MS": str(LATENESS_MS),
                # Tansu: group joins take about the rebalance / half the session timeout
                "BYPASS_CONSUMER_SESSION_TIMEOUT_MS": "6000",
                "BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS": "3000",
                "BYPASS_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
                "BYPASS_SINK_SESSION_TIMEOUT_MS": "6000",
                "BYPASS_LOG_LEVEL": "INFO",
                # analysts: every event archived, every decision logged (the report reads them)
                "BYPASS_ARCHIVE_EVENTS": "true",
                "BYPASS_DECISION_SAMPLE": "1.0",
            }
        )
        self.env = env
        # this process talks to the same stack (producer, ClickHouse, Redis)
        os.environ.update({k: v for k, v in env.items() if k.startswith("BYPASS_")})

    def start_pipeline(self) -> None:
        logs = self.run_dir / "logs"
        run_step("ClickHouse schema", ["clickhouse", "migrate"], self.env, logs)
        run_step(f"rule set {RULES_FILE.name}", ["rules", "publish", str(RULES_FILE)], self.env, logs)
        for name, args in (
            ("worker", ["worker"]),
            ("sink-clickhouse", ["sink", "clickhouse"]),
            ("sink-redis", ["sink", "redis"]),
        ):
            self.children.append(Child(name, args, self.env, logs / f"{name}.log"))
        deadline = time.monotonic() + self.args.start_timeout
        with console.status("waiting for the worker to join its group and load the rule set"):
            while True:
                self.check_children()
                samples = scrape(self.metrics_port)
                active = [
                    dict(ls).get("version")
                    for (n, ls), v in samples.items()
                    if n == "bypass_ruleset_info" and v
                ]
                if active:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the worker did not activate a rule set within {self.args.start_timeout:.0f} s; "
                        f"see {logs / 'worker.log'}:\n{self.children[0].tail()}"
                    )
                time.sleep(0.5)
        console.print(
            f"[green]✓[/] worker (pid {self.children[0].pid}) active with rule set {active[0]}; "
            f"sinks pids {self.children[1].pid}, {self.children[2].pid}; metrics on :{self.metrics_port}"
        )

    def check_children(self) -> None:
        for child in self.children:
            if not child.alive():
                raise DemoError(
                    f"{child.name} exited (code {child.proc.returncode}); see {child.log}:\n{child.tail()}"
                )

    # -- traffic ----------------------------------------------------------------

    def simulate(self) -> tuple[Any, Counter[str], float]:
        from streams.cli.simulate import _progress, write_truth
        from streams.core import kafka
        from streams.local.simulate import SimConfig, Simulator, pace, parse_start_ms
        from streams.producer import EventProducer
        from streams.settings import Settings

        a = self.args
        span_ms = round(a.duration * a.time_scale * 1000)
        start_ms = parse_start_ms("now", span_ms=span_ms, now_ms=time.time_ns() // 1_000_000)
        config = SimConfig(
            users=a.users,
            rate=a.rate,
            duration_s=a.duration,
            seed=a.seed,
            start_ms=start_ms,
            time_scale=a.time_scale,
        )
        sim = Simulator(config)
        write_truth(self.run_dir / "truth.jsonl", sim.truth)
        expected: Counter[str] = Counter()
        for event in sim.events():
            expected["user"] += 1
            expected["device"] += "device_id" in event
            expected["ip"] += "ip" in event
        settings = Settings()
        topic = settings.raw_topics[0]
        kafka.ensure_topics(settings, [topic])
        console.print(
            f"simulating {config.total_events:,} events from {config.users:,} users at {config.rate:g}/s "
            f"({config.span_ms / 3_600_000:.0f} h of event time, seed {config.seed}) into {topic}; "
            f"truth: {len(sim.truth)} bad entities"
        )
        producer = EventProducer(settings, topic=topic)
        t0 = time.monotonic()
        events: Iterator[dict[str, Any]] = _progress(
            pace(sim.events(), config.rate), config.total_events, "producing"
        )
        for n, event in enumerate(events):
            producer.send(event)
            if n % 2000 == 0:
                self.check_children()
        producer.flush(60.0).raise_for_errors()
        return sim, expected, t0

    def wait_processed(self, expected: Counter[str], t0: float) -> tuple[float, dict[str, float]]:
        """Until the worker applied every (event, entity) and the ClickHouse writer caught up."""
        deadline = time.monotonic() + self.args.drain_timeout
        seen: dict[str, float] = {}
        with console.status("waiting for the worker to process every event") as status:
            while True:
                self.check_children()
                samples = scrape(self.metrics_port)
                for entity in expected:
                    seen[entity] = sum(metric_sum(samples, name, entity=entity) for name in _SETTLED)
                status.update(
                    "worker: " + ", ".join(f"{e} {seen[e]:,.0f}/{n:,}" for e, n in sorted(expected.items()))
                )
                if all(seen[e] >= n for e, n in expected.items()):
                    done = time.monotonic()
                    break
                if time.monotonic() > deadline:
                    console.print(
                        f"[yellow]! the worker did not finish within {self.args.drain_timeout:.0f} s[/]"
                    )
                    done = time.monotonic()
                    break
                time.sleep(0.5)
        self.wait_sinks()
        return done - t0, {
            "late": metric_sum(samples, "bypass_events_late_total"),
            "dlq": metric_sum(samples, "bypass_dlq_total"),
            "duplicates": metric_sum(samples, "bypass_events_duplicate_total"),
        }

    def wait_sinks(self) -> None:
        """Until both sink groups committed up to the end of their topics."""
        from confluent_kafka import Consumer, TopicPartition

        from streams.settings import Settings

        settings = Settings()
        groups = {
            f"{settings.app_id}-sink-clickhouse": [
                settings.hits_topic,
                settings.blacklist_topic,
                settings.decisions_topic,
                *(settings.raw_topics if settings.archive_events else ()),
            ],
            f"{settings.app_id}-sink-redis": [settings.blacklist_topic],
        }
        deadline = time.monotonic() + self.args.drain_timeout
        with console.status("waiting for the ClickHouse and Redis writers to catch up") as status:
            while True:
                self.check_children()
                behind = 0
                for group, topics in groups.items():
                    consumer = Consumer(
                        {**settings.kafka_config(), "group.id": group, "enable.auto.commit": False}
                    )
                    try:
                        parts = []
                        for topic in topics:
                            meta = consumer.list_topics(topic, timeout=10).topics[topic]
                            parts += [TopicPartition(topic, p) for p in meta.partitions]
                        committed = consumer.committed(parts, timeout=10)
                        for tp in committed:
                            _, high = consumer.get_watermark_offsets(
                                TopicPartition(tp.topic, tp.partition), timeout=10
                            )
                            behind += max(0, high - max(tp.offset, 0))
                    finally:
                        consumer.close()
                status.update(f"writers: {behind:,} records behind")
                if behind == 0:
                    return
                if time.monotonic() > deadline:
                    console.print(f"[yellow]! the writers are still {behind:,} records behind[/]")
                    return
                time.sleep(1.0)

    # -- report -------------------------------------------------------------------

    def report(self, sim: Any, elapsed_s: float, counters: dict[str, float]) -> None:
        from sinks.clickhouse_schema import check_identifier
        from sinks.redis_mirror import redis_client
        from streams.core.outputs import clickhouse_client
        from streams.local.evaluate import evaluate
        from streams.settings import Settings

        settings = Settings()
        db = check_identifier(settings.clickhouse_database)
        ch = clickhouse_client(settings)
        total = sim.config.total_events

        summary = Table(title="throughput", header_style="bold")
        summary.add_column("what")
        summary.add_column("value", justify="right")
        summary.add_row("events produced", f"{total:,} (paced at {sim.config.rate:g}/s)")
        summary.add_row("end to end", f"{elapsed_s:.1f} s from first produce to last event applied")
        summary.add_row(
            "events/s through the pipeline",
            f"{total / max(elapsed_s, 1e-9):,.0f} (input paced; capacity: make bench)",
        )
        late, dup, dlq = counters["late"], counters["duplicates"], counters["dlq"]
        summary.add_row("late / duplicate / DLQ", f"{late:,.0f} / {dup:,.0f} / {dlq:,.0f}")
        archived = ch.query(_sql(db, "SELECT count() FROM $db.risk_events FINAL")).result_rows[0][0]
        summary.add_row("events archived (risk_events FINAL)", f"{int(archived):,}")
        console.print(summary)

        rows = ch.query(
            _sql(
                db,
                "SELECT rule_id, any(label), mode, count(), countIf(counted AND NOT suppressed), "
                "countIf(suppressed), uniqExact(entity, key) FROM $db.risk_hits FINAL "
                "WHERE error = '' GROUP BY rule_id, mode ORDER BY rule_id",
            )
        ).result_rows
        hits = Table(title=f"hits per rule (ClickHouse {db}.risk_hits FINAL)", header_style="bold")
        for col in ("rule", "label", "mode", "hits", "counted", "suppressed", "entities"):
            hits.add_column(
                col, justify="right" if col in ("hits", "counted", "suppressed", "entities") else "left"
            )
        for r in rows:
            hits.add_row(str(r[0]), str(r[1]), str(r[2]), *(f"{int(v):,}" for v in r[3:]))
        console.print(hits)

        bl_rows = ch.query(
            _sql(
                db,
                "SELECT entity, label, uniqExact(key), groupUniqArrayArray(rule_ids) "
                "FROM $db.risk_blacklist FINAL GROUP BY entity, label ORDER BY entity, label",
            )
        ).result_rows
        redis = redis_client(settings.redis_url)
        live: Counter[tuple[str, str]] = Counter()
        now_ms = time.time_ns() // 1_000_000
        prefix = f"{settings.redis_key_prefix}bl:"
        for raw_key in redis.scan_iter(match=f"{prefix}*", count=1000):
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            entity = key[len(prefix) :].split(":", 1)[0]
            for label, value in redis.hgetall(key).items():
                label_s = label.decode() if isinstance(label, bytes) else label
                value_s = value.decode() if isinstance(value, bytes) else value
                if int(value_s.split("|", 1)[0]) > now_ms:
                    live[(entity, label_s)] += 1
        bl = Table(title="blacklisted entities", header_style="bold")
        for col in ("entity", "label", "in ClickHouse", "live in Redis now", "rules"):
            bl.add_column(col, justify="right" if col.startswith(("in ", "live")) else "left")
        for entity, label, n, rule_ids in bl_rows:
            bl.add_row(
                str(entity), str(label), f"{n:,}", f"{live[(entity, label)]:,}", ", ".join(sorted(rule_ids))
            )
        console.print(bl)

        flags = ch.query(
            _sql(
                db,
                "SELECT DISTINCT entity, key, label FROM $db.risk_hits FINAL "
                "WHERE counted AND NOT suppressed",
            )
        ).result_rows
        result = evaluate(sim.truth, [(str(e), str(k), str(lbl)) for e, k, lbl in flags])
        quality = Table(
            title="detection quality against the simulator's truth (counted hits, label = scenario)",
            header_style="bold",
        )
        for col in ("scenario", "truth", "flagged", "correct", "precision", "recall"):
            quality.add_column(col, justify="left" if col == "scenario" else "right")
        for row in result.rows():
            quality.add_row(
                row["scenario"],
                str(row["truth"]),
                str(row["flagged"]),
                str(row["true_positives"]),
                "-" if row["precision"] is None else f"{row['precision']:.2f}",
                "-" if row["recall"] is None else f"{row['recall']:.2f}",
            )
        console.print(quality)
        self.explain(sim, result)
        try:
            self.analyst_queries(ch, db, result)
        except Exception as exc:  # a query failing must not hide the rest of the report
            console.print(f"[red]analyst query failed:[/] {exc}", highlight=False)
        try:
            self.rules_report()
        except Exception as exc:  # as above: the rest of the report stands
            console.print(f"[red]rule report failed:[/] {exc}", highlight=False)
        try:
            self.models_report(sim)
        except Exception as exc:  # as above: the rest of the report stands
            console.print(f"[red]model step failed:[/] {exc}", highlight=False)

    def models_report(self, sim: Any) -> None:
        """Models trained on the first part of the traffic, scored on the rest
        (``streams.local.demo_models``): precision and recall per scenario for the rules
        alone, the models alone and both."""
        from streams.local.demo_models import MODELS, TRAIN_SHARE, run_models
        from streams.settings import Settings

        t0 = time.monotonic()
        with console.status("models: training set by replay, training, scoring the rest by replay"):
            outcome = run_models(Settings(), sim, self.run_dir, RULES_FILE, FEATURES_FILE)
        console.print(
            f"[green]✓[/] models trained on the first {TRAIN_SHARE:.0%} of event time, scored on the rest "
            f"({time.monotonic() - t0:.0f} s; files in {self.run_dir / 'models'})"
        )
        for name, how in outcome.trained.items():
            console.print(f"  model {name}: {how}", highlight=False)
        table = Table(
            title="rules vs models on the later traffic (entities active there, against the truth)",
            header_style="bold",
        )
        columns = ("scenario", "model", "truth", "rules P / R", "model P / R", "both P / R", "evasive r/m/b")
        for col in columns:
            table.add_column(col, justify="left" if col == "scenario" else "right")

        def pr(tp_flagged: tuple[int, int], truth: int) -> str:
            tp, flagged = tp_flagged
            p = "-" if not flagged else f"{tp / flagged:.2f}"
            r = "-" if not truth else f"{tp / truth:.2f}"
            return f"{p} / {r}"

        model_of = {scenario: name for name, (_entity, scenario) in MODELS.items()}
        for scenario, row in outcome.rows.items():
            n = row["truth"]
            ev_truth, ev_rules, ev_model, ev_both = row["evasive"]
            table.add_row(
                scenario,
                model_of[scenario],
                str(n),
                pr(row["rules"], n),
                pr(row["model"], n),
                pr(row["both"], n),
                f"{ev_rules}/{ev_model}/{ev_both} of {ev_truth}" if ev_truth else "-",
            )
        console.print(table)

    def rules_report(self) -> None:
        """The simulator's truth imported as outcome labels, then ``bypass rules report``
        (precision and recall per rule from the decision log)."""
        logs = self.run_dir / "logs"
        truth = self.run_dir / "truth.jsonl"
        run_step("labels from the simulator's truth", ["labels", "import", str(truth)], self.env, logs)
        output = run_step("rule quality", ["rules", "report"], self.env, logs)
        console.print("[bold]bypass rules report[/] (risk_decisions + risk_labels)")
        console.print(output.rstrip(), highlight=False, markup=False, soft_wrap=True)

    def explain(self, sim: Any, result: Any) -> None:
        """Name every error: false positives (lookalikes or not) and misses (evasive or not)."""
        look = {(x["entity"], x["key"]): x["kind"] for x in sim.lookalikes}
        variant = {(t["entity"], t["key"]): t["variant"] for t in sim.truth}
        scenario_of = {(t["entity"], t["key"]): t["scenario"] for t in sim.truth}
        lines = []
        for score in result.scores:
            for entity in score.false_positives:
                why = look.get(entity) or (
                    f"a {scenario_of[entity]} entity" if entity in scenario_of else "normal"
                )
                lines.append(f"  {score.scenario}: false positive {entity[0]} {entity[1]} ({why})")
            for entity in score.missed:
                lines.append(
                    f"  {score.scenario}: missed {entity[0]} {entity[1]} ({variant.get(entity, '?')})"
                )
        if lines:
            console.print("errors, one by one:\n" + "\n".join(lines), highlight=False)
        if result.unmapped_labels:
            console.print(
                "labels that detect no simulated scenario (entities; counted in (any)): "
                + ", ".join(f"{k} ({v})" for k, v in result.unmapped_labels.items()),
                highlight=False,
            )

    def analyst_queries(self, ch: Any, db: str, result: Any) -> None:
        q1 = _sql(
            db,
            "SELECT toDate(hour) AS day, rule_id,\n"
            "       uniqExactMerge(counted_hits) AS counted, uniqExactMerge(entities) AS entities\n"
            "FROM $db.risk_hits_hourly\n"
            "GROUP BY day, rule_id HAVING counted > 0\n"
            "ORDER BY day, counted DESC, rule_id",
        )
        console.print("\n[bold]analyst query 1[/]: counted hits per rule and day (from the hourly rollup)")
        console.print(q1, style="cyan", highlight=False)
        t = Table(header_style="bold")
        for col in ("day (UTC, event time)", "rule", "counted hits", "entities"):
            t.add_column(col, justify="right" if col in ("counted hits", "entities") else "left")
        for day, rule, n, entities in ch.query(q1).result_rows:
            t.add_row(str(day), str(rule), f"{n:,}", f"{entities:,}")
        console.print(t)

        resale = result.by_scenario().get("account_resale")
        who = resale.detected[0][1] if resale and resale.detected else None
        if who is None:
            q = _sql(db, "SELECT key FROM $db.risk_hits FINAL WHERE entity = 'user' ORDER BY key LIMIT 1")
            row = ch.query(q)
            who = row.result_rows[0][0] if row.result_rows else "u000000"
        q2 = _sql(
            db,
            "SELECT event_time, event_type, rule_id, score, decision, features\n"
            "FROM $db.risk_hits FINAL\n"
            "WHERE entity = 'user' AND key = {who:String}\n"
            "ORDER BY event_time, rule_id",
        )
        console.print(f"\n[bold]analyst query 2[/]: why was user {who} flagged (one entity's history)")
        console.print(q2, style="cyan", highlight=False)
        t = Table(header_style="bold")
        for col in ("event time", "type", "rule", "score", "decision", "features read"):
            t.add_column(col)
        for when, kind, rule, score, decision, features in ch.query(q2, parameters={"who": who}).result_rows:
            shown = ", ".join(f"{k}={_num(v)}" for k, v in sorted(features.items()))
            t.add_row(str(when)[:19], str(kind), str(rule), f"{score:g}", str(decision), shown)
        console.print(t)

    # -- teardown ----------------------------------------------------------------

    def stop(self) -> None:
        for child in reversed(self.children):
            with console.status(f"stopping {child.name}"):
                child.stop()
        if self.stack is not None:
            for name in self.started_parts:
                with console.status(f"stopping {name}"):
                    self.stack.stop_part(name)
        started = ", ".join(self.started_parts) or "no stack parts"
        console.print(f"stopped the worker, both sinks and {started} (logs in {self.run_dir / 'logs'})")

    def keep(self) -> None:
        from streams.local.stack import ENV_NAMES

        wanted = {*ENV_NAMES.values(), *self.names(), "BYPASS_FEATURES_SPEC"}
        console.print("\n[bold]left running[/] (--keep). Point a shell at it:")
        for k in sorted(wanted & set(self.env)):
            console.print(f"export {k}='{self.env[k]}'", highlight=False, soft_wrap=True)
        key_file = self.stack.state_dir / "phone_hash_key"
        console.print(f'export BYPASS_PHONE_HASH_KEY="$(cat {key_file})"', highlight=False, soft_wrap=True)
        count_sql = _sql(
            self.env["BYPASS_CLICKHOUSE_DATABASE"],
            "SELECT rule_id, count() FROM $db.risk_hits FINAL WHERE error = '' GROUP BY rule_id",
        )
        url = self.env.get("BYPASS_CLICKHOUSE_URL", "")
        pids = " ".join(str(c.pid) for c in self.children)
        lines = [
            "then, for example:",
            "  bypass hits top --since 3d",
            f"  curl -s '{url}' --data-binary \"{count_sql}\"",
            "  bypass lists check user <key>",
            "  bypass simulate --out kafka --start now --seed 2     # more traffic",
            f"stop it: kill {pids}; bypass stack down",
        ]
        console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _num(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _duration_s(text: str) -> float:
    from streams.local.simulate import parse_duration_s

    try:
        return parse_duration_s(text)
    except BypassError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.local.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack, worker and sinks running")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument(
        "--duration", type=_duration_s, default=60.0, help="wall-clock length of the traffic (60s, 2m)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=3600.0, help="event-time seconds per second")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for the worker to start")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for processing")
    args = parser.parse_args(argv)
    demo = Demo(args)
    keep = False
    try:
        demo.up()
        demo.start_pipeline()
        sim, expected, t0 = demo.simulate()
        elapsed, counters = demo.wait_processed(expected, t0)
        demo.report(sim, elapsed, counters)
        keep = args.keep
        return 0
    except BypassError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:  # no stack trace for the newcomer; the logs say more
        console.print(
            f"[red]error:[/] {type(exc).__name__}: {exc} (logs in {demo.run_dir / 'logs'})", highlight=False
        )
        return 1
    finally:
        if keep:
            demo.keep()
        else:
            demo.stop()


if __name__ == "__main__":
    sys.exit(main())
