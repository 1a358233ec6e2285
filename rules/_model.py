"""Rule sets: the model, validation as a whole, and decisions.

A :class:`RuleSet` is an immutable value: load a new version with
:func:`load_ruleset` and swap the active one with a single reference
assignment; a rejected version never replaces the active one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from features import DURATION_HELP, DurationError, parse_duration_ms
from features.errors import BypassError
from rules._expr import (
    CompiledExpr,
    ExpressionError,
    Fn,
    ListProvider,
    compile_expression,
)
from rules._yaml import Path, Pos, YamlProblem, parse_yaml

Schema = Mapping[str, Mapping[str, str]]

MODES: Final = ("active", "shadow")
ACTIONS: Final = ("none", "review", "blacklist")
DECISIONS: Final = ("reject", "review")
#: Thresholds used when ``decisions`` (or one of its keys) is left out.
DEFAULT_DECISIONS: Final[Mapping[str, int]] = {"reject": 100, "review": 50}
RULE_KEYS: Final = (
    "action",
    "description",
    "entity",
    "events",
    "group",
    "id",
    "label",
    "mode",
    "priority",
    "rollout",
    "score",
    "ttl",
    "when",
)
TOP_KEYS: Final = ("decisions", "description", "rules", "version")
MAX_SCORE: Final = 1_000_000
MAX_PRIORITY: Final = 1_000_000
#: a rule set's size limits, checked before anything is compiled (a YAML alias can make a
#: small file expand into thousands of rules that take seconds to validate in every worker)
MAX_RULES: Final = 1_000
MAX_RULESET_BYTES: Final = 1_048_576

# What a rule set may name, defined once so nothing that validates can be refused
# downstream (Redis keeps '|'- and ','-separated fields; \Z, not $, which matches before
# a final newline).  Rule ids: letters, digits, _ . -; versions and labels: up to 100
# characters without control characters, '|' or ','.
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}\Z")
_NAME = re.compile(r"[^\x00-\x1f\x7f|,]{1,100}\Z")
#: the longest ttl: expires_at must stay a time every sink can store (ClickHouse: year 2286)
MAX_TTL_MS: Final = 100 * 365 * 86_400_000


class Problem(NamedTuple):
    """One problem in a rule set: where (1-based line and column), what, and what to do."""

    rule_id: str | None
    line: int
    col: int
    message: str
    suggestion: str

    def format(self, source: str | None = None) -> str:
        where = f"{source or '<rules>'}:{self.line}:{self.col}"
        who = f"rule {self.rule_id}" if self.rule_id else "rule set"
        tail = f" ({self.suggestion})" if self.suggestion else ""
        return f"{where}: {who}: {self.message}{tail}"


class RuleSetError(BypassError):
    """A rule set was rejected; ``problems`` lists every problem (rule id, line, col, message, suggestion)."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        problems = sorted(problems, key=lambda p: (p.line, p.col))
        count = len(problems)
        lines = "\n".join("  " + p.format(source) for p in problems)
        message = f"rule set {source or '<rules>'} is invalid ({count} problem{'s' * (count != 1)}):\n{lines}"
        first = problems[0] if problems else None
        super().__init__(
            message,
            problems=problems,
            source=source,
            rule_id=first.rule_id if first else None,
            position=(first.line, first.col) if first else None,
        )
        self.problems: list[Problem] = list(problems)
        self.source = source


class EvaluationError(BypassError):
    """An event cannot be evaluated at all (e.g. no integer ``ts`` for a blacklist entry)."""


def parse_duration(text: str) -> int:
    """``"30d"`` -> milliseconds, in the one duration grammar of ``features``
    (``parse_duration_ms``: ``30d``, ``12h``, ``1h30m``, ``2w``, ``500ms``, plain ms), as
    in the feature spec. Zero is returned as 0 (the caller decides); a ValueError for
    anything else, so the rule-set loader reports it with the rule id and position."""
    try:
        return parse_duration_ms(text, allow_zero=True)
    except DurationError as exc:
        raise ValueError(f"bad duration {_brief(text)}: {exc.fields['reason']}") from None


