"""Training: scikit-learn on a time-based split, converted to the model file format.

``train(dataset, target=..., kind=...)``: the rows are ordered by event time and cut at
the time that leaves ``test_fraction`` of them (default 30%) after it: the model learns
from the rows before that time and is measured on the rows at or after it (never a random
split: a random split would test on the past of what it trained on). ``gbdt`` is
scikit-learn's ``HistGradientBoostingClassifier``, ``random_forest`` its
``RandomForestClassifier``; both read missing values (None) natively, as the stream does.
Fixed random states: the same dataset gives the same model, and the same version.

The trees are converted (:func:`export_sklearn`) into :class:`features.TreeModel`, the JSON
format the stream scores (it holds only numbers and names), and the converted model is
checked against scikit-learn's ``predict_proba`` on the test rows before it is returned.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from features import TreeModel
from features.errors import ConfigError
from streams.modeling.dataset import Dataset

__all__ = ["DEFAULT_THRESHOLDS", "KINDS", "Trained", "export_sklearn", "train"]

KINDS: Final = ("gbdt", "random_forest")
DEFAULT_THRESHOLDS: Final = (0.1, 0.3, 0.5, 0.7, 0.9)
#: the converted model may differ from scikit-learn's probabilities by at most this much
TOLERANCE: Final = 1e-9


@dataclass
class Trained:
    """A trained model and how it did on the later (test) part of the dataset."""

    model: TreeModel
    split_ms: int  # train: rows before it; test: rows at or after it
    train_rows: int
    train_positives: int
    test_rows: int
    test_positives: int
    auc: float | None  # None when the test part holds one class only
    #: (threshold, precision or None, recall or None, rows flagged) on the test rows
    at_thresholds: list[tuple[float, float | None, float | None, int]] = field(default_factory=list)
    max_diff: float = 0.0  # the converted model vs scikit-learn, on the test rows
    test_scores: list[float] = field(default_factory=list)


def _matrix(data: Dataset, names: Sequence[str], rows: Sequence[int]) -> Any:
    import numpy as np

    cols = [data.column(n) for n in names]
    out = np.full((len(rows), len(names)), np.nan, dtype=np.float64)
    for j, col in enumerate(cols):
        for i, r in enumerate(rows):
            v = col[r]
            if type(v) is int or type(v) is float:
                out[i, j] = float(v)
    return out


def train(
    data: Dataset,
    *,
    target: str = "label",
    kind: str = "gbdt",
    name: str | None = None,
    trees: int = 100,
    test_fraction: float = 0.3,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    features: Sequence[str] | None = None,
) -> Trained:
    """Train on the earlier part of ``data``, measure on the later part (module docstring)."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.metrics import roc_auc_score

    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: choose {' or '.join(KINDS)}", option="--kind")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("--test-fraction must be between 0 and 1 (exclusive)", option="--test-fraction")
    names = tuple(features) if features else data.numeric_features()
    unknown = [n for n in names if n not in data.features]
    if unknown or not names:
        raise ConfigError(
            f"the dataset has no usable feature {', '.join(unknown) if unknown else '(none numeric)'}",
            option="--features",
        )
    y_all = data.target(target)
    if target != "label" and not any(y_all):
        seen = sorted({n for s in data.labels for n in s.split(",") if n})
        raise ConfigError(
            f"--target {target!r}: no row carries that label (the dataset's labels: "
            f"{', '.join(seen) or 'none'}; 'label' means any bad label)",
            option="--target",
        )
    n = len(data)
    if n < 10:
        raise ConfigError(f"the dataset has {n} rows: too few to train and test on", option="--dataset")
    cut = data.ts[min(n - 1, int(n * (1.0 - test_fraction)))]
    train_idx = [i for i in range(n) if data.ts[i] < cut]
    test_idx = [i for i in range(n) if data.ts[i] >= cut]
    y_train = np.asarray([y_all[i] for i in train_idx], dtype=np.int64)
    y_test = np.asarray([y_all[i] for i in test_idx], dtype=np.int64)
    if not train_idx or len(set(y_train.tolist())) < 2:
        raise ConfigError(
            f"the training part (events before {cut} ms) needs positive and negative rows "
            f"(it has {len(train_idx)} rows, {int(y_train.sum())} positive): widen the range or "
            "lower --test-fraction",
            option="--dataset",
        )
    x_train = _matrix(data, names, train_idx)
    x_test = _matrix(data, names, test_idx)
    clf: Any
    if kind == "gbdt":
        clf = HistGradientBoostingClassifier(
            max_iter=trees, learning_rate=0.1, max_leaf_nodes=31, early_stopping=False, random_state=0
        )
    else:
        clf = RandomForestClassifier(
            n_estimators=trees, min_samples_leaf=5, max_depth=12, random_state=0, n_jobs=1
        )
    clf.fit(x_train, y_train)
    model_name = name or (target if target != "label" else data.entity)
    meta: dict[str, Any] = {
        "target": target,
        "trained_on_rows": len(train_idx),
        "split_ms": int(cut),
        "dataset_from": str(data.meta.get("from", "")),
        "dataset_to": str(data.meta.get("to", "")),
        "trainer": f"sklearn {type(clf).__name__}",
    }
    model = export_sklearn(clf, names, name=model_name, entity=data.entity, meta=meta)
    sk = clf.predict_proba(x_test)[:, list(clf.classes_).index(1)].tolist() if test_idx else []
    ours = model.score_many([dict(zip(names, row, strict=True)) for row in _rows_as_values(x_test)])
    max_diff = max((abs(a - b) for a, b in zip(sk, ours, strict=True)), default=0.0)
    if max_diff > TOLERANCE:  # pragma: no cover - a conversion bug
        raise ConfigError(f"the converted model differs from scikit-learn by {max_diff:g}")
    auc = float(roc_auc_score(y_test, ours)) if len(set(y_test.tolist())) == 2 else None
    table = []
    for t in thresholds:
        flagged = [y for y, s in zip(y_test.tolist(), ours, strict=True) if s >= t]
        tp = sum(flagged)
        positives = int(y_test.sum())
        table.append(
            (
                float(t),
                tp / len(flagged) if flagged else None,
                tp / positives if positives else None,
                len(flagged),
            )
        )
    return Trained(
        model=model,
        split_ms=int(cut),
        train_rows=len(train_idx),
        train_positives=int(y_train.sum()),
        test_rows=len(test_idx),
        test_positives=int(y_test.sum()),
        auc=auc,
        at_thresholds=table,
        max_diff=max_diff,
        test_scores=ours,
    )


