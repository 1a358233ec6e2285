"""The RocksDB entity store (streams.live.setup.EntityRocksStore) and TableStore over it:
keys go to their own partition's database, and only once their changelog record is
acknowledged, with its offset.  No broker: a Faust app that is never started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.live.app import TableStore
from streams.live.setup import EntityRocksStore, EntityTable, bundle_partition


@pytest.fixture
def table(tmp_path: Path) -> Iterator[Any]:
    app = faust.App("rocks-unit", store="rocksdb://", datadir=str(tmp_path), Table=EntityTable)
    table = app.Table(
        "entity-user", default=None, key_type=bytes, value_type=bytes, partitions=4, use_partitioner=True
    )
    yield table
    table.data._dbs.clear()


def _tp(table: Any, partition: int) -> TP:
    return TP(table.changelog_topic.get_topic_name(), partition)


def test_a_write_reaches_its_partitions_database_once_logged_with_the_offset(table: Any) -> None:
    store = table.data
    assert isinstance(store, EntityRocksStore)
    p = bundle_partition(b"u1", 4)
    store.put_raw(b"u1", b"state-1")
    assert store.get_raw(b"u1") == b"state-1"  # pending: readable at once
    assert store._db_for_partition(p).get(b"u1") is None  # not on disk yet
    store.apply({p: 41}, {b"u1": store.pending[b"u1"]})
    assert store.pending == {}
    assert store._db_for_partition(p).get(b"u1") == b"state-1"
    assert store.persisted_offset(_tp(table, p)) == 41
    for other in set(range(4)) - {p}:
        assert store._db_for_partition(other).get(b"u1") is None
    assert table.get(b"u1") == b"state-1" and b"u1" in table
    assert store.estimate() == (0, 0)  # no partition assigned: none counted


def test_agent_records_go_to_the_partition_their_key_names(table: Any) -> None:
    store = table.data
    key = b"\x00order-progress:3"
    store.put_raw(key, b"[]")
    store.apply({3: 7}, {key: store.pending[key]})
    assert store._db_for_partition(3).get(key) == b"[]"
    assert store.persisted_offset(_tp(table, 3)) == 7


def test_a_key_written_again_before_the_ack_stays_pending(table: Any) -> None:
    store = table.data
    p = bundle_partition(b"u2", 4)
    store.put_raw(b"u2", b"old")
    sent = {b"u2": store.pending[b"u2"]}
    store.put_raw(b"u2", b"new")
    store.apply({p: 5}, sent)
    assert store.get_raw(b"u2") == b"new"  # the newer write still wins
    assert store._db_for_partition(p).get(b"u2") == b"old"


def test_a_revoked_partition_gets_no_late_write(table: Any) -> None:
    store = table.data
    p = bundle_partition(b"u3", 4)
    store.put_raw(b"u3", b"s")
    sent = {b"u3": store.pending[b"u3"]}
    store.revoke_partitions(table, {_tp(table, p)})
    assert b"u3" not in store.pending
    store.apply({p: 9}, sent)
    assert store._dbs.get(p) is None  # not reopened


def test_table_store_writes_changelog_records_and_applies_them_when_acknowledged(table: Any) -> None:
    outbox: list[Any] = []
    ts = TableStore(table, 10, outbox, direct=False)
    ts.put_raw(b"u4", b"v4", bundle_partition(b"u4", 4))
    changelog = table.changelog_topic.get_topic_name()
    assert ts.awaits_acks() == changelog
    assert outbox == [(changelog, b"u4", b"v4", bundle_partition(b"u4", 4), None)]
    assert ts.peek(b"u4")[0] == b"v4"

    async def ack() -> None:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(partition=bundle_partition(b"u4", 4), offset=12))
        await ts.acknowledged([(b"u4", outbox[0][2], fut)])

    asyncio.run(ack())
    store = table.data
    assert store.pending == {}
    assert store.persisted_offset(_tp(table, bundle_partition(b"u4", 4))) == 12
