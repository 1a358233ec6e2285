"""Private window logic: one class per aggregation, each describing itself to the spec.

An aggregation is one ``Logic`` subclass and nothing else: the class declares its
``agg`` name, the spec keys it takes beyond the common ones (``params``), the rules type
of its value (``value_type``) and, if it needs them, its own checks (``check``), how far
back it looks (``span_ms``) and which events can change it (``effective_where``).
Defining the class registers it (``Logic.__init_subclass__``); the spec (``_spec``)
validates every feature through that registry and holds no per-aggregation table, and
the engine builds the logic object through it. ``LOGICS`` is the live, read-only view of
the registry (``agg`` name -> class); ``unregister`` takes a class back out (tests).

Each logic object is stateless itself; it works on a small mutable per-(entity, feature)
state object whose snapshot (``dump``) is plain JSON-able data, delta-encoded, and which
``load`` rebuilds exactly (running aggregates are recomputed from the retained entries).

Common vocabulary:

* ``t``: event time of the event being applied; ``tmax``: the entity's newest event time
  after this event (``t < tmax`` means a late event, computed "as of" ``t``).
* the window of a query at ``t`` is ``(t - W, t]``; ``W`` None means the whole history.
* retention: a late event is at most ``L`` (allowed lateness) older than ``tmax``, so its
  window starts after ``tmax - W - L``: entries at or before that are dropped.
* in-order events take an O(1) amortized fast path (running aggregates); late events
  insert in event order and compute their value by scanning the retained entries.
* event order: by time, ties by application order (a late event goes after equal times).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from features._paths import Where, make_getter
from features.errors import SpecError

if TYPE_CHECKING:  # the spec imports this module: only the type, never at run time
    from features._spec import Feature

_SCALE_BITS = 1074  # every finite double is an integer multiple of 2**-1074
_NEG = -(1 << 62)  # "minus infinity" for integer times
_POS = 1 << 62  # "plus infinity"
_EARTH_KM = 6371.0
_RAD = math.pi / 180.0

Event = Mapping[str, Any]
#: Builds the SpecError of one feature: ``err(message, problem)``; the message gets the
#: ``feature 'name': `` prefix and the error names the feature, like every spec error.
SpecErr = Callable[[str, str], SpecError]


def _num(v: Any) -> Any:
    """A numeric value (int, or finite float) or None. Booleans are not numbers."""
    t = type(v)
    if t is int:
        return v
    if t is float:
        return v if math.isfinite(v) else None
    return None


def _scaled(v: float) -> int:
    n, d = v.as_integer_ratio()
    return n << (_SCALE_BITS + 1 - d.bit_length())


def _exact_sum(vals: Any) -> Any:
    """Exact sum: int when every value is an int, else the correctly rounded float."""
    i = 0
    f = 0
    nf = 0
    for v in vals:
        if type(v) is int:
            i += v
        else:
            f += _scaled(v)
            nf += 1
    return _sum_value(i, f, nf)


def _sum_value(i: int, f: int, nf: int) -> Any:
    if not nf:
        return i
    try:
        return ((i << _SCALE_BITS) + f) / (1 << _SCALE_BITS)
    except OverflowError:
        return math.inf if (i << _SCALE_BITS) + f > 0 else -math.inf


def _deltas(ts: list[int], start: int, ref: int) -> list[int]:
    """Delta-encode ``ts[start:]``: the first against ``ref`` (``ref - ts``), then each
    against the previous entry (``ts[i] - ts[i-1]``): small non-negative ints when sorted."""
    out: list[int] = []
    prev = None
    for x in ts[start:] if start else ts:
        out.append(ref - x if prev is None else x - prev)
        prev = x
    return out


def _undeltas(ds: list[int], ref: int) -> list[int]:
    out: list[int] = []
    prev = 0
    for i, d in enumerate(ds):
        prev = ref - d if i == 0 else prev + d
        out.append(prev)
    return out


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (haversine, R = 6371.0 km)."""
    p1 = lat1 * _RAD
    p2 = lat2 * _RAD
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((lon2 - lon1) * _RAD / 2) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def geo_point(g: Any) -> tuple[float, float] | None:
    """(lat, lon) from a ``{"lat": .., "lon": ..}`` object with numeric, in-range values."""
    if type(g) is not dict:
        return None
    lat = _num(g.get("lat"))
    lon = _num(g.get("lon"))
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 180.0):
        return None
    return (float(lat), float(lon))


def distinct_key(v: Any) -> Any:
    """The value ``distinct`` counts: strings, numbers and booleans; None otherwise.

    A boolean is keyed as the pair ``(True, v)`` so ``true`` and ``1`` are two values (in a
    Python dict they would be one); snapshots hold the pair as a JSON array."""
    t = type(v)
    if t is str or t is int:
        return v
    if t is bool:
        return (True, v)
    if t is float:
        return v if math.isfinite(v) else None
    return None


def _distinct_loaded_key(k: Any) -> Any:
    """A snapshot's key back to :func:`distinct_key`'s form (a pair comes back as a list;
    a bare boolean is from a snapshot written before booleans were keyed apart)."""
    t = type(k)
    if t is list:
        return (True, k[1])
    if t is bool:
        return (True, k)
    return k


# ---------------------------------------------------------------- self-description, registry

#: The spec keys an aggregation may take beyond the common ones (``name``, ``entity``,
#: ``agg``, ``where``): the parameters a ``Feature`` holds (``field``, ``window_ms``,
#: ``steps``, ``within_ms``) and its ``state_key`` hashes. The spec parses each key the
#: same way whichever aggregation takes it.
PARAM_KEYS: tuple[str, ...] = ("field", "window", "steps", "within")
#: The rules type names a feature value may have (``rules._expr.SCHEMA_TYPES``).
VALUE_TYPES: tuple[str, ...] = ("any", "float", "int", "number", "str")
_AGG_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Param:
    """One spec key an aggregation takes: ``key`` (one of ``PARAM_KEYS``), whether the
    spec must give it, and the value it has when left out (spelled as in the spec, e.g.
    ``"geo"`` for a field, ``"1h"`` for a duration)."""

    key: str
    required: bool = False
    default: Any = None

    def __post_init__(self) -> None:
        if self.key not in PARAM_KEYS:
            raise TypeError(f"aggregation parameter {self.key!r}: expected one of {', '.join(PARAM_KEYS)}")


FIELD = Param("field", required=True)  # the path of the value (required)
WINDOW = Param("window")  # the window; left out: the whole history

_REGISTRY: dict[str, type[Logic]] = {}
#: ``agg`` name -> its class: every aggregation defined so far (live, read-only).
LOGICS: Mapping[str, type[Logic]] = MappingProxyType(_REGISTRY)


