"""Models declared in the feature spec: a missing file or a feature the spec lacks is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from features import FeatureSpec, SpecError, TreeModel, load_spec

SPEC = """
entities: {user: user_id, device: device_id}
features:
  - {name: phone_changes_30d, entity: user, agg: count, where: {type: phone_change}, window: 30d}
  - {name: property_views_total, entity: user, agg: count, where: {type: property_view}}
  - {name: device_users_7d, entity: device, agg: distinct, field: user_id, window: 7d}
models:
  - {name: resale, file: models/resale.json, entity: user}
"""

MODEL: dict[str, Any] = {
    "format": "bypass.trees/1",
    "name": "resale",
    "version": "v1",
    "entity": "user",
    "kind": "gbdt",
    "link": "logistic",
    "base_score": -1.0,
    "features": ["phone_changes_30d", "property_views_total"],
    "trees": [
        {
            "feature": [0, -1, -1],
            "threshold": [2.5, 0.0, 0.0],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "missing_left": [True, False, False],
            "value": [0.0, -1.0, 3.0],
        }
    ],
}


def _write(tmp_path: Path, model: dict[str, Any] | None = MODEL, spec: str = SPEC) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    if model is not None:
        (tmp_path / "models" / "resale.json").write_bytes(orjson.dumps(model))
    path = tmp_path / "features.yaml"
    path.write_text(spec)
    return path


def test_a_declared_model_is_loaded_relative_to_the_spec(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path))
    (decl,) = spec.models_of("user")
    assert decl.column == "model.resale" and decl.model.version == "v1"
    assert spec.models_of("device") == ()
    assert spec.schema()["user"]["model.resale"] == "number"
    assert "model.resale" not in spec.schema()["device"]


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model 'resale': model file 'models/resale.json' not found") as info:
        load_spec(_write(tmp_path, model=None))
    assert info.value.fields["model"] == "resale"


def test_a_model_reading_a_feature_the_spec_lacks_is_refused(tmp_path: Path) -> None:
    model = copy.deepcopy(MODEL)
    model["features"] = ["phone_changes_30d", "property_view_total"]
    with pytest.raises(
        SpecError, match=r"reads feature 'property_view_total'.*did you mean 'property_views_total'"
    ):
        load_spec(_write(tmp_path, model=model))
    model["features"] = ["phone_changes_30d", "device_users_7d"]
    with pytest.raises(SpecError, match=r"'device_users_7d'.*it is a feature of entity 'device'") as info:
        load_spec(_write(tmp_path, model=model))
    assert info.value.fields["feature"] == "device_users_7d"


def test_a_model_for_another_entity_or_an_invalid_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="declared for 'user'"):
        load_spec(_write(tmp_path, model={**MODEL, "entity": "device"}))
    with pytest.raises(SpecError, match=r"model 'resale':.*unknown key"):
        load_spec(_write(tmp_path, model={**MODEL, "loader": "pickle"}))


def test_model_declarations_are_checked(tmp_path: Path) -> None:
    model = TreeModel.from_dict(MODEL)
    base = {
        "entities": {"user": "user_id"},
        "features": [{"name": "phone_changes_30d", "entity": "user", "agg": "count"}],
    }
    with pytest.raises(SpecError, match="unexpected key"):
        FeatureSpec.from_dict({**base, "models": [{"name": "m", "file": "m.json", "entity": "user", "x": 1}]})
    with pytest.raises(SpecError, match="unknown entity"):
        FeatureSpec.from_dict({**base, "models": [{"name": "m", "file": "m.json", "entity": "ip"}]})
    twice = [{"name": "m", "file": "m.json", "entity": "user"}] * 2
    with pytest.raises(SpecError, match="declared twice"):
        FeatureSpec.from_dict(
            {
                **base,
                "features": [
                    *base["features"],
                    {"name": "property_views_total", "entity": "user", "agg": "count"},
                ],
                "models": twice,
            },
            models={"m.json": model},
        )
