"""The record contracts (sinks.records): one list of fields, builders, checks, and what
the writers make of them (ClickHouse columns, Redis mirror entries)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import orjson
import pytest

import rules
from sinks._sample import sample_blacklist, sample_hit
from sinks.base import RecordError, SourceRecord
from sinks.clickhouse import (
    BLACKLIST_COLUMNS,
    HIT_COLUMN_FIELDS,
    HIT_COLUMNS,
    HIT_FIELDS_NOT_STORED,
    _hit_values_fast,
    blacklist_row,
)
from sinks.clickhouse_schema import MIGRATIONS
from sinks.records import (
    BLACKLIST_FIELDS,
    HIT_FIELDS,
    BlacklistRecord,
    HitRecord,
    blacklist_key,
    blacklist_record,
    check_blacklist,
    check_hit,
    hit_record,
)
from sinks.redis_mirror import entry_from_record

RULES = """
version: t1
rules:
  - id: big_order
    entity: user
    when: "event.attrs.amount > 10"
    score: 60
    action: blacklist
    ttl: 1d
    label: fraud
  - id: watch
    entity: user
    mode: shadow
    when: "event.attrs.amount > 5"
    score: 10
"""
EVENT = {"event_id": "e1", "type": "order", "ts": 1_700_000_000_000, "user_id": "u1", "attrs": {"amount": 20}}


def _evaluation() -> rules.Evaluation:
    evaluation = rules.load_ruleset(RULES, None).evaluate(EVENT, "user", "u1", {})
    assert len(evaluation.hits) == 2 and len(evaluation.blacklist) == 1
    return evaluation


def _table_columns(table: str) -> list[str]:
    """The columns of ``table`` as its migrations declare them: CREATE TABLE, then each
    ``ADD COLUMN ... AFTER`` in order."""
    columns: list[str] | None = None
    for migration in MIGRATIONS:
        for statement in migration.statements:
            head = re.search(
                rf"CREATE TABLE IF NOT EXISTS \{{db\}}\.{table}\s*\((.*)\)\s*ENGINE", statement, re.S
            )
            if head:
                lines = [line.split() for line in head.group(1).splitlines() if line.strip()]
                columns = [words[0] for words in lines if words[0] not in ("INDEX", "PROJECTION")]
            added = re.search(
                rf"ALTER TABLE \{{db\}}\.{table}\s+ADD COLUMN IF NOT EXISTS (\w+) .* AFTER (\w+)", statement
            )
            if added:
                assert columns is not None
                columns.insert(columns.index(added.group(2)) + 1, added.group(1))
    assert columns is not None, f"no CREATE TABLE for {table}"
    return columns


def test_field_lists_are_the_typed_dicts_keys_in_contract_order() -> None:
    assert HIT_FIELDS == (
        "hit_id", "event_id", "event_type", "event_ts", "user_id", "entity", "key", "rule_id", "label",
        "score", "mode", "action", "counted", "suppressed", "rollout_excluded", "error", "features",
        "decision", "total_score", "ruleset_version", "source_topic", "source_partition", "source_offset",
        "run_id", "unblock",
    )  # fmt: skip
    assert HIT_FIELDS == tuple(HitRecord.__annotations__)
    assert BLACKLIST_FIELDS == (
        "entity", "key", "label", "rule_ids", "event_id", "event_ts", "expires_at", "ruleset_version",
    )  # fmt: skip
    assert BLACKLIST_FIELDS == tuple(BlacklistRecord.__annotations__)


def test_hit_record_is_the_contract_record_of_a_rule_engine_hit() -> None:
    evaluation = _evaluation()
    hit = evaluation.hits[0]
    record = hit_record(
        hit,
        evaluation,
        EVENT,
        entity="user",
        key="u1",
        ruleset_version="t1",
        run_id="live",
        source_topic="bypass.events",
        source_partition=2,
        source_offset=99,
    )
    assert tuple(record) == HIT_FIELDS
    assert record["hit_id"] == rules.hit_id("e1", hit.rule_id, "t1")
    assert (record["event_type"], record["event_ts"], record["user_id"]) == ("order", EVENT["ts"], "u1")
    assert (record["decision"], record["total_score"]) == (evaluation.decision, evaluation.score)
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "bypass.events",
        2,
        99,
    )
    assert record["features"] == hit.features and record["features"] is not hit.features
    check_hit(orjson.loads(orjson.dumps(record)))  # what the processor writes, the writers read


def test_blacklist_record_and_its_kafka_key() -> None:
    entry = _evaluation().blacklist[0]
    record = blacklist_record(entry, EVENT, "t1")
    assert tuple(record) == BLACKLIST_FIELDS
    assert record == {
        "entity": "user",
        "key": "u1",
        "label": "fraud",
        "rule_ids": ["big_order"],
        "event_id": "e1",
        "event_ts": EVENT["ts"],
        "expires_at": EVENT["ts"] + 86_400_000,
        "ruleset_version": "t1",
    }
    assert blacklist_record(entry, EVENT, ruleset_version="t1") == record
    assert check_blacklist(orjson.loads(orjson.dumps(record))) == record
    assert blacklist_key("user", "u1") == "user:u1"


def test_samples_have_exactly_the_contract_fields() -> None:
    for i in (0, 1, 7, 123):
        assert tuple(sample_hit(i)) == HIT_FIELDS
        assert tuple(sample_blacklist(i, expires_at=1)) == BLACKLIST_FIELDS
    hit = sample_hit(3, ruleset_version="v9")
    assert hit["hit_id"] == rules.hit_id(hit["event_id"], hit["rule_id"], "v9")


def test_risk_hits_columns_cover_what_a_hit_record_carries() -> None:
    table = _table_columns("risk_hits")
    assert list(HIT_COLUMNS) == [c for c in table if c != "inserted_at"]
    assert set(HIT_COLUMN_FIELDS.values()) <= set(HIT_FIELDS)
    # a field added to the record fails here until the writer stores it or says it does not
    assert HIT_FIELDS_NOT_STORED == {"user_id", "action", "total_score", "unblock"}
    assert set(HIT_COLUMN_FIELDS.values()) | HIT_FIELDS_NOT_STORED == set(HIT_FIELDS)


def test_risk_blacklist_columns_cover_what_a_blacklist_record_carries() -> None:
    table = _table_columns("risk_blacklist")
    assert list(BLACKLIST_COLUMNS) == [c for c in table if c != "inserted_at"]
    stored = {"event_time" if f == "event_ts" else f for f in BLACKLIST_FIELDS}
    assert stored <= set(BLACKLIST_COLUMNS)
    assert set(BLACKLIST_COLUMNS) - stored == {"source_topic", "source_partition", "source_offset"}


class _Reads(dict[str, Any]):
    """A record that notes which fields are read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return super().get(name, default)


