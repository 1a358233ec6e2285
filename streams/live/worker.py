"""Wires one live worker process: settings -> processor, rules follower, metrics, Faust app.

``bypass worker`` calls :func:`run_worker`; tests and benchmarks may build a
:class:`LiveWorker` and run it in a thread or subprocess.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

from features.errors import ConfigError
from rules import RuleSet
from streams.core import kafka
from streams.core.assembly import build_processor, load_for_spec, load_spec
from streams.core.rulestore import RuleSetRecord, RulesFollower
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


class LiveWorker:
    """One worker: the shared Processor (run_id ``live``), a RulesFollower swapping its rule
    set, Prometheus metrics, and the Faust :class:`streams.live.app.Pipeline`."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics | None = None, datadir: Path | None = None
    ) -> None:
        from streams.live.app import Pipeline

        self.settings = settings
        self.spec = load_spec(settings)
        self.metrics = metrics or Metrics()
        self.processor = build_processor(settings, self.spec, run_id="live")
        self.engine = self.processor.engine
        self.follower = RulesFollower(
            settings,
            lambda text, source: load_for_spec(text, self.spec, source=source),
            self._on_swap,
            on_reject=self._on_reject,
        )
        self.pipeline = Pipeline(settings, self.processor, metrics=self.metrics, datadir=datadir)
        self.app = self.pipeline.app

    def _on_swap(self, ruleset: RuleSet, record: RuleSetRecord) -> None:
        self.processor.set_ruleset(ruleset)  # one reference assignment
        delay_ms = int(time.time() * 1000) - record.published_ms if record.published_ms else -1
        self.metrics.set_ruleset(str(ruleset.version))
        self.metrics.ruleset_swaps.inc()
        if delay_ms >= 0:
            self.metrics.publish_to_active.set(delay_ms / 1000)
        log.warning(
            "rule set version %s active (%d rules) publish_to_active_ms=%d",
            ruleset.version,
            len(ruleset.rules),
            delay_ms,
        )

    def _on_reject(self, record: RuleSetRecord, exc: Exception) -> None:
        self.metrics.ruleset_rejected.inc()

    def prepare(self) -> None:
        """Create the topics bypass owns and load the latest rule set (before consuming)."""
        s = self.settings
        kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic])
        kafka.ensure_dlq(s)
        self.pipeline.set_raw_sources(kafka.topic_partitions(s, s.raw_topics))
        active = self.follower.start()
        if active is None:
            log.warning(
                "no rule set published on %s yet: running with no rules (features only) until "
                "`bypass rules publish RULES.yaml`",
                s.rules_topic,
            )
        if s.metrics_port:
            try:
                self.metrics.serve(s.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on port {s.metrics_port}: {exc.strerror}; set "
                    "BYPASS_METRICS_PORT to a free port (each worker on a host needs its own) or 0 for none",
                    setting="BYPASS_METRICS_PORT",
                ) from None

    def run(self) -> None:
        """Prepare, then run the Faust worker until it is stopped (SIGTERM / SIGINT)."""
        import faust

        self.prepare()
        worker = faust.Worker(self.app, loglevel=self.settings.log_level, quiet=True, redirect_stdouts=False)
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


def run_worker(settings: Settings) -> None:
    LiveWorker(settings).run()
