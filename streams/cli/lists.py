"""``bypass lists``: the Redis side - blacklist look-ups and named lists for ``in_list()``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from features.errors import BypassError
from streams.settings import Settings, mask_url


class RedisUnavailableError(BypassError):
    """Redis could not be reached."""


def _client(settings: Settings) -> Any:
    from sinks.redis_mirror import redis_client

    return redis_client(settings.redis_url)


def _call(settings: Settings, fn: Any, *args: Any) -> Any:
    import redis

    try:
        return fn(*args)
    except redis.RedisError as exc:
        raise RedisUnavailableError(
            f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}. "
            "Is it up (`bypass stack status`) and BYPASS_REDIS_URL right?"
        ) from exc


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@click.group()
def lists() -> None:
    """Blacklist look-ups and named lists in Redis."""


@lists.command()
@click.argument("entity")
@click.argument("key")
def check(entity: str, key: str) -> None:
    """Is ENTITY KEY blacklisted? Exit 0 and print each label if listed, exit 1 if not."""
    from sinks.redis_mirror import lookup
    from streams.cli.params import check_entity_kind

    settings = Settings()
    check_entity_kind(entity, settings)
    client = _client(settings)
    entries = _call(settings, lookup, client, settings.redis_key_prefix, entity, key)
    if not entries:
        click.echo(f"{entity}:{key} not listed")
        sys.exit(1)
    for e in entries:
        click.echo(
            f"{entity}:{key} listed label={e.label} rules={','.join(e.rule_ids)} "
            f"expires_at={_iso(e.expires_at)} ruleset_version={e.ruleset_version} event_id={e.event_id}"
        )


@lists.command()
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
def add(name: str, values: tuple[str, ...]) -> None:
    """Add VALUES to the named list NAME."""
    from sinks import redis_lists

    settings = Settings()
    n = _call(settings, redis_lists.add, _client(settings), settings.redis_key_prefix, name, values)
    click.echo(f"{name}: added {n} of {len(values)}")


@lists.command()
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
def remove(name: str, values: tuple[str, ...]) -> None:
    """Remove VALUES from the named list NAME."""
    from sinks import redis_lists

    settings = Settings()
    n = _call(settings, redis_lists.remove, _client(settings), settings.redis_key_prefix, name, values)
    click.echo(f"{name}: removed {n} of {len(values)}")


@lists.command()
@click.argument("name", required=False)
def show(name: str | None) -> None:
    """Print the values of list NAME, one per line (without NAME: the list names)."""
    from sinks import redis_lists

    settings = Settings()
    client = _client(settings)
    if name is None:
        for n in _call(settings, redis_lists.names, client, settings.redis_key_prefix):
            click.echo(n)
        return
    for value in _call(settings, redis_lists.show, client, settings.redis_key_prefix, name):
        click.echo(value)
