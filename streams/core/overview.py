"""One screen for on-call (``bypass status --all``): every running process, the dependencies,
and the dead letters of the last hour.

- processes: what each worker and writer reports on ``BYPASS_WORKERS_TOPIC``
  (:mod:`streams.core.workers`): its ``/healthz``, consumer lag per raw partition, events/s,
  rule-set version; a writer its written count, lag and back-off;
- dependencies: Kafka, ClickHouse and Redis, each asked once (reachable or why not);
- dead letters: the DLQ topic's messages of the last hour, counted by ``bypass.reason``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from streams.core import kafka
from streams.core.workers import WorkerReport, read_workers
from streams.settings import Settings, mask_url

__all__ = ["Overview", "dlq_by_reason", "gather", "render"]

#: the most DLQ messages counted per call (a flood is reported as "at least")
DLQ_READ_CAP = 200_000


@dataclass
class Overview:
    processes: list[WorkerReport]
    dependencies: dict[str, str | None]  # name -> None when reachable, else why not
    dlq_last_hour: dict[str, int]
    dlq_capped: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "processes": [
                {
                    "id": p.worker_id,
                    "kind": p.kind,
                    "host": p.host,
                    "pid": p.pid,
                    "ruleset": p.ruleset_version,
                    "code": p.code,
                    "updated_ms": p.updated_ms,
                    "health": p.health,
                }
                for p in self.processes
            ],
            "dependencies": {k: ("ok" if v is None else v) for k, v in self.dependencies.items()},
            "dlq_last_hour": self.dlq_last_hour,
            "dlq_capped": self.dlq_capped,
        }


def _check_clickhouse(settings: Settings) -> str | None:
    from streams.core.outputs import clickhouse_client

    try:
        clickhouse_client(settings).query("SELECT 1")
    except Exception as exc:
        return str(getattr(exc, "message", None) or exc).splitlines()[0][:200]
    return None


def _check_redis(settings: Settings) -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}"
    return None


def dlq_by_reason(
    settings: Settings, since_ms: int, *, timeout_s: float = 10.0
) -> tuple[dict[str, int], bool]:
    """DLQ messages stamped at or after ``since_ms``, by ``bypass.reason`` (and whether the
    count stopped at :data:`DLQ_READ_CAP`)."""
    topic = settings.dlq_topic
    client = kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-status-{uuid.uuid4().hex[:12]}",
        enable_auto_commit=False,
        enable_partition_eof=True,
    )
    counts: dict[str, int] = {}
    read = 0
    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return {}, False
        wanted = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]
        starts = client.offsets_for_times(wanted, timeout=timeout_s)
        assign = []
        for tp in starts:
            low, high = client.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            start = tp.offset if tp.offset >= 0 else high
            if start < high:
                assign.append(TopicPartition(topic, tp.partition, max(start, low)))
        if not assign:
            return {}, False
        client.assign(assign)
        pending = {tp.partition for tp in assign}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline and read < DLQ_READ_CAP:
            for msg in client.consume(1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                read += 1
                reason = "unknown"
                raw_headers: Any = msg.headers() or []
                headers = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
                for key, value in headers:
                    if key == "bypass.reason" and value is not None:
                        reason = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                counts[reason] = counts.get(reason, 0) + 1
    finally:
        client.close()
    return dict(sorted(counts.items())), read >= DLQ_READ_CAP


def gather(settings: Settings, *, now_ms: int | None = None) -> Overview:
    """Everything ``bypass status --all`` shows; ``problems`` lists what is not healthy."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    deps: dict[str, str | None] = {}
    try:
        kafka.check_reachable(settings)
        deps["kafka"] = None
    except kafka.KafkaSetupError as exc:
        deps["kafka"] = exc.message
    deps["clickhouse"] = _check_clickhouse(settings)
    deps["redis"] = _check_redis(settings)
    processes: list[WorkerReport] = []
    dlq: dict[str, int] = {}
    capped = False
    if deps["kafka"] is None:
        processes = read_workers(settings, kind=None, now_ms=now)
        dlq, capped = dlq_by_reason(settings, now - 3_600_000)
    problems = [f"{name}: {why}" for name, why in deps.items() if why is not None]
    workers = [p for p in processes if p.kind == "worker"]
    if deps["kafka"] is None and not workers:
        problems.append("no worker reported in the last minute (is `bypass worker` running?)")
    for p in processes:
        if p.code and p.code != 200:
            status = (p.health or {}).get("status", f"HTTP {p.code}")
            problems.append(f"{p.kind} {p.worker_id}: {status}")
    return Overview(processes, deps, dlq, capped, problems)


def _dur(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(view: Overview) -> str:
    """The human screen of :func:`gather`."""
    lines: list[str] = []
    verdict = "healthy" if view.healthy else "NOT healthy"
    lines.append(f"bypass: {verdict}")
    for problem in view.problems:
        lines.append(f"  ! {problem}")
    workers = [p for p in view.processes if p.kind == "worker"]
    lines.append(f"workers ({len(workers)})")
    for p in workers:
        h = p.health or {}
        lag = h.get("consumer_lag") or {}
        total_lag = sum(int(v) for v in lag.values()) if lag else None
        dep = h.get("dependency") or {}
        waiting = (
            f", WAITING for {dep.get('entity')} {_dur(dep.get('waiting_s'))}" if dep.get("waiting") else ""
        )
        feats = h.get("features") or {}
        warming = ", ".join(
            f"{w.get('entity')}: {', '.join(w.get('features', ()))} {float(w.get('progress') or 0):.0%}"
            for w in feats.get("warming", ())
        )
        lines.append(
            f"  {p.worker_id}  {h.get('status', '?')}  rules {p.ruleset_version or '-'}  "
            f"features {feats.get('version', '-')}{f' (warming {warming})' if warming else ''}  "
            f"partitions {h.get('partitions_assigned', '?')}  "
            f"events {int(h.get('events_in') or 0):,} ({h.get('events_per_s', 0)}/s)  "
            f"lag {total_lag if total_lag is not None else '-'}  "
            f"event-time lag {_dur(h.get('event_time_lag_s'))}{waiting}"
        )
        busy = {k: v for k, v in lag.items() if v}
        if busy:
            lines.append("      lag by partition: " + ", ".join(f"{k} {v:,}" for k, v in busy.items()))
    sinks = [p for p in view.processes if p.kind != "worker"]
    lines.append(f"writers ({len(sinks)})")
    for p in sinks:
        h = p.health or {}
        lines.append(
            f"  {p.kind}  {p.worker_id}  written {int(h.get('written') or 0):,}  "
            f"lag {int(h.get('lag') or 0):,}  back-off {_dur(h.get('backoff_s') or 0)}"
        )
    lines.append("dependencies")
    for name, why in view.dependencies.items():
        lines.append(f"  {name:<10} {'reachable' if why is None else 'NOT reachable: ' + why}")
    dlq = ", ".join(f"{k} {v:,}" for k, v in view.dlq_last_hour.items()) or "none"
    lines.append(f"dead letters in the last hour: {'at least ' if view.dlq_capped else ''}{dlq}")
    return "\n".join(lines)
