"""``bypass features eval``: the contract output, input order, and spec errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "examples" / "features.yaml"


def run(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, bytes]:
    code = 0
    try:
        main(["features", "eval", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsysbinary.readouterr()
    return code, out, err


def test_eval_prints_every_feature_per_event_and_entity_in_input_order(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    events = [
        {
            "event_id": "e1",
            "type": "login",
            "ts": 1_000,
            "user_id": "u1",
            "device_id": "d1",
            "geo": {"lat": 39.9, "lon": 116.4, "city": "Beijing"},
        },
        {"event_id": "e2", "type": "phone_change", "ts": 61_000, "user_id": "u1", "phone": "ph_a"},
        {"event_id": "e3", "type": "contract_sign", "ts": 121_000, "user_id": "u1", "device_id": "d1"},
        {"event_id": "e2", "type": "phone_change", "ts": 61_000, "user_id": "u1", "phone": "ph_a"},
        {"event_id": "e4", "type": "login", "ts": 181_000, "user_id": "u2", "device_id": "d1"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n\n")
    code, out, err = run(capsysbinary, "--spec", str(SPEC), "--events", str(path))
    assert code == 0, err
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["event_id"], r["entity"], r["key"]) for r in rows] == [
        ("e1", "user", "u1"),
        ("e1", "device", "d1"),
        ("e2", "user", "u1"),
        ("e3", "user", "u1"),
        ("e3", "device", "d1"),
        ("e2", "user", "u1"),
        ("e4", "user", "u2"),
        ("e4", "device", "d1"),
    ]
    user_features = {
        "phone_changes_30d",
        "distinct_phones_30d",
        "login_cities_7d",
        "login_spread_km_24h",
        "travel_kmh_24h",
        "property_views_total",
        "ms_since_phone_change",
        "order_amount_1h",
        "change_then_sign_1h",
    }
    assert set(rows[0]["features"]) == user_features
    assert rows[0]["features"]["ms_since_phone_change"] is None  # null where undefined
    assert rows[3]["features"]["change_then_sign_1h"] == 1
    assert rows[3]["features"]["ms_since_phone_change"] == 60_000
    assert rows[5]["features"] == rows[2]["features"]  # redelivery: first application's values
    assert rows[7]["features"] == {"device_users_7d": 2}


@pytest.mark.parametrize(
    ("feature", "needle"),
    [
        ("{name: f, entity: user, agg: avg}", "feature 'f': unknown agg 'avg'"),
        ("{name: f, entity: user, agg: sum}", "feature 'f': missing field 'field'"),
        ("{name: f, entity: user, agg: count, window: 3 days}", "feature 'f': bad duration"),
        ("{name: f, entity: shop, agg: count}", "feature 'f': unknown entity 'shop'"),
    ],
)
def test_spec_error_exits_non_zero_naming_feature_and_problem(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], feature: str, needle: str
) -> None:
    spec = tmp_path / "features.yaml"
    spec.write_text(f"entities: {{user: user_id}}\nfeatures:\n  - {feature}\n")
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "type": "login", "ts": 1, "user_id": "u1"}\n')
    code, out, err = run(capsysbinary, "--spec", str(spec), "--events", str(events))
    assert code == 1
    assert out == b""
    assert needle in err.decode()
    assert err.decode().startswith("error: ")


def test_duplicate_feature_name_and_bad_event_line(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    spec = tmp_path / "features.yaml"
    spec.write_text(
        "entities: {user: user_id}\nfeatures:\n"
        "  - {name: f, entity: user, agg: count}\n  - {name: f, entity: user, agg: count}\n"
    )
    events = tmp_path / "events.jsonl"
    events.write_text("not json\n")
    code, _, err = run(capsysbinary, "--spec", str(spec), "--events", str(events))
    assert code == 1 and "feature 'f': duplicate name" in err.decode()
    code, _, err = run(capsysbinary, "--spec", str(SPEC), "--events", str(events))
    assert code == 1 and "events line 1: invalid JSON" in err.decode()
