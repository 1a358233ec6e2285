"""Compare two rule-set versions: added, removed and changed rules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rules._model import RuleSet


@dataclass(frozen=True, slots=True)
class RuleChange:
    """A rule present in both versions whose definition differs: ``(field, old, new)`` per field."""

    rule_id: str
    fields: tuple[tuple[str, Any, Any], ...]


@dataclass(frozen=True, slots=True)
class RuleSetDiff:
    """What changed from ``old_version`` to ``new_version``. Falsy when nothing did."""

    old_version: str
    new_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[RuleChange, ...]
    decisions: tuple[tuple[str, Any, Any], ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.decisions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [
                {"rule_id": c.rule_id, "fields": {name: {"old": o, "new": n} for name, o, n in c.fields}}
                for c in self.changed
            ],
            "decisions": {name: {"old": o, "new": n} for name, o, n in self.decisions},
        }

    def lines(self) -> list[str]:
        """Human-readable summary, one change per line (``+`` added, ``-`` removed, ``~`` changed)."""
        out = [f"version {self.old_version} -> {self.new_version}"]
        out += [f"decisions.{name}: {o} -> {n}" for name, o, n in self.decisions]
        out += [f"+ {rid}" for rid in self.added]
        out += [f"- {rid}" for rid in self.removed]
        for c in self.changed:
            parts = "; ".join(f"{name}: {_show(o)} -> {_show(n)}" for name, o, n in c.fields)
            out.append(f"~ {c.rule_id}: {parts}")
        if not self:
            out.append("no rule changes")
        return out


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def diff(old: RuleSet, new: RuleSet) -> RuleSetDiff:
    """Rules added, removed and changed (field by field) from ``old`` to ``new``, in file order."""
    old_rules = {r.id: r for r in old.rules}
    new_rules = {r.id: r for r in new.rules}
    added = tuple(r.id for r in new.rules if r.id not in old_rules)
    removed = tuple(r.id for r in old.rules if r.id not in new_rules)
    changed: list[RuleChange] = []
    for r in new.rules:
        before = old_rules.get(r.id)
        if before is None or before == r:
            continue
        old_fields, new_fields = asdict(before), asdict(r)
        delta = tuple(
            (name, old_fields[name], value) for name, value in new_fields.items() if old_fields[name] != value
        )
        changed.append(RuleChange(r.id, delta))
    thresholds = (("reject", old.reject, new.reject), ("review", old.review, new.review))
    decisions = tuple(t for t in thresholds if t[1] != t[2])
    return RuleSetDiff(old.version, new.version, added, removed, tuple(changed), decisions)
