"""Security suite: known Python sandbox escapes must all be rejected at load.

Plus a hypothesis fuzz over random expressions built from a grammar that mixes
allowed and forbidden pieces: an expression is accepted only if every node is
in the allow-list, and evaluating an accepted one only ever runs the compiled
closures and a short list of builtins, raising nothing but the documented
run-time errors.
"""

from __future__ import annotations

import ast
import gc
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rules
import rules._expr
from rules import FUNCTIONS, RUNTIME_ERRORS, ExpressionError, RuleSetError, StaticLists, compile_expression

FEATURES = {"n": "int", "m": "number", "s": "str", "a": "any"}
SCHEMA = {"user": FEATURES}

ESCAPES = [
    # dunder walks
    "().__class__.__bases__[0].__subclasses__()",
    "().__class__.__base__.__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "n.__class__",
    "event.__class__",
    "event.__class__.__init__.__globals__",
    "event.attrs.__dict__",
    "event._private",
    "[].__class__.__base__",
    "(1).__class__",
    "__builtins__",
    "__builtins__.open",
    "_",
    "__name__ == 'x'",
    "__debug__",
    # imports and dynamic lookup
    "__import__('os')",
    "__import__('os').system('id')",
    "getattr(n, '__class__')",
    "getattr(event, 'type')",
    "setattr(event, 'x', 1)",
    "vars()",
    "globals()",
    "locals()",
    "dir()",
    "eval('1')",
    "exec('x=1')",
    "compile('1', 'x', 'eval')",
    "open('/etc/passwd')",
    "type(n)",
    "breakpoint()",
    "help()",
    "min.__self__",
    "abs.__self__.open",
    "max(n, m).__class__",
    # generator frames
    "(x for x in [1]).gi_frame.f_globals",
    "[x for x in [1]]",
    "{x for x in [1]}",
    "{x: 1 for x in [1]}",
    "(lambda: 1)()",
    "lambda: 1",
    "(lambda x: x)(n).__globals__",
    # format-string tricks
    "'{0.__class__}'.format(n)",
    "'{0.__init__.__globals__}'.format(event)",
    "'%s' % n",
    "s.format(n)",
    "f'{n}'",
    "f'{n.__class__}'",
    "f'{event!r}'",
    # huge computations
    "10**10**10",
    "n ** 2",
    "9**9**9**9",
    "2 << 100000",
    "'a' * 10**9",
    "[1] * 10**9",
    f"n < {10**100}",
    "n < 1e999",
    # assignment, subscripts, slicing, starred, conditional
    "(y := 1)",
    "(n := 1) > 0",
    "event['type'] == 'x'",
    "event.attrs[0]",
    "s[::-1] == 'x'",
    "abs(*[1])",
    "min(**{})",
    "n if s else m",
    # async / generators
    "await n",
    "(yield n)",
    # deep nesting / long expressions
    "(" * 150 + "n" + ")" * 150 + " > 1",
    "-" * 500 + "n > 1",
    "not " * 300 + "n",
    " and ".join(["n > 1"] * 500),
    "n > 1" + " and n > 1" * 400,
    "n in [" + ",".join(str(i) for i in range(1000)) + "]",
    "s == '" + "x" * 100_000 + "'",
    "n > " + "1" * 5000,
    # odd syntax
    "n > 1; import os",
    "import os",
    "n > 1\nimport os",
    "n > 1 # ok\n__import__('os')",
    "n\x00 > 1",
    "...",
    "b'\\x00' == s",
    "1j == n",
]


