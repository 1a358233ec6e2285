"""Wires one live worker process: settings -> processor, rules follower, metrics, Faust app.

``bypass worker`` calls :func:`run_worker`; tests and benchmarks may build a
:class:`LiveWorker` and run it in a thread or subprocess.

What the worker logs (``bypass.worker``): a few lines at start (version, rule set, spec,
where /metrics and /healthz are, what the group join waits for), one line when it is ready
(partitions assigned and restored, time since start), a one-line status every
BYPASS_WORKER_STATUS_S (:func:`streams.live.health.status_line`), and what goes wrong.
Faust's, mode's and aiokafka's own INFO lines (banner tables, service start/stop) only
with ``bypass worker --verbose``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import defaultdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from faust.types import TP as FaustTP

import features
from features.errors import ConfigError
from rules import RuleSet
from streams.core import kafka
from streams.core.assembly import build_engine, build_processor, empty_ruleset, load_for_spec, load_spec
from streams.core.featurestore import changed_features, file_spec, load_published
from streams.core.processor import Processor
from streams.core.rulestore import RuleSetRecord, RulesFollower
from streams.core.workers import WorkerReporter
from streams.live import health
from streams.live.metrics import Metrics
from streams.settings import Settings

__all__ = ["LiveWorker", "run_worker"]

log = logging.getLogger("bypass.worker")

#: Garbage-collector thresholds of a running worker (CPython's default: 700, 10, 10).  The
#: decoded states of every hot key stay alive for hours, and each event allocates a few
#: hundred short-lived objects (decoded JSON, records); with the defaults the collector ran
#: ~3,600 times per 60k events and took ~38% of the entity path's CPU, mostly re-scanning
#: the long-lived states.  Cycles are still collected, just in larger, rarer passes.
GC_THRESHOLDS = (50_000, 20, 100)

#: Loggers whose INFO lines (banner tables, every service starting and stopping) are shown
#: only with ``bypass worker --verbose``.
CHATTY_LOGGERS = ("faust", "mode", "aiokafka", "streams.live.setup")

#: Seconds between updates of the gauges read by on-call (lag, event-time lag, liveness).
GAUGES_EVERY_S = 5.0

#: Without status lines (BYPASS_WORKER_STATUS_S=0), the state size gauges (a scan of the
#: tables) are updated every this many gauge ticks (30 s).
STATE_SIZE_EVERY_TICKS = 6


def _version() -> str:
    try:
        return package_version("bypass-analyzer")
    except PackageNotFoundError:
        return "unknown"


def _ranges(parts: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for p in sorted(parts):
        if runs and runs[-1][1] + 1 == p:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class LiveWorker:
    """One worker: the shared Processor (run_id ``live``), a RulesFollower swapping its rule
    set, Prometheus metrics, and the Faust :class:`streams.live.app.Pipeline`."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        datadir: Path | None = None,
        verbose: bool = False,
    ) -> None:
        from streams.live.app import Pipeline

        self.started = time.time()
        self.verbose = verbose
        self.ready_at: float | None = None
        self.ready = False
        self.assigned: dict[str, list[int]] = {}
        self.server: health.MetricsServer | None = None
        self._following = False  # True once the start-up rule set is loaded
        self._status_prev: tuple[float, float] = (time.monotonic(), 0.0)
        self._report_prev: tuple[float, float] = (time.monotonic(), 0.0)
        self._gauge_ticks = 0
        self.settings = settings
        self.spec = load_spec(settings)
        self.metrics = metrics or Metrics()
        self.processor = build_processor(settings, self.spec, run_id="live")
        self.engine = self.processor.engine
        self.spec_version = file_spec(settings).version  # until a published spec is active
        # published feature spec versions (`bypass features publish`): hot swap + warm start
        self.features_follower: RulesFollower[tuple[features.FeatureSpec, RuleSet]] = RulesFollower(
            settings,
            self._load_features,
            self._on_features,
            topic=settings.features_topic,
            what="feature spec",
        )
        self._features_following = False
        # what this worker runs, for `bypass rules history` (streams/core/workers.py)
        self.reporter: WorkerReporter | None = None
        self.follower = RulesFollower(
            settings,
            lambda text, source: load_for_spec(text, self.spec, source=source),
            self._on_swap,
            on_reject=self._on_reject,
        )
        self.pipeline = Pipeline(settings, self.processor, metrics=self.metrics, datadir=datadir)
        self.app = self.pipeline.app
        self.metrics.init_labels(topics=settings.raw_topics, entities=self.pipeline.entities)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)
        self.app.timer(GAUGES_EVERY_S, name="worker-gauges")(self._update_gauges)
        if settings.worker_status_s:
            self.app.timer(settings.worker_status_s, name="worker-status")(self._log_status)

    def _on_swap(self, ruleset: RuleSet, record: RuleSetRecord) -> None:
        self.processor.set_ruleset(ruleset)  # one reference assignment
        if self.reporter is not None:
            self.reporter.set_ruleset(str(ruleset.version))
        delay_ms = int(time.time() * 1000) - record.published_ms if record.published_ms else -1
        self.metrics.set_ruleset(str(ruleset.version))
        self.metrics.init_labels(rules=[(rule.id, rule.mode) for rule in ruleset.rules])
        self.metrics.ruleset_swaps.inc()
        if record.published_ms:
            self.metrics.published_at.set(record.published_ms / 1000)
        published = (
            datetime.fromtimestamp(record.published_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if record.published_ms
            else "unknown"
        )
        if not self._following:
            # the version loaded at start: its publish time says nothing about the swap delay
            log.info("rule set %s (%d rules, published %s)", ruleset.version, len(ruleset.rules), published)
            return
        if delay_ms >= 0:
            self.metrics.publish_to_active.set(delay_ms / 1000)
        log.warning(
            "rule set version %s active (%d rules) publish_to_active_ms=%d",
            ruleset.version,
            len(ruleset.rules),
            delay_ms,
        )

    # --- feature spec versions -------------------------------------------------
    def _load_features(self, text: str, source: str | None) -> tuple[features.FeatureSpec, RuleSet]:
        """A published spec, checked against what this worker runs: the same entity kinds
        (their tables and topics exist), and the active rule set loads against it."""
        spec = load_published(text, self.settings)
        if dict(spec.entities) != dict(self.spec.entities):
            raise ConfigError(
                f"entity kinds {dict(spec.entities)} differ from the running {dict(self.spec.entities)}: "
                "a new entity kind needs BYPASS_FEATURES_SPEC changed and a restart"
            )
        active = self.follower.active
        ruleset = load_for_spec(active.text, spec, source=active.source) if active else empty_ruleset(spec)
        return spec, ruleset

    def _on_features(self, loaded: tuple[features.FeatureSpec, RuleSet], record: RuleSetRecord) -> None:
        spec, ruleset = loaded
        old = self.processor
        processor = Processor(
            spec,
            build_engine(spec, self.settings),
            ruleset,
            run_id="live",
            lists=old.lists,
            decision_sample=old.decision_sample,
        )
        if self._features_following:
            self.app.loop.call_soon_threadsafe(self._install, processor, record)
        else:
            self._install(processor, record)

    def _install(self, processor: Processor, record: RuleSetRecord) -> None:
        """Make ``processor`` (a new feature spec) the one the pipeline runs (event loop)."""
        old = self.processor
        active = self.follower.active
        if active is not None:  # a rule set activated since the spec was loaded
            try:
                processor.set_ruleset(load_for_spec(active.text, processor.spec, source=active.source))
            except Exception as exc:
                log.error(
                    "rule set %s does not load against feature spec %s: %s",
                    active.version,
                    record.version,
                    exc,
                )
                return
        changed = changed_features(old.spec, processor.spec)
        if self.settings.warm_start:
            for entity, names in changed.items():
                processor.set_cold(entity, names)  # until the warm start's first plan
        self.processor = processor
        self.spec = processor.spec
        self.engine = processor.engine
        self.pipeline.swap_processor(processor)
        self.spec_version = record.version
        if self.reporter is not None:
            self.reporter.set_ruleset(str(processor.ruleset.version))
        log.warning(
            "feature spec version %s active (%d features)%s",
            record.version,
            len(processor.spec.features),
            "; new or changed: "
            + "; ".join(f"{e}: {', '.join(names)}" for e, names in changed.items())
            + (
                " (warm-started where a partition's states do not hold them yet)"
                if self.settings.warm_start
                else " (starting empty)"
            )
            if changed
            else "",
        )

    # --- readiness, health, status ------------------------------------------
    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.ready = False
        self.metrics.ready.set(0)

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in assigned:
            by_topic[tp.topic].append(tp.partition)
        self.assigned = {topic: sorted(parts) for topic, parts in by_topic.items()}
        self.metrics.set_assigned({topic: len(parts) for topic, parts in self.assigned.items()})
        self.pipeline.warm.mark_dirty()

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        first = self.ready_at is None
        self.ready = True
        self.metrics.ready.set(1)
        raw = set(self.settings.raw_topics)
        mine = ", ".join(f"{t}[{_ranges(p)}]" for t, p in sorted(self.assigned.items()) if t in raw)
        if first:
            self.ready_at = time.time()
            log.info(
                "ready in %.1f s: raw partitions %s (%d partitions in all)",
                self.ready_at - self.started,
                mine or "none (other workers own them all)",
                sum(len(p) for p in self.assigned.values()),
            )
        else:
            log.info("rebalanced: raw partitions %s", mine or "none")

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: see :mod:`streams.live.health`."""
        m = self.metrics
        s = self.settings
        return health.health_report(
            health.HealthInputs(
                now=time.time(),
                started=self.started,
                ready=self.ready,
                ready_at=self.ready_at,
                partitions=dict(self.assigned),
                waiting=dict(self.pipeline.waiting),
                ruleset=m._active_version,
                events_in=health.counter_total(m.events_in),
                hits=health.counter_total(m.hits),
                dlq=health.counter_total(m.dlq),
                watermark_ms=self.pipeline.watermark_ms,
                max_wait_s=s.health_max_wait_ms / 1000,
                version=_version(),
                app_id=s.app_id,
                pid=os.getpid(),
            )
        )

    def _report(self) -> tuple[int, dict[str, Any]]:
        """``/healthz`` plus the consumer lag per raw partition and the events/s since the last
        report: what ``bypass status --all`` shows per worker (see streams/core/workers.py)."""
        code, body = self.health()
        body["consumer_lag"] = {f"{t}[{p}]": n for (t, p), n in sorted(self.consumer_lag().items())}
        body["features"] = {"version": self.spec_version, **self.pipeline.warm.report()}
        now, events = time.monotonic(), float(body.get("events_in") or 0)
        before_t, before = self._report_prev
        body["events_per_s"] = round((events - before) / (now - before_t), 1) if now > before_t else 0.0
        self._report_prev = (now, events)
        return code, body

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per raw partition this worker reads: the high watermark of its last fetch minus
        the next offset to read (partitions not fetched yet are left out)."""
        pipeline = self.pipeline
        consumer = self.app.consumer
        out: dict[tuple[str, int], int] = {}
        for topic in self.settings.raw_topics:
            for partition in self.assigned.get(topic, ()):
                nxt = pipeline._next_offset.get((topic, partition))
                try:
                    high = consumer.highwater(FaustTP(topic, partition))
                except Exception:  # not fetched yet / not assigned any more
                    high = None
                if nxt is not None and high is not None and high >= 0:
                    out[(topic, partition)] = max(0, int(high) - nxt)
        return out

    def _event_time_lag(self) -> float | None:
        watermark = self.pipeline.watermark_ms
        return max(0.0, time.time() - watermark / 1000) if watermark is not None else None

    async def _update_gauges(self) -> None:
        m = self.metrics
        m.heartbeat.set(time.time())
        self._gauge_ticks += 1
        if not self.settings.worker_status_s and self._gauge_ticks % STATE_SIZE_EVERY_TICKS == 1:
            self._update_state_size()  # else with each status line
        m.set_consumer_lag(self.consumer_lag())
        lag = self._event_time_lag()
        if lag is not None:
            m.event_time_lag.set(lag)

    def state_size(self) -> dict[str, tuple[int, int]]:
        """Per entity kind: (keys, bytes) of its state table (:meth:`Pipeline.state_size`:
        counted for the memory store, RocksDB's estimate for rocksdb://)."""
        return self.pipeline.state_size()

    def _update_state_size(self) -> None:
        for entity, (keys, size) in self.state_size().items():
            self.metrics.state_keys.labels(entity=entity).set(keys)
            self.metrics.state_bytes.labels(entity=entity).set(size)

    async def _log_status(self) -> None:
        m = self.metrics
        self._update_state_size()  # a scan of the tables: once per status line
        now = time.monotonic()
        events = health.counter_total(m.events_in)
        before_t, before = self._status_prev
        self._status_prev = (now, events)
        lags = self.consumer_lag()
        log.info(
            "%s",
            health.status_line(
                events=events,
                events_before=before,
                seconds=now - before_t,
                lag=sum(lags.values()) if lags or not self.assigned else None,
                event_time_lag_s=self._event_time_lag(),
                hits=health.counter_total(m.hits),
                dlq=health.counter_total(m.dlq),
                waiting=dict(self.pipeline.waiting),
                now=time.time(),
            ),
        )

    def _on_reject(self, record: RuleSetRecord, exc: Exception) -> None:
        self.metrics.ruleset_rejected.inc()

    def prepare(self) -> None:
        """Create the topics bypass owns and load the latest rule set (before consuming)."""
        s = self.settings
        kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic, s.decisions_topic])
        kafka.ensure_dlq(s)
        self.pipeline.ensure_state_topics()
        self.pipeline.set_raw_sources(kafka.topic_partitions(s, s.raw_topics))
        log.info(
            "bypass worker %s: app id %s, Kafka %s, raw topics %s, spec %s (%s)",
            _version(),
            s.app_id,
            s.kafka_bootstrap,
            ",".join(s.raw_topics),
            s.features_spec,
            ", ".join(self.pipeline.entities),
        )
        self.reporter = WorkerReporter(s, health=self._report)
        # the active feature spec first: the rule set is loaded against it
        self.features_follower.start()
        self._features_following = True
        active = self.follower.start()
        self._following = True
        if active is not None:
            self.reporter.set_ruleset(active.version)
        self.reporter.start()
        if active is None:
            log.warning(
                "no rule set published on %s yet: running with no rules (features only) until "
                "`bypass rules publish RULES.yaml`",
                s.rules_topic,
            )
        if s.metrics_port:
            self.server = health.serve(self.metrics.registry, self.health, s.metrics_port)
            log.info(
                "metrics on http://127.0.0.1:%d/metrics, health on http://127.0.0.1:%d/healthz "
                "(`bypass status --port %d`)",
                self.server.port,
                self.server.port,
                self.server.port,
            )
        log.info(
            "joining consumer group %s (a first join on Tansu waits about half of "
            "BYPASS_CONSUMER_SESSION_TIMEOUT_MS=%d)",
            s.app_id,
            s.consumer_session_timeout_ms,
        )

    def run(self) -> None:
        """Prepare, then run the Faust worker until it is stopped (SIGTERM / SIGINT)."""
        from streams.cli.params import setup_logging

        setup_logging(self.settings)
        self.prepare()
        worker = _worker_class()(
            self.app,
            loglevel=self.settings.log_level,
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,  # one log format: the one set up above
        )
        if not self.verbose:
            for name in CHATTY_LOGGERS:
                logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
        # Faust's start-up spinner hangs a DEBUG handler on the root logger and lowers it to
        # DEBUG: every aiokafka/Faust debug call (several per message) then builds a log
        # record.  A service needs no spinner.
        worker.spinner = None
        gc.collect()
        gc.freeze()  # the objects of the loaded modules and the app: never scanned again
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            worker.execute_from_commandline()
        finally:
            self.follower.stop()
            self.features_follower.stop()
            self.pipeline.warm.stop()
            if self.reporter is not None:
                self.reporter.stop()
            if self.server is not None:
                self.server.shutdown()
            log.info("worker stopped")


