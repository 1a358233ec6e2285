"""Pure parts of the ClickHouse sink: record -> row, features split, dedup tokens."""

from __future__ import annotations

import copy

import orjson
import pytest

from sinks._sample import sample_hit
from sinks.base import RecordError, SourceRecord
from sinks.clickhouse import (
    BLACKLIST_COLUMNS,
    HIT_COLUMNS,
    OffsetRanges,
    blacklist_row,
    dedup_token,
    hit_row,
    ms_text,
    split_features,
)
from sinks.records import decode_object


def test_hit_row_maps_every_column_in_order() -> None:
    hit = sample_hit(7)
    row = hit_row(hit)
    assert tuple(row) == HIT_COLUMNS
    assert row["hit_id"] == hit["hit_id"]
    assert row["event_time"] == ms_text(hit["event_ts"])
    assert row["features"] == {"logins_1h": 7.0, "distinct_devices_1d": 2.0, "x": None}
    assert row["features_text"] == {"city": "Beijing"}
    assert row["counted"] is True and row["source_offset"] == 7
    assert row["error"] == ""  # no run-time error: stored empty
    assert hit_row({**hit, "error": "division by zero"})["error"] == "division by zero"


def test_ms_text_is_exact_and_fixed_width() -> None:
    assert ms_text(1_763_856_000_123) == "1763856000.123"
    assert ms_text(5) == "0000000000.005"
    assert ms_text(86_400_000) == "0000086400.000"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("hit_id", None, "missing_field"),
        ("hit_id", 5, "wrong_type"),
        ("hit_id", "", "bad_value"),
        ("event_ts", "2025-01-01", "wrong_type"),
        ("event_ts", 1_763_856_000, None),  # seconds are in range (1970) - accepted
        ("event_ts", 1_763_856_000_000_000, "bad_value"),  # microseconds
        ("score", "high", "wrong_type"),
        ("counted", 1, "wrong_type"),
        ("features", [1, 2], "wrong_type"),
        ("decision", {"a": 1}, "wrong_type"),
        ("source_partition", 2**40, "bad_value"),
        ("run_id", None, "missing_field"),
        ("error", 5, "wrong_type"),
        ("error", None, None),  # a record without the field: no error
    ],
)
def test_hit_row_rejects_what_does_not_fit(field: str, value: object, reason: str | None) -> None:
    hit = copy.deepcopy(sample_hit(1))
    if value is None:
        del hit[field]
    else:
        hit[field] = value
    if reason is None:
        hit_row(hit)
        return
    with pytest.raises(RecordError) as err:
        hit_row(hit)
    assert err.value.reason == reason  # a short code for bypass.reason ...
    assert field in err.value.message  # ... and the text names the field


def test_split_features_keeps_nulls_bools_and_text() -> None:
    numbers, texts = split_features(
        {"n": 3, "f": 1.5, "b": True, "z": None, "s": "x", "l": [2, 1], "inf": 1e400}
    )
    assert numbers == {"n": 3.0, "f": 1.5, "b": 1.0, "z": None, "inf": None}
    assert texts == {"s": "x", "l": "[2,1]"}
    assert split_features(None) == ({}, {})


def test_decode_object_errors_name_the_problem() -> None:
    for value, reason, text in [
        (None, "empty_value", "no value"),
        (b"{", "not_json", "not JSON"),
        (b"[1]", "not_object", "not a JSON object (got list)"),
    ]:
        with pytest.raises(RecordError) as err:
            decode_object(value)
        assert err.value.reason == reason
        assert text in err.value.message


def test_blacklist_row_uses_its_own_coordinates_and_sorts_rule_ids() -> None:
    rec = SourceRecord("bl", 2, 41, b"user:u1", None)
    obj = {
        "entity": "user",
        "key": "u1",
        "label": "fraud",
        "rule_ids": ["r2", "r1", "r2"],
        "event_id": "e1",
        "event_ts": 1_000,
        "expires_at": 2_000,
        "ruleset_version": "v1",
    }
    row = blacklist_row(obj, rec)
    assert tuple(row) == BLACKLIST_COLUMNS
    assert row["rule_ids"] == ["r1", "r2"]
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("bl", 2, 41)
    obj["rule_ids"] = "r1"
    with pytest.raises(RecordError):
        blacklist_row(obj, rec)


