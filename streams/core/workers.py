"""What each running process reports about itself, on a compacted topic (``BYPASS_WORKERS_TOPIC``).

Record (key: the process id, ``<host>:<pid>:<random>``; a tombstone when it stops cleanly)::

    {"worker_id": str, "host": str, "pid": int, "started_ms": int, "updated_ms": int,
     "ruleset_version": str | null, "app_id": str,
     "kind": "worker" | "sink-clickhouse" | "sink-redis",
     "code": int, "health": object | null}      # the process's /healthz answer

A worker (and each writer) writes its record at start, whenever its active rule set changes,
and every ``REPORT_S`` seconds. A reader (``bypass rules history``, ``bypass status --all``)
takes the newest record per process and counts as running those whose record is younger
than ``STALE_MS`` by the reader's clock, so a process killed with SIGKILL drops out within a
minute.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from confluent_kafka import Message

from streams.core import kafka
from streams.settings import Settings

__all__ = ["STALE_MS", "WorkerReport", "WorkerReporter", "read_workers"]

log = logging.getLogger(__name__)

REPORT_S = 10.0
STALE_MS = 60_000


@dataclass(frozen=True, slots=True)
class WorkerReport:
    worker_id: str
    host: str
    pid: int
    started_ms: int
    updated_ms: int
    ruleset_version: str | None
    app_id: str
    kind: str = "worker"
    code: int = 0
    health: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, value: bytes) -> WorkerReport:
        data = orjson.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a worker report")
        version = data.get("ruleset_version")
        return cls(
            worker_id=str(data["worker_id"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            started_ms=int(data.get("started_ms", 0)),
            updated_ms=int(data.get("updated_ms", 0)),
            ruleset_version=version if isinstance(version, str) else None,
            app_id=str(data.get("app_id", "")),
            kind=str(data.get("kind", "worker")),
            code=int(data.get("code", 0)),
            health=data["health"] if isinstance(data.get("health"), dict) else None,
        )


class WorkerReporter:
    """Writes this worker's report at :meth:`start`, on :meth:`set_ruleset`, every
    ``REPORT_S`` seconds from a daemon thread, and a tombstone at :meth:`stop`. A broker
    that does not answer costs a report, never the worker."""

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = REPORT_S,
        kind: str = "worker",
        health: Callable[[], tuple[int, dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.kind = kind
        self._health = health
        host = socket.gethostname()
        self.worker_id = f"{host}:{os.getpid()}:{secrets.token_hex(3)}"
        self._host = host
        self._started_ms = int(time.time() * 1000)
        self._version: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = kafka.producer(settings)

    def report(self) -> WorkerReport:
        code, body = 0, None
        if self._health is not None:
            try:
                code, body = self._health()
            except Exception as exc:  # a report without health beats no report
                log.debug("health for the worker report failed: %s", exc)
        return WorkerReport(
            kind=self.kind,
            code=code,
            health=body,
            worker_id=self.worker_id,
            host=self._host,
            pid=os.getpid(),
            started_ms=self._started_ms,
            updated_ms=int(time.time() * 1000),
            ruleset_version=self._version,
            app_id=self.settings.app_id,
        )

    def _send(self, value: bytes | None) -> None:
        with self._lock:
            try:
                self._producer.produce(self.settings.workers_topic, key=self.worker_id.encode(), value=value)
                self._producer.poll(0)
            except Exception as exc:  # a full queue or a broker away: the next report retries
                log.debug("worker report not sent: %s", exc)

    def set_ruleset(self, version: str) -> None:
        self._version = version
        if self._thread is not None:
            self._send(self.report().to_bytes())

    def start(self) -> None:
        kafka.ensure_topics(self.settings, [self.settings.workers_topic], partitions=1, compacted=True)
        self._send(self.report().to_bytes())
        self._thread = threading.Thread(target=self._run, name="bypass-worker-report", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._send(self.report().to_bytes())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._send(None)  # a tombstone: this worker is gone
            self._producer.flush(2.0)


def read_workers(
    settings: Settings, *, timeout_s: float = 10.0, now_ms: int | None = None, kind: str | None = "worker"
) -> list[WorkerReport]:
    """The processes of ``settings.app_id`` (of ``kind``; None: all) that reported within the
    last ``STALE_MS``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    client = kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-workers-reader-{uuid.uuid4().hex[:12]}",
        enable_auto_commit=False,
        enable_partition_eof=True,
    )

    def parse(msg: Message) -> tuple[bytes, WorkerReport | None] | None:
        value = msg.value()
        try:
            return msg.key() or b"", WorkerReport.from_bytes(value) if value is not None else None
        except (ValueError, KeyError, TypeError):
            return None

    try:
        # the newest record per process wins (a tombstone: it stopped)
        latest = dict(kafka.read_to_end(client, settings.workers_topic, timeout_s, parse)[0])
    finally:
        client.close()
    return sorted(
        (
            r
            for r in latest.values()
            if r is not None
            and r.app_id == settings.app_id
            and now - r.updated_ms < STALE_MS
            and (kind is None or r.kind == kind)
        ),
        key=lambda r: r.worker_id,
    )
