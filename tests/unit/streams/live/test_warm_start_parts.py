"""The pure parts of a feature warm start (streams.live.warmup): splicing rebuilt features
into a live state, leaving features out of an event's application, rules in shadow mode
while their features warm, markers, what counts as a changed feature."""

from __future__ import annotations

from typing import Any

import orjson

import features
import rules
from streams.core.featurestore import changed_features, spec_version
from streams.core.order import SourceEvent
from streams.core.processor import Processor
from streams.live.warmup import Marker, read_marker

BASE = {
    "entities": {"user": "user_id"},
    "features": [
        {"name": "phones_30d", "entity": "user", "agg": "distinct", "field": "phone", "window": "30d"},
        {
            "name": "changes_30d",
            "entity": "user",
            "agg": "count",
            "where": {"type": "phone_change"},
            "window": "30d",
        },
    ],
}
NEW = [
    {"name": "logins_7d", "entity": "user", "agg": "count", "where": {"type": "login"}, "window": "7d"},
    {"name": "cities_7d", "entity": "user", "agg": "distinct", "field": "city", "window": "7d"},
]
HOUR = 3_600_000


def spec_with(*extra: dict[str, Any]) -> features.FeatureSpec:
    return features.FeatureSpec.from_dict({**BASE, "features": [*BASE["features"], *extra]})


def events(n: int) -> list[dict[str, Any]]:
    kinds = ["login", "phone_change", "login", "order"]
    return [
        {
            "event_id": f"e{i}",
            "type": kinds[i % 4],
            "ts": 1_000_000_000_000 + i * HOUR,
            "user_id": "u1",
            "phone": f"p{i % 3}",
            "city": f"c{i % 5}",
        }
        for i in range(n)
    ]


def feature_states(engine: features.FeatureEngine, state: features.EntityState) -> tuple[Any, ...]:
    """A snapshot's newest time, remembered ids and feature states (not the remembered values)."""
    raw = orjson.loads(engine.dumps(state))
    return raw[1], raw[4][0::3], raw[5]


def test_a_cold_feature_spliced_from_its_rebuild_equals_the_feature_kept_from_the_start() -> None:
    full = spec_with(*NEW)
    engine = features.FeatureEngine(full)
    sub = features.FeatureSpec(entities=dict(full.entities), features=full.features[2:], events=None)
    warm_engine = features.FeatureEngine(sub)
    evs = events(40)

    reference = engine.new_state("user")
    for e in evs:
        engine.apply("user", reference, e)

    # the live key: the old spec's features saw every event; the new ones started empty at
    # the switch (event 25) and got the events from there on
    old_engine = features.FeatureEngine(spec_with())
    before = old_engine.new_state("user")
    for e in evs[:25]:
        old_engine.apply("user", before, e)
    live = engine.loads("user", old_engine.dumps(before))
    for e in evs[25:]:
        engine.apply("user", live, e)
    assert engine.dumps(live) != engine.dumps(reference)

    rebuilt = warm_engine.new_state("user")
    for e in evs:
        warm_engine.apply("user", rebuilt, e)
    assert engine.adopt(live, rebuilt, warm_engine) == 2
    assert feature_states(engine, live) == feature_states(engine, reference)
    # a redelivered event gets the values of its first application, the warm ones included
    # (the values remembered for events before the switch are null: the layout changed)
    again = engine.apply("user", live, evs[30])
    first = engine.apply("user", engine.loads("user", engine.dumps(reference)), evs[30])
    assert again.status == first.status == "duplicate"
    assert again.features == first.features
    # and the next event gives what the reference gives
    nxt = {**evs[0], "event_id": "next", "ts": evs[-1]["ts"] + HOUR}
    assert engine.apply("user", live, nxt).features == engine.apply("user", reference, dict(nxt)).features


def test_apply_except_leaves_the_kept_features_as_they_were() -> None:
    full = spec_with(*NEW)
    engine = features.FeatureEngine(full)
    keep = frozenset(f.state_key for f in full.features[2:])
    state = engine.new_state("user")
    evs = events(8)
    for e in evs[:6]:
        engine.apply("user", state, e)
    logins_before = engine.apply("user", engine.loads("user", engine.dumps(state)), evs[6]).features
    result = engine.apply_except("user", state, evs[6], keep)
    assert result.status == "applied"
    assert result.features["changes_30d"] == logins_before["changes_30d"]
    # logins_7d and cities_7d did not take event 6: the next event sees them one short
    probe = engine.apply("user", state, {**evs[7], "type": "order"})
    reference = engine.new_state("user")
    for e in evs[:6]:
        engine.apply("user", reference, e)
    engine.apply("user", reference, evs[6])
    ref = engine.apply("user", reference, {**evs[7], "type": "order"})
    assert probe.features["changes_30d"] == ref.features["changes_30d"]
    assert probe.features["logins_7d"] == ref.features["logins_7d"] - 1  # event 6 is a login