def unregister(agg: str) -> None:
    """Take the aggregation ``agg`` out of the registry (a KeyError if it is not in it).
    For tests that define an aggregation of their own; specs already loaded keep it."""
    del _REGISTRY[agg]


class State:
    """Base of the per-(key, feature) states. ``val`` is the value as of the key's newest
    event and stays valid for in-order events that do not match the feature while their
    time is before ``until`` (the engine then skips the call); ``until`` is reset to
    ``_NEG`` to force a recomputation."""

    __slots__ = ("until", "val")

    def __init__(self) -> None:
        self.val: Any = None
        self.until = _NEG


class Logic:
    """Base of the aggregations: a self-description the spec reads, and the private logic
    object the engine builds once per feature.

    A concrete aggregation is a subclass that sets ``agg`` (its ``agg:`` name in the spec);
    defining it registers it (a TypeError if the description is invalid or the name is
    taken). It declares, on the class:

    * ``agg``: the name; ``value_type``: the rules type name of its value (``VALUE_TYPES``);
    * ``params``: the spec keys it takes beyond ``name``, ``entity``, ``agg`` and ``where``
      (``Param`` objects; default: an optional ``window``); any other key is refused;
    * ``check(feature, err)``: its own checks of a parsed feature (default: none), raising
      ``err(message, problem)``, a SpecError naming the feature;
    * ``span_ms(feature)``: how far back it looks (default: the window; None: the whole
      history); ``effective_where(feature)``: the ``where`` the engine matches events
      against (default: the feature's; an aggregation may narrow it to the only events
      that can change its value, so the engine skips the others).

    Subclasses without ``agg`` (shared bases such as ``Additive``) are not registered.

    The logic part: ``new`` gives an empty state (a ``State``); ``apply(st, t, ev, m,
    tmax)`` applies one event (``m``: it matches the feature's ``where``) and returns the
    value as of ``t``; for an in-order event it also sets ``st.val`` (that value) and
    ``st.until`` (see ``State``); ``dump`` / ``load`` snapshot and restore the state
    exactly; ``newest`` is the time of the newest retained entry.
    """

    agg: ClassVar[str]
    value_type: ClassVar[str] = "any"
    params: ClassVar[tuple[Param, ...]] = (WINDOW,)

    __slots__ = ("cap", "get", "lateness", "name", "skipped", "window")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "agg" not in cls.__dict__:
            return  # a shared base, not an aggregation of its own
        name = cls.agg
        where = f"aggregation {cls.__module__}.{cls.__qualname__}"
        if not isinstance(name, str) or not _AGG_NAME.match(name):
            raise TypeError(f"{where}: agg must be a lower-case name such as 'count', got {name!r}")
        if name in _REGISTRY:
            other = _REGISTRY[name]
            raise TypeError(f"{where}: agg {name!r} is already {other.__module__}.{other.__qualname__}")
        if cls.value_type not in VALUE_TYPES:
            raise TypeError(f"{where}: value_type must be one of {', '.join(VALUE_TYPES)}")
        keys = [p.key for p in cls.params if isinstance(p, Param)]
        if len(keys) != len(cls.params) or len(set(keys)) != len(keys):
            raise TypeError(f"{where}: params must be Param objects with distinct keys")
        _REGISTRY[name] = cls

    @classmethod
    def param(cls, key: str) -> Param | None:
        """The parameter ``key`` of this aggregation, or None if it does not take it."""
        for p in cls.params:
            if p.key == key:
                return p
        return None

    @classmethod
    def check(cls, feature: Feature, err: SpecErr) -> None:
        """Checks of this aggregation beyond the parsing of each key: ``raise err(msg,
        problem)`` to refuse the feature. None by default."""

    @classmethod
    def span_ms(cls, feature: Feature) -> int | None:
        """How far back the value looks (ms); None for the whole history."""
        return feature.window_ms

    @classmethod
    def effective_where(cls, feature: Feature) -> Where:
        """The ``where`` the engine matches events against (sorted by path)."""
        return feature.where

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        self.name = feature.name
        self.window: int | None = feature.window_ms
        self.lateness = lateness_ms
        self.cap = cap
        self.get: Callable[[Event], Any] = make_getter(feature.field) if feature.field else (lambda ev: None)
        #: events that matched but whose field held a value this aggregation cannot use (a
        #: string or boolean where a number is needed, an object where a value is, a bad
        #: geo point); a count for metrics, never part of any state
        self.skipped = 0

    @property
    def always(self) -> bool:
        """True when the value changes with every event (``val`` / ``until`` unused):
        the engine then calls ``apply`` for every event, matching or not."""
        return False

    def new(self) -> Any:
        raise NotImplementedError

    def apply(self, st: Any, t: int, ev: Event, m: bool, tmax: int) -> Any:
        raise NotImplementedError

    def dump(self, st: Any, tmax: int) -> Any:
        raise NotImplementedError

    def load(self, data: Any, tmax: int) -> Any:
        raise NotImplementedError

    def newest(self, st: Any) -> int:
        """Time of the newest retained entry (``_NEG`` when empty)."""
        raise NotImplementedError


# ---------------------------------------------------------------- count / sum


class _AddState(State):
    __slots__ = ("f", "g", "h", "i", "nf", "ts", "vs", "w")

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[int] = []  # event times, event order; [h:] retained, [w:] in the running window
        self.vs: list[Any] = []  # values (weights for count)
        self.h = 0
        self.w = 0
        self.g = 0  # bucket width in ms once degraded (0 = exact)
        self.i = 0  # running int sum
        self.f = 0  # running sum of floats, scaled by 2**1074 (exact)
        self.nf = 0  # floats in the running sum