def _threshold(t: float) -> float:
    """A split threshold the file can hold: JSON has no infinity, and scikit-learn splits
    "every number left, missing right" at +inf; the largest float splits the same finite
    values."""
    if math.isinf(t):
        return sys.float_info.max if t > 0 else -sys.float_info.max
    return t


def _rows_as_values(x: Any) -> list[list[float | None]]:
    """numpy rows -> feature values as the stream has them (NaN -> None)."""
    return [[None if math.isnan(v) else v for v in row] for row in x.tolist()]


def export_sklearn(
    clf: Any, features: Sequence[str], *, name: str, entity: str, meta: dict[str, Any] | None = None
) -> TreeModel:
    """A fitted binary ``HistGradientBoostingClassifier`` or ``RandomForestClassifier`` as a
    :class:`features.TreeModel` (its version: a hash of its content)."""
    classes = list(clf.classes_)
    if len(classes) != 2:
        raise ConfigError(f"a model scores two classes; this one has {len(classes)}")
    positive = classes.index(1) if 1 in classes else 1
    trees: list[dict[str, list[Any]]] = []
    if hasattr(clf, "_predictors"):  # HistGradientBoostingClassifier
        kind = "gbdt"
        if positive != 1:  # pragma: no cover - classes are sorted, 1 is second
            raise ConfigError("the positive class must be 1")
        base = float(clf._baseline_prediction.ravel()[0])
        for (predictor,) in clf._predictors:
            nodes = predictor.nodes
            if bool(nodes["is_categorical"].any()):
                raise ConfigError("categorical splits are not supported by the model format")
            leaf = nodes["is_leaf"].astype(bool).tolist()
            trees.append(
                {
                    "feature": [
                        -1 if lf else int(f)
                        for lf, f in zip(leaf, nodes["feature_idx"].tolist(), strict=True)
                    ],
                    "threshold": [
                        0.0 if lf else _threshold(float(t))
                        for lf, t in zip(leaf, nodes["num_threshold"].tolist(), strict=True)
                    ],
                    "left": [
                        -1 if lf else int(c) for lf, c in zip(leaf, nodes["left"].tolist(), strict=True)
                    ],
                    "right": [
                        -1 if lf else int(c) for lf, c in zip(leaf, nodes["right"].tolist(), strict=True)
                    ],
                    "missing_left": [
                        bool(m) and not lf
                        for lf, m in zip(leaf, nodes["missing_go_to_left"].tolist(), strict=True)
                    ],
                    "value": [
                        float(v) if lf else 0.0 for lf, v in zip(leaf, nodes["value"].tolist(), strict=True)
                    ],
                }
            )
        link = "logistic"
    elif hasattr(clf, "estimators_"):  # RandomForestClassifier
        kind = "random_forest"
        base = 0.0
        for est in clf.estimators_:
            t = est.tree_
            left_c = t.children_left.tolist()
            leaf = [c == -1 for c in left_c]
            values = t.value[:, 0, :]
            totals = values.sum(axis=1)
            probs = [
                float(v[positive] / s) if s else 0.0
                for v, s in zip(values.tolist(), totals.tolist(), strict=True)
            ]
            trees.append(
                {
                    "feature": [-1 if lf else int(f) for lf, f in zip(leaf, t.feature.tolist(), strict=True)],
                    "threshold": [
                        0.0 if lf else _threshold(float(x))
                        for lf, x in zip(leaf, t.threshold.tolist(), strict=True)
                    ],
                    "left": [-1 if lf else int(c) for lf, c in zip(leaf, left_c, strict=True)],
                    "right": [
                        -1 if lf else int(c) for lf, c in zip(leaf, t.children_right.tolist(), strict=True)
                    ],
                    "missing_left": [
                        bool(m) and not lf for lf, m in zip(leaf, t.missing_go_to_left.tolist(), strict=True)
                    ],
                    "value": [p if lf else 0.0 for lf, p in zip(leaf, probs, strict=True)],
                }
            )
        link = "identity"
    else:
        raise ConfigError(f"cannot convert a {type(clf).__name__}: train a gbdt or a random_forest")
    body: dict[str, Any] = {
        "format": "bypass.trees/1",
        "name": name,
        "version": "0",
        "entity": entity,
        "kind": kind,
        "link": link,
        "base_score": base,
        "features": list(features),
        "trees": trees,
    }
    draft = TreeModel.from_dict(body)
    digest = hashlib.sha256(draft.dumps()).hexdigest()[:12]
    body["version"] = f"{name}-{digest}"
    if meta:
        body["meta"] = meta
    return TreeModel.from_dict(body)