def hit_id(event_id: str, rule_id: str, ruleset_version: str) -> str:
    """Deterministic hit id: the first 16 bytes of SHA-256 of
    ``f"{event_id}\\n{rule_id}\\n{ruleset_version}"``, as 32 hex characters.

    Rule ids and versions cannot contain a newline, so the encoding is
    unambiguous. The same event replayed under the same rule set gives the
    same id, which is what lets every sink deduplicate.
    """
    data = f"{event_id}\n{rule_id}\n{ruleset_version}".encode()
    return hashlib.sha256(data).digest()[:16].hex()


def in_rollout(rule_id: str, entity_key: str, rollout: int) -> bool:
    """Whether ``entity_key`` is inside ``rule_id``'s rollout percentage."""
    if rollout >= 100:
        return True
    if rollout <= 0:
        return False
    digest = hashlib.sha256(f"{rule_id}:{entity_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < rollout


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as written (normalised); compared by value, e.g. by :func:`rules.diff`."""

    id: str
    entity: str
    when: str
    score: int | float
    label: str
    action: str = "none"
    ttl_ms: int | None = None
    priority: int = 0
    group: str | None = None
    mode: str = "active"
    rollout: int = 100
    events: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule whose condition held (or failed: ``error`` is set) for one (event, entity)."""

    rule_id: str
    label: str
    score: int | float
    mode: str  # "shadow" also when the entity is outside the rollout
    action: str
    counted: bool
    suppressed: bool
    rollout_excluded: bool
    error: str | None
    features: dict[str, Any]  # values of the features the rule reads

    def as_dict(self, *, with_features: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rule_id": self.rule_id,
            "label": self.label,
            "score": self.score,
            "mode": self.mode,
            "action": self.action,
            "counted": self.counted,
            "suppressed": self.suppressed,
            "rollout_excluded": self.rollout_excluded,
            "error": self.error,
        }
        if with_features:
            d["features"] = self.features
        return d


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    """A label to put on an entity until ``expires_at`` (event time + the rule's ttl, epoch ms)."""

    entity: str
    key: str
    label: str
    rule_ids: tuple[str, ...]
    expires_at: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of one (event, entity): hits, counted score, decision, blacklist entries."""

    event_id: Any
    entity: str
    key: str
    ruleset_version: str
    score: int | float
    decision: str
    hits: tuple[Hit, ...]
    blacklist: tuple[BlacklistEntry, ...]

    def as_dict(self, *, with_features: bool = False) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "entity": self.entity,
            "key": self.key,
            "ruleset_version": self.ruleset_version,
            "score": self.score,
            "decision": self.decision,
            "hits": [h.as_dict(with_features=with_features) for h in self.hits],
        }


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    fn: Fn
    reads: tuple[str, ...]
    probes: tuple[tuple[str, Fn], ...]
    guard: tuple[str, str, int | float] | None = None


#: Index rules by their guards only where a selection has at least this many rules.
INDEX_MIN_RULES = 12


@dataclass(frozen=True, slots=True)
class _FeatureGuards:
    """The rules guarded by ``feature <op> number``, thresholds sorted, for one feature.

    For a numeric value ``v`` the rules whose guard holds are found by bisection:
    ``> c``: c < v; ``>= c``: c <= v; ``< c``: c > v; ``<= c``: c >= v.
    """

    name: str
    gt: tuple[tuple[int | float, ...], tuple[int, ...]]
    ge: tuple[tuple[int | float, ...], tuple[int, ...]]
    lt: tuple[tuple[int | float, ...], tuple[int, ...]]
    le: tuple[tuple[int | float, ...], tuple[int, ...]]
    every: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to evaluate one (entity, event type) selection."""

    pairs: tuple[tuple[Fn, _Compiled], ...]
    unguarded: tuple[int, ...]
    guards: tuple[_FeatureGuards, ...]


def _make_plan(selected: tuple[_Compiled, ...]) -> _Plan:
    pairs = tuple((c.fn, c) for c in selected)
    if len(selected) < INDEX_MIN_RULES:
        return _Plan(pairs, tuple(range(len(pairs))), ())
    unguarded: list[int] = []
    by_feature: dict[str, dict[str, list[tuple[int | float, int]]]] = {}
    for i, c in enumerate(selected):
        if c.guard is None:
            unguarded.append(i)
            continue
        name, op, const = c.guard
        by_feature.setdefault(name, {"<": [], "<=": [], ">": [], ">=": []})[op].append((const, i))

    def table(entries: list[tuple[int | float, int]]) -> tuple[tuple[int | float, ...], tuple[int, ...]]:
        entries.sort()
        return tuple(c for c, _ in entries), tuple(i for _, i in entries)

    guards = tuple(
        _FeatureGuards(
            name,
            table(ops[">"]),
            table(ops[">="]),
            table(ops["<"]),
            table(ops["<="]),
            tuple(sorted(i for entries in ops.values() for _, i in entries)),
        )
        for name, ops in by_feature.items()
    )
    return _Plan(pairs, tuple(unguarded), guards)


def _candidates(plan: _Plan, features: Mapping[str, Any]) -> list[int]:
    """Positions of the rules whose guard holds (or that have none), in file order."""
    idx = list(plan.unguarded)
    get = features.get
    for g in plan.guards:
        v = get(g.name)
        if v is None:
            continue  # a comparison with null is false: every guard on it fails
        if type(v) is not int and type(v) is not float:
            idx.extend(g.every)  # let each rule decide (and report a type error)
            continue
        cs, pos = g.gt
        if cs:
            idx.extend(pos[: bisect_left(cs, v)])
        cs, pos = g.ge
        if cs:
            idx.extend(pos[: bisect_right(cs, v)])
        cs, pos = g.lt
        if cs:
            idx.extend(pos[bisect_right(cs, v) :])
        cs, pos = g.le
        if cs:
            idx.extend(pos[bisect_left(cs, v) :])
    idx.sort()
    return idx


class _HasSchema(Protocol):
    def schema(self) -> Schema: ...


_EMPTY: tuple[_Compiled, ...] = ()
_NO_PLAN = _Plan((), (), ())


@dataclass(frozen=True, eq=False)
class RuleSet:
    """An immutable, validated, compiled rule-set version."""

    version: str
    reject: int | float
    review: int | float
    rules: tuple[Rule, ...]
    source: str | None = None
    description: str = ""
    _compiled: tuple[_Compiled, ...] = field(default=(), repr=False)
    # Built from _compiled, never passed in: (entity, event type) -> rules; entity -> rules
    # without an events filter; either key -> evaluation plan (the hot path).
    _index: dict[tuple[str, Any], tuple[_Compiled, ...]] = field(init=False, repr=False)
    _default: dict[str, tuple[_Compiled, ...]] = field(init=False, repr=False)
    _plans: dict[Any, _Plan] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_entity: dict[str, list[_Compiled]] = {}
        types: dict[str, set[str]] = {}
        for c in self._compiled:
            by_entity.setdefault(c.rule.entity, []).append(c)
            if c.rule.events is not None:
                types.setdefault(c.rule.entity, set()).update(c.rule.events)
        index: dict[tuple[str, Any], tuple[_Compiled, ...]] = {}
        default: dict[str, tuple[_Compiled, ...]] = {}
        for entity, compiled in by_entity.items():
            default[entity] = tuple(c for c in compiled if c.rule.events is None)
            for etype in sorted(types.get(entity, ())):
                index[(entity, etype)] = tuple(
                    c for c in compiled if c.rule.events is None or etype in c.rule.events
                )
        plans: dict[Any, _Plan] = {k: _make_plan(v) for k, v in [*index.items(), *default.items()]}
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_default", default)
        object.__setattr__(self, "_plans", plans)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuleSet):
            return NotImplemented
        return (self.version, self.reject, self.review, self.rules) == (
            other.version,
            other.reject,
            other.review,
            other.rules,
        )

    def __hash__(self) -> int:
        return hash((self.version, self.rules))

    @property
    def entities(self) -> tuple[str, ...]:
        """Entity kinds that have at least one rule."""
        return tuple(sorted({r.entity for r in self.rules}))

    def reading(self, entity: str, names: Iterable[str]) -> tuple[str, ...]:
        """Ids of the rules of ``entity`` that read any of the features ``names``."""
        wanted = set(names)
        return tuple(c.rule.id for c in self._compiled if c.rule.entity == entity and wanted & set(c.reads))

    def types_reading(self, entity: str, name: str) -> frozenset[str] | None:
        """The event types on which a rule of ``entity`` reading ``name`` runs: None when
        one runs on every type, an empty set when no rule reads it."""
        types: set[str] = set()
        for c in self._compiled:
            if c.rule.entity == entity and name in c.reads:
                if c.rule.events is None:
                    return None
                types.update(c.rule.events)
        return frozenset(types)

    def with_shadow(self, rule_ids: Iterable[str]) -> RuleSet:
        """This version with the rules ``rule_ids`` in shadow mode: their hits are recorded
        but never counted (a feature warm start holds back rules reading cold features)."""
        ids = set(rule_ids)
        if not ids:
            return self
        compiled = tuple(
            dataclasses.replace(c, rule=dataclasses.replace(c.rule, mode="shadow")) if c.rule.id in ids else c
            for c in self._compiled
        )
        return RuleSet(
            version=self.version,
            reject=self.reject,
            review=self.review,
            rules=tuple(c.rule for c in compiled),
            source=self.source,
            description=self.description,
            _compiled=compiled,
        )

    def rules_for(self, entity: str, event_type: Any) -> tuple[Rule, ...]:
        """The rules evaluated for an event of ``event_type`` on ``entity``, in file order."""
        return tuple(c.rule for c in self._select(entity, event_type))

    def _select(self, entity: str, event_type: Any) -> tuple[_Compiled, ...]:
        selected = self._index.get((entity, event_type))
        if selected is None:
            return self._default.get(entity, _EMPTY)
        return selected

    def decide(self, score: float) -> str:
        """``reject`` / ``review`` / ``pass`` for a total counted score (thresholds are >=)."""
        if score >= self.reject:
            return "reject"
        if score >= self.review:
            return "review"
        return "pass"

    def evaluate(
        self,
        event: Mapping[str, Any],
        entity: str,
        key: Any,
        features: Mapping[str, Any],
        lists: ListProvider | None = None,
    ) -> Evaluation:
        """Evaluate the rules of ``entity`` for one event with its features.

        Deterministic; a rule failing at run time counts as not hit and is
        reported with its error; the other rules still run.
        """
        plan = self._plans.get((entity, event.get("type")))
        if plan is None:
            plan = self._plans.get(entity, _NO_PLAN)
        pairs = plan.pairs
        if plan.guards:
            pairs = tuple([pairs[i] for i in _candidates(plan, features)])
        fired: list[tuple[_Compiled, str | None]] | None = None
        for fn, c in pairs:
            try:
                if not fn(features, event, lists):
                    continue
                err = None
            except Exception as exc:  # a rule never stops the others
                err = f"{type(exc).__name__}: {exc}"
            if fired is None:
                fired = []
            fired.append((c, err))
        key_s = str(key)
        event_id = event.get("event_id")
        if fired is None:
            return Evaluation(event_id, entity, key_s, self.version, 0, self.decide(0), (), ())
        return self._outcome(event, entity, key_s, features, fired)

    def _outcome(
        self,
        event: Mapping[str, Any],
        entity: str,
        key: str,
        features: Mapping[str, Any],
        fired: list[tuple[_Compiled, str | None]],
    ) -> Evaluation:
        # (compiled, error, in rollout, would count)
        rows: list[tuple[_Compiled, str | None, bool, bool]] = []
        for c, err in fired:
            r = c.rule
            inside = in_rollout(r.id, key, r.rollout)
            rows.append((c, err, inside, err is None and inside and r.mode == "active"))
        # Within a group only the best would-count hit counts: highest priority, then smaller id.
        winners: dict[str, Rule] = {}
        for c, _err, _inside, would in rows:
            r = c.rule
            if would and r.group is not None:
                best = winners.get(r.group)
                if best is None or (-r.priority, r.id) < (-best.priority, best.id):
                    winners[r.group] = r
        hits: list[Hit] = []
        total: int | float = 0
        blacklist: dict[str, tuple[list[str], int]] = {}
        for c, err, inside, would in rows:
            r = c.rule
            suppressed = would and r.group is not None and winners[r.group] is not r
            counted = would and not suppressed
            hits.append(
                Hit(
                    rule_id=r.id,
                    label=r.label,
                    score=r.score,
                    mode=r.mode if inside else "shadow",
                    action=r.action,
                    counted=counted,
                    suppressed=suppressed,
                    rollout_excluded=not inside,
                    error=err,
                    features={name: features.get(name) for name in c.reads},
                )
            )
            if counted:
                total += r.score
                if r.action == "blacklist" and r.ttl_ms is not None:
                    ids, ttl = blacklist.get(r.label, ([], 0))
                    ids.append(r.id)
                    blacklist[r.label] = (ids, max(ttl, r.ttl_ms))
        entries: tuple[BlacklistEntry, ...] = ()
        if blacklist:
            ts = event.get("ts")
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise EvaluationError(
                    f"event {event.get('event_id')!r} has no integer 'ts' (epoch ms) for its blacklist entry",
                    event_id=event.get("event_id"),
                )
            entries = tuple(
                BlacklistEntry(entity, key, label, tuple(sorted(ids)), ts + ttl)
                for label, (ids, ttl) in sorted(blacklist.items())
            )
        return Evaluation(
            event.get("event_id"),
            entity,
            key,
            self.version,
            total,
            self.decide(total),
            tuple(hits),
            entries,
        )

    def list_probes(
        self, event: Mapping[str, Any], entity: str, features: Mapping[str, Any]
    ) -> set[tuple[str, Any]]:
        """The ``in_list`` lookups evaluating this event may make: ``{(list name, value)}``.

        A superset (every ``in_list`` of every selected rule, regardless of
        short-circuits), so a live caller can fetch them all in one round trip
        and evaluate against an in-memory provider. Null or non-scalar values,
        and values that fail to evaluate, are left out (they never reach the
        provider).
        """
        probes: set[tuple[str, Any]] = set()
        for c in self._select(entity, event.get("type")):
            for name, fn in c.probes:
                try:
                    value = fn(features, event, None)
                except Exception:  # noqa: S112 - evaluate() reports it
                    continue
                if isinstance(value, str | int | float | bool):
                    probes.add((name, value))
        return probes


