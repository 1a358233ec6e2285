"""Tree-ensemble models: a file format that holds only numbers and names, and batch scoring.

Scoring is a pure function of an entity's feature values, so it lives here beside the
features: the live worker and replay call the same :meth:`TreeModel.score_many` on the
same values and get the same scores, bit for bit. ``load_model(path)`` is the one edge
helper that reads a file (like ``load_spec``); everything else is pure.

The file (JSON, ``"format": "bypass.trees/1"``), every key required unless marked::

    {"format": "bypass.trees/1",
     "name": "resale", "version": "20261203T101500Z-3fa9c2", "entity": "user",
     "kind": "gbdt",               # gbdt: the trees' leaf values are summed; random_forest: averaged
     "link": "logistic",           # logistic: score = 1 / (1 + exp(-raw)); identity: score = raw
     "base_score": -2.31,          # raw = base_score + sum (gbdt) or base_score + mean (random_forest)
     "features": ["phone_changes_30d", "property_views_total"],     # the inputs, in index order
     "trees": [{"feature": [0, -1, -1], "threshold": [1.5, 0.0, 0.0], "left": [1, -1, -1],
                "right": [2, -1, -1], "missing_left": [true, false, false],
                "value": [0.0, -0.4, 0.7]}],
     "meta": {"auc": 0.93, "rows": 41200}}                          # optional: scalars only

A tree is parallel arrays, one entry per node, node 0 the root. Node ``i`` is a leaf when
``feature[i] == -1`` (its output is ``value[i]``; ``left``/``right`` are -1); otherwise it
splits on ``features[feature[i]]``: a row goes to ``left[i]`` when its value is
``<= threshold[i]``, else to ``right[i]`` (the split rule of scikit-learn and LightGBM).
Children come after their parent (``left[i] > i``, ``right[i] > i``), so every walk ends.
Sums run left to right over the trees in file order (gbdt: starting from ``base_score``;
random_forest: from 0, then divided by the number of trees and added to ``base_score``).

Missing values: a feature value that is not a number (None, a boolean, a string, NaN) is
missing, and a missing value follows the node's ``missing_left`` (left when true, else
right), as scikit-learn's and LightGBM's trees send missing values the way learnt in
training (or to the bigger child when training saw none there). An integer is read as a
float (float64), as the trainers read it.

Why a model file cannot run code: it is parsed by orjson into plain lists, numbers and
strings, then validated strictly (exact key sets, types, index bounds, child order);
nothing in it names a class, a module or a function, and the runtime only compares and
adds numbers (no pickle, no ``eval``, no imports). An unknown key, a string where a
number belongs or any structure the format does not define is a ``ModelError``.

Speed: with numpy installed (the ``model`` extra) :meth:`TreeModel.score_many` walks all
trees of all rows of a batch at once; without it, tree by tree in Python. Both paths make
the same comparisons and the same additions in the same order, and apply the link with
``math.exp`` per row, so they give identical scores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from features.errors import ModelError

__all__ = ["FORMAT", "KINDS", "LINKS", "Tree", "TreeModel", "load_model"]

FORMAT: Final = "bypass.trees/1"
KINDS: Final = ("gbdt", "random_forest")
LINKS: Final = ("identity", "logistic")
_TOP_REQUIRED: Final = (
    "format",
    "name",
    "version",
    "entity",
    "kind",
    "link",
    "base_score",
    "features",
    "trees",
)
_TOP_OPTIONAL: Final = ("meta",)
_TREE_KEYS: Final = ("feature", "threshold", "left", "right", "missing_left", "value")
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}\Z")
MAX_TREES: Final = 10_000
MAX_NODES: Final = 1_000_000  # per tree
MAX_FEATURES: Final = 10_000
_CHUNK: Final = 4096  # rows per vectorized pass (bounds the rows x trees arrays)
_SMALL: Final = 4  # fewer rows are walked in Python (numpy's per-call cost dominates)
_NAN: Final = float("nan")


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and (type(v) is int or math.isfinite(v))


def _as_float(v: Any) -> float:
    """A feature value as the trees read it: a float, NaN when missing (not a number)."""
    t = type(v)
    if t is float:
        return v  # type: ignore[no-any-return]
    if t is int:
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    return _NAN


def _link(raw: float, link: str) -> float:
    if link == "identity":
        return raw
    if raw >= 0:
        return 1.0 / (1.0 + math.exp(-raw))
    e = math.exp(raw)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class Tree:
    """One validated tree: parallel arrays (module docstring)."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    missing_left: tuple[bool, ...]
    value: tuple[float, ...]

    def walk(self, x: Sequence[float]) -> float:
        """The leaf value for one row of floats (NaN = missing)."""
        feature, threshold, left, right, missing = (
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.missing_left,
        )
        i = 0
        while True:
            f = feature[i]
            if f < 0:
                return self.value[i]
            v = x[f]
            if v != v:  # NaN: missing
                i = left[i] if missing[i] else right[i]
            elif v <= threshold[i]:
                i = left[i]
            else:
                i = right[i]

    def depth(self) -> int:
        """The longest root-to-leaf path, in edges."""
        depth = [0] * len(self.feature)
        for i, f in enumerate(self.feature):
            if f >= 0:
                depth[self.left[i]] = depth[self.right[i]] = depth[i] + 1
        return max(depth)

    def as_dict(self) -> dict[str, list[Any]]:
        return {
            "feature": list(self.feature),
            "threshold": list(self.threshold),
            "left": list(self.left),
            "right": list(self.right),
            "missing_left": list(self.missing_left),
            "value": list(self.value),
        }


