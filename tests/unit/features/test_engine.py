"""FeatureEngine: redelivery, lateness, eviction, snapshots and the cap's error bounds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import (
    APPLIED,
    DUPLICATE,
    LATE_REJECTED,
    ConfigError,
    EventError,
    FeatureEngine,
    FeatureSpec,
    StateError,
)
from tests.unit.features.oracle import Oracle
from tests.unit.features.test_engine_oracle import make_spec, streams

T0 = 1_700_000_000_000
H = 3_600_000


def spec_of(*feats: dict[str, Any]) -> FeatureSpec:
    return FeatureSpec.from_dict(
        {"entities": {"user": "user_id", "device": "device_id"}, "features": list(feats)}
    )


COUNT_1H = {"name": "c", "entity": "user", "agg": "count", "where": {"type": "a"}, "window": "1h"}
SPEC = spec_of(
    COUNT_1H,
    {"name": "total", "entity": "user", "agg": "count"},
    {"name": "phones", "entity": "user", "agg": "distinct", "field": "phone", "window": "1h"},
    {"name": "amount", "entity": "user", "agg": "sum", "field": "amount", "window": "1h"},
)


def ev(i: int, ts: int, typ: str = "a", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "type": typ, "ts": ts, "user_id": "u1", **kw}


def test_redelivery_returns_first_values_even_after_later_events_and_restore() -> None:
    engine = FeatureEngine(SPEC)
    s = engine.new_state("user")
    first = engine.apply("user", s, ev(1, T0, phone="p1", amount=5))
    assert first.status == APPLIED
    for i in range(2, 6):
        engine.apply("user", s, ev(i, T0 + i * 1000, phone=f"p{i}", amount=1))
    before = engine.dumps(s)
    again = engine.apply("user", s, ev(1, T0, phone="p1", amount=5))
    assert again.status == DUPLICATE
    assert again.features == first.features == {"c": 1, "total": 1, "phones": 1, "amount": 5}
    assert engine.dumps(s) == before  # the state is unchanged
    restored = engine.loads("user", before)
    assert engine.apply("user", restored, ev(1, T0, phone="p1", amount=5)).features == first.features
    # a naive counter would now say 6 for `total`; the redelivered events change nothing
    for i in range(1, 6):
        engine.apply("user", restored, ev(i, T0 + i * 1000))
    assert engine.apply("user", restored, ev(6, T0 + 6000)).features["total"] == 6


def test_late_events_within_lateness_apply_as_of_their_time_older_are_rejected_and_counted() -> None:
    # lateness 1 h; newest event at T0 + 2h
    #   T0        T0+1h        T0+2h
    #   a ------- (late a) --- a        late at T0+1h+1 ms: applied, window (T0+1ms, T0+1h+1ms]
    #   late at T0+1h-1ms: older than newest - 1h -> rejected
    engine = FeatureEngine(SPEC, allowed_lateness_ms=H)
    s = engine.new_state("user")
    engine.apply("user", s, ev(1, T0))
    engine.apply("user", s, ev(2, T0 + 2 * H))
    late = engine.apply("user", s, ev(3, T0 + H + 1))
    assert late.status == APPLIED
    assert late.features["c"] == 1  # only itself: T0 is on its window start (excluded), T0+2h after it
    assert late.features["total"] == 2  # whole history as of its time: T0 and itself
    edge = engine.apply("user", s, ev(4, T0 + H))  # exactly newest - lateness: still allowed
    assert edge.status == APPLIED
    rejected = engine.apply("user", s, ev(5, T0 + H - 1))
    assert rejected.status == LATE_REJECTED
    assert rejected.features == {}
    assert "allowed lateness is 3600000 ms" in (rejected.reason or "")
    assert s.late_rejected == 1
    assert engine.loads("user", engine.dumps(s)).late_rejected == 1
    # the rejected event changed nothing; the next in-order event sees the late ones
    nxt = engine.apply("user", s, ev(6, T0 + 2 * H + 1))
    assert nxt.features["c"] == 2  # window (T0+1h+1, T0+2h+1]: T0+2h and itself (T0+1h+1 on the edge)
    assert nxt.features["total"] == 5


def test_dedup_horizon_forgets_old_ids() -> None:
    engine = FeatureEngine(SPEC, allowed_lateness_ms=0, dedup_horizon_ms=H)
    s = engine.new_state("user")
    engine.apply("user", s, ev(1, T0))
    engine.apply("user", s, ev(2, T0 + H))  # T0 is exactly at the horizon: still remembered
    assert engine.apply("user", s, ev(1, T0)).status == DUPLICATE
    engine.apply("user", s, ev(3, T0 + H + 1))
    assert "e1" not in s.dedup
    # forgotten, but too old to be applied again: rejected, never double counted
    assert engine.apply("user", s, ev(1, T0)).status == LATE_REJECTED


def test_engine_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="dedup horizon"):
        FeatureEngine(SPEC, allowed_lateness_ms=H, dedup_horizon_ms=H - 1)
    with pytest.raises(ConfigError, match="cap"):
        FeatureEngine(SPEC, cap=2)
    engine = FeatureEngine(SPEC)
    with pytest.raises(ConfigError, match="unknown entity 'shop'"):
        engine.new_state("shop")
    with pytest.raises(EventError, match="integer 'ts'"):
        engine.apply("user", engine.new_state("user"), {"event_id": "x", "ts": "soon", "user_id": "u"})
    with pytest.raises(StateError, match="corrupt"):
        engine.loads("user", b"[1, 5, 0, ")


def test_evictable() -> None:
    windowed = spec_of(COUNT_1H, {"name": "d", "entity": "device", "agg": "count", "window": "2h"})
    engine = FeatureEngine(windowed, allowed_lateness_ms=H, dedup_horizon_ms=3 * H)
    s = engine.new_state("user")
    assert engine.evictable(s, T0)
    engine.apply("user", s, ev(1, T0))
    assert not engine.evictable(s, T0 + 3 * H - 1)  # still inside the dedup horizon
    assert engine.evictable(s, T0 + 3 * H)
    # a whole-history feature keeps its key forever
    engine2 = FeatureEngine(SPEC)
    s2 = engine2.new_state("user")
    engine2.apply("user", s2, ev(1, T0))
    assert not engine2.evictable(s2, T0 + 10**12)


def test_changed_parameters_start_that_feature_empty() -> None:
    engine = FeatureEngine(SPEC)
    s = engine.new_state("user")
    for i in range(3):
        engine.apply("user", s, ev(i, T0 + i, phone="p"))
    blob = engine.dumps(s)
    edited = spec_of(
        COUNT_1H | {"window": "2h"},  # edited: its old state must not be misread
        {"name": "total", "entity": "user", "agg": "count"},
        {"name": "phones", "entity": "user", "agg": "distinct", "field": "phone", "window": "1h"},
        {"name": "amount", "entity": "user", "agg": "sum", "field": "amount", "window": "1h"},
    )
    engine2 = FeatureEngine(edited)
    s2 = engine2.loads("user", blob)
    out = engine2.apply("user", s2, ev(9, T0 + 10, phone="p"))
    assert out.features == {"c": 1, "total": 4, "phones": 1, "amount": 0}


# ------------------------------------------------------------------ the cap


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(100, 400),
    st.sampled_from([50, 400, 3000]),
    st.sampled_from([8, 16, 32]),
)
def test_capped_count_and_distinct_stay_within_their_bounds(seed: int, n: int, dt_max: int, cap: int) -> None:
    # Window W = 60 s, lateness L = 10 s, many events per window (far above the cap).
    # count: exact(t-W, t] <= value <= exact(t-W-g, t] with g = ceil((W+L)/(cap//2))
    #
    #   ---(--g--(------------- W -------------]---> time
    #    t-W-g  t-W                            t
    # distinct: value == min(exact, cap)
    spec = spec_of(
        {"name": "c", "entity": "user", "agg": "count", "window": "60s"},
        {"name": "d", "entity": "user", "agg": "distinct", "field": "v", "window": "60s"},
        {"name": "s", "entity": "user", "agg": "sum", "field": "n", "window": "60s"},
    )
    lateness = 10_000
    engine = FeatureEngine(spec, cap=cap, allowed_lateness_ms=lateness)
    oracle = Oracle(spec, lateness_ms=lateness)
    rnd = random.Random(seed)
    s = engine.new_state("user")
    t = T0
    times: list[int] = []
    degraded = 0
    for i in range(n):
        t += rnd.randrange(dt_max)
        e = {"event_id": f"e{i}", "ts": t, "user_id": "u", "v": rnd.randrange(60), "n": 1}
        got = engine.apply("user", s, e).features
        _, want = oracle.apply("user", "u", e)
        times.append(t)
        g = s.feats[0].g
        degraded += g > 0
        assert g <= -(-(60_000 + lateness) // (cap // 2))  # bucket width as documented
        wider = sum(1 for x in times if t - 60_000 - g < x <= t)
        assert want["c"] <= got["c"] <= wider
        assert got["s"] == got["c"]
        assert got["d"] == min(want["d"], cap)
        assert len(s.feats[0].ts) - s.feats[0].h <= cap
    if dt_max * cap < 60_000:
        assert degraded  # the stream really went above the cap


def test_hot_key_memory_is_bounded() -> None:
    spec = spec_of(
        {"name": "c", "entity": "user", "agg": "count", "window": "1h"},
        {"name": "d", "entity": "user", "agg": "distinct", "field": "v", "window": "1h"},
        {"name": "g", "entity": "user", "agg": "geo_spread", "window": "1h"},
        {"name": "sp", "entity": "user", "agg": "max_speed", "window": "1h"},
        {"name": "l", "entity": "user", "agg": "last", "field": "v"},
        {"name": "seq", "entity": "user", "agg": "sequence", "steps": ["a", "b"], "within": "1h"},
        {"name": "mx", "entity": "user", "agg": "max", "field": "v", "window": "1h"},
    )
    cap = 64
    engine = FeatureEngine(spec, cap=cap, allowed_lateness_ms=H)
    s = engine.new_state("user")
    rnd = random.Random(3)
    sizes = []
    for i in range(20_000):  # one key, an event every 10 ms: ~360,000 per window
        e = {
            "event_id": f"e{i}",
            "type": rnd.choice("ab"),
            "ts": T0 + 10 * i,
            "user_id": "u",
            "v": rnd.randrange(10**6),
            "geo": {"lat": rnd.uniform(-60, 60), "lon": rnd.uniform(-170, 170)},
        }
        out = engine.apply("user", s, e).features
        if i % 4000 == 3999:
            sizes.append(len(engine.dumps(s)))
    assert out["d"] == cap  # min(exact, cap)
    assert out["c"] == 20_000  # every event is inside the window: buckets do not lose any
    # the snapshot stops growing: bounded by the caps, not by the number of events
    assert max(sizes) < 40_000
    assert sizes[-1] <= sizes[1] * 1.2


def test_geo_spread_above_cap_is_a_lower_bound_over_the_latest_points() -> None:
    spec = spec_of({"name": "g", "entity": "user", "agg": "geo_spread", "window": "1h"})
    engine = FeatureEngine(spec, cap=8)
    s = engine.new_state("user")
    far = {"lat": -33.9, "lon": 151.2}
    near = {"lat": 39.9, "lon": 116.4}
    engine.apply("user", s, ev(0, T0, geo=far))
    for i in range(1, 8):
        v = engine.apply("user", s, ev(i, T0 + i, geo=near)).features["g"]
    assert v > 8000  # far point still among the 8 latest
    v = engine.apply("user", s, ev(8, T0 + 8, geo=near)).features["g"]
    assert v == 0.0  # far point dropped: the spread of the 8 latest points (all `near`)


@settings(max_examples=80, deadline=None)
@given(streams())
def test_degraded_state_with_late_events_and_restores_stays_consistent(case: dict[str, Any]) -> None:
    # regression: a count degrading in the middle of apply read its old time list against
    # the rebuilt value list (IndexError). With a tiny cap, late events, redeliveries and
    # restores, every feature must keep working and stay within its cap.
    spec = make_spec(case["w_s"])
    engine = FeatureEngine(spec, cap=8, allowed_lateness_ms=case["lateness"], dedup_horizon_ms=10**9)
    states: dict[tuple[str, str], Any] = {}
    for i, e in enumerate(case["events"] * 3):
        e = dict(e, event_id=f"{e['event_id']}-{i // len(case['events'])}", ts=e["ts"] + 50 * i)
        for ent, key in spec.entity_keys(e):
            s = states.setdefault((ent, key), engine.new_state(ent))
            out = engine.apply(ent, s, e)
            assert out.status in (APPLIED, DUPLICATE, LATE_REJECTED)
        if i in case["restore"]:
            states = {k: engine.loads(k[0], engine.dumps(s)) for k, s in states.items()}
    for s in states.values():
        for fs in s.feats:
            if hasattr(fs, "ts"):
                assert len(fs.ts) - fs.h <= 8 + 2


# ------------------------------------------------------------------ the remembered ids

COUNT_ALL = spec_of({"name": "n", "entity": "user", "agg": "count"})


def test_redelivery_above_the_cap_is_not_applied_twice() -> None:
    # regression: the remembered ids were trimmed to `cap` without a trace, so with more
    # than `cap` events inside the dedup horizon a redelivered old event was applied again
    engine = FeatureEngine(COUNT_ALL, cap=16, allowed_lateness_ms=H, dedup_horizon_ms=24 * H)
    s = engine.new_state("user")
    for i in range(20):
        assert engine.apply("user", s, ev(i, T0 + i)).status == APPLIED
    again = engine.apply("user", s, ev(0, T0))
    assert again.status == LATE_REJECTED
    assert "may be a redelivery" in (again.reason or "")
    assert s.late_rejected == s.dedup_rejected == 1
    # a remembered id still answers with its first values, the count stays exact
    assert engine.apply("user", s, ev(19, T0 + 19)).features == {"n": 20}
    assert engine.apply("user", s, ev(20, T0 + 20)).features == {"n": 21}
    # the mark survives a snapshot/restore
    restored = engine.loads("user", engine.dumps(s))
    assert restored.dedup_mark == s.dedup_mark
    assert restored.dedup_rejected == 1
    assert engine.apply("user", restored, ev(1, T0 + 1)).status == LATE_REJECTED
    assert engine.apply("user", restored, ev(21, T0 + 21)).features == {"n": 22}


def test_new_events_at_the_newest_millisecond_are_applied_up_to_the_cap() -> None:
    #   T0 ... T0+9 (one event each)   T0+10: 12 events (more than keep = 6, at most cap)
    # forgetting for space never reaches T0+10 while it holds at most `cap` ids: every new
    # event there is applied; past `cap` at one millisecond, new ones there are rejected
    engine = FeatureEngine(COUNT_ALL, cap=8, allowed_lateness_ms=H, dedup_horizon_ms=24 * H)
    s = engine.new_state("user")
    for i in range(10):
        engine.apply("user", s, ev(i, T0 + i))
    for i in range(10, 18):
        assert engine.apply("user", s, ev(i, T0 + 10)).status == APPLIED
        assert s.dedup_mark < T0 + 10
        assert len(s.dedup) <= 8
    assert engine.apply("user", s, ev(18, T0 + 10)).status == APPLIED  # the 9th: over the cap
    assert s.dedup_mark == T0 + 10
    assert len(s.dedup) <= 8
    assert engine.apply("user", s, ev(19, T0 + 10)).status == LATE_REJECTED
    assert engine.apply("user", s, ev(20, T0 + 11)).features == {"n": 20}  # exact: 0..18 and 20


def test_old_format_snapshots_load_with_a_conservative_mark() -> None:
    engine = FeatureEngine(COUNT_ALL, cap=8, allowed_lateness_ms=5, dedup_horizon_ms=24 * H)
    s = engine.new_state("user")
    for i in range(6):
        engine.apply("user", s, ev(i, T0 + 10 * i))
    blob = engine.dumps(s)
    assert blob.startswith(b"[2,")
    old = b"[1," + blob[3:]  # format 1 is the same without the mark
    assert engine.dumps(engine.loads("user", old)) == blob  # fewer than cap ids: no mark
    # a format-1 snapshot with `cap` ids may have forgotten some before its oldest id
    for i in range(6, 8):
        engine.apply("user", s, ev(i, T0 + 10 * i))
    full = engine.loads("user", b"[1," + engine.dumps(s)[3:])
    assert full.dedup_mark == T0 + 5  # oldest remembered (T0) + lateness
    # a snapshot made with a larger cap is trimmed on load, keeping a mark
    big = FeatureEngine(COUNT_ALL, cap=32, allowed_lateness_ms=5, dedup_horizon_ms=24 * H)
    b = big.new_state("user")
    for i in range(20):
        big.apply("user", b, ev(i, T0 + i))
    small = engine.loads("user", big.dumps(b))
    assert len(small.dedup) <= 8
    assert small.dedup_mark < T0 + 19
    assert engine.apply("user", small, ev(0, T0 + 0)).status == LATE_REJECTED
    assert engine.apply("user", small, ev(19, T0 + 19)).features == {"n": 20}
    with pytest.raises(StateError, match="unknown format"):
        engine.loads("user", b"[3," + blob[3:])


@st.composite
def redelivery_streams(draw: st.DrawFn) -> dict[str, Any]:
    lateness = draw(st.sampled_from([0, 3, 20]))
    n = draw(st.integers(1, 90))
    events: list[dict[str, Any]] = []
    tmax = T0
    restore: set[int] = set()
    for i in range(n):
        kind = draw(st.sampled_from(["next", "same", "same", "late", "dup", "dup"]))
        if kind == "dup" and events:
            events.append(dict(draw(st.sampled_from(events))))
        else:
            if kind == "late":
                ts = tmax - draw(st.integers(0, lateness + 2))
            elif kind == "same":
                ts = tmax
            else:
                ts = tmax + draw(st.sampled_from([0, 1, 2, 7]))
            tmax = max(tmax, ts)
            user = draw(st.sampled_from(["u1", "u1", "u1", "u2"]))
            events.append({"event_id": f"e{i}", "type": "a", "ts": ts, "user_id": user})
        if draw(st.integers(0, 9)) == 0:
            restore.add(i)
    return {"lateness": lateness, "events": events, "restore": restore}


@settings(max_examples=150, deadline=None)
@given(redelivery_streams(), st.sampled_from([8, 9, 12]))
def test_no_event_id_is_ever_applied_twice_with_a_tiny_cap(case: dict[str, Any], cap: int) -> None:
    # every id is applied at most once per key (the count feature agrees with the applied
    # ids), at most `cap` ids are remembered, and a new event at or after the key's newest
    # time is applied unless more than `cap` new events of the key share that millisecond
    lateness = case["lateness"]
    engine = FeatureEngine(COUNT_ALL, cap=cap, allowed_lateness_ms=lateness, dedup_horizon_ms=10**9)
    states: dict[str, Any] = {}
    applied: dict[str, list[str]] = {}
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    at_newest: dict[str, int] = {}  # distinct ids applied at the key's newest millisecond
    for i, e in enumerate(case["events"]):
        key = e["user_id"]
        s = states.setdefault(key, engine.new_state("user"))
        seen = e["event_id"] in applied.setdefault(key, [])
        tmax = s.tmax
        out = engine.apply("user", s, e)
        if out.status == APPLIED:
            assert not seen, (i, e)
            applied[key].append(e["event_id"])
            firsts[(key, e["event_id"])] = out.features
            if e["ts"] > tmax:
                at_newest[key] = 1
            elif e["ts"] == tmax:
                at_newest[key] += 1
            if e["ts"] >= tmax:
                assert out.features["n"] == len(applied[key])  # in order: the exact count
        elif out.status == DUPLICATE:
            assert seen
            assert out.features == firsts[(key, e["event_id"])]
        else:
            assert out.status == LATE_REJECTED
            if not seen and e["ts"] >= tmax:
                # in order and new: rejected only past `cap` ids at the newest millisecond
                assert e["ts"] == tmax, (i, e, out.reason)
                assert at_newest[key] > cap, (i, e, out.reason)
        assert len(s.dedup) <= cap
        assert len(s.dedup_ids) - s.dedup_head == len(s.dedup)
        assert s.dedup_mark <= s.tmax
        if i in case["restore"]:
            states = {k: engine.loads("user", engine.dumps(v)) for k, v in states.items()}
    for key, s in states.items():
        last = engine.apply("user", s, {"event_id": "last", "ts": s.tmax + 1, "user_id": key})
        assert last.features["n"] == len(applied[key]) + 1


def test_distinct_counts_true_apart_from_one_also_after_a_snapshot() -> None:
    """Issue 14, finding 9: booleans are not numbers, in features as in rules and `where`."""
    spec = spec_of({"name": "flags", "entity": "user", "agg": "distinct", "field": "attrs.flag"})
    engine = FeatureEngine(spec)
    s = engine.new_state("user")
    values = [True, 1, 1.0, False, 0, "true"]
    got = [
        engine.apply("user", s, ev(i, T0 + i, attrs={"flag": v})).features["flags"]
        for i, v in enumerate(values)
    ]
    assert got == [1, 2, 2, 3, 4, 5]
    restored = engine.loads("user", engine.dumps(s))
    assert engine.apply("user", restored, ev(10, T0 + 10, attrs={"flag": True})).features["flags"] == 5
    assert engine.apply("user", restored, ev(11, T0 + 11, attrs={"flag": 2})).features["flags"] == 6


def test_values_a_feature_cannot_use_are_skipped_and_counted() -> None:
    """Issue 14, finding 9: `"amount": "50000"` used to vanish from a sum with no trace."""
    spec = spec_of(
        {"name": "amount", "entity": "user", "agg": "sum", "field": "amount", "where": {"type": "order"}},
        {"name": "biggest", "entity": "user", "agg": "max", "field": "amount"},
        {"name": "cities", "entity": "user", "agg": "distinct", "field": "city"},
        {"name": "orders", "entity": "user", "agg": "count", "where": {"type": "order"}},
    )
    engine = FeatureEngine(spec)
    s = engine.new_state("user")
    events = [
        ev(1, T0, "order", amount=10, city="a"),
        ev(2, T0 + 1, "order", amount="50000", city={"x": 1}),  # text amount, object city
        ev(3, T0 + 2, "order", amount=True),  # a boolean is not a number
        ev(4, T0 + 3, "view", amount="7"),  # not an order: the sum does not look, the max does
        ev(5, T0 + 4, "order"),  # missing is not skipped: there is nothing to skip
    ]
    last = None
    for e in events:
        last = engine.apply("user", s, e).features
    assert last == {"amount": 10, "biggest": 10, "cities": 1, "orders": 4}
    assert engine.skipped_values() == {"amount": 2, "biggest": 3, "cities": 1}
    engine.apply("user", s, events[1])  # a redelivery is not applied, so not counted again
    assert engine.skipped_values()["amount"] == 2