@pytest.mark.parametrize("expr", ESCAPES)
def test_escape_is_rejected_by_the_compiler(expr: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(expr, FEATURES)
    assert info.value.problems and all(p.message for p in info.value.problems)


@pytest.mark.parametrize("expr", ESCAPES)
def test_escape_rejects_the_whole_rule_set(expr: str) -> None:
    text = (
        'version: "v1"\ndecisions: {reject: 80, review: 50}\nrules:\n'
        "  - id: fine\n    entity: user\n    when: n > 1\n    score: 10\n"
        "  - id: evil\n    entity: user\n    score: 10\n    when: |-\n"
        + "".join(f"      {line}\n" for line in expr.split("\n"))
    )
    with pytest.raises(RuleSetError) as info:
        rules.load_ruleset(text, SCHEMA, source="evil.yaml")
    problems = info.value.problems
    if "\x00" in expr:  # not even valid YAML: rejected before any rule is read
        assert [p.rule_id for p in problems] == [None]
        assert problems[0].message.startswith("invalid YAML")
        return
    assert {p.rule_id for p in problems} == {"evil"}
    assert all(p.line >= 11 for p in problems)


def _dangerous_calls(tree: ast.AST) -> list[str]:
    """Calls of eval-like builtins, and getattr/setattr with a computed attribute name."""
    found: list[str] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        name = node.func.id
        if name in {"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "breakpoint"}:
            found.append(name)
        elif name in {"getattr", "setattr", "delattr", "hasattr"}:
            literal = len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
            if not literal:
                found.append(f"{name} with a computed name")
    return found


def test_rules_package_never_calls_eval_exec_or_dynamic_getattr() -> None:
    root = Path(rules.__file__).parent
    for path in sorted(root.glob("*.py")):
        found = _dangerous_calls(ast.parse(path.read_text(encoding="utf-8")))
        assert not found, f"{path.name} calls {found}"


# ---------------------------------------------------------------------------
# Fuzz: random expressions from a grammar with forbidden pieces.

ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Compare,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Eq,
    ast.NotEq,
    ast.In,
    ast.NotIn,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Attribute,
    ast.Call,
    ast.List,
)
ALLOWED_NAMES = {*FEATURES, *FUNCTIONS, "event", "true", "false", "null"}


def _violations(text: str) -> list[str]:
    """Independent oracle: the reasons ``text`` is outside the allow-list (empty: inside)."""
    try:
        tree = ast.parse("(" + text + "\n)", mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ["syntax"]
    bad: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES):
            bad.append(type(node).__name__)
        elif isinstance(node, ast.Name) and node.id not in ALLOWED_NAMES:
            bad.append(f"name {node.id}")
        elif isinstance(node, ast.Attribute):
            base: ast.AST = node
            while isinstance(base, ast.Attribute):
                if base.attr.startswith("_"):
                    bad.append("underscore attribute")
                base = base.value
            if not (isinstance(base, ast.Name) and base.id == "event"):
                bad.append("attribute off event")
        elif isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        ):
            bad.append("call")
        elif isinstance(node, ast.Constant) and not isinstance(
            node.value, int | float | str | bool | type(None)
        ):
            bad.append("constant type")
    return bad


_atoms = st.one_of(
    st.sampled_from(["n", "m", "s", "a"]),
    st.sampled_from(["zz", "__import__", "getattr", "eval", "__builtins__", "_x", "event", "true", "false"]),
    st.sampled_from(["null", "None", "True", "abs", "type", "open", "gi_frame", "self"]),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0", "0.5", "-1.5", "3", str(2**53), str(2**53 + 1), "1e999", "1j", "b'x'", "..."]),
    st.text(alphabet="ab{}%._0", max_size=6).map(repr),
    st.sampled_from(["event.type", "event.geo.city", "event.attrs.amount", "event.ts", "event.attrs.x.y"]),
    st.sampled_from(
        ["event.__class__", "event._x", "event.a.__dict__", "()", "[]", "{}", "f'{n}'", "(1, 2)"]
    ),
)

