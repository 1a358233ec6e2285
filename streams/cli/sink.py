"""``bypass sink clickhouse | redis``: the writers behind ``bypass.hits`` / ``bypass.blacklist``.

A new sink: its class in ``sinks/`` and a command here calling
:func:`streams.core.outputs.build_runner`.
"""

from __future__ import annotations

import click

from streams.cli.params import setup_logging, stop_on_signals
from streams.core.outputs import build_runner, check_schema, wait_for_clickhouse
from streams.settings import Settings


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
    setup_logging(settings)
    stop = stop_on_signals()
    client = wait_for_clickhouse(settings, stop)
    if client is None:
        return
    check_schema(client, settings.clickhouse_database)
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
    setup_logging(settings)
    client = redis_client(settings.redis_url)
    redis_sink = RedisBlacklistSink(client, prefix=settings.redis_key_prefix)
    runner = build_runner(
        settings, redis_sink, [settings.blacklist_topic], "redis", from_beginning=from_beginning
    )
    runner.run(stop_on_signals(), idle_exit_s=idle_exit)