class Additive(Logic):
    """The shared logic of ``count`` and ``sum`` (``Count``, ``Sum``).

    Exact below the cap. Above it (more than ``cap`` retained entries), entries are merged
    into time buckets of width ``g = ceil((W + L) / (cap // 2))`` ms (doubled if needed), each
    keeping its newest time: a bucket counts when its newest event is in the window, so the
    value is then bounded by the exact values over ``(t - W, t]`` and ``(t - W - g, t]``
    (for a count: ``exact(t-W, t] <= value <= exact(t-W-g, t]``). Retained entries stay
    below ``cap // 2 + 2`` per key however hot it is.
    """

    IS_COUNT: ClassVar[bool] = False  # each event weighs 1 (else: the numeric field)

    __slots__ = ("is_count",)

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        super().__init__(feature, cap, lateness_ms)
        self.is_count = self.IS_COUNT  # copied to a slot: the fastest read on the hot path

    def new(self) -> _AddState:
        return _AddState()

    def newest(self, st: _AddState) -> int:
        return st.ts[-1] if len(st.ts) > st.h else _NEG

    def _value(self, st: _AddState) -> Any:
        if st.nf:
            return _sum_value(st.i, st.f, st.nf)
        return st.i

    def apply(self, st: _AddState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        v: Any = None
        if m:
            if self.is_count:
                v = 1
            else:
                raw = self.get(ev)
                v = _num(raw)
                if v is None and raw is not None:
                    self.skipped += 1
        ts = st.ts
        if t < tmax:
            if v is not None:
                self._insert_late(st, t, v, tmax)
            return self._asof(st, t)
        if v is not None:
            g = st.g
            if g and len(ts) > st.h and ts[-1] // g == t // g:
                old = st.vs[-1]
                self._sub(st, old)
                st.vs[-1] = old + v
                self._add(st, old + v)
                ts[-1] = t
            else:
                ts.append(t)
                st.vs.append(v)
                if type(v) is int:
                    st.i += v
                else:
                    st.f += _scaled(v)
                    st.nf += 1
                if len(ts) - st.h > self.cap:
                    self._degrade(st, tmax)
                    ts = st.ts  # rebuilt
        w_ms = self.window
        if w_ms is not None:
            cut = t - w_ms
            w = st.w
            n = len(ts)
            if w < n and ts[w] <= cut:
                vs = st.vs
                while w < n and ts[w] <= cut:
                    self._sub(st, vs[w])
                    w += 1
                st.w = w
                rc = cut - self.lateness
                h = st.h
                if ts[h] <= rc:
                    while h < w and ts[h] <= rc:
                        h += 1
                    st.h = h
                    if h > 2 and 2 * h > n:
                        del ts[:h]
                        del vs[:h]
                        st.w -= h
                        st.h = 0
        else:
            h = st.h
            if h < len(ts) and ts[h] <= t - self.lateness:
                rc = t - self.lateness
                n = len(ts)
                while h < n and ts[h] <= rc:
                    h += 1
                st.h = st.w = h
                if h > 2 and 2 * h > n:
                    del ts[:h]
                    del st.vs[:h]
                    st.h = st.w = 0
        if w_ms is not None and st.w < len(ts):
            st.until = ts[st.w] + w_ms
        else:
            st.until = _POS
        out = _sum_value(st.i, st.f, st.nf) if st.nf else st.i
        st.val = out
        return out

    @staticmethod
    def _add(st: _AddState, v: Any) -> None:
        if type(v) is int:
            st.i += v
        else:
            st.f += _scaled(v)
            st.nf += 1

    @staticmethod
    def _sub(st: _AddState, v: Any) -> None:
        if type(v) is int:
            st.i -= v
        else:
            st.f -= _scaled(v)
            st.nf -= 1
            if not st.nf:
                st.f = 0

    def _insert_late(self, st: _AddState, t: int, v: Any, tmax: int) -> None:
        p = bisect_right(st.ts, t, st.h)
        st.ts.insert(p, t)
        st.vs.insert(p, v)
        if self.window is None or t > tmax - self.window:
            self._add(st, v)  # inside the running window (or the running total)
        else:
            st.w += 1
        if len(st.ts) - st.h > self.cap:
            self._degrade(st, tmax)

    def _asof(self, st: _AddState, t: int) -> Any:
        ts = st.ts
        hi = bisect_right(ts, t, st.h)
        if self.window is None:
            # running total minus the (retained) entries after t
            i, f, nf = st.i, st.f, st.nf
            for v in st.vs[hi:]:
                if type(v) is int:
                    i -= v
                else:
                    f -= _scaled(v)
                    nf -= 1
            return _sum_value(i, f if nf else 0, nf)
        lo = bisect_right(ts, t - self.window, st.h)
        return _exact_sum(st.vs[lo:hi])

    def _degrade(self, st: _AddState, tmax: int) -> None:
        span = (self.window or 0) + self.lateness
        g = max(st.g, 1, -(-span // max(1, self.cap // 2)))
        while True:
            ts: list[int] = []
            vs: list[Any] = []
            for x, v in zip(st.ts[st.h :], st.vs[st.h :], strict=True):
                if ts and ts[-1] // g == x // g:
                    ts[-1] = max(ts[-1], x)
                    vs[-1] = vs[-1] + v
                else:
                    ts.append(x)
                    vs.append(v)
            if len(ts) <= self.cap // 2 + 2:
                break
            g *= 2
        st.g = g
        st.ts, st.vs, st.h = ts, vs, 0
        self._rebuild(st, tmax)

    def _rebuild(self, st: _AddState, tmax: int) -> None:
        if self.window is not None:
            st.w = bisect_right(st.ts, tmax - self.window, st.h)
            vals = st.vs[st.w :]
            st.i = st.f = st.nf = 0
            for v in vals:
                self._add(st, v)
        else:
            st.w = st.h

    def dump(self, st: _AddState, tmax: int) -> Any:
        h = st.h
        out: list[Any] = [_deltas(st.ts, h, tmax)]
        if not self.is_count or st.g:
            out.append(st.vs[h:])
        if st.g:
            out.append(st.g)
        if self.window is None:
            out.append([st.i, str(st.f), st.nf] if st.nf else st.i)
        return out

    def load(self, data: Any, tmax: int) -> _AddState:
        st = _AddState()
        st.ts = _undeltas(data[0], tmax)
        k = 1
        if not self.is_count or (len(data) > 1 + (self.window is None)):
            st.vs = list(data[1])
            k = 2
        else:
            st.vs = [1] * len(st.ts)
        if len(data) > k + (self.window is None):
            st.g = int(data[k])
            k += 1
        if self.window is None:
            tot = data[k]
            if isinstance(tot, list):
                st.i, st.f, st.nf = int(tot[0]), int(tot[1]), int(tot[2])
            else:
                st.i = int(tot)
        self._rebuild(st, tmax)
        return st


class Count(Additive):
    """``count``: how many matching events in the window."""

    agg = "count"
    value_type = "int"
    params = (WINDOW,)
    IS_COUNT = True

    __slots__ = ()


class Sum(Additive):
    """``sum``: the exact sum of the numeric ``field`` of the matching events in the window
    (an int while every value is an int, else the correctly rounded float)."""

    agg = "sum"
    value_type = "number"
    params = (FIELD, WINDOW)

    __slots__ = ()


# ---------------------------------------------------------------- min / max


class _ExtState(State):
    __slots__ = ("base", "dq", "g", "h", "ts", "vs")

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[int] = []
        self.vs: list[Any] = []
        self.h = 0
        self.g = 0
        self.dq: deque[tuple[int, Any]] = deque()  # monotonic deque over the running window
        self.base: Any = None  # whole-history: extreme of the entries no longer retained


class Extreme(Logic):
    """The shared logic of ``min`` and ``max`` (``Min``, ``Max``). Exact below the cap;
    above it, time buckets as for ``count``: the value is the extreme over a window
    starting up to ``g`` earlier."""

    IS_MAX: ClassVar[bool] = False

    __slots__ = ("is_max",)

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        super().__init__(feature, cap, lateness_ms)
        self.is_max = self.IS_MAX  # copied to a slot: the fastest read on the hot path

    def new(self) -> _ExtState:
        return _ExtState()

    def newest(self, st: _ExtState) -> int:
        return st.ts[-1] if len(st.ts) > st.h else _NEG

    def _better(self, a: Any, b: Any) -> bool:
        """a at least as good as b (so b can be dropped when a is newer)."""
        return bool(a >= b) if self.is_max else bool(a <= b)

    def _ext(self, vals: Any) -> Any:
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return max(vals) if self.is_max else min(vals)

    def apply(self, st: _ExtState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        v = None
        if m:
            raw = self.get(ev)
            v = _num(raw)
            if v is None and raw is not None:
                self.skipped += 1
        if t < tmax:
            if v is not None:
                p = bisect_right(st.ts, t, st.h)
                st.ts.insert(p, t)
                st.vs.insert(p, v)
                if len(st.ts) - st.h > self.cap:
                    self._degrade(st, tmax)
                else:
                    self._rebuild(st, tmax)
            hi = bisect_right(st.ts, t, st.h)
            if self.window is None:
                return self._ext([st.base, *st.vs[st.h : hi]])
            lo = bisect_right(st.ts, t - self.window, st.h)
            return self._ext(st.vs[lo:hi])
        dq = st.dq
        if v is not None:
            g = st.g
            if g and len(st.ts) > st.h and st.ts[-1] // g == t // g:
                st.ts[-1] = t
                if self._better(v, st.vs[-1]):
                    st.vs[-1] = v
                self._rebuild(st, tmax)
            else:
                st.ts.append(t)
                st.vs.append(v)
                if self.is_max:
                    while dq and dq[-1][1] <= v:
                        dq.pop()
                else:
                    while dq and dq[-1][1] >= v:
                        dq.pop()
                dq.append((t, v))
                if len(st.ts) - st.h > self.cap:
                    self._degrade(st, tmax)
        w_ms = self.window
        ts = st.ts
        if w_ms is not None:
            cut = t - w_ms
            while dq and dq[0][0] <= cut:
                dq.popleft()
            rc = cut - self.lateness
        else:
            rc = t - self.lateness
        h = st.h
        if h < len(ts) and ts[h] <= rc:
            n = len(ts)
            while h < n and ts[h] <= rc:
                if w_ms is None:
                    st.base = self._ext([st.base, st.vs[h]])
                h += 1
            st.h = h
            if h > 2 and 2 * h > n:
                del ts[:h]
                del st.vs[:h]
                st.h = 0
        if w_ms is None:
            st.until = _POS
            out = dq[0][1] if dq else st.base
        elif dq:
            st.until = dq[0][0] + w_ms
            out = dq[0][1]
        else:
            st.until = _POS
            out = None
        st.val = out
        return out

    def _rebuild(self, st: _ExtState, tmax: int) -> None:
        st.dq.clear()
        lo = st.h if self.window is None else bisect_right(st.ts, tmax - self.window, st.h)
        dq = st.dq
        for x, v in zip(st.ts[lo:], st.vs[lo:], strict=True):
            while dq and self._better(v, dq[-1][1]):
                dq.pop()
            dq.append((x, v))
        if self.window is None and st.base is not None:
            if not dq or self._better(st.base, dq[0][1]):
                dq.appendleft((_NEG, st.base))

    def _degrade(self, st: _ExtState, tmax: int) -> None:
        span = (self.window or 0) + self.lateness
        g = max(st.g, 1, -(-span // max(1, self.cap // 2)))
        while True:
            ts: list[int] = []
            vs: list[Any] = []
            for x, v in zip(st.ts[st.h :], st.vs[st.h :], strict=True):
                if ts and ts[-1] // g == x // g:
                    ts[-1] = max(ts[-1], x)
                    if self._better(v, vs[-1]):
                        vs[-1] = v
                else:
                    ts.append(x)
                    vs.append(v)
            if len(ts) <= self.cap // 2 + 2:
                break
            g *= 2
        st.g, st.ts, st.vs, st.h = g, ts, vs, 0
        self._rebuild(st, tmax)

    def dump(self, st: _ExtState, tmax: int) -> Any:
        out: list[Any] = [_deltas(st.ts, st.h, tmax), st.vs[st.h :], st.g]
        if self.window is None:
            out.append(st.base)
        return out

    def load(self, data: Any, tmax: int) -> _ExtState:
        st = _ExtState()
        st.ts = _undeltas(data[0], tmax)
        st.vs = list(data[1])
        st.g = int(data[2])
        if self.window is None:
            st.base = data[3]
        self._rebuild(st, tmax)
        return st


class Min(Extreme):
    """``min``: the smallest numeric ``field`` in the window (None when none)."""

    agg = "min"
    value_type = "number"
    params = (FIELD, WINDOW)

    __slots__ = ()


class Max(Extreme):
    """``max``: the largest numeric ``field`` in the window (None when none)."""

    agg = "max"
    value_type = "number"
    params = (FIELD, WINDOW)
    IS_MAX = True

    __slots__ = ()


# ---------------------------------------------------------------- last / since


class _LastState(State):
    __slots__ = ("g", "h", "ts", "vs")

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[int] = []  # matching times, event order: those after tmax - L, plus one before
        self.vs: list[Any] = []  # field values (``last`` only)
        self.h = 0
        self.g = 0


class Last(Logic):
    """``last`` (field of the most recent matching event, itself included) and ``since``
    (``t`` minus the time of the most recent matching event before this one).

    Keeps the matching events of the last ``L`` plus the newest one before. Above the cap
    (a hot key with more than ``cap`` matching events within ``L``) events in the same
    time bucket (``g = ceil(L / (cap // 2))``) merge into the newest: only late events can
    then see a value that is at most ``g`` newer than the exact one.
    """

    agg = "last"
    value_type = "any"
    params: ClassVar[tuple[Param, ...]] = (FIELD, WINDOW)  # typed: ``Since`` takes fewer
    IS_SINCE: ClassVar[bool] = False

    __slots__ = ("is_since",)

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        super().__init__(feature, cap, lateness_ms)
        self.is_since = self.IS_SINCE  # copied to a slot: the fastest read on the hot path

    @property
    def always(self) -> bool:
        return self.is_since  # "ms since" changes with every event

    def new(self) -> _LastState:
        return _LastState()

    def newest(self, st: _LastState) -> int:
        return st.ts[-1] if len(st.ts) > st.h else _NEG

    def apply(self, st: _LastState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        ts = st.ts
        h = st.h
        w_ms = self.window
        if t < tmax:
            return self._late(st, t, ev, m)
        n = len(ts)
        if self.is_since:
            prev = ts[-1] if n > h else None
            if m:
                g = st.g
                if g and n > h and ts[-1] // g == t // g:
                    ts[-1] = t
                else:
                    ts.append(t)
                    n += 1
            out = None if prev is None or (w_ms is not None and prev <= t - w_ms) else t - prev
        else:
            if m:
                g = st.g
                if g and n > h and ts[-1] // g == t // g:
                    ts[-1] = t
                    st.vs[-1] = self.get(ev)
                else:
                    ts.append(t)
                    st.vs.append(self.get(ev))
                    n += 1
            if n > h and (w_ms is None or ts[-1] > t - w_ms):
                out = st.vs[-1]
            else:
                out = None
        # keep entries after t - L plus the newest one at or before it
        if n - h > 1 and ts[h + 1] <= t - self.lateness:
            rc = t - self.lateness
            while h + 1 < n and ts[h + 1] <= rc:
                h += 1
            if w_ms is not None and ts[h] <= rc - w_ms:
                h += 1
            st.h = h
            if h > 2 and 2 * h > n:
                del ts[:h]
                if not self.is_since:
                    del st.vs[:h]
                st.h = 0
        if len(ts) - st.h > self.cap:
            self._degrade(st)
        if self.is_since:
            st.until = _NEG  # "ms since" changes with every event
        elif w_ms is not None and len(ts) > st.h and ts[-1] > t - w_ms:
            st.until = ts[-1] + w_ms
        else:
            st.until = _POS
        st.val = out
        return out

    def _late(self, st: _LastState, t: int, ev: Event, m: bool) -> Any:
        """A late event: insert in event order (after equal times), value as of t."""
        ts = st.ts
        h = st.h
        w_ms = self.window
        p = bisect_right(ts, t, h)
        out: Any
        if self.is_since:
            prev = ts[p - 1] if p - 1 >= h else None
            if m:
                ts.insert(p, t)
            out = None if prev is None or (w_ms is not None and prev <= t - w_ms) else t - prev
        elif m:
            out = self.get(ev)
            ts.insert(p, t)
            st.vs.insert(p, out)
        elif p - 1 >= h and (w_ms is None or ts[p - 1] > t - w_ms):
            out = st.vs[p - 1]
        else:
            out = None
        if len(ts) - h > self.cap:
            self._degrade(st)
        return out

    def _degrade(self, st: _LastState) -> None:
        g = max(st.g, 1, -(-self.lateness // max(1, self.cap // 2)))
        while True:
            ts: list[int] = []
            vs: list[Any] = []
            src_vs = st.vs[st.h :] if not self.is_since else [None] * (len(st.ts) - st.h)
            for x, v in zip(st.ts[st.h :], src_vs, strict=True):
                if ts and ts[-1] // g == x // g:
                    ts[-1] = x
                    vs[-1] = v
                else:
                    ts.append(x)
                    vs.append(v)
            if len(ts) <= self.cap // 2 + 2:
                break
            g *= 2
        st.g, st.ts, st.h = g, ts, 0
        st.vs = [] if self.is_since else vs

    def dump(self, st: _LastState, tmax: int) -> Any:
        out: list[Any] = [_deltas(st.ts, st.h, tmax)]
        if not self.is_since:
            out.append(st.vs[st.h :])
        if st.g:
            out.append(st.g)
        return out

    def load(self, data: Any, tmax: int) -> _LastState:
        st = _LastState()
        st.ts = _undeltas(data[0], tmax)
        k = 1
        if not self.is_since:
            st.vs = list(data[1])
            k = 2
        if len(data) > k:
            st.g = int(data[k])
        return st


class Since(Last):
    """``since``: ms from the previous matching event to this one (see ``Last``)."""

    agg = "since"
    value_type = "int"
    params = (WINDOW,)
    IS_SINCE = True

    __slots__ = ()


# ---------------------------------------------------------------- distinct


class _DistinctState(State):
    __slots__ = ("occ", "oh", "old", "win")

    def __init__(self) -> None:
        super().__init__()
        # value -> its occurrence times (sorted): those after tmax - L, plus the newest before
        self.occ: dict[Any, list[int]] = {}
        # values in the running window -> newest occurrence, ordered by it
        self.win: OrderedDict[Any, int] = OrderedDict()
        # (newest occurrence, value) of retained values that left the window, oldest first
        self.old: list[tuple[int, Any]] = []  # a queue: [oh:] are live
        self.oh = 0


class Distinct(Logic):
    """``distinct``: how many different non-null values of ``field`` in the window.

    Values are strings, numbers and booleans (objects and arrays are ignored like null);
    numbers compare as numbers (1 and 1.0 are one value), booleans only equal booleans
    (``true`` and ``1`` are two values). Exact below the cap. Above it, only the
    ``cap`` most recently seen values are kept, so for in-order events the value is
    exactly ``min(exact, cap)``: never more than the truth, and exact whenever the truth
    is at most ``cap``.
    """

    agg = "distinct"
    value_type = "int"
    params = (FIELD, WINDOW)

    __slots__ = ()

    def new(self) -> _DistinctState:
        return _DistinctState()

    def newest(self, st: _DistinctState) -> int:
        return max((occ[-1] for occ in st.occ.values()), default=_NEG)

    def apply(self, st: _DistinctState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        v = self.get(ev) if m else None
        if v is not None and type(v) is not str:
            v = distinct_key(v)
            if v is None:
                self.skipped += 1
        occ = st.occ
        L = self.lateness
        w_ms = self.window
        if t < tmax:
            if v is not None:
                lst = occ.get(v)
                if lst is None:
                    occ[v] = [t]
                else:
                    insort(lst, t)
                self._rebuild(st, tmax)
                self._enforce_cap(st, v)
            n = 0
            for lst in occ.values():
                j = bisect_right(lst, t) - 1
                if j >= 0 and (w_ms is None or lst[j] > t - w_ms):
                    n += 1
            return n
        win = st.win
        if v is not None:
            lst = occ.get(v)
            if lst is None:
                occ[v] = [t]
                if not win and w_ms is not None:
                    st.until = t + w_ms
                win[v] = t
                if len(occ) > self.cap:
                    self._enforce_cap(st, v)
                    st.until = _NEG
            else:
                lst.append(t)
                if lst[1] <= t - L:
                    # keep the times after t - L and the newest one at or before it
                    if lst[-2] <= t - L:
                        del lst[:-2]  # the common case: only t is after t - L
                    else:
                        j = bisect_right(lst, t - L)
                        if j > 1:
                            del lst[: j - 1]
                if w_ms is not None and not win:
                    st.until = t + w_ms
                win[v] = t
                win.move_to_end(v)
        if w_ms is None:
            st.until = _POS
            st.val = len(win)
            return st.val
        # `until` (the first value's newest time + W) may be early, never late: check then
        if t >= st.until:
            cut = t - w_ms
            old = st.old
            while win:
                k0 = next(iter(win))
                lt = win[k0]
                if lt > cut:
                    break
                del win[k0]
                old.append((lt, k0))
            oh = st.oh
            if oh < len(old) and old[oh][0] <= cut - L:
                rc = cut - L
                n = len(old)
                while oh < n and old[oh][0] <= rc:
                    lt, k0 = old[oh]
                    oh += 1
                    lst = occ.get(k0)
                    if lst is not None and lst[-1] <= rc:
                        del occ[k0]
                if oh > 2 and 2 * oh > n:
                    del old[:oh]
                    oh = 0
                st.oh = oh
            st.until = win[next(iter(win))] + w_ms if win else _POS
        st.val = len(win)
        return st.val

    def _enforce_cap(self, st: _DistinctState, keep: Any) -> None:
        """Drop the least recently seen values (never ``keep``) until at most ``cap`` remain."""
        occ = st.occ
        while len(occ) > self.cap:
            if st.oh < len(st.old):
                _, k0 = st.old[st.oh]
                st.oh += 1
                if k0 in occ and k0 not in st.win:
                    del occ[k0]
                continue
            k0 = next(iter(st.win))
            if k0 == keep:
                break
            del st.win[k0]
            del occ[k0]

    def _rebuild(self, st: _DistinctState, tmax: int) -> None:
        items = sorted(((lst[-1], k) for k, lst in st.occ.items()), key=lambda x: x[0])
        if self.window is None:
            st.win = OrderedDict((k, lt) for lt, k in items)
            st.old = []
            st.oh = 0
            return
        cut = tmax - self.window
        rc = cut - self.lateness
        st.win = OrderedDict((k, lt) for lt, k in items if lt > cut)
        st.old = [(lt, k) for lt, k in items if rc < lt <= cut]
        st.oh = 0
        for lt, k in items:
            if lt <= rc:
                del st.occ[k]

    def dump(self, st: _DistinctState, tmax: int) -> Any:
        rc = _NEG if self.window is None else tmax - self.window - self.lateness
        keep = tmax - self.lateness  # per value: the times after it and the newest one at or before it
        out = []
        for k, lst in st.occ.items():
            if lst[-1] > rc:
                j = bisect_right(lst, keep)
                out.append([k, _deltas(lst, j - 1 if j > 1 else 0, tmax)])
        return out

    def load(self, data: Any, tmax: int) -> _DistinctState:
        st = _DistinctState()
        for k, ds in data:
            st.occ[_distinct_loaded_key(k)] = _undeltas(ds, tmax)
        self._rebuild(st, tmax)
        return st


# ---------------------------------------------------------------- geo_spread


# (lat, lon, lat in radians, lon in radians, cos(lat)): precomputed once per point
_GeoPt = tuple[float, float, float, float, float]


def _geo_pt(p: tuple[float, float]) -> _GeoPt:
    la = p[0] * _RAD
    return (p[0], p[1], la, p[1] * _RAD, math.cos(la))


def _hav_a(p: _GeoPt, q: _GeoPt) -> float:
    """The haversine term of two points (symmetric, monotonic in their distance)."""
    return math.sin((q[2] - p[2]) / 2) ** 2 + p[4] * q[4] * math.sin((q[3] - p[3]) / 2) ** 2


def _a_km(a: float) -> float:
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


class _GeoState(State):
    __slots__ = ("best", "best_a", "best_lo", "h", "pts", "ts")

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[int] = []  # event order
        self.pts: list[_GeoPt] = []
        self.h = 0
        self.best = 0.0  # spread over the running window (km)
        self.best_a = 0.0  # its haversine term (monotonic in the distance)
        self.best_lo = _NEG  # older time of the best pair (recompute when it leaves)


class GeoSpread(Logic):
    """``geo_spread``: the largest haversine distance (km) between two points in the window.

    O(points in the window) per matching event; a full recomputation (quadratic) only when
    a point of the farthest pair leaves. Because of that cost its point cap is
    ``min(cap, 256)``: above it the oldest retained points are dropped, so the value is
    then the spread of the 256 (or ``cap``) most recent matching points in the window, a
    lower bound of the exact value (exact when the window holds at most that many).
    """

    agg = "geo_spread"
    value_type = "float"
    params = (Param("field", default="geo"), WINDOW)

    __slots__ = ()
    MAX_POINTS = 256

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        super().__init__(feature, min(cap, self.MAX_POINTS), lateness_ms)

    def new(self) -> _GeoState:
        return _GeoState()

    def newest(self, st: _GeoState) -> int:
        return st.ts[-1] if len(st.ts) > st.h else _NEG

    @staticmethod
    def _spread(pts: list[_GeoPt], ts: list[int]) -> tuple[float, int]:
        """(haversine term of the farthest pair, older time of that pair)."""
        best = 0.0
        lo = _NEG
        n = len(pts)
        for i in range(n):
            p = pts[i]
            for j in range(i + 1, n):
                a = _hav_a(p, pts[j])
                if a > best:
                    best = a
                    lo = min(ts[i], ts[j])
        return best, lo

    def apply(self, st: _GeoState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        g = None
        if m:
            raw = self.get(ev)
            g = geo_point(raw)
            if g is None and raw is not None:
                self.skipped += 1
        w_ms = self.window
        if t < tmax:
            if g is not None:
                k = bisect_right(st.ts, t, st.h)
                st.ts.insert(k, t)
                st.pts.insert(k, _geo_pt(g))
                self._cap(st)
                self._rebuild(st, tmax)
            hi = bisect_right(st.ts, t, st.h)
            lo = st.h if w_ms is None else bisect_right(st.ts, t - w_ms, st.h)
            return _a_km(self._spread(st.pts[lo:hi], st.ts[lo:hi])[0])
        ts = st.ts
        cut = _NEG if w_ms is None else t - w_ms
        if g is not None:
            p = _geo_pt(g)
            lo = st.h if w_ms is None else bisect_right(ts, cut, st.h)
            best = st.best_a
            pts = st.pts
            for i in range(lo, len(ts)):
                a = _hav_a(p, pts[i])
                if a > best:
                    best = a
                    st.best_lo = ts[i]
            if best != st.best_a:
                st.best_a = best
                st.best = _a_km(best)
            ts.append(t)
            pts.append(p)
            if self._cap(st):
                self._rebuild(st, tmax)
        if st.best_lo != _NEG and st.best_lo <= cut:
            self._rebuild(st, tmax)
        if w_ms is not None:
            h = st.h
            rc = cut - self.lateness
            if h < len(ts) and ts[h] <= rc:
                while h < len(ts) and ts[h] <= rc:
                    h += 1
                st.h = h
                if h > 2 and 2 * h > len(ts):
                    del ts[:h]
                    del st.pts[:h]
                    st.h = 0
        st.until = _POS if (w_ms is None or st.best_lo == _NEG) else st.best_lo + w_ms
        st.val = st.best
        return st.best

    def _cap(self, st: _GeoState) -> bool:
        """Drop the oldest points above the cap; True if the farthest pair lost a point."""
        over = len(st.ts) - st.h - self.cap
        if over > 0:
            st.h += over
            return st.best_lo != _NEG and st.best_lo <= st.ts[st.h - 1]
        return False

    def _rebuild(self, st: _GeoState, tmax: int) -> None:
        lo = st.h if self.window is None else bisect_right(st.ts, tmax - self.window, st.h)
        st.best_a, st.best_lo = self._spread(st.pts[lo:], st.ts[lo:])
        st.best = _a_km(st.best_a)

    def dump(self, st: _GeoState, tmax: int) -> Any:
        return [_deltas(st.ts, st.h, tmax), [c for p in st.pts[st.h :] for c in p[:2]]]

    def load(self, data: Any, tmax: int) -> _GeoState:
        st = _GeoState()
        st.ts = _undeltas(data[0], tmax)
        flat = data[1]
        st.pts = [_geo_pt((float(flat[i]), float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        self._rebuild(st, tmax)
        return st


# ---------------------------------------------------------------- max_speed


def speed_kmh(t1: int, p1: tuple[float, float], t2: int, p2: tuple[float, float]) -> float:
    """km/h between two points; the time gap is clamped to at least 1 s."""
    gap = abs(t2 - t1)
    if gap < 1000:
        gap = 1000
    return haversine_km(p1[0], p1[1], p2[0], p2[1]) / (gap / 3_600_000.0)


class _SpeedState(State):
    __slots__ = ("base", "dq", "h", "ordered", "pts", "qh", "run", "ts")

    def __init__(self) -> None:
        super().__init__()
        self.ts: list[int] = []  # processing order
        self.pts: list[tuple[float, float]] = []
        self.h = 0
        self.ordered = True  # retained times are non-decreasing (no late point among them)
        # (older time of the pair, speed), speeds decreasing: a monotonic queue, [qh:] live
        self.dq: list[tuple[int, float]] = []
        self.qh = 0
        self.run = 0.0  # whole history, ordered: max over every pair (no queue needed)
        self.base = 0.0  # whole history: max over pairs no longer retained


class MaxSpeed(Logic):
    """``max_speed``: the largest km/h between consecutive matching events in processing
    order (among those in the window), time gap clamped to at least 1 s.

    O(1) amortized per in-order event (a monotonic queue of pair speeds for a window, a
    running maximum for the whole history); while a late point is retained the value is
    computed by a scan. Above the cap the oldest points are dropped: a windowed value is
    then a lower bound computed over the ``cap`` most recent points (the whole-history
    running maximum stays exact for in-order events).
    """

    agg = "max_speed"
    value_type = "float"
    params = (Param("field", default="geo"), WINDOW)

    __slots__ = ()

    def new(self) -> _SpeedState:
        return _SpeedState()

    def newest(self, st: _SpeedState) -> int:
        return max(st.ts[st.h :], default=_NEG)

    def _scan(self, st: _SpeedState, t: int) -> float:
        w_ms = self.window
        lo = _NEG if w_ms is None else t - w_ms
        best = st.base if w_ms is None else 0.0
        prev: tuple[int, tuple[float, float]] | None = None
        if w_ms is None and st.h > 0:
            prev = (st.ts[st.h - 1], st.pts[st.h - 1])  # the anchor: last point no longer retained
        for x, p in zip(st.ts[st.h :], st.pts[st.h :], strict=True):
            if lo < x <= t:
                if prev is not None:
                    s = speed_kmh(prev[0], prev[1], x, p)
                    if s > best:
                        best = s
                prev = (x, p)
        return best

    def apply(self, st: _SpeedState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        p = None
        if m:
            raw = self.get(ev)
            p = geo_point(raw)
            if p is None and raw is not None:
                self.skipped += 1
        ts = st.ts
        w_ms = self.window
        if t < tmax:
            if p is not None:
                ts.append(t)
                st.pts.append(p)
                st.ordered = False
                self._cap(st)
            return self._scan(st, t)
        dq = st.dq
        if p is not None:
            n = len(ts)
            if n > (0 if w_ms is None else st.h) and st.ordered:
                pt = ts[-1]
                if w_ms is None or pt > t - w_ms:
                    s = speed_kmh(pt, st.pts[-1], t, p)
                    if w_ms is None:
                        if s > st.run:
                            st.run = s
                    else:
                        qh = st.qh
                        while len(dq) > qh and dq[-1][1] <= s:
                            dq.pop()
                        dq.append((pt, s))
            ts.append(t)
            st.pts.append(p)
            self._cap(st)
        # prune: points that can never be in a window again (a prefix in processing order)
        rc = (t - self.lateness) if w_ms is None else (t - w_ms - self.lateness)
        h = st.h
        if h < len(ts) and ts[h] <= rc:
            while h < len(ts) and ts[h] <= rc:
                if w_ms is None and h > 0:
                    s = speed_kmh(ts[h - 1], st.pts[h - 1], ts[h], st.pts[h])
                    if s > st.base:
                        st.base = s
                h += 1
            st.h = h
            if not st.ordered:
                self._rebuild(st, tmax)
            if h > 2 and 2 * h > len(ts):
                keep = h - 1 if w_ms is None else h  # whole history keeps one anchor point
                del ts[:keep]
                del st.pts[:keep]
                st.h = h - keep
        if not st.ordered:
            st.until = _NEG
            return self._scan(st, t)
        qh = st.qh
        n = len(dq)
        if w_ms is not None:
            cut = t - w_ms
            while qh < n and dq[qh][0] <= cut:
                qh += 1
            if qh > 2 and 2 * qh > n:
                del dq[:qh]
                qh = 0
                n = len(dq)
            st.qh = qh
            if qh < n:
                st.until = dq[qh][0] + w_ms
                st.val = dq[qh][1]
            else:
                st.until = _POS
                st.val = 0.0
            return st.val
        st.until = _POS
        st.val = max(st.base, st.run)
        return st.val

    def _cap(self, st: _SpeedState) -> None:
        over = len(st.ts) - st.h - self.cap
        if over > 0:
            st.h += over
            if st.ordered:
                # pairs are queued by their older point's time: drop those of dropped points
                gone = st.ts[st.h - 1]
                dq = st.dq
                while st.qh < len(dq) and dq[st.qh][0] <= gone:
                    st.qh += 1
            else:
                self._rebuild(st, max(st.ts[st.h :], default=_NEG))

    def _rebuild(self, st: _SpeedState, tmax: int) -> None:
        r = st.ts[st.h :]
        st.ordered = all(r[i] <= r[i + 1] for i in range(len(r) - 1))
        del st.dq[:]  # keep the list object: callers may hold it
        st.qh = 0
        if not st.ordered:
            return
        w_ms = self.window
        lo = st.h if w_ms is not None or st.h == 0 else st.h - 1
        cut = _NEG if w_ms is None else tmax - w_ms
        dq = st.dq
        st.run = st.base
        for i in range(max(lo, 0) + 1, len(st.ts)):
            pt = st.ts[i - 1]
            if pt <= cut or (w_ms is not None and i - 1 < st.h):
                continue
            s = speed_kmh(pt, st.pts[i - 1], st.ts[i], st.pts[i])
            if w_ms is None:
                st.run = max(st.run, s)
                continue
            while dq and dq[-1][1] <= s:
                dq.pop()
            dq.append((pt, s))  # qh is 0 here

    def dump(self, st: _SpeedState, tmax: int) -> Any:
        start = st.h - 1 if (self.window is None and st.h > 0) else st.h
        out: list[Any] = [
            _deltas(st.ts, start, tmax),
            [c for p in st.pts[start:] for c in p],
            st.h - start,
        ]
        if self.window is None:
            out.append(st.base)
        return out

    def load(self, data: Any, tmax: int) -> _SpeedState:
        st = _SpeedState()
        st.ts = _undeltas(data[0], tmax)
        flat = data[1]
        st.pts = [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        st.h = int(data[2])
        if self.window is None:
            st.base = float(data[3])
        self._rebuild(st, tmax)
        return st


# ---------------------------------------------------------------- sequence


class _SeqState(State):
    __slots__ = ("best", "h", "ks", "ts")

    def __init__(self, n: int) -> None:
        super().__init__()
        self.val = 0
        self.until = _POS  # a non-matching event's value is always 0
        self.ts: list[int] = []  # times of events whose type is a step, event order
        self.ks: list[int] = []  # their step-type ids
        self.h = 0
        self.best: list[int] = [_NEG] * n  # newest start time of a chain matching steps[:i+1]


class Sequence(Logic):
    """``sequence``: 1 when this event matches the last step and distinct earlier events
    matched the steps before it in event order, the first after ``t - within``; else 0.

    O(steps) per event (a small dynamic program over chain start times). Keeps the step
    events of the last ``within + L``. Above the cap the oldest step events are dropped;
    in-order results stay exact (the running program needs no history), only late events
    may then miss a chain.
    """

    agg = "sequence"
    value_type = "int"
    params = (Param("steps", required=True), Param("within", required=True))

    __slots__ = ("idx", "last_type", "n", "tid", "within")

    @classmethod
    def span_ms(cls, feature: Feature) -> int | None:
        return feature.within_ms  # a chain looks back `within` (no window)

    @classmethod
    def effective_where(cls, feature: Feature) -> Where:
        where = feature.where
        if all(p != "type" for p, _ in where):
            # only events of a step type can change a sequence: skip the others
            where = tuple(sorted((*where, ("type", tuple(sorted(set(feature.steps)))))))
        return where

    def __init__(self, feature: Feature, cap: int, lateness_ms: int) -> None:
        super().__init__(feature, cap, lateness_ms)
        assert feature.within_ms is not None  # noqa: S101 - validated by the spec
        self.within = feature.within_ms
        self.n = len(feature.steps)
        types = sorted(set(feature.steps))
        self.tid: dict[str, int] = {ty: k for k, ty in enumerate(types)}
        # type id -> step indices with that type, descending (so one event fills one step)
        self.idx: list[tuple[int, ...]] = [
            tuple(i for i in range(self.n - 1, -1, -1) if feature.steps[i] == ty) for ty in types
        ]
        self.last_type = self.tid[feature.steps[-1]]

    def new(self) -> _SeqState:
        return _SeqState(self.n)

    def newest(self, st: _SeqState) -> int:
        return st.ts[-1] if len(st.ts) > st.h else _NEG

    def _step(self, best: list[int], k: int, t: int) -> int:
        """Advance the program by one event of type id k at t; returns this event's value."""
        out = 0
        if k == self.last_type:
            start = t if self.n == 1 else best[self.n - 2]
            if start > t - self.within:
                out = 1
        for i in self.idx[k]:
            if i == 0:
                if t > best[0]:
                    best[0] = t
            elif best[i - 1] > best[i]:
                best[i] = best[i - 1]
        return out

    def apply(self, st: _SeqState, t: int, ev: Event, m: bool, tmax: int) -> Any:
        if not m:
            return 0
        ty = ev.get("type")
        k = self.tid.get(ty, -1) if type(ty) is str else -1
        if k < 0:
            return 0
        if t < tmax:
            p = bisect_right(st.ts, t, st.h)
            st.ts.insert(p, t)
            st.ks.insert(p, k)
            best = [_NEG] * self.n
            for x, kk in zip(st.ts[st.h : p], st.ks[st.h : p], strict=True):
                self._step(best, kk, x)
            out = self._step(best, k, t)
            self._cap(st)
            self._rebuild(st)
            return out
        out = self._step(st.best, k, t)
        st.ts.append(t)
        st.ks.append(k)
        rc = t - self.within - self.lateness
        h = st.h
        ts = st.ts
        if ts[h] <= rc:
            while ts[h] <= rc:
                h += 1
            st.h = h
            if h > 2 and 2 * h > len(ts):
                del ts[:h]
                del st.ks[:h]
                st.h = 0
        self._cap(st)
        return out

    def _cap(self, st: _SeqState) -> None:
        over = len(st.ts) - st.h - self.cap
        if over > 0:
            st.h += over

    def _rebuild(self, st: _SeqState) -> None:
        best = [_NEG] * self.n
        for x, k in zip(st.ts[st.h :], st.ks[st.h :], strict=True):
            self._step(best, k, x)
        st.best = best

    def dump(self, st: _SeqState, tmax: int) -> Any:
        return [_deltas(st.ts, st.h, tmax), st.ks[st.h :]]

    def load(self, data: Any, tmax: int) -> _SeqState:
        st = _SeqState(self.n)
        st.ts = _undeltas(data[0], tmax)
        st.ks = [int(k) for k in data[1]]
        self._rebuild(st)
        return st
