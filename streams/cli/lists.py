"""``bypass lists``: the Redis side - blacklist look-ups, named lists for ``in_list()`` and
unblock overrides; every change is recorded in ClickHouse (``risk_list_changes``) first."""

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


def _audit(settings: Settings, changes: list[Any]) -> None:
    """Record ``changes`` in ClickHouse before Redis is touched: no change without its row."""
    from sinks.clickhouse_schema import check_identifier
    from sinks.list_admin import record_changes
    from streams.core.outputs import ClickHouseUnavailableError, clickhouse_client

    client = clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))
    try:
        record_changes(client, changes)
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"could not record the change in ClickHouse ({exc}); nothing was changed. "
            "Did you run `bypass clickhouse migrate`?"
        ) from exc


def _who(settings: Settings, who: str | None) -> str:
    from streams.core.rulestore import operator_name

    return who or operator_name(settings)


_WHO = click.option(
    "--who", default=None, help="who makes the change (default: BYPASS_OPERATOR, else login@host)"
)
_WHY = click.option("--why", default="", help="why, for the audit trail (risk_list_changes)")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@click.group()
def lists() -> None:
    """Blacklist look-ups, named lists and unblock overrides in Redis (changes audited in ClickHouse)."""


@lists.command()
@click.argument("entity")
@click.argument("key")
def check(entity: str, key: str) -> None:
    """Is ENTITY KEY blacklisted? Exit 0 and print each label if listed, exit 1 if not."""
    from sinks.redis_mirror import lookup
    from streams.cli.params import check_entity_kind

    settings = Settings()
    check_entity_kind(entity, settings)
    from sinks.list_admin import get_unblock

    client = _client(settings)
    entries = _call(settings, lookup, client, settings.redis_key_prefix, entity, key)
    unblock = _call(settings, get_unblock, client, settings.redis_key_prefix, entity, key)
    if unblock is not None:
        held = ",".join(e.label for e in entries) or "-"
        click.echo(
            f"{entity}:{key} not listed: unblocked until {_iso(unblock.until_ms)} by {unblock.who}: "
            f"{unblock.why} (labels held back: {held})"
        )
        sys.exit(1)
    if not entries:
        click.echo(f"{entity}:{key} not listed")
        sys.exit(1)
    for e in entries:
        click.echo(
            f"{entity}:{key} listed label={e.label} rules={','.join(e.rule_ids)} "
            f"expires_at={_iso(e.expires_at)} ruleset_version={e.ruleset_version} event_id={e.event_id}"
        )


def _check_name(name: str) -> str:
    from sinks.list_admin import UNBLOCK_LIST_PREFIX

    if name.startswith(UNBLOCK_LIST_PREFIX):
        raise click.BadParameter(
            f"names starting with {UNBLOCK_LIST_PREFIX!r} are reserved: use `bypass lists unblock`",
            param_hint="NAME",
        )
    return name


def _changes(
    settings: Settings, name: str, values: tuple[str, ...], action: str, who: str | None, why: str
) -> None:
    from sinks.list_admin import ListChange
    from streams.cli.params import now_ms

    by, at = _who(settings, who), now_ms()
    _audit(settings, [ListChange(name, v, action, by, why, None, at) for v in values])


@lists.command()
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
@_WHO
@_WHY
def add(name: str, values: tuple[str, ...], who: str | None, why: str) -> None:
    """Add VALUES to the named list NAME (recorded in risk_list_changes)."""
    from sinks import redis_lists

    settings = Settings()
    _changes(settings, _check_name(name), values, "add", who, why)
    n = _call(settings, redis_lists.add, _client(settings), settings.redis_key_prefix, name, values)
    click.echo(f"{name}: added {n} of {len(values)}")


@lists.command()
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
@_WHO
@_WHY
def remove(name: str, values: tuple[str, ...], who: str | None, why: str) -> None:
    """Remove VALUES from the named list NAME (recorded in risk_list_changes)."""
    from sinks import redis_lists

    settings = Settings()
    _changes(settings, _check_name(name), values, "remove", who, why)
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


