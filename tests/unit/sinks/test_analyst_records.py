"""The analysts' tables: the event archive rows (risk_events) and the decision log
(bypass.decisions -> risk_decisions), without a server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import rules
from sinks.base import RecordError, SourceRecord
from sinks.clickhouse import (
    DECISION_COLUMNS,
    EVENT_COLUMNS,
    ClickHouseSink,
    decision_values,
    event_values,
)
from sinks.records import (
    DecisionRecord,
    check_decision,
    decision_record,
    decision_sampled,
)
from streams.core.envelope import EnvelopeDecoder
from tests.unit.sinks.test_records import _table_columns

KEY = b"k" * 32
RULES = """
version: t1
decisions: {reject: 80, review: 50}
rules:
  - id: big_order
    entity: user
    when: "event.attrs.amount > 10"
    score: 60
  - id: watch
    entity: user
    mode: shadow
    when: "event.attrs.amount > 5"
    score: 10
"""


class _Client:
    """Records the inserts a ClickHouseSink makes."""

    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[list[Any]], dict[str, Any]]] = []

    def create_insert_context(self, table: str, column_names: Any) -> Any:
        class _Ctx:
            column_types: tuple[Any, ...] = ()

        return _Ctx()

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        self.inserts.append((table, [list(c) for c in data], kwargs["settings"]))

    def raw_insert(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("no JSONEachRow insert expected")


def test_table_columns_match_the_writers() -> None:
    assert list(EVENT_COLUMNS) == [c for c in _table_columns("risk_events") if c != "inserted_at"]
    assert list(DECISION_COLUMNS) == [c for c in _table_columns("risk_decisions") if c != "inserted_at"]
    stored = {"event_time" if f == "event_ts" else f for f in DecisionRecord.__annotations__}
    assert stored == set(DECISION_COLUMNS)


def test_event_values_hash_the_phone_and_keep_geo_and_attrs() -> None:
    decoder = EnvelopeDecoder(KEY, pii_fields=("attrs.email",))
    raw = orjson.dumps(
        {
            "event_id": "e1",
            "type": "login",
            "ts": 1_700_000_000_123,
            "user_id": "u1",
            "phone": "+86 138-0000-0000",
            "geo": {"lat": 39, "lon": 116.5, "city": "Beijing"},
            "attrs": {"email": "a@b.c", "amount": 3},
        }
    )
    row = event_values(decoder.decode(raw), SourceRecord("raw", 2, 7, None, raw))
    values = dict(zip(EVENT_COLUMNS, row, strict=True))
    assert values["phone"].startswith("ph_") and "13800000000" not in str(values)
    assert values["event_time"] == 1_700_000_000_123
    assert (values["geo_lat"], values["geo_lon"], values["geo_city"]) == (39.0, 116.5, "Beijing")
    attrs = orjson.loads(values["attrs"])
    assert attrs["amount"] == 3 and attrs["email"].startswith("pii_")
    assert (values["source_topic"], values["source_partition"], values["source_offset"]) == ("raw", 2, 7)
    assert (values["device_id"], values["ip"]) == ("", "")


def test_the_archive_skips_invalid_events_and_inserts_the_rest_natively_with_a_token() -> None:
    client = _Client()
    sink = ClickHouseSink(client, "db", {"raw": "events"}, decoder=EnvelopeDecoder(KEY))
    good = orjson.dumps({"event_id": "e1", "type": "login", "ts": 1, "user_id": "u1"})
    for offset, raw in enumerate([good, b"not json", orjson.dumps({"event_id": "e2"}), good]):
        sink.add(SourceRecord("raw", 0, offset, None, raw))
    assert sink.skipped_events == 2 and sink.pending() == 2
    assert sink.flush() == 2
    table, data, settings = client.inserts[0]
    assert table == "db.risk_events" and data[0] == ["e1", "e1"] and data[-1] == [0, 3]
    assert settings["insert_deduplication_token"].startswith("bypass-db.risk_events-")


def test_an_events_topic_needs_a_decoder() -> None:
    with pytest.raises(ValueError, match="decoder"):
        ClickHouseSink(_Client(), "db", {"raw": "events"})


def _evaluation(amount: int) -> tuple[rules.Evaluation, dict[str, Any]]:
    event = {"event_id": f"e{amount}", "type": "order", "ts": 5, "user_id": "u1", "attrs": {"amount": amount}}
    return rules.load_ruleset(RULES, None).evaluate(event, "user", "u1", {}), event


def test_decision_record_lists_counted_and_shadow_rules() -> None:
    evaluation, event = _evaluation(20)
    record = decision_record(
        evaluation, event, sample=0.0, run_id="live", source_topic="raw", source_partition=1, source_offset=9
    )
    assert record is not None  # review: always logged, whatever the sample
    assert record["decision"] == "review" and record["sample_rate"] == 1.0
    assert record["rule_ids"] == ["big_order"] and record["shadow_rule_ids"] == ["watch"]
    assert check_decision(orjson.loads(orjson.dumps(record))) == record
    values = dict(zip(DECISION_COLUMNS, decision_values(record), strict=True))
    assert values["event_time"] == 5 and values["score"] == 60.0


def test_pass_decisions_are_sampled_by_event_id() -> None:
    evaluation, event = _evaluation(1)
    assert evaluation.decision == "pass"
    args: dict[str, Any] = {"run_id": "r", "source_topic": "t", "source_partition": 0, "source_offset": 0}
    assert decision_record(evaluation, event, sample=0.0, **args) is None
    full = decision_record(evaluation, event, sample=1.0, **args)
    assert full is not None and full["sample_rate"] == 1.0
    picked = sum(decision_sampled(f"ev-{i}", 0.1) for i in range(20_000))
    assert 1_700 < picked < 2_300
    assert [decision_sampled(f"ev-{i}", 0.1) for i in range(100)] == [
        decision_sampled(f"ev-{i}", 0.1) for i in range(100)
    ]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [("rule_ids", "a", "wrong_type"), ("event_ts", "x", "wrong_type"), ("decision", None, "missing_field")],
)
def test_check_decision_names_the_field(field: str, value: object, reason: str) -> None:
    evaluation, event = _evaluation(20)
    record: Any = decision_record(
        evaluation, event, sample=1.0, run_id="r", source_topic="t", source_partition=0, source_offset=0
    )
    record[field] = value
    with pytest.raises(RecordError) as info:
        check_decision(record)
    assert info.value.reason == reason and info.value.fields["field"] == field


class _RefusingClient(_Client):
    """Refuses (as ClickHouse does a value it cannot store: code 53) every insert holding ``bad``."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        if self.bad in data[0]:
            raise RuntimeError("Code: 53. DB::Exception: Type mismatch (version 26.9)")
        super().insert(table, data, **kwargs)


