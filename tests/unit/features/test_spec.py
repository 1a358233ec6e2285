"""The feature spec: validation errors name the feature and the problem; schema; keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from features import FeatureSpec, SpecError, load_spec, parse_duration

ROOT = Path(__file__).resolve().parents[3]
ENTS = {"user": "user_id", "device": "device_id"}


def spec_of(*feats: dict[str, Any]) -> FeatureSpec:
    return FeatureSpec.from_dict({"entities": ENTS, "features": list(feats)})


@pytest.mark.parametrize(
    ("feature", "needle", "problem"),
    [
        ({"name": "f", "entity": "user", "agg": "avg"}, "unknown agg 'avg'", "unknown agg"),
        ({"name": "f", "entity": "user"}, "missing field 'agg'", "missing field"),
        ({"name": "f", "entity": "user", "agg": "sum"}, "missing field 'field'", "missing field"),
        ({"name": "f", "entity": "user", "agg": "distinct"}, "missing field 'field'", "missing field"),
        ({"name": "f", "entity": "user", "agg": "count", "window": "30x"}, "bad duration", "bad duration"),
        ({"name": "f", "entity": "user", "agg": "count", "window": "0d"}, "bad duration", "bad duration"),
        ({"name": "f", "entity": "user", "agg": "count", "window": 30}, "bad duration", "bad duration"),
        ({"name": "f", "entity": "user", "agg": "count", "window": "-1h"}, "bad duration", "bad duration"),
        ({"name": "f", "entity": "shop", "agg": "count"}, "unknown entity 'shop'", "unknown entity"),
        ({"name": "f", "agg": "count"}, "missing field 'entity'", "missing field"),
        (
            {"name": "f", "entity": "user", "agg": "sequence", "within": "1h"},
            "missing field 'steps'",
            "missing field",
        ),
        (
            {"name": "f", "entity": "user", "agg": "sequence", "steps": ["a"]},
            "missing field 'within'",
            "missing field",
        ),
        (
            {"name": "f", "entity": "user", "agg": "sequence", "steps": [], "within": "1h"},
            "'steps'",
            "bad steps",
        ),
        ({"name": "f", "entity": "user", "agg": "count", "field": "x"}, "unexpected key", "unexpected key"),
        ({"name": "f", "entity": "user", "agg": "count", "where": {"type": []}}, "'where' type", "bad where"),
        ({"name": "f", "entity": "user", "agg": "count", "where": "login"}, "'where' must map", "bad where"),
    ],
)
def test_spec_errors_name_the_feature_and_the_problem(
    feature: dict[str, Any], needle: str, problem: str
) -> None:
    with pytest.raises(SpecError) as info:
        spec_of(feature)
    assert info.value.fields["feature"] == "f"
    assert info.value.fields["problem"] == problem
    assert "feature 'f'" in info.value.message
    assert needle in info.value.message


def test_duplicate_name_is_an_error() -> None:
    with pytest.raises(SpecError, match="duplicate name") as info:
        spec_of(
            {"name": "twice", "entity": "user", "agg": "count"},
            {"name": "twice", "entity": "device", "agg": "count"},
        )
    assert info.value.fields["feature"] == "twice"


def test_missing_name_and_bad_top_level() -> None:
    with pytest.raises(SpecError, match="missing or bad 'name'"):
        spec_of({"entity": "user", "agg": "count"})
    with pytest.raises(SpecError, match="'entities'"):
        FeatureSpec.from_dict({"features": []})
    with pytest.raises(SpecError, match="unknown top-level"):
        FeatureSpec.from_dict({"entities": ENTS, "features": [], "rules": []})


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86_400_000
    assert parse_duration("24h") == 86_400_000
    assert parse_duration("15m") == 900_000
    assert parse_duration("1s") == 1000
    assert parse_duration("1w") == 7 * 86_400_000  # the one grammar of features._time
    for bad in ("1.5h", "1 h", "h", "", "1y", "0d", "1m1h", None, 30):
        with pytest.raises(SpecError, match="feature 'f': bad duration for window") as info:
            parse_duration(bad, feature="f")
        assert info.value.fields == {"feature": "f", "problem": "bad duration"}


def test_example_spec_schema_and_windows() -> None:
    spec = load_spec(ROOT / "examples" / "features.yaml")
    schema = spec.schema()
    assert set(schema) == set(spec.entities)
    user = schema["user"]
    assert user["phone_changes_30d"] == "int"
    assert user["distinct_phones_30d"] == "int"
    assert user["ms_since_phone_change"] == "int"
    assert user["change_then_sign_1h"] == "int"
    assert user["order_amount_1h"] == "number"
    assert user["login_spread_km_24h"] == "float"
    assert user["travel_kmh_24h"] == "float"
    assert schema["device"] == {"device_users_7d": "int"}
    assert spec.max_window_ms() == 30 * 86_400_000
    assert set(spec.unbounded_features()) == {"property_views_total", "ms_since_phone_change"}


def test_schema_of_every_agg() -> None:
    spec = spec_of(
        {"name": "a", "entity": "user", "agg": "last", "field": "x"},
        {"name": "b", "entity": "user", "agg": "min", "field": "x", "window": "1h"},
        {"name": "c", "entity": "user", "agg": "max", "field": "x"},
        {"name": "d", "entity": "user", "agg": "sequence", "steps": ["a", "b"], "within": "2h"},
    )
    assert spec.schema() == {"user": {"a": "any", "b": "number", "c": "number", "d": "int"}, "device": {}}
    assert spec.max_window_ms() == 2 * 3_600_000  # sequence `within` counts


def test_entity_keys() -> None:
    spec = spec_of({"name": "f", "entity": "user", "agg": "count"})
    assert spec.entity_keys({"user_id": "u1", "device_id": "d1"}) == [("user", "u1"), ("device", "d1")]
    assert spec.entity_keys({"user_id": "u1", "device_id": None}) == [("user", "u1")]
    assert spec.entity_keys({"user_id": "", "device_id": 7}) == [("device", "7")]
    assert spec.entity_keys({"user_id": {"x": 1}, "device_id": True}) == []


def test_state_key_changes_with_parameters_only() -> None:
    base = {"name": "f", "entity": "user", "agg": "count", "where": {"type": "a"}, "window": "1h"}
    k = spec_of(base).features[0].state_key
    assert spec_of(dict(base)).features[0].state_key == k
    assert spec_of(base | {"window": "2h"}).features[0].state_key != k
    assert spec_of(base | {"where": {"type": "b"}}).features[0].state_key != k
    assert spec_of(base | {"name": "g"}).features[0].state_key != k


def test_load_spec_accepts_text_path_and_mapping(tmp_path: Path) -> None:
    text = "entities: {user: user_id}\nfeatures:\n  - {name: n, entity: user, agg: count}\n"
    p = tmp_path / "f.yaml"
    p.write_text(text)
    for source in (
        text,
        p,
        str(p),
        {"entities": {"user": "user_id"}, "features": [{"name": "n", "entity": "user", "agg": "count"}]},
    ):
        spec = load_spec(source)
        assert [f.name for f in spec.features] == ["n"]
    assert load_spec('{"entities": {"user": "user_id"}, "features": []}').features == ()
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec("entities: [\n")


# -- declared event types (issue 20 item 5) ---------------------------------------------


def test_declared_event_types_are_kept_and_optional() -> None:
    spec = FeatureSpec.from_dict({"entities": ENTS, "events": ["login", "order"], "features": []})
    assert spec.events == ("login", "order")
    assert FeatureSpec.from_dict({"entities": ENTS, "features": []}).events is None  # any type goes
    assert load_spec(ROOT / "examples/features.yaml").events is not None


@pytest.mark.parametrize(
    ("feature", "needle"),
    [
        (
            {"name": "n", "entity": "user", "agg": "count", "where": {"type": "logn"}},
            "feature 'n': 'where' type: unknown event type 'logn' (did you mean 'login'?)",
        ),
        (
            {"name": "n", "entity": "user", "agg": "count", "where": {"type": ["login", "ordr"]}},
            "unknown event type 'ordr' (did you mean 'order'?)",
        ),
        (
            {"name": "s", "entity": "user", "agg": "sequence", "steps": ["login", "zzz"], "within": "1h"},
            "feature 's': 'steps': unknown event type 'zzz' (the feature spec declares login, order)",
        ),
    ],
)
def test_a_feature_naming_an_undeclared_event_type_is_rejected(feature: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as exc:
        FeatureSpec.from_dict({"entities": ENTS, "events": ["login", "order"], "features": [feature]})
    assert needle in exc.value.message
    assert exc.value.fields["problem"] == "unknown event type"


def test_undeclared_types_are_fine_without_events() -> None:
    f = {"name": "n", "entity": "user", "agg": "count", "where": {"type": "anything"}}
    assert FeatureSpec.from_dict({"entities": ENTS, "features": [f]}).features[0].name == "n"


@pytest.mark.parametrize("events", [[], "login", ["login", 3], ["login", "login"], ["a b"]])
def test_bad_events_declaration_is_rejected(events: Any) -> None:
    with pytest.raises(SpecError, match="'events'"):
        FeatureSpec.from_dict({"entities": ENTS, "events": events, "features": []})
