"""Unblock overrides and the audit trail of list changes.

An **unblock** is an allow-list override: until ``until_ms`` the worker emits no automatic
blacklist entry for ``entity:key`` (its hits still go out, saying why: ``unblock``), and the
check API answers "not listed" with the override shown. Redis layout (``prefix`` from the
setting ``redis_key_prefix``)::

    <prefix>unblock:<entity>   hash  key -> {"until": ms, "who": str, "why": str, "at": ms}

One hash per entity kind is the reserved list the worker's list provider
(:class:`sinks.redis_lists.PrefetchingListProvider`) reads in the same pipelined round trip as
the ``in_list`` probes; rules may probe it too as ``in_list("unblock.<entity>", key)``.
Entries whose ``until`` is past are ignored by every reader and pruned on the next write.

Every change of a named list or an unblock is recorded in ClickHouse, table
``risk_list_changes`` (:data:`CHANGE_COLUMNS`): the audit row is written *before* Redis is
changed, so no change is ever made without its row (a row whose Redis write then failed
is possible: the caller was told, 503 or an error).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson

__all__ = [
    "CHANGE_COLUMNS",
    "UNBLOCK_LIST_PREFIX",
    "ListChange",
    "Unblock",
    "change_row",
    "decode_unblock",
    "encode_unblock",
    "get_unblock",
    "record_changes",
    "remove_unblock",
    "set_unblock",
    "unblock_key",
    "unblock_list_name",
]

#: ``in_list("unblock.user", key)``: the reserved list name of an entity kind's unblocks.
UNBLOCK_LIST_PREFIX: Final = "unblock."

#: The columns of ``risk_list_changes`` an audit row fills, in :func:`change_row` order.
CHANGE_COLUMNS: Final[tuple[str, ...]] = ("list", "key", "action", "who", "why", "until", "changed_at")

#: Longest free-text field kept (who, why): anything longer is cut.
MAX_TEXT: Final = 1_000


class HashClient(Protocol):
    """What the unblock functions call on a ``redis.Redis``."""

    def hset(self, name: str, key: str, value: str) -> int: ...

    def hget(self, name: str, key: str) -> bytes | str | None: ...

    def hdel(self, name: str, *keys: str) -> int: ...


class InsertClient(Protocol):
    """What :func:`record_changes` calls on a clickhouse-connect ``Client``."""

    def insert(self, table: str, data: Sequence[Sequence[Any]], *, column_names: Sequence[str]) -> object: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def unblock_list_name(entity: str) -> str:
    """The reserved list name of ``entity``'s unblocks: ``unblock.<entity>``."""
    return f"{UNBLOCK_LIST_PREFIX}{entity}"


def unblock_key(prefix: str, entity: str) -> str:
    """The Redis hash of ``entity``'s unblocks: ``<prefix>unblock:<entity>``."""
    return f"{prefix}unblock:{entity}"


@dataclass(frozen=True, slots=True)
class Unblock:
    """An override: no automatic blacklist entry for ``entity:key`` before ``until_ms``."""

    entity: str
    key: str
    until_ms: int
    who: str
    why: str
    at_ms: int

    def active(self, at_ms: int) -> bool:
        return self.until_ms > at_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "until": _iso(self.until_ms),
            "until_ms": self.until_ms,
            "who": self.who,
            "why": self.why,
            "at": _iso(self.at_ms),
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_unblock(u: Unblock) -> str:
    return orjson.dumps({"until": u.until_ms, "who": u.who, "why": u.why, "at": u.at_ms}).decode()


def decode_unblock(entity: str, key: str, value: bytes | str | None) -> Unblock | None:
    """A hash value (:func:`encode_unblock`) -> Unblock; None when absent or not one."""
    if value is None:
        return None
    try:
        data = orjson.loads(value)
        return Unblock(
            entity,
            key,
            int(data["until"]),
            str(data.get("who", "")),
            str(data.get("why", "")),
            int(data["at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def set_unblock(client: HashClient, prefix: str, unblock: Unblock) -> None:
    client.hset(unblock_key(prefix, unblock.entity), unblock.key, encode_unblock(unblock))


def remove_unblock(client: HashClient, prefix: str, entity: str, key: str) -> bool:
    return bool(client.hdel(unblock_key(prefix, entity), key))


def get_unblock(
    client: HashClient, prefix: str, entity: str, key: str, *, now_ms: int | None = None
) -> Unblock | None:
    """The active unblock of ``entity:key``, or None."""
    found = decode_unblock(entity, key, client.hget(unblock_key(prefix, entity), key))
    now = _now_ms() if now_ms is None else now_ms
    return found if found is not None and found.active(now) else None


@dataclass(frozen=True, slots=True)
class ListChange:
    """One audit row: ``list`` is a named list, or ``unblock.<entity>`` for an override."""

    list: str
    key: str
    action: str  # add | remove | unblock | unblock_remove
    who: str
    why: str = ""
    until_ms: int | None = None
    at_ms: int = 0


def _text(value: str) -> str:
    return value[:MAX_TEXT]


def change_row(change: ListChange) -> list[Any]:
    """The ``risk_list_changes`` row of ``change`` (:data:`CHANGE_COLUMNS`); times as UTC datetimes."""
    at = change.at_ms or _now_ms()
    until = datetime.fromtimestamp(change.until_ms / 1000, tz=UTC) if change.until_ms is not None else None
    return [
        change.list,
        change.key,
        change.action,
        _text(change.who),
        _text(change.why),
        until,
        datetime.fromtimestamp(at / 1000, tz=UTC),
    ]


def record_changes(client: InsertClient, changes: Iterable[ListChange]) -> int:
    """Insert the audit rows of ``changes`` into ``risk_list_changes`` (the client's database)."""
    rows = [change_row(c) for c in changes]
    if rows:
        client.insert("risk_list_changes", rows, column_names=CHANGE_COLUMNS)
    return len(rows)


def changes_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``risk_list_changes`` rows (column -> value) -> JSON-ready dicts (times ISO 8601)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        item = dict(row)
        for name in ("until", "changed_at"):
            value = item.get(name)
            if isinstance(value, datetime):
                item[name] = value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(item)
    return out
