"""The rule expression language: parse, check, compile to closures.

A ``when`` expression is parsed with :func:`ast.parse` (``mode="eval"`` only
builds a syntax tree; nothing a rule author writes ever reaches ``eval``,
``exec`` or a code object). The tree is walked against an explicit allow-list
of node types, type-checked against the feature schema of the rule's entity,
and compiled into a tree of small Python closures, each of the form
``fn(features, event, lists) -> value``.

The language
------------
literals      ``3``, ``2.5``, ``"login"``, ``true``/``false``/``null``
              (``True``/``False``/``None`` also work)
names         features of the rule's entity
event fields  ``event.<dotted path>`` reads the envelope (``event.geo.city``)
models        ``model.<name>``: the score of a model the feature spec declares for the
              rule's entity (a number; null when the entity's features could not be scored)
comparisons   ``< <= > >= == != in not in`` (chains such as ``1 < x < 5``);
              the right side of ``in`` / ``not in`` is a list literal
logic         ``and or not``
arithmetic    ``+ - * / %`` and unary ``-`` ``+`` on numbers only
functions     ``in_list("name", value)``, ``coalesce(a, b, ...)``, ``abs(x)``,
              ``min(a, b, ...)``, ``max(a, b, ...)``, ``days(n)``, ``hours(n)``,
              ``minutes(n)`` (durations in milliseconds)

Null
----
A missing feature or envelope field is null.

* Any comparison involving null is false (``x != 3`` too, ``x in [...]`` and
  ``x not in [...]`` too); ``in_list`` of null is false. Comparing with the
  literal ``null`` is therefore rejected at load: use ``coalesce(x, default)``.
* Arithmetic with null gives null, and so do ``abs``, ``min``, ``max`` and the
  duration functions when any argument is null. ``coalesce`` returns its first
  non-null argument.
* ``and``/``or``/``not`` use three-valued (Kleene) logic: ``not null`` is
  null, ``null and false`` is false, ``null or true`` is true, otherwise a
  null operand makes the result null. ``and``/``or`` short-circuit left to
  right, so ``x > 0 and y / x > 2`` never divides by zero.
* A rule hits when its expression is truthy and not null. So a rule over a
  missing feature never fires by accident, whichever way it is negated.

Booleans are not numbers
------------------------
``true``/``false`` equal only ``true``/``false``: ``a == true`` does not hold for
``a = 1``, and ``1 in [true]`` is false (Python's ``True == 1`` is not used). Ordering
them (``a > 0`` with ``a = true``) is a type error, like a string and a number; arithmetic
on them is a :class:`RuleRuntimeError`. The feature spec's ``where`` and the features
(``sum`` skips a boolean, ``distinct`` counts ``true`` apart from ``1``) use the same rule.
Numbers compare as numbers (``1 == 1.0``).

Run-time errors
---------------
Evaluation can raise only these (the rule set catches them per rule, reports
the error and counts the rule as not hit): :class:`ZeroDivisionError` and
:class:`OverflowError` (both :class:`ArithmeticError`), :class:`TypeError`
(ordering values of different types, e.g. an ``any``-typed field holding a
string compared with a number) and :class:`RuleRuntimeError` (arithmetic on a
non-number, ``in_list`` without a list provider or with a non-scalar value).
See :data:`RUNTIME_ERRORS`.

Limits (all checked at load)
----------------------------
At most :data:`MAX_EXPR_CHARS` characters, :data:`MAX_NODES` syntax nodes,
:data:`MAX_DEPTH` levels of nesting, integer literals up to
:data:`MAX_INT` in magnitude, finite floats, strings up to :data:`MAX_STR`
characters, lists up to :data:`MAX_LIST` elements and event paths up to
:data:`MAX_PATH` parts. There is no ``**``: exponentiation is not in the
grammar. Together these bound the time and memory of any accepted rule.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from features.errors import BypassError

MAX_EXPR_CHARS: Final = 2000
MAX_NODES: Final = 400
MAX_DEPTH: Final = 24
MAX_INT: Final = 2**53
MAX_STR: Final = 256
MAX_LIST: Final = 256
MAX_PATH: Final = 8

MS_PER_MINUTE: Final = 60_000
MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000

# Static types of sub-expressions.
NUM: Final = "number"
STR: Final = "str"
BOOL: Final = "bool"
NULL: Final = "null"
ANY: Final = "any"
LIST: Final = "list"

#: Feature-schema type names -> static types.
SCHEMA_TYPES: Final[Mapping[str, str]] = {
    "number": NUM,
    "int": NUM,
    "float": NUM,
    "str": STR,
    "any": ANY,
}

#: Envelope fields whose type the envelope validation guarantees.
EVENT_FIELD_TYPES: Final[Mapping[tuple[str, ...], str]] = {
    ("event_id",): STR,
    ("type",): STR,
    ("ts",): NUM,
    ("user_id",): STR,
    ("device_id",): STR,
    ("ip",): STR,
    ("phone",): STR,
    ("geo", "lat"): NUM,
    ("geo", "lon"): NUM,
    ("geo", "city"): STR,
}

FUNCTIONS: Final = ("abs", "coalesce", "days", "hours", "in_list", "max", "min", "minutes")
RESERVED: Final = ("event", "false", "null", "true")
#: ``model.<name>`` reads the score of the model ``name`` (``features.MODEL_PREFIX``)
MODEL_PREFIX: Final = "model."

_LIST_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")  # \Z: $ would match before a final newline
_NUMT: Final = (int, float)
_SCALARS: Final = (str, int, float, bool)


class RuleRuntimeError(BypassError):
    """A rule expression failed while evaluating one event (never at load)."""


#: The only exceptions evaluating an accepted expression can raise.
RUNTIME_ERRORS: Final = (ArithmeticError, TypeError, RuleRuntimeError)


class ListProvider(Protocol):
    """Named black/white lists for ``in_list(name, value)``.

    A live caller asks :meth:`rules.RuleSet.list_probes` which lookups an event
    needs, fetches them in one round trip, and passes an in-memory provider.
    """

    def contains(self, name: str, value: Any) -> bool:
        """Whether list ``name`` holds ``value``."""
        ...


class StaticLists:
    """A :class:`ListProvider` over an in-memory mapping ``name -> values``."""

    __slots__ = ("_lists",)

    def __init__(self, lists: Mapping[str, Any] | None = None) -> None:
        self._lists: dict[str, frozenset[Any]] = {
            name: frozenset(values) for name, values in (lists or {}).items()
        }

    def contains(self, name: str, value: Any) -> bool:
        values = self._lists.get(name)
        return values is not None and value in values


Fn = Callable[[Mapping[str, Any], Mapping[str, Any], "ListProvider | None"], Any]


@dataclass(frozen=True, slots=True)
class ExprProblem:
    """One problem in an expression; ``offset`` is a character index into its text."""

    offset: int
    message: str
    suggestion: str = ""


class ExpressionError(BypassError):
    """An expression was rejected at load; ``problems`` lists every reason."""

    def __init__(self, problems: list[ExprProblem]) -> None:
        first = problems[0]
        super().__init__(first.message, problems=problems, position=first.offset)
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CompiledExpr:
    """An accepted expression: its closure and what it reads."""

    source: str
    fn: Fn
    type: str
    features: tuple[str, ...]
    event_paths: tuple[tuple[str, ...], ...]
    list_probes: tuple[tuple[str, Fn], ...]
    #: ``(feature, op, number)`` with op among < <= > >=: a condition the expression
    #: cannot be true without (it is the first term of a top-level ``and``, or the whole
    #: expression). Rule sets index rules by it to skip most of them without a call.
    guard: tuple[str, str, int | float] | None = None


@dataclass(slots=True)
class _T:
    """A compiled sub-expression: closure, static type, may it be null, constant value."""

    fn: Fn
    type: str
    nullable: bool
    const: bool = False
    value: Any = None
    simple: tuple[str, Callable[[Any, Any], Any], Any] | None = None  # feature <op> constant
    guard: tuple[str, str, int | float] | None = None  # see CompiledExpr.guard


_NO_FN: Fn = lambda f, e, lp: None  # noqa: E731 - placeholder for rejected nodes

_FORBIDDEN_NAMES: Final[Mapping[type, str]] = {
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Subscript: "subscripts ([...])",
    ast.Slice: "slices",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.Tuple: "tuples",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.IfExp: "conditional expressions (x if c else y)",
}

_OP_SYMBOLS: Final[Mapping[type, str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.Invert: "~",
    ast.Is: "is",
    ast.IsNot: "is not",
}

_ARITH: Final[Mapping[type, Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}

_CMP: Final[Mapping[type, Callable[[Any, Any], Any]]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

_ORDERING: Final = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _bool_eq(a: Any, b: Any) -> bool:
    """``==`` where true/false equal only true/false (Python's ``True == 1`` does not hold)."""
    return bool(a == b) and (a.__class__ is bool) is (b.__class__ is bool)


def _bool_ne(a: Any, b: Any) -> bool:
    return not _bool_eq(a, b)


def _no_bool_order(opf: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """An ordering that raises TypeError for true/false, as it does for a string and a number."""

    def order(a: Any, b: Any) -> Any:
        if a.__class__ is bool or b.__class__ is bool:
            raise TypeError("true/false cannot be ordered with < <= > >=")
        return opf(a, b)

    return order


#: The comparisons used when an operand's type is only known at run time (``any``): the
#: same semantics as the feature spec's ``where`` (booleans are not numbers).
_CMP_ANY: Final[Mapping[type, Callable[[Any, Any], Any]]] = {
    ast.Lt: _no_bool_order(operator.lt),
    ast.LtE: _no_bool_order(operator.le),
    ast.Gt: _no_bool_order(operator.gt),
    ast.GtE: _no_bool_order(operator.ge),
    ast.Eq: _bool_eq,
    ast.NotEq: _bool_ne,
}


def _member_key(v: Any) -> Any:
    """The key of a value in a list literal: true/false apart from 1/0."""
    return (True, v) if v.__class__ is bool else v


_GUARD_OPS: Final[Mapping[type, str]] = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _type_of_value(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, _NUMT):
        return NUM
    if isinstance(value, str):
        return STR
    return ANY


# ---------------------------------------------------------------------------
# Specialised closures. Each takes (features, event, lists).


def _feature_reader(name: str) -> Fn:
    def read(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        return f.get(name)

    return read


def _event_reader(path: tuple[str, ...]) -> Fn:
    if len(path) == 1:
        (p0,) = path

        def read1(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            return e.get(p0)

        return read1
    if len(path) == 2:
        p0, p1 = path

        def read2(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            v = e.get(p0)
            return v.get(p1) if isinstance(v, dict) else None

        return read2

    def read_n(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        v: Any = e
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    return read_n


def _const(value: Any) -> Fn:
    def const(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        return value

    return const


def _feature_cmp_const(name: str, op: type, c: Any) -> Fn:
    """``feature <op> constant``: the commonest shape, one closure call."""
    if op is ast.Gt:

        def gt(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = f.get(name)
            return v is not None and v > c

        return gt
    if op is ast.GtE:

        def ge(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = f.get(name)
            return v is not None and v >= c

        return ge
    if op is ast.Lt:

        def lt(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = f.get(name)
            return v is not None and v < c

        return lt
    if op is ast.LtE:

        def le(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = f.get(name)
            return v is not None and v <= c

        return le
    if op is ast.Eq:

        def eq(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = f.get(name)
            return v is not None and v == c

        return eq

    def ne(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        v = f.get(name)
        return v is not None and v != c

    return ne


def _cmp_const(left: Fn, opf: Callable[[Any, Any], Any], c: Any) -> Fn:
    def cmp(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        v = left(f, e, lp)
        return v is not None and bool(opf(v, c))

    return cmp


def _cmp_chain(parts: list[Fn], ops: list[Callable[[Any, Any], Any]]) -> Fn:
    if len(ops) == 1:
        lf, rf = parts
        opf = ops[0]

        def cmp2(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            a = lf(f, e, lp)
            if a is None:
                return False
            b = rf(f, e, lp)
            return b is not None and bool(opf(a, b))

        return cmp2

    pairs = list(zip(ops, parts[1:], strict=True))
    first = parts[0]

    def chain(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        a = first(f, e, lp)
        if a is None:
            return False
        for opf, rf in pairs:
            b = rf(f, e, lp)
            if b is None or not opf(a, b):
                return False
            a = b
        return True

    return chain


def _membership(left: Fn, values: frozenset[Any], negate: bool, tagged: bool = False) -> Fn:
    """``x in [...]``; ``tagged``: the values are :func:`_member_key` keys (an ``any`` operand)."""
    if tagged:

        def in_tagged(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = left(f, e, lp)
            return v is not None and (_member_key(v) in values) is not negate

        return in_tagged
    if negate:

        def not_in(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
            v = left(f, e, lp)
            return v is not None and v not in values

        return not_in

    def is_in(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        v = left(f, e, lp)
        return v is not None and v in values

    return is_in


def _and(parts: list[Fn], strict_bool: bool) -> Fn:
    if strict_bool and len(parts) == 2:
        a, b = parts

        def and2(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            return a(f, e, lp) and b(f, e, lp)

        return and2
    if strict_bool and len(parts) == 3:
        a, b, c = parts

        def and3(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            return a(f, e, lp) and b(f, e, lp) and c(f, e, lp)

        return and3
    if strict_bool:

        def and_n(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            for p in parts:
                if not p(f, e, lp):
                    return False
            return True

        return and_n

    def and_kleene(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        unknown = False
        for p in parts:
            r = p(f, e, lp)
            if r is None:
                unknown = True
            elif not r:
                return False
        return None if unknown else True

    return and_kleene


def _fused_and(terms: list[tuple[str, Callable[[Any, Any], Any], Any]]) -> Fn:
    """``f1 > c1 and f2 < c2 and ...`` over features and constants: one closure, one loop."""
    items = tuple(terms)

    def fused(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        get = f.get
        for name, opf, c in items:
            v = get(name)
            if v is None or not opf(v, c):
                return False
        return True

    return fused


def _or(parts: list[Fn], strict_bool: bool) -> Fn:
    if strict_bool and len(parts) == 2:
        a, b = parts

        def or2(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            return a(f, e, lp) or b(f, e, lp)

        return or2
    if strict_bool:

        def or_n(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            for p in parts:
                if p(f, e, lp):
                    return True
            return False

        return or_n

    def or_kleene(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        unknown = False
        for p in parts:
            r = p(f, e, lp)
            if r is None:
                unknown = True
            elif r:
                return True
        return None if unknown else False

    return or_kleene


def _not(inner: Fn) -> Fn:
    def not_(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        r = inner(f, e, lp)
        return None if r is None else not r

    return not_


def _need_number(v: Any, what: str) -> None:
    if type(v) not in _NUMT:
        raise RuleRuntimeError(f"{what} needs numbers, got {type(v).__name__}")


def _arith(left: Fn, right: Fn, opf: Callable[[Any, Any], Any], symbol: str) -> Fn:
    def arith(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        a = left(f, e, lp)
        if a is None:
            return None
        b = right(f, e, lp)
        if b is None:
            return None
        if type(a) not in _NUMT or type(b) not in _NUMT:
            raise RuleRuntimeError(f"'{symbol}' needs numbers, got {type(a).__name__}, {type(b).__name__}")
        return opf(a, b)

    return arith


def _arith_const(left: Fn, c: Any, opf: Callable[[Any, Any], Any], symbol: str) -> Fn:
    def arith_c(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        a = left(f, e, lp)
        if a is None:
            return None
        if type(a) not in _NUMT:
            raise RuleRuntimeError(f"'{symbol}' needs numbers, got {type(a).__name__}")
        return opf(a, c)

    return arith_c


def _unary(inner: Fn, opf: Callable[[Any], Any], symbol: str) -> Fn:
    def unary(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        v = inner(f, e, lp)
        if v is None:
            return None
        _need_number(v, f"unary '{symbol}'")
        return opf(v)

    return unary


def _numeric_call(name: str, args: list[Fn], impl: Callable[..., Any]) -> Fn:
    if len(args) == 1:
        (a,) = args

        def call1(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
            v = a(f, e, lp)
            if v is None:
                return None
            _need_number(v, f"{name}()")
            return impl(v)

        return call1

    def call_n(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        values = []
        for p in args:
            v = p(f, e, lp)
            if v is None:
                return None
            _need_number(v, f"{name}()")
            values.append(v)
        return impl(*values)

    return call_n


def _coalesce(args: list[Fn]) -> Fn:
    def coalesce(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> Any:
        for p in args:
            v = p(f, e, lp)
            if v is not None:
                return v
        return None

    return coalesce


def _in_list(list_name: str, value: Fn) -> Fn:
    def in_list(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
        v = value(f, e, lp)
        if v is None:
            return False
        if type(v) not in _SCALARS:
            raise RuleRuntimeError(
                f"in_list({list_name!r}, ...) needs a scalar value, got {type(v).__name__}"
            )
        if lp is None:
            raise RuleRuntimeError(f"in_list({list_name!r}, ...) needs a list provider; none was given")
        return bool(lp.contains(list_name, v))

    return in_list


def _duration(unit_ms: int) -> Callable[[Any], Any]:
    def to_ms(n: Any) -> Any:
        return n * unit_ms

    return to_ms


_NUMERIC_FUNCS: Final[Mapping[str, tuple[int, int, Callable[..., Any]]]] = {
    # name -> (min args, max args, implementation)
    "abs": (1, 1, abs),
    "min": (2, 16, min),
    "max": (2, 16, max),
    "days": (1, 1, _duration(MS_PER_DAY)),
    "hours": (1, 1, _duration(MS_PER_HOUR)),
    "minutes": (1, 1, _duration(MS_PER_MINUTE)),
}


def _bracket_depth(text: str) -> tuple[int, int]:
    """Deepest nesting of ( [ { outside string literals, and where it is first reached
    (``(-1, index)`` for a closing bracket without its opening one)."""
    depth = deepest = where = 0
    quote = ""
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, i
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return -1, i
    return deepest, where


# ---------------------------------------------------------------------------


class _Compiler:
    def __init__(
        self,
        text: str,
        features: Mapping[str, str] | None,
        other_entities: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.text = text
        self.features = features
        self.other = other_entities
        self.problems: list[ExprProblem] = []
        self.read_features: set[str] = set()
        self.read_paths: set[tuple[str, ...]] = set()
        self.probes: list[tuple[str, Fn]] = []
        starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                starts.append(i + 1)
        self._line_starts = starts

    # -- positions ---------------------------------------------------------
    def offset(self, node: ast.AST) -> int:
        lineno = getattr(node, "lineno", 1) or 1
        col = getattr(node, "col_offset", 0) or 0
        lineno = min(lineno, len(self._line_starts))
        start = self._line_starts[lineno - 1]
        if lineno == 1:
            col = max(col - 1, 0)  # the "(" added before parsing
        line_text = self.text[start:]
        # ast columns are UTF-8 byte offsets: convert to characters.
        chars = len(line_text.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return min(start + chars, max(len(self.text) - 1, 0))

    def problem(self, node: ast.AST | int, message: str, suggestion: str = "") -> _T:
        offset = node if isinstance(node, int) else self.offset(node)
        self.problems.append(ExprProblem(offset, message, suggestion))
        return _T(_NO_FN, ANY, True)

    # -- entry point -------------------------------------------------------
    def run(self) -> CompiledExpr | None:
        text = self.text
        if not text.strip():
            self.problem(0, "the expression is empty", "write a condition such as `phone_changes_30d > 3`")
            return None
        if len(text) > MAX_EXPR_CHARS:
            self.problem(
                MAX_EXPR_CHARS,
                f"the expression is too long ({len(text)} characters, at most {MAX_EXPR_CHARS})",
                "split it into several rules",
            )
            return None
        depth, where = _bracket_depth(text)
        if depth < 0:
            self.problem(where, f"syntax error: unmatched {text[where]!r}", "check the parentheses")
            return None
        if depth > MAX_DEPTH:
            self.problem(
                where,
                f"the expression is nested too deeply (more than {MAX_DEPTH} levels of brackets)",
                "flatten it or split it into several rules",
            )
            return None
        try:
            # Wrapped in parentheses so an expression may span lines (YAML block
            # scalars) and start with spaces; columns on line 1 shift by one.
            tree = ast.parse("(" + text + "\n)", mode="eval")
        except SyntaxError as exc:
            self.problem(
                self._syntax_offset(exc), f"syntax error: {exc.msg}", "check the operators and parentheses"
            )
            return None
        except (ValueError, RecursionError, MemoryError) as exc:
            self.problem(0, f"cannot parse the expression: {type(exc).__name__}", "simplify the expression")
            return None
        if not self._check_size(tree):
            return None
        body = self.node(tree.body)
        if not self.problems:
            if body.type in (STR, LIST):
                self.problem(
                    tree.body,
                    f"the expression gives a {body.type}, not a condition",
                    'compare it, e.g. `event.type == "login"`',
                )
            elif body.type == NULL:
                self.problem(tree.body, "the expression is always null, so the rule never hits")
        if self.problems:
            return None
        return CompiledExpr(
            source=text,
            fn=body.fn,
            type=body.type,
            features=tuple(sorted(self.read_features)),
            event_paths=tuple(sorted(self.read_paths)),
            list_probes=tuple(self.probes),
            guard=body.guard,
        )

    def _syntax_offset(self, exc: SyntaxError) -> int:
        if (exc.lineno or 1) > len(self._line_starts):
            return len(self.text)  # the error is at the end of the expression
        lineno = max(exc.lineno or 1, 1)
        col = max((exc.offset or 1) - 1 - (1 if lineno == 1 else 0), 0)
        return min(self._line_starts[lineno - 1] + col, len(self.text))

    def _check_size(self, tree: ast.Expression) -> bool:
        count = 0
        deepest = 0
        stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        while stack:
            node, depth = stack.pop()
            count += 1
            if depth > deepest:
                deepest = depth
                if depth > MAX_DEPTH:
                    self.problem(
                        node,
                        f"the expression is nested too deeply (more than {MAX_DEPTH} levels)",
                        "flatten it or split it into several rules",
                    )
                    return False
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    stack.append((child, depth + 1))
                else:
                    stack.append((child, depth))
        if count > MAX_NODES:
            self.problem(
                tree.body,
                f"the expression is too large ({count} syntax nodes, at most {MAX_NODES})",
                "split it into several rules",
            )
            return False
        return True

    # -- nodes -------------------------------------------------------------
    def node(self, n: ast.AST) -> _T:
        if isinstance(n, ast.Constant):
            return self.constant(n)
        if isinstance(n, ast.Name):
            return self.name(n)
        if isinstance(n, ast.Attribute):
            return self.attribute(n)
        if isinstance(n, ast.Compare):
            return self.compare(n)
        if isinstance(n, ast.BoolOp):
            return self.boolop(n)
        if isinstance(n, ast.UnaryOp):
            return self.unaryop(n)
        if isinstance(n, ast.BinOp):
            return self.binop(n)
        if isinstance(n, ast.Call):
            return self.call(n)
        if isinstance(n, ast.List):
            return self.problem(n, "a list is only allowed after `in` / `not in`", "write `x in [1, 2, 3]`")
        what = _FORBIDDEN_NAMES.get(type(n), type(n).__name__)
        return self.problem(
            n, f"not allowed in rules: {what}", "use features, event fields and the allowed functions"
        )

    def constant(self, n: ast.Constant) -> _T:
        v = n.value
        if v is None or isinstance(v, bool):
            return _T(_const(v), _type_of_value(v), v is None, True, v)
        if isinstance(v, int):
            if abs(v) > MAX_INT:
                return self.problem(n, f"the number is too large (at most {MAX_INT} in magnitude)")
            return _T(_const(v), NUM, False, True, v)
        if isinstance(v, float):
            if not math.isfinite(v):
                return self.problem(n, "the number is not finite")
            return _T(_const(v), NUM, False, True, v)
        if isinstance(v, str):
            if len(v) > MAX_STR:
                return self.problem(n, f"the string is too long ({len(v)} characters, at most {MAX_STR})")
            return _T(_const(v), STR, False, True, v)
        return self.problem(n, f"{type(v).__name__} literals are not allowed", "use numbers and strings")

    def name(self, n: ast.Name) -> _T:
        ident = n.id
        if ident.startswith("_"):
            return self.problem(n, f"names starting with '_' are not allowed ({ident!r})")
        if ident == "true":
            return _T(_const(True), BOOL, False, True, True)
        if ident == "false":
            return _T(_const(False), BOOL, False, True, False)
        if ident == "null":
            return _T(_const(None), NULL, True, True, None)
        if ident == "event":
            return self.problem(
                n, "`event` needs a field path", "write e.g. `event.type` or `event.geo.city`"
            )
        if ident in FUNCTIONS:
            return self.problem(n, f"{ident} is a function", f"call it: `{ident}(...)`")
        if self.features is None:
            self.read_features.add(ident)
            return _T(_feature_reader(ident), ANY, True)
        ftype = self.features.get(ident)
        if ftype is None and ident == "model":
            return self.problem(n, "`model` needs a model name", "write e.g. `model.resale > 0.8`")
        if ftype is None:
            for entity, names in self.other.items():
                if ident in names:
                    return self.problem(
                        n,
                        f"{ident!r} is a feature of entity {entity!r}, not of this rule's entity",
                        f"write a rule with `entity: {entity}`",
                    )
            candidates = [*self.features, *FUNCTIONS, "event", "true", "false", "null"]
            return self.problem(n, f"unknown feature {ident!r}", _suggest(ident, candidates))
        self.read_features.add(ident)
        return _T(_feature_reader(ident), SCHEMA_TYPES.get(ftype, ANY), True)

    def attribute(self, n: ast.Attribute) -> _T:
        parts: list[str] = []
        base: ast.AST = n
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        if not (isinstance(base, ast.Name) and base.id in ("event", "model")):
            return self.problem(
                n,
                "attribute access is only allowed on `event.<field path>`",
                "use a feature or `event.<field>`",
            )
        parts.reverse()
        if base.id == "model":
            return self.model(n, parts)
        bad = [p for p in parts if p.startswith("_")]
        if bad:
            return self.problem(n, f"event field names starting with '_' are not allowed ({bad[0]!r})")
        if len(parts) > MAX_PATH:
            return self.problem(n, f"the event path is too long (at most {MAX_PATH} parts)")
        path = tuple(parts)
        self.read_paths.add(path)
        return _T(_event_reader(path), EVENT_FIELD_TYPES.get(path, ANY), True)

    def model(self, n: ast.Attribute, parts: list[str]) -> _T:
        """``model.<name>``: a model's score, read like a feature named ``model.<name>``."""
        if len(parts) != 1 or parts[0].startswith("_"):
            return self.problem(n, "a model is read as `model.<name>`", "write e.g. `model.resale > 0.8`")
        key = f"{MODEL_PREFIX}{parts[0]}"
        if self.features is None:
            self.read_features.add(key)
            return _T(_feature_reader(key), ANY, True)
        if key not in self.features:
            for entity, names in self.other.items():
                if key in names:
                    return self.problem(
                        n,
                        f"model {parts[0]!r} scores entity {entity!r}, not this rule's entity",
                        f"write a rule with `entity: {entity}`",
                    )
            known = [k[len(MODEL_PREFIX) :] for k in self.features if k.startswith(MODEL_PREFIX)]
            hint = _suggest(parts[0], known) or (
                f"the feature spec declares {', '.join(known)} for this entity"
                if known
                else "declare it in the feature spec's `models:`"
            )
            return self.problem(n, f"unknown model {parts[0]!r}", hint)
        self.read_features.add(key)
        return _T(_feature_reader(key), NUM, True)

    def _list_literal(self, n: ast.AST, left_type: str) -> frozenset[Any] | None:
        if not isinstance(n, ast.List):
            self.problem(
                n, "the right side of `in` / `not in` must be a list literal", "write `x in [1, 2, 3]`"
            )
            return None
        if len(n.elts) > MAX_LIST:
            self.problem(
                n, f"the list is too long ({len(n.elts)} elements, at most {MAX_LIST})", "use in_list()"
            )
            return None
        values: list[Any] = []
        ok = True
        for elt in n.elts:
            t = self.node(elt)
            if not t.const:
                if t.fn is not _NO_FN:
                    self.problem(elt, "list elements must be literals")
                ok = False
                continue
            if t.value is None:
                self.problem(elt, "null in a list never matches (comparisons with null are false)")
                ok = False
                continue
            if not self._comparable(elt, left_type, t.type, equality=True):
                ok = False
                continue
            values.append(t.value)
        if not ok:
            return None
        # an ``any`` operand: true/false kept apart from 1/0 (see _member_key)
        return frozenset(map(_member_key, values)) if left_type == ANY else frozenset(values)

    def _comparable(self, n: ast.AST, a: str, b: str, *, equality: bool) -> bool:
        if a == NULL or b == NULL:
            self.problem(
                n,
                "a comparison with null is always false",
                "use coalesce(x, default) to give missing values a default",
            )
            return False
        if ANY in (a, b) or a == b:
            if not equality and BOOL in (a, b):
                self.problem(n, "true/false cannot be ordered with < <= > >=", "use == or !=")
                return False
            return True
        self.problem(n, f"cannot compare a {a} with a {b}", "compare values of the same type")
        return False

    def compare(self, n: ast.Compare) -> _T:
        left = self.node(n.left)
        if len(n.ops) == 1 and isinstance(n.ops[0], ast.In | ast.NotIn):
            if left.fn is _NO_FN:
                self.node_list_elems(n.comparators[0])
                return _T(_NO_FN, ANY, True)
            values = self._list_literal(n.comparators[0], left.type)
            if values is None:
                return _T(_NO_FN, ANY, True)
            fn = _membership(left.fn, values, isinstance(n.ops[0], ast.NotIn), left.type == ANY)
            return self._maybe_fold(n, _T(fn, BOOL, False), left.const)
        parts = [left]
        ops: list[Callable[[Any, Any], Any]] = []
        bad = left.fn is _NO_FN
        prev = left
        for op, comp in zip(n.ops, n.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                self.problem(comp, "`in` / `not in` cannot be chained with other comparisons", "use `and`")
                bad = True
                continue
            opf = _CMP.get(type(op))
            if opf is None:
                symbol = _OP_SYMBOLS.get(type(op), type(op).__name__)
                self.problem(n, f"the operator `{symbol}` is not allowed", "use == or !=")
                bad = True
                continue
            right = self.node(comp)
            if right.fn is _NO_FN:
                bad = True
            elif prev.fn is not _NO_FN and not self._comparable(
                comp, prev.type, right.type, equality=not isinstance(op, _ORDERING)
            ):
                bad = True
            if ANY in (prev.type, right.type):
                opf = _CMP_ANY[type(op)]
            parts.append(right)
            ops.append(opf)
            prev = right
        if bad:
            return _T(_NO_FN, ANY, True)
        if len(ops) == 1 and parts[1].const:
            c = parts[1].value
            if isinstance(n.left, ast.Name) and not left.const:
                if left.type == ANY:  # run-time types: the comparisons of _CMP_ANY
                    fn = _cmp_const(left.fn, ops[0], c)
                else:
                    fn = _feature_cmp_const(n.left.id, type(n.ops[0]), c)
                guard = None
                op_symbol = _GUARD_OPS.get(type(n.ops[0]))
                if op_symbol is not None and type(c) in _NUMT:
                    guard = (n.left.id, op_symbol, c)
                return _T(fn, BOOL, False, simple=(n.left.id, ops[0], c), guard=guard)
            fn = _cmp_const(left.fn, ops[0], c)
        else:
            fn = _cmp_chain([p.fn for p in parts], ops)
        return self._maybe_fold(n, _T(fn, BOOL, False), all(p.const for p in parts))

    def node_list_elems(self, n: ast.AST) -> None:
        if isinstance(n, ast.List):
            for elt in n.elts:
                self.node(elt)
        else:
            self.node(n)

    def boolop(self, n: ast.BoolOp) -> _T:
        parts = [self.node(v) for v in n.values]
        if any(p.fn is _NO_FN for p in parts):
            return _T(_NO_FN, ANY, True)
        for v, p in zip(n.values, parts, strict=True):
            if p.type == NULL:
                return self.problem(v, "a null operand makes no sense here", "use coalesce(x, default)")
        strict = all(p.type == BOOL and not p.nullable for p in parts)
        nullable = any(p.nullable for p in parts)
        fns = [p.fn for p in parts]
        if isinstance(n.op, ast.And):
            # Fuse a leading run of `feature <op> constant` terms into one closure.
            run = 0
            while run < len(parts) and parts[run].simple is not None:
                run += 1
            if run >= 2:
                fused = _fused_and([p.simple for p in parts[:run] if p.simple is not None])
                fns = [fused, *fns[run:]]
            fn = fns[0] if len(fns) == 1 else _and(fns, strict)
            if not all(p.const for p in parts):
                return _T(fn, BOOL, nullable, guard=parts[0].guard)
        else:
            fn = _or(fns, strict)
        return self._maybe_fold(n, _T(fn, BOOL, nullable), all(p.const for p in parts))

    def unaryop(self, n: ast.UnaryOp) -> _T:
        inner = self.node(n.operand)
        if isinstance(n.op, ast.Not):
            if inner.fn is _NO_FN:
                return inner
            if inner.nullable or inner.type != BOOL:
                return self._maybe_fold(n, _T(_not(inner.fn), BOOL, inner.nullable), inner.const)
            f0 = inner.fn

            def not_strict(f: Mapping[str, Any], e: Mapping[str, Any], lp: ListProvider | None) -> bool:
                return not f0(f, e, lp)

            return self._maybe_fold(n, _T(not_strict, BOOL, False), inner.const)
        if isinstance(n.op, ast.USub | ast.UAdd):
            symbol = "-" if isinstance(n.op, ast.USub) else "+"
            if inner.fn is _NO_FN:
                return inner
            if not self._numeric(n.operand, inner, f"unary `{symbol}`"):
                return _T(_NO_FN, ANY, True)
            opf: Callable[[Any], Any] = operator.neg if symbol == "-" else operator.pos
            return self._maybe_fold(n, _T(_unary(inner.fn, opf, symbol), NUM, inner.nullable), inner.const)
        symbol = _OP_SYMBOLS.get(type(n.op), type(n.op).__name__)
        return self.problem(n, f"the operator `{symbol}` is not allowed", "use + - * / % on numbers")

    def _numeric(self, n: ast.AST, t: _T, what: str) -> bool:
        if t.type in (NUM, ANY):
            return True
        if t.type == NULL:
            self.problem(n, f"{what} with null is always null", "use coalesce(x, default)")
        else:
            self.problem(n, f"{what} needs a number, got a {t.type}")
        return False

    def binop(self, n: ast.BinOp) -> _T:
        opf = _ARITH.get(type(n.op))
        symbol = _OP_SYMBOLS.get(type(n.op), type(n.op).__name__)
        if opf is None:
            hint = "exponentiation is not part of the language" if isinstance(n.op, ast.Pow) else ""
            self.problem(n, f"the operator `{symbol}` is not allowed", hint or "use + - * / %")
            return _T(_NO_FN, ANY, True)
        left = self.node(n.left)
        right = self.node(n.right)
        if left.fn is _NO_FN or right.fn is _NO_FN:
            return _T(_NO_FN, ANY, True)
        ok = self._numeric(n.left, left, f"`{symbol}`") & self._numeric(n.right, right, f"`{symbol}`")
        if not ok:
            return _T(_NO_FN, ANY, True)
        if (
            right.const
            and isinstance(n.op, ast.Div | ast.Mod | ast.FloorDiv)
            and isinstance(right.value, int | float)
            and not isinstance(right.value, bool)
            and right.value == 0
        ):
            # it would fail on every event, and a failing rule is reported as a hit with an error
            return self.problem(n, f"`{symbol}` by a constant zero always fails", "divide by something else")
        if right.const and not left.const:
            fn = _arith_const(left.fn, right.value, opf, symbol)
        else:
            fn = _arith(left.fn, right.fn, opf, symbol)
        return self._maybe_fold(n, _T(fn, NUM, left.nullable or right.nullable), left.const and right.const)

    def call(self, n: ast.Call) -> _T:
        if not isinstance(n.func, ast.Name):
            if isinstance(n.func, ast.Attribute):
                return self.problem(
                    n, "method calls are not allowed", f"allowed functions: {', '.join(FUNCTIONS)}"
                )
            return self.problem(n, "only named functions can be called", f"allowed: {', '.join(FUNCTIONS)}")
        fname = n.func.id
        if fname not in FUNCTIONS:
            hint = _suggest(fname, list(FUNCTIONS)) or f"allowed functions: {', '.join(FUNCTIONS)}"
            return self.problem(n, f"the function {fname!r} is not allowed", hint)
        if n.keywords:
            return self.problem(n, f"{fname}() takes no keyword arguments")
        if any(isinstance(a, ast.Starred) for a in n.args):
            return self.problem(n, f"{fname}() takes no starred arguments")
        if fname == "in_list":
            return self._in_list_call(n)
        if fname == "coalesce":
            if len(n.args) < 2:
                return self.problem(
                    n, "coalesce() needs at least 2 arguments", "write `coalesce(x, default)`"
                )
            args = [self.node(a) for a in n.args]
            if any(a.fn is _NO_FN for a in args):
                return _T(_NO_FN, ANY, True)
            types = {a.type for a in args if a.type != NULL}
            if len(types - {ANY}) > 1:
                return self.problem(n, f"coalesce() mixes types: {', '.join(sorted(types))}")
            rtype = next(iter(types - {ANY}), ANY) if types - {ANY} else (ANY if types else NULL)
            fn = _coalesce([a.fn for a in args])
            return self._maybe_fold(
                n, _T(fn, rtype, all(a.nullable for a in args)), all(a.const for a in args)
            )
        lo, hi, impl = _NUMERIC_FUNCS[fname]
        if not lo <= len(n.args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            return self.problem(n, f"{fname}() takes {want} argument(s), got {len(n.args)}")
        args = [self.node(a) for a in n.args]
        if any(a.fn is _NO_FN for a in args):
            return _T(_NO_FN, ANY, True)
        ok = True
        for node, a in zip(n.args, args, strict=True):
            ok = self._numeric(node, a, f"{fname}()") and ok
        if not ok:
            return _T(_NO_FN, ANY, True)
        fn = _numeric_call(fname, [a.fn for a in args], impl)
        return self._maybe_fold(n, _T(fn, NUM, any(a.nullable for a in args)), all(a.const for a in args))

    def _in_list_call(self, n: ast.Call) -> _T:
        if len(n.args) != 2:
            return self.problem(
                n, f"in_list() takes 2 arguments, got {len(n.args)}", 'write `in_list("name", value)`'
            )
        first = n.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            return self.problem(
                first, "in_list() needs the list name as a string literal", 'write `in_list("name", x)`'
            )
        if not _LIST_NAME.match(first.value):
            return self.problem(first, f"invalid list name {first.value!r}", "use letters, digits, _ . : -")
        value = self.node(n.args[1])
        if value.fn is _NO_FN:
            return value
        if value.type in (NULL, LIST):
            return self.problem(n.args[1], f"in_list() needs a scalar value, got a {value.type}")
        self.probes.append((first.value, value.fn))
        return _T(_in_list(first.value, value.fn), BOOL, False)

    def _maybe_fold(self, n: ast.AST, t: _T, all_const: bool) -> _T:
        """Evaluate a constant sub-expression once at load (``hours(1)`` -> 3600000)."""
        if not all_const:
            return t
        try:
            value = t.fn({}, {}, None)
        except RUNTIME_ERRORS as exc:
            self.problem(n, f"a constant part always fails: {exc}")
            return _T(_NO_FN, ANY, True)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            self.problem(n, f"a constant part is too large (at most {MAX_INT})")
            return _T(_NO_FN, ANY, True)
        return _T(
            _const(value), _type_of_value(value) if value is not None else NULL, value is None, True, value
        )


def compile_expression(
    text: str,
    features: Mapping[str, str] | None,
    *,
    other_entities: Mapping[str, Mapping[str, str]] | None = None,
) -> CompiledExpr:
    """Check and compile one expression.

    ``features`` maps the rule entity's feature names to schema type names
    (``None``: names are not checked and are typed ``any``, used only where no
    feature spec is at hand such as ``bypass rules diff``). ``other_entities``
    lets an unknown name be explained as another entity's feature. Raises
    :class:`ExpressionError` listing every problem found.
    """
    if not isinstance(text, str):
        raise ExpressionError([ExprProblem(0, "the expression must be a string", "quote it")])
    compiler = _Compiler(text, features, other_entities or {})
    compiled = compiler.run()
    if compiled is None:
        problems = compiler.problems or [ExprProblem(0, "the expression is invalid")]
        raise ExpressionError(problems)
    return compiled
