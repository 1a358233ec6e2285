"""bench_models: the processing core with one 200-tree model against the same run without it.

Workload: the stream of ``bench_features`` (the example spec's users, devices and IPs over
30 days) through the batch step every live worker and replay runs
(``streams.core.step.BatchStep`` over a ``MemoryStore``, chunks of 500 events: decoded
events in, state snapshots, hit and blacklist records out), with ``examples/rules.yaml``.
The model is a deterministic gradient-boosted ensemble of 200 trees of depth 6 over 6 user
features (random splits: its scores mean nothing, its cost is that of a real one),
declared in the spec and read by one more rule. Three runs, one after another, in one
process:

- without the model (the spec and rules as shipped);
- ``model.resale > 0.8 and phone_changes_30d > 1`` on ``contract_sign`` (the issue's rule:
  the model scores the rows such a rule evaluates);
- the same condition on every user event (no ``events:`` filter: every user row scored).

Goal: at least 80% of the throughput without the model, for the rule on contract signs.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

BUDGET_S = 90
QUICK_BUDGET_S = 60

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

FEATURES_IN = [
    "phone_changes_30d",
    "distinct_phones_30d",
    "login_cities_7d",
    "property_views_total",
    "order_amount_1h",
    "travel_kmh_24h",
]
RULE = """
  - id: resale_model
    entity: user
    when: model.resale > 0.8 and phone_changes_30d > 1
    {events}score: 70
    label: account_resale_model
"""


def make_model(trees: int = 200, depth: int = 6, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    out = []
    for _ in range(trees):
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        missing: list[bool] = []
        value: list[float] = []
        # a complete binary tree in breadth-first order: node i's children are 2i+1, 2i+2
        n_inner = 2**depth - 1
        for i in range(2 ** (depth + 1) - 1):
            if i < n_inner:
                feature.append(rnd.randrange(len(FEATURES_IN)))
                threshold.append(round(rnd.uniform(0, 5), 3))
                left.append(2 * i + 1)
                right.append(2 * i + 2)
                missing.append(rnd.random() < 0.5)
                value.append(0.0)
            else:
                feature.append(-1)
                threshold.append(0.0)
                left.append(-1)
                right.append(-1)
                missing.append(False)
                value.append(round(rnd.uniform(-0.1, 0.1), 5))
        out.append(
            {
                "feature": feature,
                "threshold": threshold,
                "left": left,
                "right": right,
                "missing_left": missing,
                "value": value,
            }
        )
    return {
        "format": "bypass.trees/1",
        "name": "resale",
        "version": "bench-1",
        "entity": "user",
        "kind": "gbdt",
        "link": "logistic",
        "base_score": -1.0,
        "features": FEATURES_IN,
        "trees": out,
    }


def _throughput(spec_path: Path, rules_text: str, events: list[dict[str, Any]]) -> tuple[float, int]:
    import features
    import rules
    from streams.core.order import SourceEvent
    from streams.core.processor import Processor
    from streams.core.step import BatchStep, MemoryStore

    spec = features.load_spec(spec_path)
    processor = Processor(
        spec, features.FeatureEngine(spec), rules.load_ruleset(rules_text, spec.schema()), run_id="bench"
    )
    step = BatchStep(processor)
    store = MemoryStore()
    sources = [SourceEvent(e, "raw", 0, i) for i, e in enumerate(events)]
    hits = 0
    t0 = time.perf_counter()
    for start in range(0, len(sources), 500):
        hits += len(step.run(sources[start : start + 500], store).hits)
    return len(events) / (time.perf_counter() - t0), hits


def run(quick: bool = False) -> list[dict[str, Any]]:
    import bench_features

    events = bench_features.make_events(200 if quick else 500)
    rules_text = (ROOT / "examples" / "rules.yaml").read_text(encoding="utf-8")
    spec_text = (ROOT / "examples" / "features.yaml").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "resale.json").write_bytes(orjson.dumps(make_model()))
        plain = d / "plain.yaml"
        plain.write_text(spec_text, encoding="utf-8")
        modelled = d / "model.yaml"
        modelled.write_text(
            spec_text + "models:\n  - {name: resale, file: resale.json, entity: user}\n", encoding="utf-8"
        )
        on_sign = rules_text.rstrip("\n") + "\n" + RULE.format(events="events: [contract_sign]\n    ")
        on_all = rules_text.rstrip("\n") + "\n" + RULE.format(events="")
        _throughput(plain, rules_text, events[: len(events) // 10])  # warm the caches
        base, base_hits = _throughput(plain, rules_text, events)
        sign, _ = _throughput(modelled, on_sign, events)
        every, _ = _throughput(modelled, on_all, events)
    note = f"{len(events)} events, batch step in chunks of 500, examples/rules.yaml ({base_hits} hits)"
    return [
        {
            "name": "core_events_per_s_without_model",
            "value": round(base, 1),
            "unit": "events/s",
            "note": note,
        },
        {
            "name": "core_events_per_s_model_on_contract_sign",
            "value": round(sign, 1),
            "unit": "events/s",
            "baseline_name": "the same run without the model",
            "baseline_value": round(base, 1),
            "goal": "ratio >= 0.8",
            "note": "one 200-tree depth-6 gbdt read by a rule on contract_sign events",
        },
        {
            "name": "core_events_per_s_model_on_every_user_event",
            "value": round(every, 1),
            "unit": "events/s",
            "baseline_name": "the same run without the model",
            "baseline_value": round(base, 1),
            "note": "the same model read by a rule on every user event (every user row scored)",
        },
    ]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