# ---------------------------------------------------------------------------
# Loading and validation


class _Validator:
    def __init__(
        self,
        positions: Mapping[Path, Pos],
        schema: Schema | None,
        source: str | None,
        event_types: Sequence[str] | None = None,
    ) -> None:
        self.positions = positions
        self.schema = schema
        self.event_types = None if event_types is None else tuple(event_types)
        self.source = source
        self.problems: list[Problem] = []

    def pos(self, path: Path) -> Pos:
        p: Path = path
        while p:
            found = self.positions.get(p)
            if found is not None:
                return found
            p = p[:-1]
        return self.positions.get((), Pos(1, 1))

    def add(self, rule_id: str | None, path: Path, message: str, suggestion: str = "") -> None:
        p = self.pos(path)
        self.problems.append(Problem(rule_id, p.line, p.col, message, suggestion))

    def add_at(self, rule_id: str | None, line: int, col: int, message: str, suggestion: str = "") -> None:
        self.problems.append(Problem(rule_id, line, col, message, suggestion))

    # -- top level ---------------------------------------------------------
    def run(self, data: Any) -> RuleSet | None:
        if not isinstance(data, Mapping):
            self.add(None, (), "a rule set must be a mapping with version, decisions and rules")
            return None
        for k in data:
            if k not in TOP_KEYS:
                self.add(None, (k,), f"unknown key {k!r}", _suggest(str(k), TOP_KEYS))
        version = data.get("version")
        if not isinstance(version, str) or not version.strip() or not _NAME.match(version):
            self.add(
                None,
                ("version",),
                "version must be a non-empty one-line string (at most 100 characters, "
                "no control characters, '|' or ',')",
                'quote it, e.g. version: "2026-11-23.1"',
            )
            version = None
        reject, review = self.decisions(data.get("decisions"))
        raw_rules = data.get("rules")
        rules: list[Rule] = []
        compiled: list[_Compiled] = []
        if not isinstance(raw_rules, list):
            self.add(
                None,
                ("rules",),
                "rules must be a list of rules",
                "write `rules:` followed by `- id: ...` items",
            )
        else:
            seen: dict[str, int] = {}
            for i, raw in enumerate(raw_rules):
                built = self.rule(i, raw, seen)
                if built is not None:
                    rules.append(built[0])
                    compiled.append(built[1])
        description = data.get("description", "")
        if not isinstance(description, str):
            self.add(None, ("description",), "description must be a string")
        if self.problems or version is None or reject is None or review is None:
            return None
        return RuleSet(
            version=version,
            reject=reject,
            review=review,
            rules=tuple(rules),
            source=self.source,
            description=description if isinstance(description, str) else "",
            _compiled=tuple(compiled),
        )

    def decisions(self, d: Any) -> tuple[int | float | None, int | float | None]:
        path: Path = ("decisions",)
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            self.add(None, path, "decisions must be a mapping", "write `decisions: {reject: 80, review: 50}`")
            return None, None
        for k in d:
            if k not in DECISIONS:
                self.add(
                    None,
                    (*path, k),
                    f"unknown decision {k!r}",
                    _suggest(str(k), DECISIONS) or "use reject, review",
                )
        values: dict[str, int | float | None] = {}
        for k in DECISIONS:
            v = d.get(k, DEFAULT_DECISIONS[k])
            if not _is_number(v):
                self.add(
                    None, (*path, k) if k in d else path, f"decisions.{k} must be a number", f"e.g. {k}: 50"
                )
                values[k] = None
            else:
                values[k] = v
        reject, review = values["reject"], values["review"]
        if reject is not None and review is not None and not reject > review:
            self.add(
                None,
                (*path, "reject"),
                f"thresholds out of order: reject ({reject}) must be greater than review ({review})",
                "raise reject or lower review",
            )
            return None, None
        return reject, review

    # -- one rule ------------------------------------------------------------
    def rule(self, i: int, raw: Any, seen: dict[str, int]) -> tuple[Rule, _Compiled] | None:
        base: Path = ("rules", i)
        if not isinstance(raw, Mapping):
            self.add(None, base, f"rule #{i + 1} must be a mapping", "start it with `- id: ...`")
            return None
        before = len(self.problems)
        rid = raw.get("id")
        rule_id: str | None = None
        if not isinstance(rid, str) or not _ID.match(rid):
            self.add(
                None,
                (*base, "id") if "id" in raw else base,
                f"rule #{i + 1}: id must be letters, digits, _ . - (starting with a letter, at most 100)",
                "e.g. id: resale_phone_churn",
            )
        else:
            rule_id = rid
            if rid in seen:
                self.add(
                    rid, (*base, "id"), f"duplicate rule id {rid!r} (first at line {seen[rid]})", "rename one"
                )
            else:
                seen[rid] = self.pos((*base, "id")).line
        for k in raw:
            if k not in RULE_KEYS:
                self.add(rule_id, (*base, k), f"unknown key {k!r}", _suggest(str(k), RULE_KEYS))

        entity = raw.get("entity")
        entity_ok = False
        if not isinstance(entity, str):
            self.add(rule_id, (*base, "entity") if "entity" in raw else base, "entity is required (a string)")
        elif self.schema is not None and entity not in self.schema:
            known = sorted(self.schema)
            self.add(
                rule_id,
                (*base, "entity"),
                f"unknown entity {_brief(entity)}; the feature spec has {', '.join(known)}",
                _suggest(entity, known),
            )
        else:
            entity_ok = True

        score: Any = raw.get("score")
        if not _is_number(score) or abs(score) > MAX_SCORE:
            self.add(
                rule_id,
                (*base, "score") if "score" in raw else base,
                f"score must be a number (|score| <= {MAX_SCORE})",
            )
            score = 0

        action = raw.get("action", "none")
        if action not in ACTIONS:
            self.add(
                rule_id,
                (*base, "action"),
                f"unknown action {_brief(action)}",
                _suggest(_brief(action, quote=False), ACTIONS) or "use none, review or blacklist",
            )
        mode = raw.get("mode", "active")
        if mode not in MODES:
            self.add(
                rule_id,
                (*base, "mode"),
                f"unknown mode {_brief(mode)}",
                _suggest(_brief(mode, quote=False), MODES) or "use active or shadow",
            )

        ttl_ms: int | None = None
        if "ttl" in raw:
            try:
                ttl_ms = parse_duration(raw["ttl"])
                if ttl_ms <= 0:
                    raise ValueError("zero")
                if ttl_ms > MAX_TTL_MS:
                    raise ValueError("too long")
            except (ValueError, TypeError, AttributeError):
                self.add(
                    rule_id,
                    (*base, "ttl"),
                    f"bad ttl {_brief(raw['ttl'])}",
                    f"use {DURATION_HELP}, more than zero and at most 36500d",
                )
                ttl_ms = None
        elif action == "blacklist":
            self.add(rule_id, base, "a blacklist rule needs a ttl", "add e.g. ttl: 30d")

        priority = raw.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > MAX_PRIORITY:
            self.add(rule_id, (*base, "priority"), "priority must be an integer", "e.g. priority: 10")
            priority = 0
        rollout = raw.get("rollout", 100)
        if not isinstance(rollout, int) or isinstance(rollout, bool) or not 0 <= rollout <= 100:
            self.add(
                rule_id,
                (*base, "rollout"),
                f"rollout must be an integer percentage 0-100, got {_brief(rollout)}",
            )
            rollout = 100
        group = raw.get("group")
        if group is not None and (not isinstance(group, str) or not group.strip()):
            self.add(rule_id, (*base, "group"), "group must be a non-empty string")
            group = None
        label = raw.get("label", rule_id)
        if not isinstance(label, str) or not label.strip() or not _NAME.match(label):
            self.add(
                rule_id,
                (*base, "label"),
                "label must be a non-empty string "
                "(at most 100 characters, no control characters, '|' or ',')",
            )
            label = rule_id or ""
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.add(rule_id, (*base, "description"), "description must be a string")
            description = ""

        events: tuple[str, ...] | None = None
        if "events" in raw:
            ev = raw["events"]
            if (
                not isinstance(ev, list)
                or not ev
                or not all(isinstance(x, str) and x.strip() and _NAME.match(x) for x in ev)
            ):
                self.add(
                    rule_id,
                    (*base, "events"),
                    "events must be a non-empty list of event types (no control characters, '|' or ',')",
                    "e.g. events: [login, order]; leave it out to evaluate on every event",
                )
            else:
                events = tuple(dict.fromkeys(ev))
                for j, etype in enumerate(ev):
                    if self.event_types is not None and etype not in self.event_types:
                        self.add(
                            rule_id,
                            (*base, "events", j),
                            f"unknown event type {_brief(etype)}: the feature spec does not declare it, "
                            "so the rule would never fire",
                            _suggest(etype, self.event_types)
                            or f"the feature spec declares {', '.join(self.event_types)}",
                        )

        compiled: CompiledExpr | None = None
        when = raw.get("when")
        if not isinstance(when, str):
            self.add(
                rule_id,
                (*base, "when") if "when" in raw else base,
                "when must be an expression (a string)",
                "e.g. when: phone_changes_30d > 3",
            )
        else:
            features: Mapping[str, str] | None = None
            others: dict[str, Mapping[str, str]] = {}
            if self.schema is not None and entity_ok and isinstance(entity, str):
                features = self.schema[entity]
                others = {e: f for e, f in self.schema.items() if e != entity}
            elif self.schema is not None:
                features = None  # entity already reported; check the syntax only
            try:
                compiled = compile_expression(when, features, other_entities=others)
            except ExpressionError as exc:
                p = self.pos((*base, "when"))
                for ep in exc.problems:
                    line, col = p.at(when, ep.offset)
                    self.add_at(rule_id, line, col, ep.message, ep.suggestion)
        if len(self.problems) > before or rule_id is None or compiled is None:
            return None
        assert isinstance(entity, str) and isinstance(label, str)  # noqa: S101 - narrowed by the checks above
        rule = Rule(
            id=rule_id,
            entity=entity,
            when=when if isinstance(when, str) else "",
            score=score,
            label=label,
            action=str(action),
            ttl_ms=ttl_ms,
            priority=priority,
            group=group,
            mode=str(mode),
            rollout=rollout,
            events=events,
            description=description,
        )
        return rule, _Compiled(rule, compiled.fn, compiled.features, compiled.list_probes, compiled.guard)


