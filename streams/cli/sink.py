"""``bypass sink clickhouse | redis``: the writers behind ``bypass.hits`` / ``bypass.blacklist``.

A new sink: its class in ``sinks/`` and a command here calling
:func:`streams.core.outputs.build_runner`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from streams.cli.params import setup_logging, stop_on_signals
from streams.core.outputs import build_runner, check_schema, wait_for_clickhouse
from streams.settings import Settings

if TYPE_CHECKING:
    from sinks.runner import SinkRunner

log = logging.getLogger(__name__)


@click.group()
def sink() -> None:
    """Writers that mirror the output topics into ClickHouse and Redis."""


@sink.command("clickhouse")
@click.option("--idle-exit", type=float, default=None, help="exit after this many seconds without records")
@click.option(
    "--crash-after-flushes", type=int, default=None, hidden=True, help="test hook: exit before a commit"
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="writer processes in the consumer group, under one supervisor that restarts a dead one "
    "(default: BYPASS_SINK_PROCESSES; 0 = one per usable core; 1 = this process alone)",
)
@click.option("--child", type=click.IntRange(min=0), default=None, hidden=True, help="run as child I")
def sink_clickhouse(
    idle_exit: float | None, crash_after_flushes: int | None, processes: int | None, child: int | None
) -> None:
    """Consume bypass.hits, bypass.blacklist and bypass.decisions into risk_hits / risk_blacklist /
    risk_decisions (exactly once by hit_id), and archive the raw events into risk_events
    (BYPASS_ARCHIVE_EVENTS).

    With N processes (by default one per usable core) the topics' partitions are split
    between them; process i > 0 serves /metrics on BYPASS_SINK_METRICS_PORT + 1 + i (+ 1 is
    `bypass sink redis`'s), and the supervisor restarts one that dies and passes SIGTERM /
    Ctrl-C on to all (streams/live/supervisor.py). With --idle-exit each exits on its own.
    """
    from sinks.clickhouse import ClickHouseSink
    from streams.core.envelope import decoder_from_settings
    from streams.live import supervisor

    settings = Settings()
    n = supervisor.resolve_processes(processes, settings.sink_processes)
    if child is None and n > 1:
        args = [*(("--idle-exit", str(idle_exit)) if idle_exit is not None else ())]
        if crash_after_flushes is not None:
            args += ["--crash-after-flushes", str(crash_after_flushes)]
        from streams.core import kafka

        kafka.check_reachable(settings)  # no broker: one clear line, not N crash-looping writers
        sys.exit(supervisor.supervise("sink-clickhouse", supervisor.sink_specs(settings, n, args), settings))
    setup_logging(settings, tag=f"sink-clickhouse {child}" if child is not None else None)
    stop = stop_on_signals()
    client = wait_for_clickhouse(settings, stop)
    if client is None:
        return
    check_schema(client, settings.clickhouse_database)
    topics = clickhouse_topics(settings)
    ch_sink = ClickHouseSink(
        client,
        settings.clickhouse_database,
        topics,
        decoder=decoder_from_settings(settings) if settings.archive_events else None,
    )
    runner = build_runner(
        settings,
        ch_sink,
        list(topics),
        "clickhouse",
        crash_after_flushes=crash_after_flushes,
        metrics_port=settings.sink_metrics_port,
    )
    run_reported(settings, runner, "clickhouse", stop, idle_exit)


def run_reported(
    settings: Settings, runner: SinkRunner, name: str, stop: Any, idle_exit: float | None
) -> None:
    """Run the writer while it reports itself on BYPASS_WORKERS_TOPIC every 10 s (written,
    lag, back-off: what `bypass status --all` shows); a tombstone when it stops."""
    from streams.core.workers import WorkerReporter

    def health() -> tuple[int, dict[str, Any]]:
        s = runner.stats
        backoff = runner.metrics.backoff._value.get() if runner.metrics is not None else 0.0
        return 200, {
            "status": "backing off" if backoff else "ok",
            "consumed": s.consumed,
            "written": s.written,
            "dead_lettered": s.dead_lettered,
            "failed_flushes": s.failed_flushes,
            "lag": s.lag or 0,
            "backoff_s": backoff,
        }

    reporter = WorkerReporter(settings, kind=f"sink-{name}", health=health)
    try:
        reporter.start()
    except Exception as exc:  # reporting is for on-call screens: never a reason not to write
        log.warning("sink-%s: cannot report on %s: %s", name, settings.workers_topic, exc)
    try:
        runner.run(stop, idle_exit_s=idle_exit)
    finally:
        reporter.stop()


def clickhouse_topics(settings: Settings) -> dict[str, str]:
    """The topics ``bypass sink clickhouse`` consumes -> the kind of row each becomes: hits,
    blacklist entries, decisions, and (BYPASS_ARCHIVE_EVENTS) the raw events."""
    topics = {
        settings.hits_topic: "hits",
        settings.blacklist_topic: "blacklist",
        settings.decisions_topic: "decisions",
    }
    if settings.archive_events:
        topics.update(dict.fromkeys(settings.raw_topics, "events"))
    return topics


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
        settings,
        redis_sink,
        [settings.blacklist_topic],
        "redis",
        from_beginning=from_beginning,
        metrics_port=settings.sink_metrics_port + 1 if settings.sink_metrics_port else 0,
    )
    run_reported(settings, runner, "redis", stop_on_signals(), idle_exit)
