"""sinks.list_admin and the provider's unblock look-ups, over an in-memory Redis stand-in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sinks.list_admin import (
    CHANGE_COLUMNS,
    ListChange,
    Unblock,
    change_row,
    decode_unblock,
    encode_unblock,
    get_unblock,
    record_changes,
    remove_unblock,
    set_unblock,
    unblock_key,
)
from sinks.redis_lists import PrefetchingListProvider

NOW = 1_763_856_000_000


class _Pipe:
    def __init__(self, r: _Redis) -> None:
        self.r = r
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def sismember(self, name: str, value: str) -> None:
        self.ops.append(("sismember", (name, value)))

    def hget(self, name: str, key: str) -> None:
        self.ops.append(("hget", (name, key)))

    def execute(self) -> list[Any]:
        self.r.round_trips += 1
        return [getattr(self.r, op)(*args) for op, args in self.ops]


class _Redis:
    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.round_trips = 0

    def sismember(self, name: str, value: str) -> int:
        return int(value in self.sets.get(name, set()))

    def hget(self, name: str, key: str) -> str | None:
        return self.hashes.get(name, {}).get(key)

    def hset(self, name: str, key: str, value: str) -> int:
        self.hashes.setdefault(name, {})[key] = value
        return 1

    def hdel(self, name: str, *keys: str) -> int:
        h = self.hashes.get(name, {})
        return sum(1 for k in keys if h.pop(k, None) is not None)

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe(self)


def test_unblock_encoding_round_trips_and_junk_is_none() -> None:
    u = Unblock("user", "u1", NOW + 1000, "ana", "false positive | ticket 7", NOW)
    assert decode_unblock("user", "u1", encode_unblock(u)) == u
    assert decode_unblock("user", "u1", encode_unblock(u).encode()) == u
    for junk in (None, "", "x", "{}", '{"until": "soon", "at": 1}'):
        assert decode_unblock("user", "u1", junk) is None
    shown = u.as_dict()
    assert shown["until"] == "2025-11-23T00:00:01.000Z" and shown["who"] == "ana"


def test_set_get_remove_unblock_and_expiry() -> None:
    r = _Redis()
    set_unblock(r, "p:", Unblock("user", "u1", NOW + 1000, "ana", "why", NOW))
    assert unblock_key("p:", "user") in r.hashes
    assert get_unblock(r, "p:", "user", "u1", now_ms=NOW) is not None
    assert get_unblock(r, "p:", "user", "u1", now_ms=NOW + 1000) is None  # until is exclusive
    assert remove_unblock(r, "p:", "user", "u1") and not remove_unblock(r, "p:", "user", "u1")


def test_provider_reads_unblocks_in_the_same_pipeline_as_lists() -> None:
    r = _Redis()
    r.sets["p:list:bad_ips"] = {"10.0.0.1"}
    set_unblock(r, "p:", Unblock("user", "u1", NOW + 1000, "ana", "why", NOW))
    set_unblock(r, "p:", Unblock("user", "u2", NOW - 1, "ana", "ended", NOW - 10))
    provider = PrefetchingListProvider(r, "p:", clock_ms=lambda: NOW)  # type: ignore[arg-type]
    provider.prefetch({("bad_ips", "10.0.0.1"), ("unblock.user", "u1"), ("unblock.user", "u2")})
    assert r.round_trips == 1
    assert provider.contains("bad_ips", "10.0.0.1")
    assert provider.contains("unblock.user", "u1") and not provider.contains("unblock.user", "u2")
    unblock = provider.unblock("user", "u1")
    assert unblock is not None and unblock.who == "ana"
    assert provider.unblock("user", "u2") is None
    assert r.round_trips == 1 and provider.misses == 0
    remove_unblock(r, "p:", "user", "u1")
    provider.prefetch_unblocks("user", {"u1", "u3"})  # always afresh: u1's override is gone now
    assert r.round_trips == 2 and provider.unblock("user", "u3") is None and r.round_trips == 2
    assert provider.unblock("user", "u1") is None and not provider.contains("unblock.user", "u1")
    assert provider.unblock("device", "d1") is None and provider.misses == 1  # not prefetched: own look-up


def test_change_rows_match_the_columns_and_are_inserted() -> None:
    c = ListChange("unblock.user", "u1", "unblock", "ana", "fp", NOW + 1000, NOW)
    row = change_row(c)
    assert len(row) == len(CHANGE_COLUMNS)
    assert row[:5] == ["unblock.user", "u1", "unblock", "ana", "fp"]
    assert row[5] == datetime.fromtimestamp((NOW + 1000) / 1000, tz=UTC)
    assert change_row(ListChange("vip", "u1", "add", "ana"))[5] is None

    inserted: list[Any] = []

    class _CH:
        def insert(self, table: str, data: Any, *, column_names: Any) -> None:
            inserted.append((table, data, tuple(column_names)))

    assert record_changes(_CH(), [c, c]) == 2
    assert inserted[0][0] == "risk_list_changes" and inserted[0][2] == CHANGE_COLUMNS
    assert record_changes(_CH(), []) == 0 and len(inserted) == 1


@pytest.mark.parametrize("name", ["risk_list_changes"])
def test_the_migration_creates_the_audit_table(name: str) -> None:
    from sinks.clickhouse_schema import MIGRATIONS

    ddl = next(m for m in MIGRATIONS if m.name == name).statements[0]
    for column in CHANGE_COLUMNS:
        assert f"\n    {column} " in ddl