#: Seconds a stop may take before the worker logs where it is stuck (every thread's stack
#: and every pending asyncio task), then again every as many seconds.
STOP_REPORT_AFTER_S = 10.0


def _stuck_report(loop: Any) -> str:
    """Every thread's stack and every pending asyncio task of ``loop`` (read from another
    thread: a best-effort snapshot for the log)."""
    import asyncio
    import sys
    import threading
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    lines: list[str] = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"thread {names.get(ident, ident)}:")
        lines.extend("  " + ln.rstrip() for ln in traceback.format_stack(frame)[-8:])
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed while read
        tasks = []
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        lines.extend(f"  {where}" for where in _awaiting(task.get_coro()))
    return "\n".join(lines)


def _awaiting(coro: Any, depth: int = 12) -> list[str]:
    """Where a coroutine waits: the chain of the coroutines it awaits, outermost first."""
    out: list[str] = []
    while coro is not None and len(out) < depth:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def _watch_stop(loop: Any, signal_name: str) -> None:
    """Started at SIGTERM/SIGINT: log the stop, and where it is stuck if it stalls."""
    import threading

    log.info("stopping (%s): committing offsets, flushing the producers", signal_name)
    started = time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(STOP_REPORT_AFTER_S)
            waited = time.monotonic() - started
            log.warning("still stopping after %.0f s; where it waits:\n%s", waited, _stuck_report(loop))

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()


def _worker_class() -> Any:
    import signal

    import faust

    class Worker(faust.Worker):
        """Faust's worker, logging its stop (and where a slow stop waits)."""

        def _on_sigterm(self) -> None:
            if not self._signal_stop_time:
                _watch_stop(self.loop, "SIGTERM")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            if not self._signal_stop_time:
                _watch_stop(self.loop, signal.SIGINT.name)
            super()._on_sigint()

    return Worker


def run_worker(settings: Settings, *, verbose: bool = False) -> None:
    LiveWorker(settings, verbose=verbose).run()