def test_dedup_token_depends_on_table_and_exact_ranges_only() -> None:
    a = OffsetRanges()
    for off in (10, 12, 11):
        a.add("hits", 0, off)
    a.add("hits", 3, 5)
    b = OffsetRanges()  # same ranges, other insertion order
    b.add("hits", 3, 5)
    b.add("hits", 0, 12)
    b.add("hits", 0, 10)
    assert a.describe() == "hits:0:10-12,hits:3:5-5"
    assert dedup_token("db.risk_hits", a) == dedup_token("db.risk_hits", b)
    assert dedup_token("db.risk_hits", a) != dedup_token("db.risk_blacklist", a)
    c = OffsetRanges()
    c.add("hits", 0, 10)
    c.add("hits", 0, 13)
    c.add("hits", 3, 5)
    assert dedup_token("db.risk_hits", a) != dedup_token("db.risk_hits", c)


def test_sample_hit_round_trips_through_json() -> None:
    hit = sample_hit(3)
    assert hit_row(decode_object(orjson.dumps(hit))) == hit_row(hit)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"score": 3},
        {"label": None, "decision": None, "features": None},
        {"key": ""},
        {"event_ts": 0},
        {"error": "division by zero", "counted": False},
    ],
)
def test_fast_and_checked_paths_give_the_same_row(change: dict[str, object]) -> None:
    from sinks.clickhouse import _hit_row_checked, _hit_row_fast

    hit = {**sample_hit(11), **change}
    assert _hit_row_fast(hit) == _hit_row_checked(hit)


@pytest.mark.parametrize(
    "change",
    [
        {"event_ts": True},
        {"counted": 1},
        {"score": float("nan")},
        {"mode": ""},
        {"features": "x"},
        {"error": 1},
    ],
)
def test_fast_path_never_accepts_what_the_checked_path_rejects(change: dict[str, object]) -> None:
    from sinks.clickhouse import _hit_row_fast

    hit = {**sample_hit(11), **change}
    assert _hit_row_fast(hit) is None
    with pytest.raises(RecordError):
        hit_row(hit)


def test_clickhouse_error_code_and_message_are_read_from_the_server_text() -> None:
    from sinks.clickhouse import DATA_ERROR_CODES, _first_line, clickhouse_error_code

    exc = RuntimeError(
        "Received ClickHouse exception, code: 469, server response: Code: 469. DB::Exception: "
        "Constraint `score_sane` for table db.risk_hits (...) is violated at row 1. (VIOLATED_CONSTRAINT) "
        "(version 26.9.2.1) (for url http://127.0.0.1:1)"
    )
    assert clickhouse_error_code(exc) == 469 and 469 in DATA_ERROR_CODES
    assert _first_line(exc).startswith("Constraint `score_sane` for table db.risk_hits")
    assert clickhouse_error_code(ConnectionRefusedError("refused")) is None


@pytest.mark.parametrize(
    "change",
    [{}, {"score": 3}, {"label": None, "decision": None, "features": None}, {"event_ts": 0}],
)
def test_hit_values_are_the_row_in_column_order_with_ms_ticks(change: dict[str, object]) -> None:
    from sinks.clickhouse import _hit_row_checked, _hit_values_fast, hit_values

    hit = {**sample_hit(5), **change}
    values = hit_values(hit)
    checked = _hit_row_checked(hit)
    checked["event_time"] = hit["event_ts"]  # the Native insert sends DateTime64(3) ticks
    assert values == _hit_values_fast(hit) == tuple(checked.values())
    assert len(values) == len(HIT_COLUMNS) and values[HIT_COLUMNS.index("event_time")] == hit["event_ts"]


def test_hit_values_checked_path_names_the_problem() -> None:
    from sinks.clickhouse import _hit_values_fast, hit_values

    hit = {**sample_hit(5), "score": float("inf")}
    assert _hit_values_fast(hit) is None
    with pytest.raises(RecordError) as err:
        hit_values(hit)
    assert err.value.reason == "bad_value" and "score" in err.value.message


def test_a_feature_nested_too_deep_for_json_is_a_record_error() -> None:
    import orjson
    import pytest

    from sinks._sample import sample_hit
    from sinks.base import RecordError
    from sinks.clickhouse import hit_values

    hit = sample_hit(1)
    hit["features"] = {"f": orjson.loads(b"[" * 300 + b"]" * 300)}
    with pytest.raises(RecordError) as info:
        hit_values(hit)
    assert info.value.reason == "bad_value" and "'f'" in info.value.message
