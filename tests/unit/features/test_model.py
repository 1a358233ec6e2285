"""The model file format (features._model): refused unless it is exactly numbers and names;
scores equal scikit-learn's; missing values follow each node's learnt direction."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

import features._model as model_mod
from features import ModelError, TreeModel, load_model

# one stump over "x": x <= 1.5 -> -1.0 else 2.0; a missing x goes right
STUMP: dict[str, Any] = {
    "format": "bypass.trees/1",
    "name": "stump",
    "version": "v1",
    "entity": "user",
    "kind": "gbdt",
    "link": "identity",
    "base_score": 0.5,
    "features": ["x", "y"],
    "trees": [
        {
            "feature": [0, -1, -1],
            "threshold": [1.5, 0.0, 0.0],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "missing_left": [False, False, False],
            "value": [0.0, -1.0, 2.0],
        },
        {
            "feature": [1, -1, -1],
            "threshold": [0.0, 0.0, 0.0],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "missing_left": [True, False, False],
            "value": [0.0, 0.25, 0.125],
        },
    ],
}


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(STUMP)
    data.update(changes)
    return data


def test_scores_follow_the_split_rule_and_sum_from_the_base_score() -> None:
    m = TreeModel.from_dict(STUMP)
    assert m.score_many([{"x": 1.5, "y": 0}, {"x": 2, "y": 1}]) == [0.5 - 1.0 + 0.25, 0.5 + 2.0 + 0.125]


def test_missing_values_follow_each_nodes_missing_direction() -> None:
    m = TreeModel.from_dict(STUMP)
    # x missing -> right (2.0); y missing -> left (0.25); non-numbers are missing too
    expected = 0.5 + 2.0 + 0.25
    for row in ({}, {"x": None, "y": None}, {"x": "3", "y": True}, {"x": float("nan"), "y": False}):
        assert m.score(row) == expected


def test_random_forest_averages_and_logistic_link() -> None:
    rf = TreeModel.from_dict(_with(kind="random_forest", base_score=0.0))
    assert rf.score({"x": 0, "y": 0}) == (-1.0 + 0.25) / 2
    logit = TreeModel.from_dict(_with(link="logistic"))
    raw = 0.5 + 2.0 + 0.125
    assert logit.score({"x": 5, "y": 5}) == pytest.approx(1 / (1 + math.exp(-raw)), abs=1e-15)


@pytest.mark.parametrize(
    "data",
    [
        _with(__reduce__="os.system"),  # an unknown key, however named
        _with(py_class="sklearn.ensemble.HistGradientBoostingClassifier"),
        _with(format="pickle"),
        _with(kind="eval"),
        _with(link="__import__('os').system('id')"),
        _with(features=["x", "__import__('os')"]),
        _with(name="os.system"),
        _with(base_score="1 + 1"),
        _with(base_score=True),
        _with(trees=[{**STUMP["trees"][0], "code": "print(1)"}]),
        _with(trees=[{**STUMP["trees"][0], "threshold": ["1.5", 0.0, 0.0]}]),
        _with(trees=[{**STUMP["trees"][0], "left": [0, -1, -1]}]),  # a cycle: child not after parent
        _with(trees=[{**STUMP["trees"][0], "feature": [7, -1, -1]}]),  # no such feature
        _with(trees=[{**STUMP["trees"][0], "missing_left": [1, 0, 0]}]),  # not booleans
        _with(trees=[]),
        _with(meta={"loader": {"module": "os"}}),  # meta holds scalars only
        [STUMP],
    ],
)
def test_anything_but_numbers_and_names_is_refused(data: Any) -> None:
    with pytest.raises(ModelError):
        TreeModel.from_dict(data)


def test_load_model_reads_json_only(tmp_path: Path) -> None:
    good = tmp_path / "m.json"
    good.write_bytes(orjson.dumps(STUMP))
    assert load_model(good).name == "stump"
    pickled = tmp_path / "m.pkl"
    pickled.write_bytes(
        b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    )
    with pytest.raises(ModelError, match="not JSON"):
        load_model(pickled)
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "missing.json")


def test_dumps_round_trips_exactly() -> None:
    m = TreeModel.from_dict(_with(meta={"auc": 0.91, "rows": 10}))
    assert TreeModel.from_dict(orjson.loads(m.dumps())) == m


def _sklearn_data(seed: int) -> tuple[Any, Any, list[dict[str, Any]]]:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, 4))
    x[rng.random(x.shape) < 0.15] = np.nan
    y = ((np.nan_to_num(x[:, 0], nan=1.0) + x[:, 1] - 0.3 * np.nan_to_num(x[:, 2])) > 0.4).astype(int)
    rows = [{n: (None if math.isnan(v) else v) for n, v in zip("abcd", r, strict=True)} for r in x.tolist()]
    return x, y, rows


@pytest.mark.parametrize("kind", ["gbdt", "random_forest"])
def test_scores_equal_sklearn_predict_proba(kind: str) -> None:
    pytest.importorskip("sklearn")
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from streams.modeling.train import export_sklearn

    x, y, rows = _sklearn_data(1)
    clf: Any = (
        HistGradientBoostingClassifier(max_iter=60, random_state=0)
        if kind == "gbdt"
        else RandomForestClassifier(n_estimators=30, min_samples_leaf=3, random_state=0)
    )
    clf.fit(x, y)
    m = export_sklearn(clf, list("abcd"), name="m", entity="user")
    assert m.kind == kind
    expected = clf.predict_proba(x)[:, 1].tolist()
    got = m.score_many(rows)
    assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) <= 1e-9
    # one row at a time (the Python walk) gives the very same floats as the batch (numpy)
    assert [m.score(r) for r in rows[:200]] == got[:200]


def test_python_and_numpy_paths_are_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    from sklearn.ensemble import HistGradientBoostingClassifier

    from streams.modeling.train import export_sklearn

    x, y, rows = _sklearn_data(2)
    m = export_sklearn(
        HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, y),
        list("abcd"),
        name="m",
        entity="user",
    )
    vectorized = m.score_many(rows)
    monkeypatch.setattr(model_mod, "_NUMPY", [None])  # as without numpy installed
    assert m.score_many(rows) == vectorized