def test_the_fast_path_and_the_checks_read_exactly_the_stored_fields() -> None:
    stored = set(HIT_COLUMN_FIELDS.values())
    fast = _Reads(sample_hit(5))
    assert _hit_values_fast(fast) is not None
    assert fast.read == stored
    checked = _Reads(sample_hit(5))
    check_hit(checked)
    assert checked.read == stored
    bl = _Reads(sample_blacklist(5, expires_at=1))
    check_blacklist(bl)
    assert bl.read == set(BLACKLIST_FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "reason", "text"),
    [
        ("rule_ids", "r1", "wrong_type", "field 'rule_ids' must be a list of strings"),
        ("rule_ids", [1], "wrong_type", "field 'rule_ids' must be a list of strings"),
        ("entity", None, "missing_field", "field 'entity' is missing"),
        ("key", 7, "wrong_type", "field 'key' must be a string, got int"),
        ("label", "", "bad_value", "field 'label' is empty"),
        ("event_ts", "soon", "wrong_type", "field 'event_ts' must be an integer, got str"),
        ("expires_at", 1_763_856_000, None, ""),  # seconds are in range (1970): accepted
        ("expires_at", 1_763_856_000_000_000, "bad_value", "field 'expires_at' = 1763856000000000 is out"),
        ("ruleset_version", None, "missing_field", "field 'ruleset_version' is missing"),
    ],
)
def test_both_blacklist_writers_apply_the_same_checks(
    field: str, value: object, reason: str | None, text: str
) -> None:
    obj: dict[str, Any] = dict(sample_blacklist(1, expires_at=1_763_856_000_000))
    if value is None:
        del obj[field]
    else:
        obj[field] = value
    rec = SourceRecord("bl", 0, 1, None, None)
    if reason is None:
        blacklist_row(obj, rec)
        entry_from_record(obj)
        return
    for check in (check_blacklist, lambda o: blacklist_row(o, rec), entry_from_record):
        with pytest.raises(RecordError) as err:
            check(obj)
        assert (err.value.reason, err.value.fields.get("field")) == (reason, field)
        assert err.value.message.startswith(text)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("label", "a|b"),
        ("entity", "us|er"),
        ("ruleset_version", "v|1"),
        ("rule_ids", ["r,1"]),
        ("rule_ids", [""]),
    ],
)
def test_the_mirror_refuses_what_its_encoding_cannot_hold(field: str, value: object) -> None:
    good: dict[str, Any] = dict(sample_blacklist(1, expires_at=1_763_856_000_000))
    assert entry_from_record(good).rule_ids == ("r01",)
    obj = {**good, field: value}
    check_blacklist(obj)  # the record contract allows it ...
    with pytest.raises(RecordError) as err:  # ... the Redis hash value cannot hold it
        entry_from_record(obj)
    assert (err.value.reason, err.value.fields.get("field")) == ("bad_value", field)


def test_records_imports_no_client() -> None:
    code = (
        "import sys, sinks.records, sinks._sample, sinks.jsonl; "
        "print(sorted(m for m in ('redis', 'clickhouse_connect', 'confluent_kafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
