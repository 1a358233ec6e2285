"""``bypass clickhouse migrate``: create or upgrade the ClickHouse schema (idempotent)."""

from __future__ import annotations

import click

from features.errors import BypassError
from streams.core.outputs import ClickHouseUnavailableError, clickhouse_client
from streams.settings import Settings


@click.group()
def clickhouse() -> None:
    """ClickHouse schema management."""


@clickhouse.command()
def migrate() -> None:
    """Create the database and tables, apply pending migrations, set the TTL (idempotent)."""
    from sinks.clickhouse_schema import migrate as run_migrate

    settings = Settings()
    client = clickhouse_client(settings)
    try:
        result = run_migrate(
            client,
            settings.clickhouse_database,
            ttl_days=settings.clickhouse_ttl_days,
            archive_ttl_days=settings.archive_ttl_days,
        )
    except BypassError:
        raise
    except Exception as exc:
        raise ClickHouseUnavailableError(f"migration failed: {exc}") from exc
    applied = ", ".join(str(v) for v in result.applied) or "none (up to date)"
    click.echo(f"database {result.database}: schema version {result.current_version}; applied {applied}")
    if result.ttl_changed:
        ttl = f"{settings.clickhouse_ttl_days} days" if settings.clickhouse_ttl_days else "none"
        archive = f"{settings.archive_ttl_days} days" if settings.archive_ttl_days else "none"
        for table in result.ttl_changed:
            click.echo(f"TTL set to {archive if table == 'risk_events' else ttl} on {table}")