RULES = """
version: "r1"
decisions: {reject: 80, review: 50}
rules:
  - id: uses_new
    entity: user
    when: logins_7d >= 1
    score: 90
    label: busy
    action: blacklist
    ttl: 1d
  - id: uses_old
    entity: user
    when: changes_30d >= 0
    score: 10
    label: any
"""


def test_rules_reading_a_warming_feature_run_in_shadow_until_it_is_warm() -> None:
    spec = spec_with(*NEW)
    ruleset = rules.load_ruleset(RULES, spec.schema())
    assert ruleset.reading("user", ["logins_7d"]) == ("uses_new",)
    processor = Processor(spec, features.FeatureEngine(spec), ruleset, run_id="live")
    processor.set_cold("user", ["logins_7d", "cities_7d"])
    src = [SourceEvent(e, "raw", 0, i) for i, e in enumerate(events(3))]
    result = processor.process("user", "u1", None, src)
    modes = {(h["rule_id"], h["mode"]) for h in result.hits}
    assert ("uses_new", "shadow") in modes and ("uses_old", "active") in modes
    assert not result.blacklist  # a shadow hit blacklists nobody
    # a rule set published meanwhile is shadowed the same way
    processor.set_ruleset(rules.load_ruleset(RULES.replace('"r1"', '"r2"'), spec.schema()))
    assert {r.id: r.mode for r in processor.ruleset.rules}["uses_new"] == "shadow"
    processor.set_cold("user", ())
    result = processor.process(
        "user", "u2", None, [SourceEvent({**events(1)[0], "user_id": "u2"}, "raw", 0, 9)]
    )
    assert {h["mode"] for h in result.hits} == {"active"}
    assert result.blacklist


def test_events_before_the_cut_leave_the_warming_features_to_the_rebuild() -> None:
    spec = spec_with(*NEW)
    processor = Processor(
        spec, features.FeatureEngine(spec), rules.load_ruleset(RULES, spec.schema()), run_id="live"
    )
    keep = frozenset(f.state_key for f in spec.features[2:])
    processor.keep["user"] = (keep, {("raw", 0): 5})
    evs = events(8)
    late = processor.process("user", "u1", None, [SourceEvent(evs[0], "raw", 0, 4)])  # offset 4 < cut
    assert late.applied == 1
    probe = processor.engine.apply("user", late.state, {**evs[1], "type": "order"})
    assert probe.features["logins_7d"] == 0  # the rebuild holds event 0
    after = processor.process("user", "u1", late.state, [SourceEvent(evs[2], "raw", 0, 5)])  # at the cut
    probe = processor.engine.apply("user", after.state, {**evs[3], "type": "order"})
    assert probe.features["logins_7d"] == 1


def test_changed_features_are_the_new_ones_and_those_whose_parameters_changed() -> None:
    old = spec_with()
    widened = {**BASE["features"][1], "window": "60d"}
    new = features.FeatureSpec.from_dict({**BASE, "features": [BASE["features"][0], widened, *NEW]})
    assert changed_features(old, new) == {"user": ("changes_30d", "logins_7d", "cities_7d")}
    assert changed_features(new, new) == {}


def test_a_spec_version_is_its_version_key_or_a_digest_of_its_text() -> None:
    assert spec_version(features.FeatureSpec.from_dict({**BASE, "version": "2026-12"}), "x") == "2026-12"
    digest = spec_version(spec_with(), "entities: ...")
    assert digest.startswith("sha-") and len(digest) == 16
    assert digest == spec_version(spec_with(), "entities: ...")


def test_markers_round_trip_and_an_unreadable_one_is_none() -> None:
    marker = Marker(warm=frozenset({"a", "b"}), keep=frozenset({"b"}), cut={("raw", 1): 42})
    assert read_marker(marker.to_bytes()) == marker
    assert read_marker(b"not json") is None
    assert read_marker(None) is None
