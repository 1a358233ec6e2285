"""Detection quality against the simulator's ground truth: precision and recall per scenario.

Pure: no I/O beyond parsing lines the caller read. Inputs:

- the truth, one ``{"entity", "key", "scenario"}`` per bad entity (``truth.jsonl`` written by
  ``bypass simulate``);
- the flags the analyzer raised: ``(entity, key, label)`` triples (from ``bypass.blacklist``
  entries, or counted hits). ``label`` may be a rule id as well: the mapping decides;
- which labels count as detecting which scenario (``scenario -> labels``); by default each
  scenario is detected by the label of the same name, as ``examples/rules.yaml`` writes them.

For a scenario ``s`` with truth set ``T`` (its entities) and flagged set ``F`` (distinct
``(entity, key)`` flagged with a label of ``s``): ``precision = |F ∩ T| / |F|`` and
``recall = |F ∩ T| / |T|``; undefined (``None``) when the denominator is 0. A normal
entity flagged with a scenario's label is a false positive of that scenario; an entity
of another scenario flagged with it is one too (the label was wrong).

The overall row ``(any)`` asks "bad or not": its truth is every bad entity, its flagged
set every entity flagged with *any* label - including labels that detect no scenario
(``login_spread``, ``takeover_cashout`` ...), which are false positives there unless the
entity is bad under some scenario. Those labels are also listed in ``unmapped_labels``;
the per-scenario rows ignore them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from features.errors import ConfigError

__all__ = [
    "DEFAULT_LABELS",
    "Evaluation",
    "ScenarioScore",
    "evaluate",
    "read_truth",
]

Entity = tuple[str, str]  # (entity kind, key)

DEFAULT_LABELS: Mapping[str, frozenset[str]] = {
    "account_resale": frozenset({"account_resale"}),
    "credential_stuffing": frozenset({"credential_stuffing"}),
    "device_farm": frozenset({"device_farm"}),
    "impossible_travel": frozenset({"impossible_travel"}),
}


@dataclass(frozen=True)
class ScenarioScore:
    scenario: str
    truth: int  # entities of the scenario
    flagged: int  # distinct entities flagged with one of its labels
    true_positives: int
    detected: tuple[Entity, ...]  # of this scenario and flagged: the true positives (sorted)
    false_positives: tuple[Entity, ...]  # flagged but not of this scenario (sorted)
    missed: tuple[Entity, ...]  # of this scenario, not flagged (sorted)

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.truth if self.truth else None


@dataclass(frozen=True)
class Evaluation:
    scores: tuple[ScenarioScore, ...]  # sorted by scenario
    overall: ScenarioScore  # any label (mapped or not) vs any bad entity ("bad or not")
    unmapped_labels: Mapping[str, int]  # flags whose label detects no scenario: label -> entities

    def by_scenario(self) -> dict[str, ScenarioScore]:
        return {s.scenario: s for s in self.scores}

    def rows(self) -> list[dict[str, Any]]:
        """Plain rows for printing or JSON: scenario, truth, flagged, tp, precision, recall."""
        return [
            {
                "scenario": s.scenario,
                "truth": s.truth,
                "flagged": s.flagged,
                "true_positives": s.true_positives,
                "precision": s.precision,
                "recall": s.recall,
            }
            for s in (*self.scores, self.overall)
        ]


def read_truth(lines: Iterable[str | bytes]) -> list[dict[str, str]]:
    """Parse ``truth.jsonl`` lines (blank lines skipped); ConfigError naming the bad line."""
    out: list[dict[str, str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"truth line {n} is not JSON: {exc}", line=n) from None
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("entity", "key", "scenario")
        ):
            raise ConfigError(f"truth line {n} needs string fields entity, key and scenario", line=n)
        out.append({"entity": item["entity"], "key": item["key"], "scenario": item["scenario"]})
    return out


def _score(scenario: str, truth: set[Entity], flagged: set[Entity]) -> ScenarioScore:
    hits = truth & flagged
    return ScenarioScore(
        scenario=scenario,
        truth=len(truth),
        flagged=len(flagged),
        true_positives=len(hits),
        detected=tuple(sorted(hits)),
        false_positives=tuple(sorted(flagged - truth)),
        missed=tuple(sorted(truth - flagged)),
    )


def evaluate(
    truth: Iterable[Mapping[str, str]],
    flags: Iterable[tuple[str, str, str]],
    labels: Mapping[str, Iterable[str]] = DEFAULT_LABELS,
) -> Evaluation:
    """Precision and recall per scenario (see the module docstring).

    Every scenario of ``labels`` and of ``truth`` gets a score (a scenario nobody can
    detect has recall 0, not a missing row).
    """
    truth_by: dict[str, set[Entity]] = {}
    for item in truth:
        truth_by.setdefault(item["scenario"], set()).add((item["entity"], item["key"]))
    label_to: dict[str, set[str]] = {}
    for scenario, names in labels.items():
        for name in names:
            label_to.setdefault(name, set()).add(scenario)
    flagged_by: dict[str, set[Entity]] = {s: set() for s in labels}
    unmapped: dict[str, set[Entity]] = {}
    for entity, key, label in flags:
        scenarios = label_to.get(label)
        if not scenarios:
            unmapped.setdefault(label, set()).add((entity, key))
            continue
        for scenario in scenarios:
            flagged_by[scenario].add((entity, key))
    names = sorted(set(truth_by) | set(labels))
    scores = tuple(_score(s, truth_by.get(s, set()), flagged_by.get(s, set())) for s in names)
    all_truth = set().union(*truth_by.values()) if truth_by else set()
    all_flagged = set().union(*flagged_by.values(), *unmapped.values())
    overall = _score("(any)", all_truth, all_flagged)
    return Evaluation(
        scores=scores,
        overall=overall,
        unmapped_labels=dict(sorted(Counter({k: len(v) for k, v in unmapped.items()}).items())),
    )