_BINOPS = ["+", "-", "*", "/", "%", "**", "//", "&", "|", "<<", "@"]
_CMPOPS = ["<", "<=", ">", ">=", "==", "!=", " in ", " not in ", " is "]
_FUNCS = [*FUNCTIONS, "getattr", "eval", "len", "__import__", "type", "print", "str"]


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(st.sampled_from(["not ", "-", "+", "~"]), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(children, st.sampled_from(_BINOPS), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(children, st.sampled_from(_CMPOPS), children).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        st.tuples(children, st.sampled_from([" and ", " or "]), children).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"
        ),
        st.tuples(children, st.sampled_from(_CMPOPS[:6]), children, children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]} < {t[3]})"
        ),
        st.tuples(children, st.sampled_from([" in ", " not in "]), st.lists(children, max_size=3)).map(
            lambda t: f"({t[0]}{t[1]}[{', '.join(t[2])}])"
        ),
        st.tuples(st.sampled_from(_FUNCS), st.lists(children, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(st.sampled_from(["'l1'", "'bad'", "s"]), children).map(
            lambda t: f"in_list({t[0]}, {t[1]})"
        ),
        st.tuples(children, st.sampled_from(["__class__", "x", "format", "__globals__", "gi_frame"])).map(
            lambda t: f"({t[0]}).{t[1]}"
        ),
        st.tuples(children, children).map(lambda t: f"({t[0]})[{t[1]}]"),
        children.map(lambda c: f"(lambda: {c})"),
        children.map(lambda c: f"[{c} for q in [1]]"),
        children.map(lambda c: f"(y := {c})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        children.map(lambda c: "f'{" + c + "}'"),
    )


WILD = st.recursive(_atoms, _extend, max_leaves=8)

# Mostly well-typed expressions (so many are accepted and evaluated), with a
# wild, possibly forbidden piece mixed in now and then.
_num_atoms = st.one_of(
    st.sampled_from(
        ["n", "m", "a", "event.ts", "event.attrs.amount", "event.geo.lat", "0", "2", "-3", "0.5"]
    ),
    st.integers(-1000, 1000).map(str),
)
NUMERIC = st.recursive(
    st.one_of(_num_atoms, _num_atoms, _num_atoms, WILD),
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["+", "-", "*", "/", "%"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(["abs", "days", "hours", "minutes", "-"]), c).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), c, c).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
    ),
    max_leaves=6,
)
_str_atoms = st.sampled_from(["s", "a", "event.type", "event.geo.city", "'login'", "'x'"])
_conds = st.one_of(
    st.tuples(NUMERIC, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), NUMERIC).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    ),
    st.tuples(_str_atoms, st.sampled_from(["==", "!=", "<"]), _str_atoms).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    ),
    st.tuples(_str_atoms, st.sampled_from(["in", "not in"])).map(
        lambda t: f"{t[0]} {t[1]} ['login', 'x', 'Beijing']"
    ),
    st.tuples(NUMERIC, st.sampled_from(["in", "not in"])).map(lambda t: f"{t[0]} {t[1]} [0, 1, 2, -3]"),
    st.tuples(st.sampled_from(["'l1'", "'bad'"]), st.one_of(_str_atoms, NUMERIC)).map(
        lambda t: f"in_list({t[0]}, {t[1]})"
    ),
    st.tuples(NUMERIC, NUMERIC, NUMERIC).map(lambda t: f"{t[0]} < {t[1]} <= {t[2]}"),
    WILD,
)
CONDITIONS = st.recursive(
    _conds,
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["and", "or"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        c.map(lambda x: f"not ({x})"),
    ),
    max_leaves=6,
)
EXPRESSIONS = st.one_of(CONDITIONS, CONDITIONS, WILD)

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
FEATURE_VALUES = st.fixed_dictionaries({}, optional={k: _VALUES for k in FEATURES})
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["login", "order"]), _VALUES),
        "ts": st.one_of(st.integers(0, 2**41), _VALUES),
        "geo": st.one_of(st.fixed_dictionaries({}, optional={"city": _VALUES, "lat": _VALUES}), _VALUES),
        "attrs": st.one_of(st.fixed_dictionaries({}, optional={"amount": _VALUES, "x": _VALUES}), _VALUES),
    },
)

_EXPR_FILE = rules._expr.__file__
_ALLOWED_C_CALLS = {
    "get",
    "isinstance",
    "abs",
    "min",
    "max",
    "bool",
    "lt",
    "le",
    "gt",
    "ge",
    "eq",
    "ne",
    "add",
    "sub",
    "mul",
    "truediv",
    "mod",
    "neg",
    "pos",
    "append",
}


