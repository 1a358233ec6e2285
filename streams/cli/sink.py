"""``bypass sink clickhouse | redis``: the writers behind ``bypass.hits`` / ``bypass.blacklist``."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from streams.settings import Settings


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def build_runner(settings: Settings, sink: Any, topics: list[str], name: str, **kwargs: Any) -> Any:
    from sinks.runner import SinkRunner
    from streams.core import kafka

    kafka.ensure_topics(settings, [*topics, settings.dlq_topic])
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


def _wait_for_clickhouse(settings: Settings, stop: threading.Event) -> Any:
    """A client, retrying with back-off while ClickHouse is down (None if stopped meanwhile)."""
    from features.errors import BypassError
    from streams.cli.clickhouse import clickhouse_client

    delay = 0.5
    while True:
        try:
            return clickhouse_client(settings)
        except BypassError as exc:
            logging.getLogger(__name__).warning("%s; retrying in %.1fs", exc.message, delay)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, settings.sink_retry_max_ms / 1000)


def _check_schema(client: Any, database: str) -> None:
    """Refuse to start against a database without the tables (a clear error, not endless retries).

    An unreachable ClickHouse is not an error here: the writer starts and retries."""
    from sinks.clickhouse_schema import MIGRATIONS, applied_versions, check_identifier
    from streams.cli.clickhouse import ClickHouseUnavailableError

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
        logging.getLogger(__name__).warning(
            "cannot check the ClickHouse schema yet (%s); starting anyway", exc
        )
        return
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing:
        raise ClickHouseUnavailableError(
            f"ClickHouse database {database!r} lacks migrations {missing}: run `bypass clickhouse migrate`",
            database=database,
        )


@click.group()
def sink() -> None:
    """Writers that mirror the output topics into ClickHouse and Redis."""


@sink.command("clickhouse")
@click.option("--idle-exit", type=float, default=None, help="exit after this many seconds without records")
@click.option(
    "--crash-after-flushes", type=int, default=None, hidden=True, help="test hook: exit before a commit"
)
def sink_clickhouse(idle_exit: float | None, crash_after_flushes: int | None) -> None:
    """Consume bypass.hits and bypass.blacklist into risk_hits / risk_blacklist (exactly once by hit_id)."""
    from sinks.clickhouse import ClickHouseSink

    settings = Settings()
    _setup_logging(settings)
    stop = _stop_on_signals()
    client = _wait_for_clickhouse(settings, stop)
    if client is None:
        return
    _check_schema(client, settings.clickhouse_database)
    ch_sink = ClickHouseSink(
        client,
        settings.clickhouse_database,
        {settings.hits_topic: "hits", settings.blacklist_topic: "blacklist"},
    )
    runner = build_runner(
        settings,
        ch_sink,
        [settings.hits_topic, settings.blacklist_topic],
        "clickhouse",
        crash_after_flushes=crash_after_flushes,
    )
    runner.run(stop, idle_exit_s=idle_exit)


@sink.command("redis")
@click.option("--idle-exit", type=float, default=None, help="exit after this many seconds without records")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="re-apply the whole blacklist topic (after Redis lost its data); expired entries are skipped",
)
def sink_redis(idle_exit: float | None, from_beginning: bool) -> None:
    """Mirror bypass.blacklist into Redis, each entry expiring at its expires_at."""
    from sinks.redis_mirror import RedisBlacklistSink, redis_client

    settings = Settings()
    _setup_logging(settings)
    client = redis_client(settings.redis_url)
    redis_sink = RedisBlacklistSink(client, prefix=settings.redis_key_prefix)
    runner = build_runner(
        settings, redis_sink, [settings.blacklist_topic], "redis", from_beginning=from_beginning
    )
    runner.run(_stop_on_signals(), idle_exit_s=idle_exit)