def test_the_archive_batch_holds_each_row_as_event_values_and_its_record_for_the_dlq() -> None:
    """The archive keeps its rows in one flat list: the columns it inserts must be those of
    event_values row by row, and a row ClickHouse refuses must come back as its own record
    (coordinates, key, original bytes, timestamp) for the DLQ, the others inserted."""
    decoder = EnvelopeDecoder(KEY)
    records = []
    for i in range(7):
        event: dict[str, Any] = {"event_id": f"e{i}", "type": "login", "ts": 1_000 + i, "user_id": f"u{i}"}
        if i % 2:
            event.update(phone=f"+86 138 0000 000{i}", geo={"lat": 1, "lon": 2.5}, attrs={"b": 1, "a": [i]})
        records.append(SourceRecord("raw", i % 3, 100 + i, f"k{i}".encode(), orjson.dumps(event), 5_000 + i))
    client = _RefusingClient("e3")
    sink = ClickHouseSink(client, "db", {"raw": "events"}, decoder=decoder)
    for record in records:
        sink.add(record)
    assert sink.pending() == 7
    assert sink.flush() == 6
    [(rejected, error)] = sink.take_rejected()
    assert rejected == records[3] and error.reason == "rejected_by_clickhouse"
    inserted = [row for _, data, _ in client.inserts for row in zip(*data, strict=True)]
    expected = [event_values(decoder.decode(r.value), r) for r in records if r is not records[3]]
    assert sorted(inserted) == sorted(expected)
    e1 = dict(zip(EVENT_COLUMNS, next(v for v in expected if v[0] == "e1"), strict=True))
    assert e1["attrs"] == '{"a":[1],"b":1}' and e1["phone"].startswith("ph_")  # JSON text, keys sorted
    tokens = [settings["insert_deduplication_token"] for _, _, settings in client.inserts]
    assert len(set(tokens)) == len(tokens) and all(t.startswith("bypass-db.risk_events-") for t in tokens)