@lists.command()
@click.argument("entity")
@click.argument("key")
@click.option(
    "--until",
    "until",
    default=None,
    help="end of the override: a duration from now (7d, 12h) or an ISO 8601 time",
)
@click.option("--why", default="", help="why (required with --until)")
@_WHO
@click.option("--remove", "remove_it", is_flag=True, help="end the override now")
def unblock(entity: str, key: str, until: str | None, why: str, who: str | None, remove_it: bool) -> None:
    """Unblock ENTITY KEY until a date: the worker emits no automatic blacklist entry for it
    (its hits say why) and checks answer "not listed". Recorded in risk_list_changes."""
    from sinks import list_admin
    from streams.cli.params import check_entity_kind, now_ms
    from streams.serve.core import BadRequestError, parse_until

    settings = Settings()
    check_entity_kind(entity, settings)
    client = _client(settings)
    by, at = _who(settings, who), now_ms()
    name = list_admin.unblock_list_name(entity)
    if remove_it:
        _audit(settings, [list_admin.ListChange(name, key, "unblock_remove", by, why, None, at)])
        gone = _call(settings, list_admin.remove_unblock, client, settings.redis_key_prefix, entity, key)
        click.echo(f"{entity}:{key} override {'removed' if gone else 'was not set'}")
        return
    if until is None or not why:
        raise click.UsageError("give --until (7d, an ISO 8601 time) and --why, or --remove")
    try:
        until_ms = parse_until(until, at)
    except BadRequestError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from None
    _audit(settings, [list_admin.ListChange(name, key, "unblock", by, why, until_ms, at)])
    override = list_admin.Unblock(entity, key, until_ms, by, why, at)
    _call(settings, list_admin.set_unblock, client, settings.redis_key_prefix, override)
    click.echo(f"{entity}:{key} unblocked until {_iso(until_ms)} by {by}: {why}")


@lists.command()
@click.argument("entity")
def unblocks(entity: str) -> None:
    """Print the active unblock overrides of ENTITY kind, one per line."""
    from sinks.list_admin import decode_unblock, unblock_key
    from streams.cli.params import check_entity_kind, now_ms

    settings = Settings()
    check_entity_kind(entity, settings)
    client = _client(settings)
    raw = _call(settings, client.hgetall, unblock_key(settings.redis_key_prefix, entity))
    now = now_ms()
    for k, v in sorted(raw.items()):
        key = k.decode() if isinstance(k, bytes) else str(k)
        u = decode_unblock(entity, key, v)
        if u is not None and u.active(now):
            click.echo(f"{entity}:{key} until={_iso(u.until_ms)} by={u.who} at={_iso(u.at_ms)} why={u.why}")


@lists.command()
@click.argument("name", required=False)
@click.option("--key", default=None, help="only changes of this value / entity key")
@click.option("--limit", type=int, default=50, show_default=True, help="newest changes shown")
def changes(name: str | None, key: str | None, limit: int) -> None:
    """The audit trail: list changes and unblocks (risk_list_changes), newest first.
    NAME: a list, or unblock.<entity> for overrides."""
    from sinks.clickhouse_schema import check_identifier
    from streams.cli.params import utc_text
    from streams.core.outputs import clickhouse_client

    settings = Settings()
    client = clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if name:
        where.append("list = {name:String}")
        params["name"] = name
    if key:
        where.append("key = {key:String}")
        params["key"] = key
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    result = client.query(
        "SELECT changed_at, list, key, action, who, why, until FROM risk_list_changes "  # noqa: S608
        f"{cond} ORDER BY changed_at DESC LIMIT {{limit:UInt32}}",
        parameters=params,
    )
    for at, lst, k, action, who, why, until in result.result_rows:
        till = f" until={utc_text(until)}" if until is not None else ""
        click.echo(f"{utc_text(at, '%Y-%m-%d %H:%M:%S.%f')}  {action:<14} {lst}:{k}{till} by={who} why={why}")
