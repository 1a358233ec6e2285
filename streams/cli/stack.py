"""``bypass stack up | down | status``: the local stack of real parts (see ``streams.local.stack``).

``up`` prints ``export BYPASS_*=...`` lines on stdout, so ``eval "$(bypass stack up)"``
points the shell at the stack; every status message goes to stderr.
"""

from __future__ import annotations

import shlex

import click

from streams.local.stack import ENV_NAMES, PARTS, Stack, external_from_settings
from streams.settings import Settings


def _stack(**kwargs: object) -> tuple[Stack, Settings]:
    settings = Settings()
    return Stack(settings.state_dir, external=external_from_settings(settings), **kwargs), settings  # type: ignore[arg-type]


def _mb(rss: int | None) -> str:
    return "-" if rss is None else f"{rss / 1_048_576:.0f} MB"


@click.group()
def stack() -> None:
    """Run the local stack: Kafka-protocol broker (Tansu), ClickHouse (chdb), Redis.

    State, data, logs and pid files live under BYPASS_STATE_DIR (default .bypass).
    A part whose address is set (BYPASS_KAFKA_BOOTSTRAP, BYPASS_CLICKHOUSE_URL,
    BYPASS_REDIS_URL) is external and is not started.
    """


@stack.command()
@click.option("--timeout", default=30.0, show_default=True, help="seconds each part may take to be healthy")
@click.option("--kafka-port", type=int, help="Kafka port (default: a free one)")
@click.option("--clickhouse-port", type=int, help="ClickHouse HTTP port (default: a free one)")
@click.option("--clickhouse-tcp-port", type=int, help="ClickHouse native port (default: a free one)")
@click.option("--redis-port", type=int, help="Redis port (default: a free one)")
def up(
    timeout: float,
    kafka_port: int | None,
    clickhouse_port: int | None,
    clickhouse_tcp_port: int | None,
    redis_port: int | None,
) -> None:
    """Start the parts that do not run yet and print their addresses as export lines.

    Use: eval "$(bypass stack up)"
    """
    pinned = {
        "kafka": kafka_port,
        "clickhouse": clickhouse_port,
        "clickhouse_tcp": clickhouse_tcp_port,
        "redis": redis_port,
    }
    the_stack, settings = _stack(
        ports={k: v for k, v in pinned.items() if v is not None}, health_timeout_s=timeout
    )
    result = the_stack.up()
    for name in PARTS:
        address = result.addresses.get(name, "")
        if name in result.external:
            how = f"external ({ENV_NAMES[name]} is set), not started"
        elif name in result.already_running:
            how = "already running"
        else:
            how = "started"
        click.echo(f"{name:<11} {how:<16} {address}", err=True)
    env = the_stack.env()
    own_key = settings.phone_hash_key.get_secret_value() if settings.phone_hash_key else ""
    if own_key and own_key != env["BYPASS_PHONE_HASH_KEY"]:
        env.pop("BYPASS_PHONE_HASH_KEY")  # the user's own key wins
    for part in result.external:
        env.pop(ENV_NAMES[part], None)  # already in the environment
    for name, value in env.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo(
        f"stack up in {result.seconds:.1f} s (state in {the_stack.state_dir}); "
        'load the addresses with: eval "$(bypass stack up)"',
        err=True,
    )


@stack.command()
@click.option("--purge", is_flag=True, help="also delete the data (ClickHouse tables, Redis keys, hash key)")
def down(purge: bool) -> None:
    """Stop exactly the parts `up` started."""
    the_stack, _ = _stack()
    stopped = the_stack.down(purge=purge)
    if stopped:
        click.echo(f"stopped: {', '.join(stopped)}", err=True)
    else:
        click.echo(f"nothing running (state dir {the_stack.state_dir})", err=True)
    if purge:
        click.echo(f"data deleted under {the_stack.state_dir}", err=True)


@stack.command()
def status() -> None:
    """Show each part: state, pid, address, resident memory. Exit 1 if a started part is unhealthy."""
    the_stack, _ = _stack()
    rows = the_stack.status()
    click.echo(f"{'part':<11} {'state':<12} {'pid':>7}  {'rss':>7}  address")
    bad = False
    for row in rows:
        pid = "-" if row.pid is None else str(row.pid)
        click.echo(f"{row.name:<11} {row.state:<12} {pid:>7}  {_mb(row.rss_bytes):>7}  {row.address}")
        if row.detail and row.state not in ("external", "not started"):
            click.echo(f"{'':<11} {row.detail}")
        bad = bad or row.state in ("unhealthy", "gone")
    if bad:
        raise SystemExit(1)
