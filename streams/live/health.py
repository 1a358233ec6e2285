"""The worker's HTTP endpoint (``/metrics`` and ``/healthz`` on one port) and the pieces its
health report and its periodic status line are made of.

``GET /healthz`` answers JSON (:func:`health_report`)::

    {"status": "ok" | "degraded" | "starting", "ready": true, "live": true,
     "version": "...", "app_id": "bypass", "pid": 123, "uptime_s": 12.3,
     "ready_after_s": 5.1, "partitions": {"bypass.events": [0, 1, 2, 3], ...},
     "partitions_assigned": 16, "dependency": {"waiting": false, "entity": null,
     "since": null, "waiting_s": 0.0}, "ruleset": "2026-11-23.1",
     "events_in": 10000, "hits": 120, "dlq": 3,
     "watermark_ms": 1763856000000, "event_time_lag_s": 3.2}

with status 200 when live, 503 when not ready (starting, rebalancing) or when a batch has
waited for a dependency (Redis lists) longer than BYPASS_HEALTH_MAX_WAIT_MS: the
worker then makes no progress, and a probe should say so.  A shorter wait is
``degraded`` with 200 (back-off retries are normal and brief).

The server is a :class:`http.server.ThreadingHTTPServer` in a daemon thread; when the
port is taken, a free one is chosen and logged (each worker on a host needs its own).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "HealthInputs",
    "MetricsServer",
    "counter_total",
    "format_health",
    "health_report",
    "serve",
    "status_line",
]

log = logging.getLogger("bypass.worker")

HealthFn = Callable[[], tuple[int, dict[str, Any]]]


@dataclass
class HealthInputs:
    """What the health report is computed from (a snapshot; times are wall-clock seconds)."""

    now: float
    started: float
    ready: bool
    ready_at: float | None = None
    partitions: Mapping[str, Sequence[int]] = field(default_factory=dict)
    waiting: Mapping[str, float] = field(default_factory=dict)  # entity kind -> waiting since
    ruleset: str | None = None
    events_in: float = 0.0
    hits: float = 0.0
    dlq: float = 0.0
    watermark_ms: int | None = None
    max_wait_s: float = 60.0
    version: str = ""
    app_id: str = ""
    pid: int = 0


def health_report(h: HealthInputs) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``/healthz``: 200 when live, else 503 (see the module)."""
    since = min(h.waiting.values()) if h.waiting else None
    waiting_s = max(0.0, h.now - since) if since is not None else 0.0
    stuck = since is not None and waiting_s > h.max_wait_s
    if not h.ready:
        status = "starting"
    elif since is not None:
        status = "degraded"
    else:
        status = "ok"
    live = h.ready and not stuck
    body: dict[str, Any] = {
        "status": status,
        "ready": h.ready,
        "live": live,
        "version": h.version,
        "app_id": h.app_id,
        "pid": h.pid,
        "uptime_s": round(h.now - h.started, 3),
        "ready_after_s": round(h.ready_at - h.started, 3) if h.ready_at is not None else None,
        "partitions": {topic: sorted(parts) for topic, parts in sorted(h.partitions.items())},
        "partitions_assigned": sum(len(parts) for parts in h.partitions.values()),
        "dependency": {
            "waiting": since is not None,
            "entity": ",".join(sorted(h.waiting)) or None,
            "since": since,
            "waiting_s": round(waiting_s, 3),
            "max_wait_s": h.max_wait_s,
        },
        "ruleset": h.ruleset,
        "events_in": int(h.events_in),
        "hits": int(h.hits),
        "dlq": int(h.dlq),
        "watermark_ms": h.watermark_ms,
        "event_time_lag_s": (
            round(max(0.0, h.now - h.watermark_ms / 1000), 3) if h.watermark_ms is not None else None
        ),
    }
    return (200 if live else 503), body


