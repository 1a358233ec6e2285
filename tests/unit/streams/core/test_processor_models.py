"""Models in the processing core: every row of a call scored in one vectorized call per
model, the score read by rules as ``model.<name>`` and carried in the hit records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

import features
import rules
from streams.core.order import SourceEvent
from streams.core.processor import KeyBatch, Processor

ROOT = Path(__file__).resolve().parents[4]
T0 = 1_763_856_000_000
HOUR = 3_600_000

# score = sigmoid(-2 + (phone_changes_30d <= 1.5 ? -1 : 4)); a missing count goes left
MODEL: dict[str, Any] = {
    "format": "bypass.trees/1",
    "name": "resale",
    "version": "v1",
    "entity": "user",
    "kind": "gbdt",
    "link": "logistic",
    "base_score": -2.0,
    "features": ["phone_changes_30d", "property_views_total"],
    "trees": [
        {
            "feature": [0, -1, -1],
            "threshold": [1.5, 0.0, 0.0],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "missing_left": [True, False, False],
            "value": [0.0, -1.0, 4.0],
        }
    ],
}

RULES = """
version: "m1"
rules:
  - id: resale_model
    entity: user
    when: model.resale > 0.8
    events: [contract_sign]
    score: 90
"""


def make_processor(tmp_path: Path) -> Processor:
    (tmp_path / "resale.json").write_bytes(orjson.dumps(MODEL))
    text = (ROOT / "examples" / "features.yaml").read_text()
    (tmp_path / "features.yaml").write_text(
        text + "models:\n  - {name: resale, file: resale.json, entity: user}\n"
    )
    spec = features.load_spec(tmp_path / "features.yaml")
    engine = features.FeatureEngine(spec, cap=1000, allowed_lateness_ms=HOUR, dedup_horizon_ms=24 * HOUR)
    return Processor(spec, engine, rules.load_ruleset(RULES, spec.schema()), run_id="live")


def src(user: str, event_id: str, etype: str, ts: int, offset: int) -> SourceEvent:
    event = {"event_id": event_id, "type": etype, "ts": ts, "user_id": user}
    return SourceEvent(event, "bypass.events", 0, offset, ts)


def test_model_scores_are_read_by_rules_and_carried_in_hits(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    model = processor.spec.models[0].model
    seen: list[tuple[str, str, float]] = []
    processor.observe = lambda entity, key, source, values: seen.append(
        (key, source.event["event_id"], values["model.resale"])
    )
    churner = [src("u1", f"p{i}", "phone_change", T0 + i * 60_000, i) for i in range(3)]
    churner.append(src("u1", "c1", "contract_sign", T0 + 300_000, 3))
    quiet = [src("u2", "c2", "contract_sign", T0 + 300_000, 4)]
    results = processor.process_many("user", [KeyBatch("u1", None, churner), KeyBatch("u2", None, quiet)])
    (hit,) = results[0].hits
    assert hit["rule_id"] == "resale_model" and hit["event_id"] == "c1"
    high = 1 / (1 + 2.718281828459045**-2.0)
    assert abs(hit["features"]["model.resale"] - high) < 1e-12
    assert results[1].hits == []
    assert [(k, e) for k, e, _ in seen] == [
        ("u1", "p0"),
        ("u1", "p1"),
        ("u1", "p2"),
        ("u1", "c1"),
        ("u2", "c2"),
    ]
    assert seen[-1][2] == model.score({"phone_changes_30d": 0})


def test_one_vectorized_call_per_model_and_call(tmp_path: Path, monkeypatch: Any) -> None:
    processor = make_processor(tmp_path)
    calls: list[int] = []
    original = features.TreeModel.score_many

    def counting(self: features.TreeModel, rows: Any) -> list[float]:
        calls.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(features.TreeModel, "score_many", counting)
    batches = [
        KeyBatch(f"u{k}", None, [src(f"u{k}", f"e{k}{i}", "contract_sign", T0 + i, i) for i in range(3)])
        for k in range(4)
    ]
    processor.process_many("user", batches)
    assert calls == [12]
    processor.process_many("device", [])
    assert calls == [12]


def test_a_model_scores_only_the_rows_a_rule_reading_it_evaluates(tmp_path: Path, monkeypatch: Any) -> None:
    """A 200-tree model costs per row: the events no rule reading ``model.resale`` runs on
    (here: all but contract_sign) are not scored, and with no such rule nothing is."""
    processor = make_processor(tmp_path)
    calls: list[int] = []
    model = processor.spec.models[0].model
    original = features.TreeModel.score_many

    def counting(self: features.TreeModel, rows: Any) -> list[float]:
        calls.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(features.TreeModel, "score_many", counting)
    events = [src("u1", f"p{i}", "phone_change", T0 + i * 60_000, i) for i in range(3)]
    events.append(src("u1", "c1", "contract_sign", T0 + 300_000, 3))
    result = processor.process("user", "u1", None, events)
    assert calls == [1]  # the contract_sign only
    assert [h["features"]["model.resale"] for h in result.hits] == original(model, [{"phone_changes_30d": 3}])
    spec = processor.spec
    processor.set_ruleset(rules.load_ruleset('version: "none"\nrules: []\n', spec.schema()))
    processor.process("user", "u2", None, [src("u2", "c2", "contract_sign", T0, 9)])
    assert calls == [1]


def test_a_rule_reading_a_model_over_a_warming_feature_runs_in_shadow(tmp_path: Path) -> None:
    processor = make_processor(tmp_path)
    processor.set_cold("user", ["property_views_total"])  # the model reads it
    assert {r.id: r.mode for r in processor.ruleset.rules} == {"resale_model": "shadow"}
    processor.set_cold("user", ["login_cities_7d"])  # the model does not
    assert {r.id: r.mode for r in processor.ruleset.rules} == {"resale_model": "active"}
