"""Semantics of the rule expression language: operators, null, functions, limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import (
    MAX_INT,
    ExpressionError,
    RuleRuntimeError,
    StaticLists,
    compile_expression,
)

FEATURES = {
    "n": "int",
    "m": "number",
    "x": "float",
    "s": "str",
    "a": "any",
}


def ev(
    expr: str, features: dict[str, Any] | None = None, event: dict[str, Any] | None = None, lists: Any = None
) -> Any:
    return compile_expression(expr, FEATURES).fn(features or {}, event or {}, lists)


def problems(expr: str, features: dict[str, str] | None = FEATURES) -> list[str]:
    with pytest.raises(ExpressionError) as info:
        compile_expression(expr, features)
    return [p.message for p in info.value.problems]


@pytest.mark.parametrize(
    ("expr", "feats", "want"),
    [
        ("n > 3", {"n": 4}, True),
        ("n > 3", {"n": 3}, False),
        ("n >= 3", {"n": 3}, True),
        ("n < 3", {"n": 2}, True),
        ("n <= 3", {"n": 4}, False),
        ("n == 3", {"n": 3}, True),
        ("n != 3", {"n": 3}, False),
        ("3 < n", {"n": 4}, True),
        ("1 < n < 5", {"n": 3}, True),
        ("1 < n < 5", {"n": 5}, False),
        ("n + m > 10", {"n": 4, "m": 7}, True),
        ("n - m == -3", {"n": 4, "m": 7}, True),
        ("n * 2 == 8", {"n": 4}, True),
        ("n / 8 == 0.5", {"n": 4}, True),
        ("n % 3 == 1", {"n": 4}, True),
        ("-n == -4", {"n": 4}, True),
        ("+n == 4", {"n": 4}, True),
        ("(n + 1) * 2 == 10", {"n": 4}, True),
        ("n + 1 * 2 == 6", {"n": 4}, True),
        ("s == 'Beijing'", {"s": "Beijing"}, True),
        ("s < 'B'", {"s": "A"}, True),
        ("s in ['a', 'b']", {"s": "b"}, True),
        ("s not in ['a', 'b']", {"s": "c"}, True),
        ("n in [1, 2, -3]", {"n": -3}, True),
        ("n not in [1, 2]", {"n": 1}, False),
        ("n > 1 and m > 1", {"n": 2, "m": 2}, True),
        ("n > 1 and m > 1", {"n": 2, "m": 0}, False),
        ("n > 1 or m > 1", {"n": 0, "m": 2}, True),
        ("not n > 1", {"n": 0}, True),
        ("n > 1 and m > 1 and x > 1", {"n": 2, "m": 2, "x": 2.0}, True),
        ("n > 1 and m > 1 and x > 1 and n < 9", {"n": 2, "m": 2, "x": 2.0}, True),
        ("n > 1 or m > 1 or x > 1", {"n": 0, "m": 0, "x": 0.0}, False),
        ("n", {"n": 1}, 1),
        ("true", {}, True),
        ("false or n == 1", {"n": 1}, True),
        ("True and n == 1", {"n": 1}, True),
    ],
)
def test_operators(expr: str, feats: dict[str, Any], want: Any) -> None:
    assert ev(expr, feats) == want


def test_division_is_true_division_and_modulo_is_pythons() -> None:
    assert ev("n / 2 == 2.5", {"n": 5}) is True
    assert ev("n % 3 == 2", {"n": -1}) is True


# --- null ------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "n > 3",
        "n < 3",
        "n >= 0",
        "n <= 0",
        "n == 0",
        "n != 0",
        "n in [1]",
        "n not in [1]",
        "1 < n < 5",
        "n > m",
    ],
)
def test_any_comparison_with_null_is_false(expr: str) -> None:
    assert ev(expr, {"m": 1}) is False


def test_arithmetic_with_null_is_null() -> None:
    assert ev("n + 1", {}) is None
    assert ev("1 - n", {}) is None
    assert ev("n * m", {"m": 2}) is None
    assert ev("-n", {}) is None
    assert ev("n + 1 > 0", {}) is False


def test_null_logic_is_three_valued() -> None:
    # not null is null: negating a condition over a missing feature never fires.
    assert ev("not n", {}) is None
    assert ev("not (n + 1)", {}) is None
    assert ev("n and m > 1", {"m": 0}) is False
    assert ev("n and m > 1", {"m": 5}) is None
    assert ev("n or m > 1", {"m": 5}) is True
    assert ev("n or m > 1", {"m": 0}) is None
    assert ev("(n + 1) or (m + 1)", {}) is None


def test_missing_feature_and_missing_event_field_read_as_null() -> None:
    assert ev("coalesce(n, 7) == 7", {}) is True
    assert ev("coalesce(event.attrs.amount, 0) == 0", {}, {"attrs": {}}) is True
    assert ev("coalesce(event.attrs.amount, 0) == 0", {}, {"attrs": "not a dict"}) is True
    assert ev("coalesce(event.a.b.c.d, 1) == 1", {}, {"a": {"b": {}}}) is True


def test_comparison_with_null_literal_is_rejected() -> None:
    msgs = problems("n == null")
    assert any("always false" in m for m in msgs)
    assert problems("n + null > 1")


# --- event paths ------------------------------------------------------------


def test_event_paths_read_the_envelope() -> None:
    event = {"type": "login", "geo": {"city": "Beijing", "lat": 39.9}, "attrs": {"x": {"y": {"z": 5}}}}
    assert ev("event.type == 'login'", event=event) is True
    assert ev("event.geo.city == 'Beijing'", event=event) is True
    assert ev("event.geo.lat > 30", event=event) is True
    assert ev("event.attrs.x.y.z == 5", event=event) is True
    assert ev("event.attrs.x.y.missing == 5", event=event) is False


def test_event_paths_are_recorded() -> None:
    c = compile_expression("event.geo.city == 'x' and n > 1", FEATURES)
    assert c.event_paths == (("geo", "city"),)
    assert c.features == ("n",)


# --- functions --------------------------------------------------------------


def test_duration_functions_are_milliseconds() -> None:
    assert ev("days(1) == 86400000") is True
    assert ev("hours(2) == 7200000") is True
    assert ev("minutes(3) == 180000") is True
    assert ev("n < hours(1)", {"n": 3_599_999}) is True
    assert ev("days(n)", {}) is None


def test_abs_min_max_coalesce() -> None:
    assert ev("abs(n) == 4", {"n": -4}) is True
    assert ev("min(n, m, 3) == 1", {"n": 1, "m": 2}) is True
    assert ev("max(n, m) == 2", {"n": 1, "m": 2}) is True
    assert ev("max(n, m)", {"n": 1}) is None  # any null argument: null
    assert ev("coalesce(n, m, 9)", {"m": 2}) == 2
    assert ev("coalesce(n, m)", {}) is None


def test_in_list_uses_the_provider() -> None:
    lists = StaticLists({"bad_devices": ["d1", "d2"], "bad_amounts": [13]})
    assert ev("in_list('bad_devices', event.device_id)", event={"device_id": "d1"}, lists=lists) is True
    assert ev("in_list('bad_devices', event.device_id)", event={"device_id": "d9"}, lists=lists) is False
    assert ev("in_list('bad_amounts', n)", {"n": 13}, lists=lists) is True
    assert ev("in_list('nope', n)", {"n": 13}, lists=lists) is False
    # a null value never reaches the provider
    assert ev("in_list('bad_devices', event.device_id)", event={}, lists=None) is False


def test_in_list_without_a_provider_is_a_runtime_error() -> None:
    with pytest.raises(RuleRuntimeError, match="list provider"):
        ev("in_list('bad_devices', event.device_id)", event={"device_id": "d1"})


def test_in_list_probes_are_recorded() -> None:
    c = compile_expression("in_list('a', event.ip) or in_list('b', s)", FEATURES)
    assert [name for name, _ in c.list_probes] == ["a", "b"]


def test_in_list_needs_a_literal_list_name() -> None:
    assert any("string literal" in m for m in problems("in_list(s, n)"))
    assert any("invalid list name" in m for m in problems("in_list('a b', n)"))
    assert any("takes 2 arguments" in m for m in problems("in_list('a')"))


# --- run-time errors ----------------------------------------------------------


def test_division_by_zero_raises_zero_division() -> None:
    with pytest.raises(ZeroDivisionError):
        ev("n / m > 1", {"n": 1, "m": 0})
    with pytest.raises(ZeroDivisionError):
        ev("n % m > 1", {"n": 1, "m": 0})


def test_and_short_circuits_so_guards_work() -> None:
    assert ev("m != 0 and n / m > 1", {"n": 1, "m": 0}) is False
    assert ev("m == 0 or n / m > 1", {"n": 1, "m": 0}) is True


def test_arithmetic_on_strings_is_refused_at_run_time() -> None:
    # An ``any`` field holding a string must never concatenate, repeat or %-format.
    with pytest.raises(RuleRuntimeError):
        ev("a * 100000000 > 1", {"a": "x"})
    with pytest.raises(RuleRuntimeError):
        ev("a % a", {"a": "%s"})
    with pytest.raises(RuleRuntimeError):
        ev("a + a", {"a": [1]})
    with pytest.raises(RuleRuntimeError):
        ev("abs(a)", {"a": "x"})
    with pytest.raises(RuleRuntimeError):
        ev("a + 1", {"a": True})


def test_ordering_mismatched_runtime_types_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        ev("a > 1", {"a": "x"})
    # equality of mismatched types is simply false
    assert ev("a == 1", {"a": "x"}) is False


# --- static checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("s + 1 > 2", "needs a number"),
        ("s > 3", "cannot compare a str with a number"),
        ("n == 'x'", "cannot compare a number with a str"),
        ("n in ['a']", "cannot compare a number with a str"),
        ("true > false", "cannot be ordered"),
        ("abs(s) > 1", "needs a number"),
        ("min(n) > 1", "takes 2 to 16"),
        ("days(1, 2) > 1", "takes 1 argument"),
        ("coalesce(n) > 1", "at least 2"),
        ("coalesce(n, 'x')", "mixes types"),
        ("s", "not a condition"),
        ("null", "always null"),
        ("n in m", "must be a list literal"),
        ("n in [m]", "must be literals"),
        ("n in [1, null]", "never matches"),
        ("[1, 2]", "only allowed after"),
        ("n > 1 in [1]", "cannot be chained"),
        ("n is 1", "`is` is not allowed"),
        ("~n", "`~` is not allowed"),
        ("n // 2 > 1", "`//` is not allowed"),
        ("n & 1", "`&` is not allowed"),
        ("event", "needs a field path"),
        ("abs", "is a function"),
        ("abs(x=1)", "no keyword"),
        ("n > 1 if s else 2", "conditional expressions"),
        ("{'a': 1}", "dict literals"),
        ("{1}", "set literals"),
        ("(1, 2)", "tuples"),
        ("b'x' == n", "bytes literals"),
        ("1j", "complex literals"),
        ("1 / 0 > n", "always fails"),
        ("", "empty"),
        ("n >", "syntax error"),
    ],
)
def test_rejected_at_load(expr: str, fragment: str) -> None:
    msgs = problems(expr)
    assert any(fragment in m for m in msgs), msgs


def test_unknown_feature_gets_did_you_mean() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("phone_change_30d > 3", {"phone_changes_30d": "int"})
    p = info.value.problems[0]
    assert "unknown feature 'phone_change_30d'" in p.message
    assert p.suggestion == "did you mean 'phone_changes_30d'?"
    assert p.offset == 0


def test_feature_of_another_entity_is_explained() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(
            "device_users_7d > 3", {"n": "int"}, other_entities={"device": {"device_users_7d": "int"}}
        )
    assert "feature of entity 'device'" in info.value.problems[0].message


def test_every_problem_is_reported_with_its_offset() -> None:
    text = "nn > 1 and s + 1 > 2 and mm < 3"
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, FEATURES)
    offsets = sorted(p.offset for p in info.value.problems)
    assert offsets == [text.index("nn"), text.index("s +"), text.index("mm")]


def test_offsets_count_characters_not_utf8_bytes() -> None:
    text = "s == '北京' and zz > 1"
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, FEATURES)
    assert info.value.problems[0].offset == text.index("zz")


def test_multi_line_expression_offsets() -> None:
    text = "n > 1 and\n  zz > 1"
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, FEATURES)
    assert info.value.problems[0].offset == text.index("zz")


def test_limits_on_constants() -> None:
    assert ev(f"n < {MAX_INT}", {"n": 1}) is True
    assert any("too large" in m for m in problems(f"n < {MAX_INT + 1}"))
    assert any("not finite" in m for m in problems("x < 1e999"))
    assert any("string is too long" in m for m in problems("s == '" + "a" * 300 + "'"))
    assert any("list is too long" in m for m in problems("n in [" + ",".join(["1"] * 300) + "]"))


def test_constant_folding() -> None:
    c = compile_expression("n < hours(1) + minutes(30)", FEATURES)
    assert c.fn({"n": 5_399_999}, {}, None) is True
    assert c.fn({"n": 5_400_000}, {}, None) is False


def test_without_schema_names_are_any_typed_features() -> None:
    c = compile_expression("whatever > 1 and other == 'x'", None)
    assert c.features == ("other", "whatever")
    assert c.fn({"whatever": 2, "other": "x"}, {}, None) is True


# --- fused and-chains agree with the plain definition ------------------------------

_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b}
_OPS.update({">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b})


@settings(max_examples=200, deadline=None)
@given(
    terms=st.lists(
        st.tuples(st.sampled_from(["n", "m", "x"]), st.sampled_from(sorted(_OPS)), st.integers(-3, 3)),
        min_size=1,
        max_size=5,
    ),
    tail=st.booleans(),
    values=st.fixed_dictionaries({}, optional={k: st.one_of(st.none(), st.integers(-4, 4)) for k in "nmx"}),
)
def test_and_chains_of_comparisons_follow_the_null_rule(
    terms: list[tuple[str, str, int]], tail: bool, values: dict[str, Any]
) -> None:
    text = " and ".join(f"{name} {op} {c}" for name, op, c in terms)
    if tail:
        text += " and n + 1 > 0"  # a non-simple term after the fused run
    want = all(values.get(name) is not None and _OPS[op](values[name], c) for name, op, c in terms)
    if tail:
        want = want and values.get("n") is not None and values["n"] + 1 > 0
    assert ev(text, values) is want


def test_unbalanced_brackets_are_rejected_even_though_parsing_wraps_in_parentheses() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("n > 1) or (m > 1", FEATURES)
    (p,) = info.value.problems
    assert p.offset == 5 and "unmatched ')'" in p.message
    assert ev("s == ')' and n > 1", {"s": ")", "n": 2}) is True  # brackets inside strings don't count


@pytest.mark.parametrize("op", ["/", "%"])
def test_division_by_a_constant_zero_is_refused_at_load(op: str) -> None:
    """Before: `when: order_amount_1h / 0 > 1` validated, then failed on every event, and each
    failure was a hit record (with `error`) that counted in the rollups like a real hit."""
    import rules

    text = f'version: v\nrules:\n  - {{id: r, entity: user, when: "a {op} 0 > 1", score: 1, label: x}}\n'
    with pytest.raises(rules.RuleSetError) as info:
        rules.load_ruleset(text, {"user": {"a": "int"}})
    [problem] = info.value.problems
    assert problem.rule_id == "r" and "constant zero" in problem.message


# --- booleans are not numbers (issue 14, finding 9): one semantics with the feature spec's `where`


@pytest.mark.parametrize(
    ("expr", "value", "want"),
    [
        ("a == true", 1, False),  # Python's True == 1 did match before
        ("a == true", True, True),
        ("a != true", 1, True),
        ("a == 1", True, False),
        ("a == 1", 1.0, True),  # numbers compare as numbers
        ("true == a", 1, False),
        ("a == event.flag", 1, False),
        ("a in [true]", 1, False),
        ("a in [true, 1]", 1, True),
        ("a in [true, 1]", True, True),
        ("a in [1]", True, False),
        ("a not in [1]", True, True),
        ("a in [0, 2]", False, False),
    ],
)
def test_true_and_false_equal_only_true_and_false(expr: str, value: Any, want: bool) -> None:
    assert ev(expr, {"a": value}, {"flag": True}) is want


def test_a_feature_and_a_where_agree_on_true_versus_one() -> None:
    from features._paths import make_matcher

    match = make_matcher({"x": (True,)})
    assert match is not None
    for value in (1, True, 0, False):
        assert match({"x": value}) is ev("a == true", {"a": value})


@pytest.mark.parametrize("expr", ["a > 0", "a >= 1", "0 < a", "a > n"])
def test_ordering_true_or_false_is_a_type_error_like_a_string(expr: str) -> None:
    with pytest.raises(TypeError):
        ev(expr, {"a": True, "n": 0})
    assert ev(expr, {"a": 2, "n": 0}) is True
