"""Rule language, rule sets and decisions: pure, deterministic, no I/O.

    >>> rs = load_ruleset(text, spec.schema(), source="rules.yaml")
    >>> ev = rs.evaluate(event, "user", "u1", features)
    >>> ev.decision, [h.rule_id for h in ev.hits if h.counted]

Errors (all :class:`features.errors.BypassError`):

    RuleSetError        a rule set was rejected at load (``.problems``)
    ExpressionError     one expression was rejected (``.problems`` with offsets)
    RuleRuntimeError    a rule failed on one event (caught and reported per hit)
    EvaluationError     an event cannot be evaluated at all
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
