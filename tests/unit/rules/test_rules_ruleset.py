"""Rule sets: validation (with line:col), decisions, groups, rollout, blacklist, diff."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import features
import rules
from rules import RuleSetError, StaticLists, load_ruleset

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = {
    "user": {
        "phone_changes_30d": "int",
        "property_views_total": "int",
        "order_amount_1h": "number",
        "login_cities_7d": "int",
        "ms_since_phone_change": "int",
    },
    "device": {"device_users_7d": "int"},
}

HEADER = 'version: "v1"\ndecisions: {reject: 80, review: 50}\nrules:\n'


def rule(rid: str, when: str, **extra: Any) -> str:
    lines = [f"  - id: {rid}", "    entity: " + str(extra.pop("entity", "user")), f"    when: {when}"]
    extra.setdefault("score", 10)
    for k, v in extra.items():
        lines.append(f"    {k}: {v}")
    return "\n".join(lines) + "\n"


def load(*rule_texts: str, header: str = HEADER) -> rules.RuleSet:
    return load_ruleset(header + "".join(rule_texts), SCHEMA, source="t.yaml")


def problems(text: str) -> list[rules.Problem]:
    with pytest.raises(RuleSetError) as info:
        load_ruleset(text, SCHEMA, source="t.yaml")
    return info.value.problems


def event(etype: str = "login", ts: int = 1_000_000, eid: str = "e1") -> dict[str, Any]:
    return {"event_id": eid, "type": etype, "ts": ts, "user_id": "u1"}


# --- the example -------------------------------------------------------------------


def test_example_rule_set_is_valid_against_the_example_spec() -> None:
    spec = features.load_spec(str(ROOT / "examples/features.yaml"))
    rs = load_ruleset((ROOT / "examples/rules.yaml").read_text(), spec.schema(), source="examples/rules.yaml")
    assert len(rs.rules) >= 8
    assert {r.entity for r in rs.rules} >= {"user", "device"}
    assert any(r.mode == "shadow" for r in rs.rules)
    groups = [r for r in rs.rules if r.group == "resale"]
    assert len({r.priority for r in groups}) == 2
    # A FeatureSpec is accepted in place of its schema.
    assert load_ruleset((ROOT / "examples/rules.yaml").read_text(), spec) == rs


# --- validation ---------------------------------------------------------------------


def test_unknown_feature_points_at_the_token_with_did_you_mean() -> None:
    text = HEADER + rule("r1", "property_views_total < 1 and phone_change_30d > 3")
    (p,) = problems(text)
    line = text.split("\n").index("    when: property_views_total < 1 and phone_change_30d > 3") + 1
    assert (p.rule_id, p.line) == ("r1", line)
    assert p.col == len("    when: property_views_total < 1 and ") + 1
    assert "unknown feature 'phone_change_30d'" in p.message
    assert p.suggestion == "did you mean 'phone_changes_30d'?"
    assert p.format("t.yaml").startswith(f"t.yaml:{line}:{p.col}: rule r1: unknown feature")


def test_positions_inside_quoted_and_block_scalars() -> None:
    text = (
        HEADER
        + rule("q", "\"event.type == 'login' and zz > 1\"")
        + "  - id: b\n    entity: user\n    score: 1\n"
        + "    when: |\n      phone_changes_30d > 1 and\n        yy > 2\n"
    )
    ps = {p.rule_id: p for p in problems(text)}
    lines = text.split("\n")
    q_line = next(i for i, s in enumerate(lines, 1) if "zz > 1" in s)
    assert (ps["q"].line, ps["q"].col) == (q_line, lines[q_line - 1].index("zz") + 1)
    b_line = next(i for i, s in enumerate(lines, 1) if "yy > 2" in s)
    assert (ps["b"].line, ps["b"].col) == (b_line, lines[b_line - 1].index("yy") + 1)


def test_every_problem_is_reported_at_once() -> None:
    text = (
        'version: "v1"\ndecisions: {reject: 50, review: 80}\nrules:\n'
        + rule("dup", "phone_changes_30d > 1")
        + rule("dup", "phone_changes_30d > 2")
        + rule("bad_mode", "phone_changes_30d > 1", mode="shdow")
        + rule("bad_action", "phone_changes_30d > 1", action="blacklst")
        + rule("no_ttl", "phone_changes_30d > 1", action="blacklist")
        + rule("bad_ttl", "phone_changes_30d > 1", action="blacklist", ttl="30x")
        + rule("bad_rollout", "phone_changes_30d > 1", rollout=101)
        + rule("bad_priority", "phone_changes_30d > 1", priority="high")
        + rule("bad_entity", "phone_changes_30d > 1", entity="usr")
        + rule("typo_key", "phone_changes_30d > 1", scroe=5)
        + rule("empty_events", "phone_changes_30d > 1", events="[]")
        + rule("other_entity", "device_users_7d > 1")
    )
    ps = problems(text)
    by_rule: dict[str | None, list[str]] = {}
    for p in ps:
        by_rule.setdefault(p.rule_id, []).append(p.message + " | " + p.suggestion)
    assert any("thresholds out of order" in m for m in by_rule[None])
    assert any("duplicate rule id 'dup'" in m for m in by_rule["dup"])
    assert any("unknown mode 'shdow'" in m and "did you mean 'shadow'" in m for m in by_rule["bad_mode"])
    assert any("did you mean 'blacklist'" in m for m in by_rule["bad_action"])
    assert any("needs a ttl" in m for m in by_rule["no_ttl"])
    assert any("bad ttl" in m for m in by_rule["bad_ttl"])
    assert any("rollout" in m for m in by_rule["bad_rollout"])
    assert any("priority" in m for m in by_rule["bad_priority"])
    assert any("unknown entity 'usr'" in m and "did you mean 'user'" in m for m in by_rule["bad_entity"])
    assert any("unknown key 'scroe'" in m and "did you mean 'score'" in m for m in by_rule["typo_key"])
    assert any("events must be a non-empty list" in m for m in by_rule["empty_events"])
    assert any("feature of entity 'device'" in m for m in by_rule["other_entity"])
    # sorted by position, each with a real line number
    assert [(p.line, p.col) for p in ps] == sorted((p.line, p.col) for p in ps)
    assert all(p.line > 1 for p in ps)


def test_invalid_yaml_names_line_and_column() -> None:
    (p,) = problems(HEADER + "  - id: x\n    when: [unclosed\n")
    assert p.rule_id is None and p.message.startswith("invalid YAML")
    assert p.line >= 5


def test_duplicate_yaml_key_is_a_problem() -> None:
    ps = problems(HEADER + rule("x", "phone_changes_30d > 1") + "    score: 20\n")
    assert any(p.rule_id == "x" and "duplicate key 'score'" in p.message for p in ps)


def test_unquoted_date_version_is_rejected_with_a_hint() -> None:
    (p,) = problems("version: 2026-11-23\nrules: []\n")
    assert "version" in p.message and "quote" in p.suggestion
    assert (p.line, p.col) == (1, 10)


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(RuleSetError) as info:
        load(rule("a", "zz > 1"), rule("b", "yy > 1"))
    assert "2 problems" in info.value.message
    assert "rule a" in info.value.message and "rule b" in info.value.message
    assert isinstance(info.value, features.BypassError)
    assert info.value.fields["rule_id"] == "a"


def test_rule_set_is_an_immutable_value() -> None:
    rs = load(rule("a", "phone_changes_30d > 1"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rs.version = "v2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rs.rules[0].score = 5  # type: ignore[misc]
    assert rs == load(rule("a", "phone_changes_30d > 1"))


# --- decisions ----------------------------------------------------------------------


def test_thresholds_are_inclusive() -> None:
    rs = load(rule("a", "phone_changes_30d >= 1", score=50), rule("b", "phone_changes_30d >= 2", score=30))
    assert rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 0}).decision == "pass"
    assert rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1}).decision == "review"
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 2})
    assert (out.score, out.decision) == (80, "reject")


def test_hits_report_rule_fields_and_the_features_read() -> None:
    rs = load(
        rule("a", "phone_changes_30d > 1 and property_views_total < 1", label="resale", action="review")
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 3, "property_views_total": 0, "x": 1})
    (h,) = out.hits
    assert (h.rule_id, h.label, h.score, h.mode, h.action) == ("a", "resale", 10, "active", "review")
    assert (h.counted, h.suppressed, h.rollout_excluded, h.error) == (True, False, False, None)
    assert h.features == {"phone_changes_30d": 3, "property_views_total": 0}
    assert out.as_dict()["hits"][0] == {
        "rule_id": "a",
        "label": "resale",
        "score": 10,
        "mode": "active",
        "action": "review",
        "counted": True,
        "suppressed": False,
        "rollout_excluded": False,
        "error": None,
    }


def test_events_filter_and_entity_selection() -> None:
    rs = load(
        rule("on_order", "phone_changes_30d > 0", events="[order]"),
        rule("always", "phone_changes_30d > 0"),
        rule("dev", "device_users_7d > 0", entity="device"),
    )
    f = {"phone_changes_30d": 1, "device_users_7d": 1}
    assert [h.rule_id for h in rs.evaluate(event("order"), "user", "u1", f).hits] == ["on_order", "always"]
    assert [h.rule_id for h in rs.evaluate(event("login"), "user", "u1", f).hits] == ["always"]
    assert [h.rule_id for h in rs.evaluate(event("other"), "device", "d1", f).hits] == ["dev"]
    assert rs.evaluate(event("login"), "ip", "1.2.3.4", f).hits == ()
    assert [r.id for r in rs.rules_for("user", "order")] == ["on_order", "always"]


def test_shadow_hits_are_reported_but_never_count() -> None:
    rs = load(rule("s", "phone_changes_30d > 0", score=90, mode="shadow", action="blacklist", ttl="1d"))
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1})
    (h,) = out.hits
    assert (h.mode, h.counted, h.suppressed) == ("shadow", False, False)
    assert (out.score, out.decision, out.blacklist) == (0, "pass", ())


def test_group_highest_priority_counts_others_suppressed() -> None:
    rs = load(
        rule("low", "phone_changes_30d > 0", score=30, group="g", priority=1),
        rule("high", "phone_changes_30d > 0", score=60, group="g", priority=5),
        rule("solo", "phone_changes_30d > 0", score=5),
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1})
    got = {h.rule_id: (h.counted, h.suppressed) for h in out.hits}
    assert got == {"low": (False, True), "high": (True, False), "solo": (True, False)}
    assert out.score == 65


def test_group_priority_tie_goes_to_the_smaller_rule_id() -> None:
    rs = load(
        rule("zeta", "phone_changes_30d > 0", score=30, group="g", priority=3),
        rule("alpha", "phone_changes_30d > 0", score=60, group="g", priority=3),
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1})
    assert {h.rule_id: h.counted for h in out.hits} == {"zeta": False, "alpha": True}


def test_shadow_or_failing_rules_do_not_win_a_group() -> None:
    rs = load(
        rule("a_shadow", "phone_changes_30d > 0", score=30, group="g", priority=9, mode="shadow"),
        rule("b_fails", "phone_changes_30d / property_views_total > 0", score=30, group="g", priority=8),
        rule("c_counts", "phone_changes_30d > 0", score=20, group="g", priority=1),
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1, "property_views_total": 0})
    got = {h.rule_id: (h.counted, h.suppressed, h.error is not None) for h in out.hits}
    assert got == {
        "a_shadow": (False, False, False),
        "b_fails": (False, False, True),
        "c_counts": (True, False, False),
    }
    assert out.score == 20


def _bucket(rule_id: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{rule_id}:{key}".encode()).digest()[:8], "big") % 100


def test_rollout_follows_the_documented_hash() -> None:
    rs = load(rule("half", "phone_changes_30d > 0", rollout=50))
    inside = outside = 0
    for i in range(200):
        key = f"user-{i}"
        (h,) = rs.evaluate(event(), "user", key, {"phone_changes_30d": 1}).hits
        expected_in = _bucket("half", key) < 50
        assert h.rollout_excluded is (not expected_in)
        assert h.counted is expected_in
        assert h.mode == ("active" if expected_in else "shadow")
        inside += expected_in
        outside += not expected_in
    assert inside > 50 and outside > 50  # both sides exercised


def test_rollout_zero_and_hundred() -> None:
    rs = load(
        rule("none", "phone_changes_30d > 0", rollout=0), rule("all", "phone_changes_30d > 0", rollout=100)
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1})
    got = {h.rule_id: (h.mode, h.rollout_excluded, h.counted) for h in out.hits}
    assert got == {"none": ("shadow", True, False), "all": ("active", False, True)}


def test_a_failing_rule_never_stops_the_others() -> None:
    rs = load(
        rule("div", "phone_changes_30d / property_views_total > 1", score=50),
        rule("ok", "phone_changes_30d > 0", score=20),
    )
    out = rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 3, "property_views_total": 0})
    div, ok = out.hits
    assert div.error is not None and "ZeroDivisionError" in div.error
    assert (div.counted, ok.counted, out.score) == (False, True, 20)


def test_blacklist_entries_expire_at_event_time_plus_ttl() -> None:
    rs = load(
        rule("a", "phone_changes_30d > 0", label="resale", action="blacklist", ttl="30d"),
        rule("b", "phone_changes_30d > 1", label="resale", action="blacklist", ttl="7d"),
        rule("c", "phone_changes_30d > 0", label="other", action="blacklist", ttl="2h"),
        rule("d", "phone_changes_30d > 0", label="reviewed", action="review"),
    )
    ts = 1_763_856_000_000
    out = rs.evaluate(event(ts=ts), "user", "u9", {"phone_changes_30d": 2})
    entries = {e.label: e for e in out.blacklist}
    assert set(entries) == {"resale", "other"}
    assert entries["resale"].rule_ids == ("a", "b")
    assert entries["resale"].expires_at == ts + 30 * 86_400_000
    assert entries["other"].expires_at == ts + 2 * 3_600_000
    assert (entries["other"].entity, entries["other"].key) == ("user", "u9")


def test_suppressed_or_excluded_blacklist_rules_make_no_entry() -> None:
    rs = load(
        rule("win", "phone_changes_30d > 0", group="g", priority=2, action="review"),
        rule("lose", "phone_changes_30d > 0", group="g", priority=1, action="blacklist", ttl="1d"),
        rule("out", "phone_changes_30d > 0", rollout=0, action="blacklist", ttl="1d"),
    )
    assert rs.evaluate(event(), "user", "u1", {"phone_changes_30d": 1}).blacklist == ()


def test_blacklist_needs_an_integer_event_time() -> None:
    rs = load(rule("a", "phone_changes_30d > 0", action="blacklist", ttl="1d"))
    with pytest.raises(rules.EvaluationError):
        rs.evaluate({"event_id": "e", "type": "login"}, "user", "u1", {"phone_changes_30d": 1})


def test_in_list_rules_and_list_probes() -> None:
    rs = load(
        rule("listed", "\"in_list('bad_devices', event.device_id) or in_list('bad_users', event.user_id)\""),
        rule("order_only", "\"in_list('bad_ips', event.ip)\"", events="[order]"),
    )
    ev = {**event(), "device_id": "d1", "ip": "1.1.1.1"}
    assert rs.list_probes(ev, "user", {}) == {("bad_devices", "d1"), ("bad_users", "u1")}
    assert rs.list_probes({**ev, "type": "order"}, "user", {}) == {
        ("bad_devices", "d1"),
        ("bad_users", "u1"),
        ("bad_ips", "1.1.1.1"),
    }
    assert rs.list_probes({"type": "login"}, "user", {}) == set()  # null values are never probed
    out = rs.evaluate(ev, "user", "u1", {}, StaticLists({"bad_users": ["u1"]}))
    assert [h.rule_id for h in out.hits] == ["listed"]
    no_provider = rs.evaluate(ev, "user", "u1", {})
    assert no_provider.hits[0].error is not None and "list provider" in no_provider.hits[0].error


def test_hit_id_is_deterministic_and_documented() -> None:
    h = rules.hit_id("e1", "r1", "v1")
    assert h == hashlib.sha256(b"e1\nr1\nv1").digest()[:16].hex()
    assert len(h) == 32
    assert h != rules.hit_id("e1", "r1", "v2") != rules.hit_id("e2", "r1", "v1")


def test_evaluation_is_deterministic() -> None:
    rs = load(rule("a", "phone_changes_30d > 0", rollout=30), rule("b", "phone_changes_30d > 1"))
    f = {"phone_changes_30d": 2}
    assert rs.evaluate(event(), "user", "k", f) == rs.evaluate(event(), "user", "k", f)


# --- diff ---------------------------------------------------------------------------


def test_diff_added_removed_changed() -> None:
    old = load(
        rule("keep", "phone_changes_30d > 1"),
        rule("gone", "phone_changes_30d > 2"),
        rule("edit", "phone_changes_30d > 3"),
    )
    new = load_ruleset(
        'version: "v2"\ndecisions: {reject: 90, review: 50}\nrules:\n'
        + rule("keep", "phone_changes_30d > 1")
        + rule("edit", "phone_changes_30d > 4", score=20)
        + rule("new", "login_cities_7d > 3"),
        SCHEMA,
    )
    d = rules.diff(old, new)
    assert (d.old_version, d.new_version) == ("v1", "v2")
    assert d.added == ("new",) and d.removed == ("gone",)
    (c,) = d.changed
    assert c.rule_id == "edit"
    assert {name: (o, n) for name, o, n in c.fields} == {
        "when": ("phone_changes_30d > 3", "phone_changes_30d > 4"),
        "score": (10, 20),
    }
    assert d.decisions == (("reject", 80, 90),)
    text = "\n".join(d.lines())
    assert "+ new" in text and "- gone" in text and "~ edit" in text
    assert not rules.diff(old, old)
    assert rules.diff(old, old).lines()[-1] == "no rule changes"


# --- the guard index never changes an outcome -----------------------------------------

_GUARD_FEATURES = ["phone_changes_30d", "property_views_total", "order_amount_1h", "login_cities_7d"]
_guard_rules = st.lists(
    st.tuples(
        st.sampled_from(_GUARD_FEATURES),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
        st.one_of(st.integers(-2, 6), st.sampled_from([0.5, 2.5])),
        st.sampled_from(
            [
                "",
                " and login_cities_7d != 3",
                " or property_views_total > 4",
                " and order_amount_1h / (phone_changes_30d - phone_changes_30d) > 1",
            ]
        ),
    ),
    min_size=1,
    max_size=30,
)
_guard_values = st.one_of(
    st.none(), st.integers(-3, 7), st.floats(-3, 7), st.sampled_from([float("nan"), True, "x", 2.5])
)


@settings(max_examples=60, deadline=None)
@given(
    specs=_guard_rules,
    feats=st.fixed_dictionaries({}, optional=dict.fromkeys(_GUARD_FEATURES, _guard_values)),
)
def test_guard_index_gives_the_same_evaluation_as_running_every_rule(
    specs: list[tuple[str, str, float, str]], feats: dict[str, Any]
) -> None:
    import rules._model as model

    text = HEADER + "".join(
        rule(f"r{i:02d}", f"'{name} {op} {c}{tail}'", score=10 + i)
        for i, (name, op, c, tail) in enumerate(specs)
    )
    indexed = load_ruleset(text, SCHEMA)
    saved = model.INDEX_MIN_RULES
    model.INDEX_MIN_RULES = 10**9
    try:
        plain = load_ruleset(text, SCHEMA)
    finally:
        model.INDEX_MIN_RULES = saved
    assert not any(p.guards for p in plain._plans.values())
    if len(specs) >= saved:
        assert any(p.guards for p in indexed._plans.values())
    assert indexed.evaluate(event(), "user", "u1", feats) == plain.evaluate(event(), "user", "u1", feats)


@pytest.mark.parametrize(
    ("where", "value", "words"),
    [
        ("version", '"v1|x"', "version must be"),
        ("version", '"v1\\u0000"', "version must be"),
        ("label", '"a|b"', "label must be"),
        ("label", '"lab\\nel"', "label must be"),
        ("id", '"r1\\n"', "id must be"),
        ("events", '["login\\u0000"]', "events must be"),
        ("ttl", "100000d", "bad ttl"),
        ("when", '"in_list(\\"x\\\\n\\", event.ip)"', "invalid list name"),
    ],
)
def test_nothing_that_validates_can_be_refused_by_a_sink(where: str, value: str, words: str) -> None:
    """Before: '|' in a version or label published fine, then the Redis mirror dead-lettered
    every blacklist entry; 'r1\\n' passed the id regex ($ matches before a final newline);
    a 100000d ttl gave expires_at past what ClickHouse stores (year 2286)."""
    import rules

    rule = {
        "id": '"r1"',
        "entity": "user",
        "when": '"a > 1"',
        "score": "1",
        "label": "x",
        "ttl": "1d",
        "action": "blacklist",
    }
    top = {"version": '"v1"'}
    if where in top:
        top[where] = value
    else:
        rule[where] = value
    body = ", ".join(f"{k}: {v}" for k, v in rule.items())
    text = f"version: {top['version']}\nrules:\n  - {{{body}}}\n"
    with pytest.raises(rules.RuleSetError) as info:
        rules.load_ruleset(text, {"user": {"a": "int"}})
    assert any(words in p.message for p in info.value.problems), info.value.problems