def _brief(v: Any, *, quote: bool = True) -> str:
    """A short, safe rendering of a user value for messages (never a huge repr)."""
    if isinstance(v, str | int | float | bool) or v is None:
        text = repr(v) if quote else str(v)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(v).__name__}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _event_types(schema: Any, event_types: Sequence[str] | None) -> Sequence[str] | None:
    """The declared event types: given, else a FeatureSpec's ``events`` (None: any type)."""
    if event_types is not None:
        return event_types
    declared = getattr(schema, "events", None)
    return declared if isinstance(declared, tuple) else None


def _as_schema(schema: Schema | _HasSchema | None) -> Schema | None:
    if schema is None:
        return None
    method = getattr(schema, "schema", None)
    if callable(method):
        result: Schema = method()
        return result
    if isinstance(schema, Mapping):
        return schema
    raise TypeError("schema must be a mapping entity -> feature -> type, or a FeatureSpec")


def build_ruleset(
    data: Any,
    schema: Schema | _HasSchema | None,
    *,
    positions: Mapping[Path, Pos] | None = None,
    source: str | None = None,
    event_types: Sequence[str] | None = None,
) -> RuleSet:
    """Validate and compile an already-parsed rule set (e.g. from JSON).

    ``positions`` maps paths such as ``("rules", 0, "when")`` to :class:`Pos`
    so problems point at the source. ``event_types`` are the known event types (default:
    a FeatureSpec's declared ``events``; None accepts any): a rule's ``events:`` naming
    another is a problem with a "did you mean". Raises :class:`RuleSetError`.
    """
    validator = _Validator(positions or {}, _as_schema(schema), source, _event_types(schema, event_types))
    ruleset = validator.run(data)
    if ruleset is None:
        raise RuleSetError(validator.problems or [Problem(None, 1, 1, "invalid rule set", "")], source=source)
    return ruleset


