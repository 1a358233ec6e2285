"""Sinks fed from settings: ClickHouse clients and the runner that feeds a sink from Kafka.

One home for what ``bypass sink ...``, ``bypass hits``, ``bypass clickhouse migrate``,
replay, the demo and the benchmarks need to reach an output:

- :func:`clickhouse_client`: a clickhouse-connect client from the settings, or a
  :class:`ClickHouseUnavailableError` that says what to check;
- :func:`wait_for_clickhouse`: the same, retried with back-off while ClickHouse is down;
- :func:`check_schema`: refuse a database without the bypass schema;
- :func:`build_runner`: a :class:`sinks.runner.SinkRunner` that consumes topics into any
  sink (``add()``/``flush()``, :mod:`sinks.base`), committing offsets only after a flush,
  with the DLQ for records the sink refuses.

A new sink is a class in ``sinks/`` and a verb in :mod:`streams.cli.sink` calling
:func:`build_runner`; replay reaches it through :mod:`streams.replay.outputs`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from clickhouse_connect.driver.client import Client

from features.errors import BypassError
from sinks.base import Sink
from sinks.clickhouse import connect
from sinks.clickhouse_schema import MIGRATIONS, SchemaClient, applied_versions, check_identifier
from sinks.runner import SinkMetrics, SinkRunner
from streams.core import kafka
from streams.settings import Settings, mask_url

__all__ = [
    "ClickHouseUnavailableError",
    "build_runner",
    "check_schema",
    "clickhouse_client",
    "wait_for_clickhouse",
]

log = logging.getLogger(__name__)


class ClickHouseUnavailableError(BypassError):
    """ClickHouse could not be reached or refused a statement."""


def clickhouse_client(settings: Settings, *, database: str | None = None) -> Client:
    """A clickhouse-connect client from the settings, or a clear error."""
    try:
        return connect(
            settings.clickhouse_url,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
            database=database,
        )
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"cannot reach ClickHouse at {mask_url(settings.clickhouse_url)}: {exc}. "
            "Is it up (`bypass stack status`) and BYPASS_CLICKHOUSE_URL right?",
            url=mask_url(settings.clickhouse_url),
        ) from exc


def wait_for_clickhouse(settings: Settings, stop: threading.Event) -> Client | None:
    """A client, retrying with back-off while ClickHouse is down (None if stopped meanwhile)."""
    delay = 0.5
    while True:
        try:
            return clickhouse_client(settings)
        except BypassError as exc:
            log.warning("%s; retrying in %.1fs", exc.message, delay)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, settings.sink_retry_max_ms / 1000)


def check_schema(client: SchemaClient, database: str) -> None:
    """Refuse to start against a database without the tables (a clear error, not endless retries).

    An unreachable ClickHouse is not an error here: the writer starts and retries."""
    check_identifier(database)
    try:
        done = applied_versions(client, database)
    except Exception as exc:
        text = str(exc)
        if "UNKNOWN_DATABASE" in text or "UNKNOWN_TABLE" in text:
            raise ClickHouseUnavailableError(
                f"ClickHouse database {database!r} has no bypass schema: run `bypass clickhouse migrate`",
                database=database,
            ) from None
        log.warning("cannot check the ClickHouse schema yet (%s); starting anyway", exc)
        return
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing:
        raise ClickHouseUnavailableError(
            f"ClickHouse database {database!r} lacks migrations {missing}: run `bypass clickhouse migrate`",
            database=database,
        )


def _serve_sink_metrics(name: str, port: int) -> SinkMetrics:
    """The sink's metrics on ``/metrics`` (and a minimal ``/healthz``) of ``port`` (taken: a
    free one, logged)."""
    from streams.live import health

    metrics = SinkMetrics(f"sink-{name}")

    def report() -> tuple[int, dict[str, Any]]:
        return 200, {
            "status": "ok",
            "sink": name,
            "written": health.counter_total(metrics.written),
            "lag": health.counter_total(metrics.lag),
            "backoff_s": health.counter_total(metrics.backoff),
        }

    server = health.serve(metrics.registry, report, port)
    log.info("sink-%s: metrics on http://127.0.0.1:%d/metrics", name, server.port)
    return metrics


def build_runner(
    settings: Settings,
    sink: Sink,
    topics: list[str],
    name: str,
    *,
    metrics_port: int = 0,
    **kwargs: Any,
) -> SinkRunner:
    """A runner consuming ``topics`` into ``sink`` in consumer group ``<app_id>-sink-<name>``;
    with ``metrics_port``, its :class:`sinks.runner.SinkMetrics` served there."""
    kafka.ensure_topics(settings, topics)
    kafka.ensure_dlq(settings)
    consumer = kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-sink-{name}",
        **{
            "session.timeout.ms": settings.sink_session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.sink_session_timeout_ms // 4),
            "max.poll.interval.ms": 300_000,
            # Tansu holds a fetch for the whole wait even when data arrives: librdkafka's 500 ms
            # default added up to half a second of hit-to-queryable lag
            "fetch.wait.max.ms": settings.consumer_fetch_max_wait_ms,
        },
    )
    producer = kafka.producer(settings)
    if "metrics" not in kwargs and metrics_port:
        kwargs["metrics"] = _serve_sink_metrics(name, metrics_port)
    return SinkRunner(
        consumer,
        sink,
        topics,
        name=f"sink-{name}",
        dlq_producer=producer,
        dlq_topic=settings.dlq_topic,
        batch_size=settings.sink_batch_size,
        batch_ms=settings.sink_batch_ms,
        retry_max_ms=settings.sink_retry_max_ms,
        **kwargs,
    )
