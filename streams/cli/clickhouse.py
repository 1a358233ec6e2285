"""``bypass clickhouse migrate``: create or upgrade the ClickHouse schema (idempotent)."""

from __future__ import annotations

from typing import Any

import click

from features.errors import BypassError
from streams.settings import Settings, mask_url


class ClickHouseUnavailableError(BypassError):
    """ClickHouse could not be reached or refused a statement."""


def clickhouse_client(settings: Settings, *, database: str | None = None) -> Any:
    """A clickhouse-connect client from the settings, or a clear error."""
    from sinks.clickhouse import connect

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
        result = run_migrate(client, settings.clickhouse_database, ttl_days=settings.clickhouse_ttl_days)
    except BypassError:
        raise
    except Exception as exc:
        raise ClickHouseUnavailableError(f"migration failed: {exc}") from exc
    applied = ", ".join(str(v) for v in result.applied) or "none (up to date)"
    click.echo(f"database {result.database}: schema version {result.current_version}; applied {applied}")
    if result.ttl_changed:
        ttl = f"{settings.clickhouse_ttl_days} days" if settings.clickhouse_ttl_days else "none"
        click.echo(f"TTL set to {ttl} on {', '.join(result.ttl_changed)}")
