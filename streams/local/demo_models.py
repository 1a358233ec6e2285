"""The demo's models: trained on the first part of the simulated traffic, scored on the rest.

1. ``bypass model dataset`` (one replay for every entity kind): the features at each
   decision of the first ``TRAIN_SHARE`` of event time, labelled from the simulator's truth;
2. ``bypass model train``: one gradient-boosted model per scenario, on the entity kind the
   scenario's truth names (resale and travel: user; farms: device; stuffing: ip); the score
   threshold is the one with the best F1 on the later fifth of that first part (never on
   the rest);
3. the models declared in a copy of the feature spec, a rule per model
   (``model.<name> >= threshold``, labelled with its scenario) added to the example rules,
   and a replay over the rest of the traffic: the same code as the live worker, so the
   scores and hits are those the worker would produce with this spec;
4. precision and recall per scenario over the entities active in the rest: rules alone
   (counted hits of the example rules), the models alone, and both (either flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["MODELS", "TRAIN_SHARE", "ModelOutcome", "run_models"]

#: the share of event time the models learn from; they are scored on the rest
TRAIN_SHARE: Final = 0.6
#: model name -> (entity kind, scenario = the target label)
MODELS: Final = {
    "resale": ("user", "account_resale"),
    "travel": ("user", "impossible_travel"),
    "farm": ("device", "device_farm"),
    "stuffing": ("ip", "credential_stuffing"),
}


@dataclass
class ModelOutcome:
    """What the step measured (printed by the demo, checked by its test)."""

    split_ms: int
    trained: dict[str, str]  # model -> "threshold t, AUC a" or why it was not trained
    #: scenario -> {"truth": n, "rules": (tp, flagged), "model": (tp, flagged), "both": (tp, flagged),
    #: "evasive": (truth, rules, model, both)}
    rows: dict[str, dict[str, Any]]


def _best_threshold(scores: list[float], labels: list[int]) -> float:
    best, best_f1 = 0.5, -1.0
    positives = sum(labels)
    for t in sorted(set(round(s, 3) for s in scores)):
        flagged = [y for s, y in zip(scores, labels, strict=True) if s >= t]
        tp = sum(flagged)
        if not flagged or not positives or not tp:
            continue
        precision, recall = tp / len(flagged), tp / positives
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best


def run_models(settings: Any, sim: Any, run_dir: Path, rules_file: Path, features_file: Path) -> ModelOutcome:
    """Train on the first part of the traffic, score the rest through replay (module docstring)."""
    import yaml

    from streams.modeling.dataset import DatasetRequest, build_datasets, labels_from_file
    from streams.modeling.train import train
    from streams.replay import Replay, ReplayOptions, iter_hits_jsonl

    start, end = sim.config.start_ms, sim.config.end_ms + 1
    split = start + int(TRAIN_SHARE * (end - start))
    labels = labels_from_file(run_dir / "truth.jsonl")
    kinds = sorted({entity for entity, _ in MODELS.values()})
    request = DatasetRequest(from_ms=start, to_ms=split, entity=kinds[0])
    datasets = build_datasets(settings, request, labels, kinds)

    models_dir = run_dir / "models"
    models_dir.mkdir(exist_ok=True)
    declared: list[dict[str, str]] = []
    model_rules: list[dict[str, Any]] = []
    trained: dict[str, str] = {}
    for name, (entity, scenario) in MODELS.items():
        data = datasets[entity]
        try:
            result = train(data, target=scenario, kind="gbdt", name=name, trees=100, test_fraction=0.2)
        except Exception as exc:  # too few positives in the first part: say so, go on
            trained[name] = f"not trained: {getattr(exc, 'message', exc)}"
            continue
        scores = result.test_scores
        held_out = data.target(scenario)[-len(scores) :] if scores else []
        threshold = _best_threshold(scores, held_out) if scores else 0.5
        auc = "-" if result.auc is None else f"{result.auc:.3f}"
        trained[name] = f"{len(result.model.trees)} trees, AUC {auc} (later fifth), threshold {threshold:g}"
        (models_dir / f"{name}.json").write_bytes(result.model.dumps())
        declared.append({"name": name, "file": f"models/{name}.json", "entity": entity})
        model_rules.append(
            {
                "id": f"model_{name}",
                "entity": entity,
                "when": f"model.{name} >= {threshold!r}",
                "score": 0,
                "label": scenario,
                "description": f"the {name} model's score is at least {threshold:g}",
            }
        )

    spec = yaml.safe_load(features_file.read_text())
    spec["models"] = declared
    spec_path = run_dir / "features-with-models.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    ruleset = yaml.safe_load(rules_file.read_text())
    ruleset["version"] = f"{ruleset['version']}+models"
    ruleset["rules"] = [*ruleset["rules"], *model_rules]
    rules_path = run_dir / "rules-with-models.yaml"
    rules_path.write_text(yaml.safe_dump(ruleset, sort_keys=False))

    active: set[tuple[str, str]] = set()
    out = run_dir / "model-replay.jsonl"
    scored = settings.model_copy(update={"features_spec": spec_path})
    Replay(
        scored,
        ReplayOptions(
            from_ms=split, to_ms=end, rules_file=rules_path, out="jsonl", out_file=out, progress=False
        ),
        on_features=lambda entity, key, _source, _values: active.add((entity, key)),
    ).run()
    model_ids = {r["id"] for r in model_rules}
    flagged: dict[str, set[tuple[str, str, str]]] = {"rules": set(), "model": set()}
    for hit in iter_hits_jsonl(out):
        if hit["error"]:
            continue
        side = "model" if hit["rule_id"] in model_ids else "rules"
        if side == "rules" and not (hit["counted"] and not hit["suppressed"]):
            continue
        flagged[side].add((hit["entity"], hit["key"], hit["label"]))
    rows: dict[str, dict[str, Any]] = {}
    for scenario in sorted({s for _, s in MODELS.values()}):
        truth = {
            (t["entity"], t["key"]): t.get("variant", "plain")
            for t in sim.truth
            if t["scenario"] == scenario and (t["entity"], t["key"]) in active
        }
        sides = {side: {(e, k) for e, k, lbl in found if lbl == scenario} for side, found in flagged.items()}
        sides["both"] = sides["rules"] | sides["model"]
        evasive = {k for k, v in truth.items() if v == "evasive"}
        rows[scenario] = {
            "truth": len(truth),
            **{side: (len(found & truth.keys()), len(found)) for side, found in sides.items()},
            "evasive": (len(evasive), *(len(sides[s] & evasive) for s in ("rules", "model", "both"))),
        }
    (run_dir / "model-quality.json").write_bytes(
        orjson.dumps({"split_ms": split, "trained": trained, "rows": rows}, option=orjson.OPT_INDENT_2)
    )
    return ModelOutcome(split_ms=split, trained=trained, rows=rows)
