"""``bypass hits top | entity``: what analysts ask ClickHouse most, printed as tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from features import format_ms
from streams.cli.params import TIME, check_entity_kind, utc_text
from streams.settings import Settings


def _client(settings: Settings) -> Any:
    from sinks.clickhouse_schema import check_identifier
    from streams.core.outputs import clickhouse_client

    return clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))


def _query(run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one analyst query; a failure says what to check instead of a traceback."""
    from streams.core.outputs import ClickHouseUnavailableError

    try:
        return run(*args, **kwargs)
    except ClickHouseUnavailableError:
        raise
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"query failed: {exc}. Did you run `bypass clickhouse migrate`?"
        ) from exc


def _fmt_features(numbers: dict[str, Any], texts: dict[str, Any]) -> str:
    parts = [f"{k}={'null' if v is None else f'{v:g}'}" for k, v in sorted(numbers.items())]
    parts += [f"{k}={v}" for k, v in sorted(texts.items())]
    return " ".join(parts)


@click.group()
def hits() -> None:
    """Query the hit tables in ClickHouse."""


@hits.command()
@click.option(
    "--since",
    "since_ms",
    type=TIME,
    default="1d",
    show_default=True,
    help="a time: 1d or -1d (a day ago), 6h, yesterday, 2026-11-01T10:00Z, epoch ms",
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--run-id",
    default="live",
    show_default=True,
    help="only this run: live, or a replay's run id; 'all' counts every run together",
)
def top(since_ms: int, limit: int, run_id: str) -> None:
    """Rules with the most hits since --since (exact distinct hits, hourly rollup).

    Counts the live labels by default, so backtests and replays written to ClickHouse
    never inflate them; --run-id picks one replay, --run-id all counts everything.
    """
    from rich.console import Console
    from rich.table import Table

    from sinks.analytics import top_rules

    settings = Settings()
    rows = _query(
        top_rules, _client(settings), since_ms=since_ms, limit=limit, run_id="" if run_id == "all" else run_id
    )
    table = Table(title=f"top rules since {format_ms(since_ms)} (hour-aligned)")
    for col, justify in [
        ("rule", "left"),
        ("mode", "left"),
        ("hits", "right"),
        ("counted", "right"),
        ("entities", "right"),
        ("first hour", "left"),
        ("last hour", "left"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["rule_id"],
            r["mode"],
            str(r["hits"]),
            str(r["counted"]),
            str(r["entities"]),
            utc_text(r["first_hour"], "%Y-%m-%d %H:00"),
            utc_text(r["last_hour"], "%Y-%m-%d %H:00"),
        )
    Console(width=160).print(table)
    if not rows:
        click.echo("no hits in that window")


@hits.command()
@click.argument("entity")
@click.argument("key")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--run-id", default="", help="only this run (live, or a replay's run id); default all")
def entity(entity: str, key: str, limit: int, run_id: str) -> None:
    """Hit history of one entity (newest first), e.g. `bypass hits entity user u1`."""
    from rich.console import Console
    from rich.table import Table

    from sinks.analytics import entity_history

    settings = Settings()
    check_entity_kind(entity, settings)
    rows = _query(entity_history, _client(settings), entity, key, limit=limit, run_id=run_id)
    table = Table(title=f"hits of {entity} {key}")
    for col in (
        "event time",
        "rule",
        "label",
        "mode",
        "score",
        "decision",
        "version",
        "run",
        "event",
        "features",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            utc_text(r["event_time"], "%Y-%m-%d %H:%M:%S.%f"),
            r["rule_id"],
            r["label"],
            f"{r['mode']} (failed: {r['error']})" if r.get("error") else r["mode"],
            f"{r['score']:g}",
            r["decision"],
            r["ruleset_version"],
            r["run_id"],
            r["event_id"],
            _fmt_features(r["features"], r["features_text"]),
        )
    Console(width=200).print(table)
    if not rows:
        click.echo(f"no hits for {entity} {key}")