def counter_total(metric: MetricWrapperBase) -> float:
    """The sum of a (labelled or not) counter's ``_total`` samples, or of a gauge's values."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_total"):
                continue
            total += sample.value
    return total


def _count(n: float) -> str:
    return f"{int(n):,}"


def status_line(
    *,
    events: float,
    events_before: float,
    seconds: float,
    lag: int | None,
    event_time_lag_s: float | None,
    hits: float,
    dlq: float,
    waiting: Mapping[str, float],
    now: float,
) -> str:
    """The worker's periodic one-line status: events/s since the last line, consumer lag
    of its raw partitions, event-time lag, hits and dead letters so far, a dependency wait."""
    rate = (events - events_before) / seconds if seconds > 0 else 0.0
    parts = [
        f"events {_count(events)} ({rate:,.0f}/s)",
        f"lag {_count(lag)}" if lag is not None else "lag ?",
        f"event-time lag {event_time_lag_s:,.1f} s" if event_time_lag_s is not None else "event-time lag -",
        f"hits {_count(hits)}",
        f"DLQ {_count(dlq)}",
    ]
    if waiting:
        since = min(waiting.values())
        parts.append(f"WAITING on a dependency for {', '.join(sorted(waiting))} since {now - since:,.0f} s")
    return "status: " + ", ".join(parts)


def _ranges(parts: Sequence[int]) -> str:
    runs: list[list[int]] = []
    for p in sorted(parts):
        if runs and runs[-1][1] + 1 == p:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def format_health(code: int, body: Mapping[str, Any], raw_topics: Sequence[str] = ()) -> str:
    """A short human summary of a ``/healthz`` answer (``bypass status``)."""
    verdict = "healthy" if code == 200 else "NOT healthy"
    lines = [
        f"worker {body.get('app_id', '?')} (pid {body.get('pid', '?')}, bypass {body.get('version', '?')}): "
        f"{body.get('status', '?')}, {verdict} (HTTP {code})"
    ]
    ready_after = body.get("ready_after_s")
    lines.append(
        f"  up           {_duration(body.get('uptime_s'))}"
        + (f", ready after {_duration(ready_after)}" if ready_after is not None else ", not ready yet")
    )
    partitions: Mapping[str, Sequence[int]] = body.get("partitions") or {}
    raw = [t for t in partitions if t in raw_topics]
    raw = raw or [t for t in partitions if "-entity-" not in t and "__" not in t]
    shown = ", ".join(f"{t}[{_ranges(partitions[t])}]" for t in raw) or "none"
    lines.append(f"  partitions   {shown} ({body.get('partitions_assigned', 0)} in all)")
    lines.append(f"  rule set     {body.get('ruleset') or 'none (features only)'}")
    lines.append(
        f"  processed    events {_count(body.get('events_in', 0))}, hits {_count(body.get('hits', 0))}, "
        f"DLQ {_count(body.get('dlq', 0))}"
    )
    lines.append(f"  event time   lag {_duration(body.get('event_time_lag_s'))}")
    dep = body.get("dependency") or {}
    if dep.get("waiting"):
        lines.append(
            f"  dependency   WAITING for {dep.get('entity')} for {_duration(dep.get('waiting_s'))} "
            f"(not healthy after {_duration(dep.get('max_wait_s'))})"
        )
    else:
        lines.append("  dependency   nothing waiting")
    return "\n".join(lines)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/metrics", "/"):
            body = generate_latest(self.server.registry)
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif path in ("/healthz", "/health"):
            code, report = self.server.health()
            self._send(code, "application/json", orjson.dumps(report) + b"\n")
        else:
            self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry, health: HealthFn) -> None:
        super().__init__(addr, _Handler)
        self.registry = registry
        self.health = health

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def serve(
    registry: CollectorRegistry,
    health: HealthFn,
    port: int,
    addr: str = "0.0.0.0",  # noqa: S104 - a metrics endpoint
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``port`` in a daemon thread; when ``port`` is
    taken, on a free port instead (a warning names it)."""
    try:
        server = MetricsServer((addr, port), registry, health)
    except OSError as exc:
        server = MetricsServer((addr, 0), registry, health)
        log.warning(
            "metrics port %d is taken (%s): serving /metrics and /healthz on port %d instead "
            "(set BYPASS_METRICS_PORT to a free port; each worker on a host needs its own)",
            port,
            exc.strerror or exc,
            server.port,
        )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server
