"""A brute-force oracle for the feature semantics, written straight from the issue.

It keeps every applied event of every key and recomputes each feature from scratch:
slow and obviously right. Tests compare ``FeatureEngine`` against it.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

from features import Feature, FeatureSpec

R_KM = 6371.0


def get_path(ev: dict[str, Any], path: str) -> Any:
    x: Any = ev
    for p in path.split("."):
        if not isinstance(x, dict):
            return None
        x = x.get(p)
    return x


def matches(f: Feature, ev: dict[str, Any]) -> bool:
    for path, vals in f.where:
        x = get_path(ev, path)
        if x is None or not any(x == v and isinstance(x, bool) == isinstance(v, bool) for v in vals):
            return False
    return True


def numeric(v: Any) -> bool:
    return (type(v) is int) or (type(v) is float and math.isfinite(v))


def hav(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp = p2 - p1
    dl = math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_KM * math.asin(min(1.0, math.sqrt(h)))


def point(ev: dict[str, Any], path: str) -> tuple[float, float] | None:
    g = get_path(ev, path)
    if not isinstance(g, dict):
        return None
    lat, lon = g.get("lat"), g.get("lon")
    if not (numeric(lat) and numeric(lon)) or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return (float(lat), float(lon))


def distinct_key(v: Any) -> Any:
    if isinstance(v, bool):
        return ("bool", v)  # true and 1 are two values
    if isinstance(v, (str, int)):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    return None


class Oracle:
    """Applies events like the engine should, by brute force."""

    def __init__(self, spec: FeatureSpec, *, lateness_ms: int) -> None:
        self.spec = spec
        self.lateness_ms = lateness_ms
        self.applied: dict[tuple[str, str], list[tuple[int, int, dict[str, Any]]]] = {}
        self.first: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.seq = 0

    def apply(self, entity: str, key: str, ev: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        k = (entity, key)
        evs = self.applied.setdefault(k, [])
        firsts = self.first.setdefault(k, {})
        if ev["event_id"] in firsts:
            return "duplicate", firsts[ev["event_id"]]
        tmax = max((t for t, _, _ in evs), default=None)
        t = ev["ts"]
        if tmax is not None and t < tmax - self.lateness_ms:
            return "late_rejected", {}
        self.seq += 1
        evs.append((t, self.seq, ev))
        out = {f.name: self.value(f, evs, t, self.seq, ev) for f in self.spec.features_of(entity)}
        firsts[ev["event_id"]] = out
        return "applied", out

    def value(self, f: Feature, evs: list[tuple[int, int, dict[str, Any]]], t: int, seq: int, e: Any) -> Any:
        lo = -math.inf if f.window_ms is None else t - f.window_ms

        # the matching applied events whose time lies in (t - W, t]
        def in_window(x: int) -> bool:
            return lo < x <= t

        m = [(x, s, ev) for x, s, ev in evs if in_window(x) and matches(f, ev)]
        if f.agg == "count":
            return len(m)
        if f.agg == "distinct":
            assert f.field
            return len({k for _, _, ev in m if (k := distinct_key(get_path(ev, f.field))) is not None})
        if f.agg in ("sum", "min", "max"):
            assert f.field
            vals = [v for _, _, ev in m if numeric(v := get_path(ev, f.field))]
            if f.agg == "sum":
                if any(type(v) is float for v in vals):
                    return float(sum((Fraction(v) for v in vals), Fraction(0)))
                return sum(vals)
            if not vals:
                return None
            return max(vals) if f.agg == "max" else min(vals)
        if f.agg == "last":
            assert f.field
            if not m:
                return None
            _, _, ev = max(m, key=lambda r: (r[0], r[1]))
            return get_path(ev, f.field)
        if f.agg == "since":
            before = [x for x, s, _ in m if s != seq]
            return t - max(before) if before else None
        if f.agg == "geo_spread":
            assert f.field
            pts = [p for _, _, ev in m if (p := point(ev, f.field)) is not None]
            return max((hav(a, b) for a, b in itertools.combinations(pts, 2)), default=0.0)
        if f.agg == "max_speed":
            assert f.field
            seqd = sorted(
                ((s, x, p) for x, s, ev in m if (p := point(ev, f.field)) is not None), key=lambda r: r[0]
            )
            best = 0.0
            for (_, x1, p1), (_, x2, p2) in itertools.pairwise(seqd):
                gap = max(abs(x2 - x1), 1000)
                best = max(best, hav(p1, p2) / (gap / 3_600_000))
            return best
        if f.agg == "sequence":
            assert f.within_ms is not None
            if not matches(f, e) or e.get("type") != f.steps[-1]:
                return 0
            # earlier events in event order (time, then application order), matching `where`
            earlier = sorted(
                ((x, s, ev) for x, s, ev in evs if s != seq and x <= t and matches(f, ev)),
                key=lambda r: (r[0], r[1]),
            )
            need = f.steps[:-1]
            if not need:
                return 1
            for combo in itertools.combinations(earlier, len(need)):
                if all(c[2].get("type") == st for c, st in zip(combo, need, strict=True)):
                    if combo[0][0] > t - f.within_ms:
                        return 1
            return 0
        raise AssertionError(f.agg)
