"""Envelope paths compiled once: getters for dotted paths and matchers for ``where``.

Kept apart from the spec so that the aggregations (``_aggs``) can build their getters
without importing the spec module, which itself reads the aggregation registry: the
import order is ``errors`` -> ``_time`` -> ``_paths`` -> ``_aggs`` -> ``_spec`` ->
``_engine``, with no cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Getter = Callable[[Mapping[str, Any]], Any]
Matcher = Callable[[Mapping[str, Any]], bool]
#: A validated ``where``: (path, allowed values) pairs, sorted by path.
Where = tuple[tuple[str, tuple[Any, ...]], ...]


def make_getter(path: str) -> Getter:
    """A fast getter for a dotted path into the envelope; a missing path gives None."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        (a,) = parts

        def get1(ev: Mapping[str, Any]) -> Any:
            return ev.get(a)

        return get1
    if len(parts) == 2:
        a, b = parts

        def get2(ev: Mapping[str, Any]) -> Any:
            x = ev.get(a)
            return x.get(b) if isinstance(x, dict) else None

        return get2

    def getn(ev: Mapping[str, Any]) -> Any:
        x: Any = ev
        for p in parts:
            if not isinstance(x, dict):
                return None
            x = x.get(p)
        return x

    return getn


def make_matcher(where: Mapping[str, tuple[Any, ...]]) -> Matcher | None:
    """Compile a ``where`` mapping (path -> allowed values) once. None means "match all"."""
    if not where:
        return None
    pairs = [(make_getter(p), vals) for p, vals in sorted(where.items())]
    if len(pairs) == 1:
        g, vals = pairs[0]
        if len(vals) == 1:
            (want,) = vals
            if isinstance(want, str):

                def match_str(ev: Mapping[str, Any]) -> bool:
                    return bool(g(ev) == want)

                return match_str

    def match(ev: Mapping[str, Any]) -> bool:
        for g, vals in pairs:
            x = g(ev)
            if x is None or not _in(x, vals):
                return False
        return True

    return match


def _in(x: Any, vals: tuple[Any, ...]) -> bool:
    for v in vals:
        # booleans only equal booleans (JSON true is not 1)
        if x == v and (isinstance(x, bool) == isinstance(v, bool)):
            return True
    return False
