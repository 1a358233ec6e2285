"""Aggregations describe themselves: the registry, what the spec derives from it, and a new
aggregation added by defining one class (features._aggs)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import features
from features import AGGS, FeatureEngine, FeatureSpec, SpecError, load_spec
from features._aggs import _NEG, _POS, FIELD, LOGICS, Logic, Param, SpecErr, State, unregister
from features._spec import Feature

ROOT = Path(__file__).resolve().parents[3]

# the tables features/_spec.py held before aggregations described themselves
FORMER_AGGS = (
    "count",
    "distinct",
    "geo_spread",
    "last",
    "max",
    "max_speed",
    "min",
    "sequence",
    "since",
    "sum",
)
FORMER_TYPES = {
    "count": "int",
    "distinct": "int",
    "sequence": "int",
    "since": "int",
    "sum": "number",
    "min": "number",
    "max": "number",
    "geo_spread": "float",
    "max_speed": "float",
    "last": "any",
}
FORMER_NEEDS_FIELD = {"distinct", "sum", "min", "max", "last"}
_COMMON = {"name", "entity", "agg", "where", "window"}
FORMER_ALLOWED_KEYS = {
    "count": _COMMON,
    "since": _COMMON,
    "sequence": {"name", "entity", "agg", "steps", "within", "where"},
    **{a: _COMMON | {"field"} for a in ("distinct", "sum", "min", "max", "last", "geo_spread", "max_speed")},
}
# state keys of the example spec before the refactoring: snapshots are keyed by them
EXAMPLE_STATE_KEYS = {
    "phone_changes_30d": "6cdb5939",
    "distinct_phones_30d": "a26e3282",
    "login_cities_7d": "b4bace94",
    "login_spread_km_24h": "a912bbca",
    "travel_kmh_24h": "4d51e696",
    "property_views_total": "7eb46435",
    "ms_since_phone_change": "609017ca",
    "order_amount_1h": "b2020308",
    "change_then_sign_1h": "7d524ab0",
    "device_users_7d": "477ff25d",
    "ip_failed_users_1h": "586c0114",
}
# a snapshot of one example user, made before the refactoring
T0 = 1_793_527_200_000
OLD_SNAPSHOT = (
    b'[2,1793530800000,0,"2211ef2d",["e1",3600000,[0,0,1,0.0,0.0,0,null,0,0],"e2",3540000,'
    b'[1,1,1,0.0,0.0,0,null,0,0],"e3",3480000,[1,1,1,0.0,0.0,0,60000,12.5,0],"e4",3420000,'
    b'[1,1,1,0.0,0.0,0,120000,12.5,1],"e5",0,[1,1,2,504.3378994382319,504.3378994382319,0,3540000,'
    b'12.5,0],"e6",600000,[1,1,1,0.0,0.0,1,2940000,12.5,0]],{"6cdb5939":[[3540000]],"a26e3282":'
    b'[["+491",[3540000]]],"b4bace94":[["Berlin",[3600000]],["Munich",[0]]],"a912bbca":[[3600000,'
    b'3600000],[52.52,13.405,48.137,11.575]],"4d51e696":[[3600000,3600000],[52.52,13.405,48.137,'
    b'11.575],0],"7eb46435":[[600000],1],"609017ca":[[3540000]],"b2020308":[[3480000],[12.5]],'
    b'"7d524ab0":[[3540000,120000],[1,0]]}]'
)


def test_derived_aggs_equal_the_former_list() -> None:
    assert AGGS == FORMER_AGGS
    assert features.AGGS == FORMER_AGGS
    assert tuple(sorted(LOGICS)) == FORMER_AGGS  # no test aggregation left registered


def test_derived_types_and_keys_equal_the_former_tables() -> None:
    assert {a: LOGICS[a].value_type for a in AGGS} == FORMER_TYPES
    allowed = {a: {"name", "entity", "agg", "where"} | {p.key for p in LOGICS[a].params} for a in AGGS}
    assert allowed == FORMER_ALLOWED_KEYS
    needs_field = {a for a in AGGS if (p := LOGICS[a].param("field")) is not None and p.required}
    assert needs_field == FORMER_NEEDS_FIELD
    assert {a: LOGICS[a].agg for a in AGGS} == {a: a for a in AGGS}


def test_state_keys_and_old_snapshots_are_unchanged() -> None:
    spec = load_spec(ROOT / "examples" / "features.yaml")
    assert {f.name: f.state_key for f in spec.features} == EXAMPLE_STATE_KEYS
    engine = FeatureEngine(spec, cap=64, allowed_lateness_ms=3_600_000, dedup_horizon_ms=86_400_000)
    state = engine.loads("user", OLD_SNAPSHOT)
    assert engine.dumps(state) == OLD_SNAPSHOT
    out = engine.apply(
        "user",
        state,
        {"event_id": "e7", "ts": T0 + 3_700_000, "type": "order", "user_id": "u1", "attrs": {"amount": 2}},
    )
    assert out.features == {
        "phone_changes_30d": 1,
        "distinct_phones_30d": 1,
        "login_cities_7d": 2,
        "login_spread_km_24h": 504.3378994382319,
        "travel_kmh_24h": 504.3378994382319,
        "property_views_total": 1,
        "ms_since_phone_change": 3_640_000,
        "order_amount_1h": 14.5,
        "change_then_sign_1h": 0,
    }


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_spec_and_engine_name_no_aggregation() -> None:
    for module in ("_spec.py", "_engine.py"):
        named = _string_constants(ROOT / "features" / module) & set(AGGS)
        assert not named, f"features/{module} names aggregations {sorted(named)}: use the registry"


# --- a new aggregation: one class -------------------------------------------------------


class _FirstState(State):
    __slots__ = ("ft", "fv")

    def __init__(self) -> None:
        super().__init__()
        self.ft: int | None = None  # time of the first matching event
        self.fv: Any = None  # its field value


@contextmanager
def first_aggregation() -> Iterator[type[Logic]]:
    """Define (so register) a toy aggregation, and take it out again afterwards."""

    class First(Logic):
        """``test_first``: the ``field`` of the key's first matching event in event time
        (whole history); a late event before it becomes the first."""

        agg = "test_first"
        value_type = "any"
        params = (FIELD,)  # no window: the whole history only

        __slots__ = ()

        @classmethod
        def check(cls, feature: Feature, err: SpecErr) -> None:
            if not feature.where:
                raise err("agg 'test_first' needs a 'where' (else it is just the first event)", "bad where")

        def new(self) -> _FirstState:
            return _FirstState()

        def newest(self, st: _FirstState) -> int:
            return _NEG if st.ft is None else st.ft

        def apply(self, st: _FirstState, t: int, ev: Any, m: bool, tmax: int) -> Any:
            if m and (st.ft is None or t < st.ft):
                st.ft, st.fv = t, self.get(ev)
            out = st.fv if st.ft is not None and st.ft <= t else None
            if t >= tmax:
                st.val, st.until = out, _POS  # fixed until a matching event comes
            return out

        def dump(self, st: _FirstState, tmax: int) -> Any:
            return [] if st.ft is None else [tmax - st.ft, st.fv]

        def load(self, data: Any, tmax: int) -> _FirstState:
            st = _FirstState()
            if data:
                st.ft, st.fv = tmax - int(data[0]), data[1]
            return st

    try:
        yield First
    finally:
        unregister("test_first")


FIRST = {
    "name": "first_order",
    "entity": "user",
    "agg": "test_first",
    "field": "amount",
    "where": {"type": "order"},
}


def spec_with(*feats: dict[str, Any]) -> FeatureSpec:
    return FeatureSpec.from_dict({"entities": {"user": "user_id"}, "features": list(feats)})


def test_a_new_aggregation_is_one_class() -> None:
    with first_aggregation() as cls:
        assert LOGICS["test_first"] is cls
        spec = spec_with(FIRST, {"name": "n", "entity": "user", "agg": "count"})
        assert spec.schema() == {"user": {"first_order": "any", "n": "int"}}
        assert spec.unbounded_features() == ("first_order", "n")
        engine = FeatureEngine(spec, cap=8, allowed_lateness_ms=10_000, dedup_horizon_ms=10_000)
        st = engine.new_state("user")

        def apply(eid: str, ts: int, etype: str, amount: int) -> Any:
            ev = {"event_id": eid, "ts": ts, "type": etype, "user_id": "u1", "amount": amount}
            return engine.apply("user", st, ev).features["first_order"]

        assert apply("a", 1_000, "login", 1) is None
        assert apply("b", 2_000, "order", 20) == 20
        assert apply("c", 3_000, "login", 3) == 20  # value kept for a non-matching event
        assert apply("d", 4_000, "order", 40) == 20
        assert apply("e", 1_500, "order", 15) == 15  # late and earlier: now the first
        assert apply("f", 1_200, "login", 0) is None  # as of 1200 nothing matched yet
        st = engine.loads("user", engine.dumps(st))
        assert apply("g", 5_000, "order", 50) == 15
        assert engine.apply("user", st, {"event_id": "g", "ts": 5_000, "user_id": "u1"}).status == "duplicate"

        # the spec validates it from its self-description alone
        for item, needle, problem in (
            (FIRST | {"window": "1h"}, "unexpected key(s) ['window'] for agg 'test_first'", "unexpected key"),
            ({k: v for k, v in FIRST.items() if k != "field"}, "missing field 'field'", "missing field"),
            ({k: v for k, v in FIRST.items() if k != "where"}, "needs a 'where'", "bad where"),
        ):
            with pytest.raises(SpecError) as info:
                spec_with(item)
            assert info.value.fields == {"feature": "first_order", "problem": problem}
            assert info.value.message.startswith("feature 'first_order': ")
            assert needle in info.value.message
    # unregistered again: unknown to new specs, and every other test sees the former set
    assert "test_first" not in LOGICS
    with pytest.raises(SpecError, match="unknown agg 'test_first'"):
        spec_with(FIRST)
    assert tuple(sorted(LOGICS)) == FORMER_AGGS


def test_bad_descriptions_are_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="already"):

        class Again(Logic):
            agg = "count"

    with pytest.raises(TypeError, match="value_type"):

        class BadType(Logic):
            agg = "test_bad_type"
            value_type = "decimal"

    with pytest.raises(TypeError, match="lower-case name"):

        class BadName(Logic):
            agg = "Test Bad"

    with pytest.raises(TypeError, match="parameter 'size'"):
        Param("size")
    with pytest.raises(TypeError, match="distinct keys"):

        class Twice(Logic):
            agg = "test_twice"
            params = (FIELD, FIELD)

    assert tuple(sorted(LOGICS)) == FORMER_AGGS  # none of them got in


def test_unregister_unknown_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        unregister("test_never_registered")