def load_ruleset(
    text: str,
    schema: Schema | _HasSchema | None,
    *,
    source: str | None = None,
    event_types: Sequence[str] | None = None,
) -> RuleSet:
    """Parse, validate and compile a YAML rule set as a whole.

    ``schema`` is ``entity -> feature name -> type`` (``FeatureSpec.schema()``;
    a ``FeatureSpec`` itself is accepted too). ``None`` skips name and type
    checks (syntax and safety are still checked); only tools without a feature
    spec, such as ``bypass rules diff``, should do that. ``event_types``: as in
    :func:`build_ruleset`. ``source`` names the file in messages. Raises
    :class:`RuleSetError` naming every problem with rule id, line and column.
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_RULESET_BYTES:
        raise RuleSetError(
            [
                Problem(
                    None,
                    1,
                    1,
                    f"the rule set is {size:,} bytes, above the limit of {MAX_RULESET_BYTES:,}",
                    "split it or shorten it",
                )
            ],
            source=source,
        )
    try:
        data, positions, duplicates = parse_yaml(text)
    except YamlProblem as exc:
        raise RuleSetError(
            [Problem(None, exc.line, exc.col, exc.message, "fix the YAML syntax")], source=source
        ) from None
    raw_rules = data.get("rules") if isinstance(data, dict) else None
    if isinstance(raw_rules, list) and len(raw_rules) > MAX_RULES:
        raise RuleSetError(
            [
                Problem(
                    None,
                    1,
                    1,
                    f"the rule set has {len(raw_rules):,} rules, above the limit of {MAX_RULES:,}",
                    "merge rules or split the set",
                )
            ],
            source=source,
        )
    dup_problems = [
        Problem(
            _rule_id_at(data, path),
            pos.line,
            pos.col,
            f"duplicate key {key!r}",
            "keep one",
        )
        for path, pos, key in duplicates
    ]
    try:
        ruleset = build_ruleset(data, schema, positions=positions, source=source, event_types=event_types)
    except RuleSetError as exc:
        raise RuleSetError([*dup_problems, *exc.problems], source=source) from None
    if dup_problems:
        raise RuleSetError(dup_problems, source=source)
    return ruleset


def _rule_id_at(data: Any, path: Path) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int) and isinstance(data, Mapping):
        rules = data.get("rules")
        if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], Mapping):
            rid = rules[path[1]].get("id")
            return rid if isinstance(rid, str) else None
    return None
