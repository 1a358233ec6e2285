"""Rule language, rule sets and decisions: pure, deterministic, no I/O.

    >>> rs = load_ruleset(text, spec.schema(), source="rules.yaml")   # RuleSetError lists every problem
    >>> ev = rs.evaluate(event, "user", "u1", features, lists)
    >>> ev.decision, [h.rule_id for h in ev.hits if h.counted], ev.blacklist

The expression language (``rules._expr``): literals, features of the rule's entity,
``event.<path>``, ``< <= > >= == != in not in``, ``and or not``, ``+ - * / %`` and
``in_list coalesce abs min max days hours minutes``. Parsed with :mod:`ast` (never
``eval``), checked against an allow-list and the feature schema, compiled to closures.
Null: comparisons with null are false, arithmetic with null is null, ``not null`` is
null (three-valued logic), so a rule over a missing feature never hits.

Decisions (``RuleSet.evaluate``): per (event, entity) the entity's rules whose
``events`` hold the event type; in a ``group`` only the best would-count hit counts
(highest priority, then smaller id), the others are ``suppressed``; ``shadow`` hits
never count; outside the rollout (``sha256(f"{rule_id}:{key}")[:8] % 100 >= rollout``)
a hit is reported as shadow with ``rollout_excluded``; the decision is ``reject`` /
``review`` / ``pass`` from the counted score (``>=`` thresholds); counted ``blacklist``
hits give one entry per label, expiring at event ``ts`` + the longest ttl; a rule that
fails at run time is reported with ``error`` and never stops the others.

Errors (all :class:`features.errors.BypassError`):

    RuleSetError        a rule set was rejected at load (``.problems``)
    ExpressionError     one expression was rejected (``.problems`` with offsets)
    RuleRuntimeError    a rule failed on one event (caught and reported per hit)
    EvaluationError     an event cannot be evaluated at all (no integer ``ts`` for a blacklist entry)
"""

from rules._diff import RuleChange, RuleSetDiff, diff
from rules._expr import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_EXPR_CHARS,
    MAX_INT,
    MAX_LIST,
    MAX_NODES,
    MAX_STR,
    RUNTIME_ERRORS,
    CompiledExpr,
    ExpressionError,
    ExprProblem,
    ListProvider,
    RuleRuntimeError,
    StaticLists,
    compile_expression,
)
from rules._model import (
    BlacklistEntry,
    Evaluation,
    EvaluationError,
    Hit,
    Problem,
    Rule,
    RuleSet,
    RuleSetError,
    Schema,
    build_ruleset,
    hit_id,
    in_rollout,
    load_ruleset,
    parse_duration,
)

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_EXPR_CHARS",
    "MAX_INT",
    "MAX_LIST",
    "MAX_NODES",
    "MAX_STR",
    "RUNTIME_ERRORS",
    "BlacklistEntry",
    "CompiledExpr",
    "Evaluation",
    "EvaluationError",
    "ExprProblem",
    "ExpressionError",
    "Hit",
    "ListProvider",
    "Problem",
    "Rule",
    "RuleChange",
    "RuleRuntimeError",
    "RuleSet",
    "RuleSetDiff",
    "RuleSetError",
    "Schema",
    "StaticLists",
    "build_ruleset",
    "compile_expression",
    "diff",
    "hit_id",
    "in_rollout",
    "load_ruleset",
    "parse_duration",
]
