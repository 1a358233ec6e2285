"""How fresh the pipeline is, for the check API: refreshed in the background, never per request.

Every running worker publishes its /healthz on ``BYPASS_WORKERS_TOPIC`` every 10 s
(:mod:`streams.core.workers`), with ``watermark_ms``: the newest event time it has applied.
The pipeline is as fresh as its slowest worker, so the check API's watermark is the smallest
one reported; its lag is the wall clock minus that watermark, computed when a request is
answered. A :class:`FreshnessMonitor` re-reads the reports every ``refresh_s`` seconds in a
daemon thread (and, when the workers run a rule-set version it has not seen, reads the rules
topic once for the rules' scores).

``Freshness.as_dict(now_ms)``::

    {"status": "ok" | "no_workers" | "unknown" | "stale",
     "watermark_ms": 1763856000000 | null, "watermark": "2025-...Z" | null,
     "lag_s": 3.2 | null, "workers": 2, "ruleset_version": "2026-11-23.1" | null,
     "as_of": "...Z" | null, "age_s": 1.5 | null, "error": null | "why it is unknown"}

``status`` is ``unknown`` before the first read or when reading failed (``error`` says
why), ``stale`` when the last good read is older than ``stale_after_s``, ``no_workers`` when
no worker reported within a minute: a caller should then fall back as bypass lags.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from streams.core.workers import WorkerReport

__all__ = ["Freshness", "FreshnessMonitor", "freshness_from_reports", "rule_scores"]

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Freshness:
    watermark_ms: int | None = None
    workers: int = 0
    ruleset_version: str | None = None
    as_of_ms: int | None = None
    error: str | None = None
    stale_after_s: float = 60.0

    def as_dict(self, now_ms: int) -> dict[str, Any]:
        from streams.serve.core import iso

        wm = self.watermark_ms
        age = (now_ms - self.as_of_ms) / 1000 if self.as_of_ms is not None else None
        if age is None:
            status = "unknown"
        elif age > self.stale_after_s:
            status = "stale"
        elif self.error is not None:
            status = "unknown"
        elif self.workers == 0:
            status = "no_workers"
        else:
            status = "ok"
        return {
            "status": status,
            "watermark_ms": wm,
            "watermark": iso(wm) if wm is not None else None,
            "lag_s": round(max(0.0, (now_ms - wm) / 1000), 3) if wm is not None else None,
            "workers": self.workers,
            "ruleset_version": self.ruleset_version,
            "as_of": iso(self.as_of_ms) if self.as_of_ms is not None else None,
            "age_s": round(age, 3) if age is not None else None,
            "error": self.error,
        }


def freshness_from_reports(reports: Sequence[WorkerReport], now_ms: int) -> Freshness:
    """The pipeline's freshness from the workers' reports: the smallest watermark reported
    (the slowest worker), the rule-set version most of them run."""
    marks = [
        int(r.health["watermark_ms"])
        for r in reports
        if r.health is not None and isinstance(r.health.get("watermark_ms"), int)
    ]
    versions = [r.ruleset_version for r in reports if r.ruleset_version]
    version = max(set(versions), key=versions.count) if versions else None
    return Freshness(
        watermark_ms=min(marks) if marks else None,
        workers=len(reports),
        ruleset_version=version,
        as_of_ms=now_ms,
    )


def rule_scores(text: str) -> dict[str, float]:
    """rule id -> score of a rule-set YAML text (no validation: the workers run it already)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    out: dict[str, float] = {}
    items = doc.get("rules") if isinstance(doc, dict) else None
    for rule in items if isinstance(items, list) else []:
        if isinstance(rule, dict) and isinstance(rule.get("id"), str):
            score = rule.get("score")
            if isinstance(score, int | float) and not isinstance(score, bool):
                out[rule["id"]] = float(score)
    return out


@dataclass
class FreshnessMonitor:
    """Re-reads the worker reports every ``refresh_s`` seconds in a daemon thread.

    ``read_reports()`` -> the running workers' reports; ``read_rules()`` -> version -> rule-set
    text (called only when the workers run a version not seen yet). :attr:`current` and
    :attr:`scores` are plain attribute reads for the request path."""

    read_reports: Callable[[], Sequence[WorkerReport]]
    read_rules: Callable[[], Mapping[str, str]] | None = None
    refresh_s: float = 5.0
    clock_ms: Callable[[], int] = _now_ms
    current: Freshness = field(default_factory=Freshness)
    scores: dict[str, float] | None = None
    #: the reports of the last good read (the console's overview shows them)
    reports: list[WorkerReport] = field(default_factory=list)
    _scores_version: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.current = Freshness(stale_after_s=max(60.0, 6 * self.refresh_s))

    def refresh(self) -> Freshness:
        """One read of the reports (a failure keeps the last good watermark, with ``error``)."""
        now = self.clock_ms()
        try:
            reports = list(self.read_reports())
            fresh = freshness_from_reports(reports, now)
        except Exception as exc:  # the broker away: say so, keep what we knew
            log.warning("reading the worker reports failed: %s", exc)
            self.current = replace(self.current, error=f"reading the worker reports failed: {exc}")
            return self.current
        self.current = replace(fresh, stale_after_s=self.current.stale_after_s)
        self.reports = reports
        self._update_scores(fresh.ruleset_version)
        return self.current

    def _update_scores(self, version: str | None) -> None:
        if version is None or version == self._scores_version or self.read_rules is None:
            return
        try:
            text = self.read_rules().get(version)
        except Exception as exc:
            log.warning("reading the rule sets failed: %s", exc)
            return
        if text is not None:
            self.scores = rule_scores(text)
            self._scores_version = version

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bypass-serve-freshness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
