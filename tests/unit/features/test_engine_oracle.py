"""FeatureEngine against the brute-force oracle, for every aggregation.

Timeline of a window query (W = window, L = allowed lateness):

    ---(----------------------]----------------------> event time
     t - W (excluded)         t (included)

    an event at t' < tmax is applied if t' >= tmax - L ("as of t'": its window is
    (t' - W, t'] over the events applied so far), rejected if t' < tmax - L.

The streams below step time by 0, 1, W - 1, W, W + 1 ... so events land exactly on
``t - W`` (excluded) and on ``t`` (included); they go back in time by L - 1, L, L + 1 to
hit the lateness edge; they redeliver earlier events; and they snapshot/restore the
state in the middle.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import FeatureEngine, FeatureSpec
from tests.unit.features.oracle import Oracle

T0 = 1_700_000_000_000
FLOATY = {"geo_spread", "max_speed"}


def make_spec(w: int) -> FeatureSpec:
    win = f"{w}s"
    feats: list[dict[str, Any]] = [
        {"name": "c_w", "entity": "user", "agg": "count", "where": {"type": "a"}, "window": win},
        {"name": "c_all", "entity": "user", "agg": "count"},
        {"name": "d_w", "entity": "user", "agg": "distinct", "field": "k", "window": win},
        {"name": "d_all", "entity": "user", "agg": "distinct", "field": "k"},
        {"name": "s_w", "entity": "user", "agg": "sum", "field": "x.n", "where": {"type": ["a", "b"]}}
        | {"window": win},
        {"name": "s_all", "entity": "user", "agg": "sum", "field": "x.n"},
        {"name": "mn_w", "entity": "user", "agg": "min", "field": "x.n", "window": win},
        {"name": "mx_w", "entity": "user", "agg": "max", "field": "x.n", "window": win},
        {"name": "mn_all", "entity": "user", "agg": "min", "field": "x.n"},
        {"name": "mx_all", "entity": "user", "agg": "max", "field": "x.n", "where": {"type": "b"}},
        {"name": "last_w", "entity": "user", "agg": "last", "field": "k", "window": win},
        {"name": "last_all", "entity": "user", "agg": "last", "field": "k", "where": {"type": "b"}},
        {"name": "since_all", "entity": "user", "agg": "since", "where": {"type": "a"}},
        {"name": "since_w", "entity": "user", "agg": "since", "window": win},
        {"name": "geo_w", "entity": "user", "agg": "geo_spread", "where": {"type": "a"}, "window": win},
        {"name": "geo_all", "entity": "user", "agg": "geo_spread"},
        {"name": "sp_w", "entity": "user", "agg": "max_speed", "window": win},
        {"name": "sp_all", "entity": "user", "agg": "max_speed", "where": {"type": ["a", "c"]}},
        {"name": "seq2", "entity": "user", "agg": "sequence", "steps": ["a", "b"], "within": win},
        {"name": "seq3", "entity": "user", "agg": "sequence", "steps": ["a", "a", "b"]}
        | {"within": f"{2 * w}s"},
        {"name": "dev_users", "entity": "device", "agg": "distinct", "field": "user_id", "window": win},
        {"name": "dev_count", "entity": "device", "agg": "count"},
    ]
    return FeatureSpec.from_dict({"entities": {"user": "user_id", "device": "device_id"}, "features": feats})


POINTS = [
    {"lat": 39.9, "lon": 116.4},
    {"lat": 31.2, "lon": 121.5},
    {"lat": 22.5, "lon": 114.1},
    {"lat": -33.9, "lon": 151.2},
    {"lat": 39.9, "lon": 116.4000001},
    {"lat": "x", "lon": 1.0},
    {"lat": 95.0, "lon": 1.0},
]
NUMS: list[Any] = [1, 2, -3, 0, 0.5, 0.1, 1e16, -2.5, "7", True, None]
KEYS: list[Any] = ["p", "q", "r", 1, 1.0, None, {"o": 1}, True]


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    w_s = draw(st.sampled_from([1, 3]))
    w = w_s * 1000
    lateness = draw(st.sampled_from([0, 1500, 5000]))
    steps = [0, 1, 499, w - 1, w, w + 1, 2 * w]
    backs = [0, 1, lateness - 1, lateness, lateness + 1, w]
    n = draw(st.integers(1, 40))
    events: list[dict[str, Any]] = []
    restore_after: set[int] = set()
    tmax = T0
    for i in range(n):
        kind = draw(st.sampled_from(["next", "next", "next", "late", "dup"]))
        if kind == "dup" and events:
            events.append(dict(draw(st.sampled_from(events))))
        else:
            if kind == "late":
                ts = tmax - draw(st.sampled_from(backs))
            else:
                ts = tmax + draw(st.sampled_from(steps))
            tmax = max(tmax, ts)
            ev: dict[str, Any] = {
                "event_id": f"e{i}",
                "type": draw(st.sampled_from(["a", "b", "c"])),
                "ts": ts,
                "user_id": draw(st.sampled_from(["u1", "u1", "u2"])),
            }
            if draw(st.booleans()):
                ev["device_id"] = draw(st.sampled_from(["d1", "d2"]))
            k = draw(st.sampled_from([*KEYS, "missing"]))
            if k != "missing":
                ev["k"] = k
            num = draw(st.sampled_from([*NUMS, "missing"]))
            if num != "missing":
                ev["x"] = {"n": num}
            if draw(st.booleans()):
                ev["geo"] = draw(st.sampled_from(POINTS))
            events.append(ev)
        if draw(st.integers(0, 5)) == 0:
            restore_after.add(i)
    return {"w_s": w_s, "lateness": lateness, "events": events, "restore": restore_after}


def same(name: str, agg: str, got: Any, want: Any) -> bool:
    if agg in FLOATY:
        return isinstance(got, float) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return type(got) is type(want) and got == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_engine_matches_oracle(case: dict[str, Any]) -> None:
    spec = make_spec(case["w_s"])
    lateness = case["lateness"]
    engine = FeatureEngine(spec, allowed_lateness_ms=lateness, dedup_horizon_ms=10**9)
    oracle = Oracle(spec, lateness_ms=lateness)
    aggs = {f.name: f.agg for f in spec.features}
    states: dict[tuple[str, str], Any] = {}
    for i, ev in enumerate(case["events"]):
        for ent, key in spec.entity_keys(ev):
            state = states.setdefault((ent, key), engine.new_state(ent))
            got = engine.apply(ent, state, ev)
            status, want = oracle.apply(ent, key, ev)
            assert got.status == status, (i, ev, got, status)
            assert set(got.features) == set(want)
            for name, value in want.items():
                got_v = got.features[name]
                assert same(name, aggs[name], got_v, value), (i, ev, name, got_v, value)
        if i in case["restore"]:
            # snapshot/restore in the middle of the stream must change nothing
            states = {k: engine.loads(k[0], engine.dumps(s)) for k, s in states.items()}
            for k, s in states.items():
                assert engine.dumps(engine.loads(k[0], engine.dumps(s))) == engine.dumps(s)


def test_window_edges_by_hand() -> None:
    # W = 1 s:  e1 at 0, e2 at 1000 (e1 sits on t - W: excluded), e3 at 1999, e4 at 2999
    #   0        1000      1999    2999
    #   e1 ----- e2 ------ e3 ---- e4
    #   (window of e2 is (0, 1000]; of e4 is (1999, 2999] -> e3 excluded)
    spec = make_spec(1)
    engine = FeatureEngine(spec, allowed_lateness_ms=0, dedup_horizon_ms=0)
    s = engine.new_state("user")
    got = []
    for i, dt in enumerate([0, 1000, 1999, 2999, 2999]):
        ev = {"event_id": f"e{i}", "type": "a", "ts": T0 + dt, "user_id": "u"}
        got.append(engine.apply("user", s, ev).features["c_w"])
    assert got == [1, 1, 2, 1, 2]