def _traced(fn: Any, *args: Any) -> tuple[Any, BaseException | None, set[str]]:
    """Run ``fn`` recording every Python function and builtin it reaches."""
    touched: set[str] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code.co_filename != _EXPR_FILE and code.co_name not in {"contains", "__init__"}:
                touched.add(f"py:{code.co_filename}:{code.co_name}")
        elif event == "c_call":
            name = getattr(arg, "__name__", repr(arg))
            if name not in _ALLOWED_C_CALLS:
                touched.add(f"c:{name}")

    result: Any = None
    error: BaseException | None = None
    # a garbage collection inside the traced call would run other objects' finalizers
    # (clients made by earlier tests) and look like calls the expression made
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        result = fn(*args)
    except BaseException as exc:
        error = exc
    finally:
        sys.setprofile(None)
        gc.enable()
    touched.discard("c:setprofile")
    return result, error, touched


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=EXPRESSIONS, feats=FEATURE_VALUES, event=EVENTS)
def test_fuzz_accepted_iff_in_allow_list_and_evaluation_stays_inside(
    expr: str, feats: dict[str, Any], event: dict[str, Any]
) -> None:
    violations = _violations(expr)
    try:
        compiled = compile_expression(expr, FEATURES)
    except ExpressionError as exc:
        assert exc.problems
        return
    assert not violations, f"accepted {expr!r} despite {violations}"
    lists = StaticLists({"l1": ["a", 1], "bad": ["x"]})
    result, error, touched = _traced(compiled.fn, feats, event, lists)
    assert not touched, f"{expr!r} reached {sorted(touched)}"
    if error is not None:
        assert isinstance(error, RUNTIME_ERRORS), f"{expr!r} raised {error!r}"
    else:
        assert result is None or isinstance(result, bool | int | float | str | list | dict)


def test_fuzz_oracle_and_compiler_agree_on_fixed_samples() -> None:
    # The oracle itself must recognise escapes and plain rules.
    assert _violations("n > 1 and event.type == 'login'") == []
    assert _violations("in_list('l', event.ip)") == []
    assert _violations("().__class__")
    assert _violations("getattr(n, 'x')")
    assert _violations("event.__class__")


def test_the_tracer_sees_calls_outside_the_compiled_closures() -> None:
    _, _, touched = _traced(lambda: sorted(vars(rules)))
    assert any(t.startswith("c:vars") for t in touched)
    assert any(t.startswith("py:") for t in touched)


def test_yaml_alias_bomb_is_not_expanded() -> None:
    lines = ['version: "v1"', 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("rules: []")
    with pytest.raises(RuleSetError) as info:
        rules.load_ruleset("\n".join(lines) + "\n", SCHEMA)  # 9**30 leaves if expanded
    assert any("unknown key 'a29'" in p.message for p in info.value.problems)


def test_alias_bomb_in_a_rule_value_is_reported_briefly() -> None:
    lines = ['version: "v1"', "x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 30):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]")
    lines += [
        "rules:",
        "  - {id: a, entity: user, when: n > 1, score: 1,",
        "     action: *x29, mode: *x29, ttl: *x29, rollout: *x29}",
        "  - {id: b, entity: *x29, when: n > 1, score: 1}",
    ]
    with pytest.raises(RuleSetError) as info:
        rules.load_ruleset("\n".join(lines) + "\n", SCHEMA)
    assert len(info.value.message) < 5000
    assert any("unknown action a list" in p.message for p in info.value.problems)


def test_rule_set_size_is_bounded_before_anything_is_compiled() -> None:
    """Before: 3,000 rules sharing one `when` through a YAML alias took seconds and tens of MB
    to validate, in every worker's rules follower too."""
    import time

    import rules
    from rules._model import MAX_RULES, MAX_RULESET_BYTES

    many = 'version: "v"\nrules:\n  - &r {id: r0, entity: user, when: "a > 1", score: 1, label: x}\n'
    many += "".join("  - *r\n" for _ in range(MAX_RULES + 500))
    t0 = time.perf_counter()
    with pytest.raises(rules.RuleSetError) as info:
        rules.load_ruleset(many, {"user": {"a": "int"}})
    assert time.perf_counter() - t0 < 2.0
    assert "above the limit" in str(info.value.problems[0].message)
    huge = 'version: "v"\nrules: []\n# ' + "x" * MAX_RULESET_BYTES + "\n"
    with pytest.raises(rules.RuleSetError, match="bytes"):
        rules.load_ruleset(huge, {"user": {"a": "int"}})