@dataclass(frozen=True, slots=True)
class TreeModel:
    """A validated tree ensemble (module docstring). Build it with :meth:`from_dict` (or
    :func:`load_model`); score with :meth:`score_many` (a batch) or :meth:`score` (one row)."""

    name: str
    version: str
    entity: str
    kind: str
    link: str
    base_score: float
    features: tuple[str, ...]
    trees: tuple[Tree, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    _packed: list[Any] = field(default_factory=list, repr=False, compare=False)

    # -- loading ----------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> TreeModel:
        """Validate a parsed model file; a ModelError names what is wrong and where."""
        where = f"model file {source!r}" if source else "model"
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object, got {type(data).__name__}", path=source)
        name = data.get("name")
        label = f"{where} ({name!r})" if isinstance(name, str) and _NAME.match(name) else where

        def fail(message: str) -> ModelError:
            return ModelError(
                f"{label}: {message}", model=name if isinstance(name, str) else None, path=source
            )

        unknown = sorted(str(k) for k in data if k not in _TOP_REQUIRED and k not in _TOP_OPTIONAL)
        if unknown:
            raise fail(
                f"unknown key(s) {unknown} (a model has {', '.join(_TOP_REQUIRED)} and optionally 'meta')"
            )
        missing = [k for k in _TOP_REQUIRED if k not in data]
        if missing:
            raise fail(f"missing key(s) {missing}")
        if data["format"] != FORMAT:
            raise fail(f"'format' must be {FORMAT!r}, got {data['format']!r}"[:300])
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"'name' must be letters, digits and underscores, got {name!r}"[:300])
        version = data["version"]
        if not isinstance(version, str) or not _VERSION.match(version):
            raise fail(
                f"'version' must be 1-64 characters of letters, digits and ._:+-, got {version!r}"[:300]
            )
        entity = data["entity"]
        if not isinstance(entity, str) or not _NAME.match(entity):
            raise fail(f"'entity' must be an entity kind name, got {entity!r}"[:300])
        kind = data["kind"]
        if kind not in KINDS:
            raise fail(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}"[:300])
        link = data["link"]
        if link not in LINKS:
            raise fail(f"'link' must be one of {', '.join(LINKS)}, got {link!r}"[:300])
        base = data["base_score"]
        if not _is_number(base):
            raise fail(f"'base_score' must be a finite number, got {base!r}"[:300])
        feats = data["features"]
        if (
            not isinstance(feats, list)
            or not feats
            or len(feats) > MAX_FEATURES
            or not all(isinstance(f, str) and _NAME.match(f) for f in feats)
        ):
            raise fail("'features' must be a non-empty list of feature names")
        if len(set(feats)) != len(feats):
            dup = sorted({f for f in feats if feats.count(f) > 1})
            raise fail(f"'features' lists {', '.join(dup)} more than once")
        raw_trees = data["trees"]
        if not isinstance(raw_trees, list) or not raw_trees or len(raw_trees) > MAX_TREES:
            raise fail(f"'trees' must be a non-empty list of at most {MAX_TREES} trees")
        trees = tuple(_parse_tree(t, n, len(feats), fail) for n, t in enumerate(raw_trees))
        meta = data.get("meta", {})
        if not isinstance(meta, dict) or len(meta) > 100:
            raise fail("'meta' must be an object of at most 100 entries")
        for k, v in meta.items():
            if len(k) > 64 or not (v is None or isinstance(v, bool | str) or _is_number(v)):
                raise fail(f"'meta' {k[:64]!r}: values must be null, booleans, numbers or strings")
            if isinstance(v, str) and len(v) > 1000:
                raise fail(f"'meta' {k[:64]!r}: at most 1000 characters")
        return cls(
            name=name,
            version=version,
            entity=entity,
            kind=kind,
            link=link,
            base_score=float(base),
            features=tuple(feats),
            trees=trees,
            meta=dict(meta),
        )

    def as_dict(self) -> dict[str, Any]:
        """The file's content (``dumps`` writes it)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "entity": self.entity,
            "kind": self.kind,
            "link": self.link,
            "base_score": self.base_score,
            "features": list(self.features),
            "trees": [t.as_dict() for t in self.trees],
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    def dumps(self) -> bytes:
        """The model file's bytes: JSON, one tree per line (floats round-trip exactly)."""
        head = self.as_dict()
        trees = head.pop("trees")
        meta = head.pop("meta", None)
        lines = [orjson.dumps(head)[:-1] + b',\n"trees": [']
        lines.append(b",\n".join(orjson.dumps(t) for t in trees) + b"]")
        if meta is not None:
            lines.append(b',\n"meta": ' + orjson.dumps(meta, option=orjson.OPT_SORT_KEYS))
        return b"".join(lines) + b"}\n"

    # -- scoring ----------------------------------------------------------
    def row(self, values: Mapping[str, Any]) -> list[float]:
        """The model's input row of one entity's feature values (NaN = missing)."""
        return [_as_float(values.get(name)) for name in self.features]

    def score(self, values: Mapping[str, Any]) -> float:
        """The score of one entity's feature values (name -> value)."""
        return self.score_many([values])[0]

    def score_many(self, rows: Sequence[Mapping[str, Any]]) -> list[float]:
        """The scores of a batch of feature-value mappings, in order: one vectorized pass
        over all trees when numpy is installed, else tree by tree (same results)."""
        if not rows:
            return []
        matrix = [self.row(values) for values in rows]
        np = _numpy()
        if np is None or len(matrix) < _SMALL:
            raws = self._raw_python(matrix)
        else:
            raws = []
            for start in range(0, len(matrix), _CHUNK):
                raws += self._raw_numpy(np, matrix[start : start + _CHUNK])
        link = self.link
        return [_link(raw, link) for raw in raws]

    def _raw_python(self, matrix: Sequence[Sequence[float]]) -> list[float]:
        out: list[float] = []
        trees = self.trees
        mean = self.kind == "random_forest"
        for x in matrix:
            if mean:
                s = 0.0
                for tree in trees:
                    s += tree.walk(x)
                out.append(self.base_score + s / len(trees))
            else:
                acc = self.base_score
                for tree in trees:
                    acc += tree.walk(x)
                out.append(acc)
        return out

    def _raw_numpy(self, np: Any, matrix: Sequence[Sequence[float]]) -> list[float]:
        """All walks of a batch at once, one tree level per step over the walks not yet at a
        leaf. Each feature is given twice, missing values as -inf (column 2f) and as +inf
        (2f + 1), and a node reads the copy that sends a missing value its way, so a step
        is a gather, a comparison and a child look-up."""
        column, threshold, child, value, roots, leaf = self._pack(np)
        x = np.asarray(matrix, dtype=np.float64)
        n, t = x.shape[0], roots.shape[0]
        missing = np.isnan(x)
        both = np.empty((n, 2 * x.shape[1]), dtype=np.float64)
        both[:, 0::2] = np.where(missing, -np.inf, x)
        both[:, 1::2] = np.where(missing, np.inf, x)
        flat = both.ravel()
        node = np.tile(roots, n)  # (row, tree) pairs, row-major
        walking = np.flatnonzero(~leaf[node])
        at = node[walking]
        base = (walking // t) * both.shape[1]
        while walking.size:  # one level of every walk not yet at a leaf
            right = flat[base + column[at]] > threshold[at]
            at = child[2 * at + right]
            done = leaf[at]
            node[walking[done]] = at[done]
            going = ~done
            walking, at, base = walking[going], at[going], base[going]
        leaves = value[node].reshape(n, t)
        if self.kind == "random_forest":
            sums = np.cumsum(leaves, axis=1)[:, -1]
            raw: list[float] = [self.base_score + s / t for s in sums.tolist()]
            return raw
        start = np.full((n, 1), self.base_score, dtype=np.float64)
        result: list[float] = np.cumsum(np.hstack([start, leaves]), axis=1)[:, -1].tolist()
        return result

    def _pack(self, np: Any) -> tuple[Any, ...]:
        """All trees as flat numpy arrays, built once: per node (global ids) the column it
        reads (module docstring of ``_raw_numpy``), its threshold, its children (``child[2i]``
        left, ``child[2i + 1]`` right), its value; the roots; which nodes are leaves."""
        if self._packed:
            return tuple(self._packed)
        column: list[int] = []
        threshold: list[float] = []
        child: list[int] = []
        value: list[float] = []
        roots: list[int] = []
        leaf: list[bool] = []
        for tree in self.trees:
            offset = len(column)
            roots.append(offset)
            for i, f in enumerate(tree.feature):
                if f < 0:
                    column.append(0)
                    threshold.append(0.0)
                    child += [offset + i, offset + i]
                else:
                    column.append(2 * f + (0 if tree.missing_left[i] else 1))
                    threshold.append(tree.threshold[i])
                    child += [offset + tree.left[i], offset + tree.right[i]]
                value.append(tree.value[i])
                leaf.append(f < 0)
        packed = [
            np.asarray(column, dtype=np.intp),
            np.asarray(threshold, dtype=np.float64),
            np.asarray(child, dtype=np.intp),
            np.asarray(value, dtype=np.float64),
            np.asarray(roots, dtype=np.intp),
            np.asarray(leaf, dtype=bool),
        ]
        self._packed.extend(packed)
        return tuple(packed)


_NUMPY: list[Any] = []


def _numpy() -> Any:
    """numpy when installed (the ``model`` extra), else None; imported once, lazily."""
    if not _NUMPY:
        try:
            import numpy  # lazy: an optional accelerator, never needed for correct scores
        except ImportError:  # pragma: no cover - depends on the install
            _NUMPY.append(None)
        else:
            _NUMPY.append(numpy)
    return _NUMPY[0]


def _parse_tree(raw: Any, n: int, n_features: int, fail: Any) -> Tree:
    where = f"tree #{n}"
    if not isinstance(raw, dict):
        raise fail(f"{where}: expected an object with {', '.join(_TREE_KEYS)}")
    keys = set(raw)
    if keys != set(_TREE_KEYS):
        extra = sorted(str(k) for k in keys - set(_TREE_KEYS))
        lacking = sorted(set(_TREE_KEYS) - keys)
        what = f"unknown key(s) {extra}" if extra else f"missing key(s) {lacking}"
        raise fail(f"{where}: {what} (a tree has {', '.join(_TREE_KEYS)})")
    arrays = [raw[k] for k in _TREE_KEYS]
    if not all(isinstance(a, list) for a in arrays):
        raise fail(f"{where}: {', '.join(_TREE_KEYS)} must be lists")
    size = len(arrays[0])
    if size == 0 or size > MAX_NODES or any(len(a) != size for a in arrays):
        raise fail(f"{where}: the node lists must have the same length, 1 to {MAX_NODES}")
    feature, threshold, left, right, missing, value = arrays
    for i in range(size):
        f, lo, hi = feature[i], left[i], right[i]
        if type(f) is not int or type(lo) is not int or type(hi) is not int:
            raise fail(f"{where} node {i}: feature, left and right must be integers")
        if type(missing[i]) is not bool:
            raise fail(f"{where} node {i}: missing_left must be true or false")
        if not _is_number(threshold[i]) or not _is_number(value[i]):
            raise fail(f"{where} node {i}: threshold and value must be finite numbers")
        if f == -1:
            if lo != -1 or hi != -1:
                raise fail(f"{where} node {i}: a leaf (feature -1) has left and right -1")
        elif not 0 <= f < n_features:
            raise fail(f"{where} node {i}: feature index {f} is not -1 or in 0..{n_features - 1}")
        elif not (i < lo < size and i < hi < size and lo != hi):
            raise fail(
                f"{where} node {i}: children must be two different nodes after it (in {i + 1}..{size - 1})"
            )
    return Tree(
        feature=tuple(feature),
        threshold=tuple(float(t) for t in threshold),
        left=tuple(left),
        right=tuple(right),
        missing_left=tuple(missing),
        value=tuple(float(v) for v in value),
    )


def load_model(path: str | Path) -> TreeModel:
    """Read and validate a model file (the one function of this module doing I/O)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {str(p)!r}: cannot read: {exc.strerror}", path=str(p)) from exc
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelError(f"model file {str(p)!r}: not JSON: {exc}", path=str(p)) from None
    return TreeModel.from_dict(parsed, source=str(p))
