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
    from streams import kafka

    kafka.ensure_topics(settings, [*topics, settings.dlq_topic])
    consumer = kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-sink-{name}",
        **{
            "session.timeout.ms": settings.sink_session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.sink_session_timeout_ms // 4),
            "max.poll.interval.ms": 300_000,
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
    from streams._cli_clickhouse import clickhouse_client

    settings = Settings()
    _setup_logging(settings)
    client = clickhouse_client(settings)
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
    runner.run(_stop_on_signals(), idle_exit_s=idle_exit)


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
