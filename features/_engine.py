"""The feature engine: applies events to per-entity state and returns feature values.

Built once from a frozen ``FeatureSpec`` (compiles every ``where`` matcher once, shares
matchers between features, builds one private logic object per feature); the state of
one entity key is an ``EntityState`` holding plain data, snapshotted by ``dumps``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from features._aggs import _NEG, _POS, LOGICS, Logic
from features._paths import make_matcher
from features._spec import Feature, FeatureSpec
from features.errors import ConfigError, EventError, StateError

APPLIED = "applied"
DUPLICATE = "duplicate"
LATE_REJECTED = "late_rejected"

_FORMAT = 2  # snapshot format version (1: no forgotten-id mark; still loaded)


class ApplyResult:
    """What applying one event to one entity key gave.

    ``features``: every feature of the entity (name -> value, None where undefined); empty
    for a rejected event. ``status``: "applied" | "duplicate" | "late_rejected";
    ``reason``: why, for anything but "applied".
    """

    __slots__ = ("features", "reason", "status")

    def __init__(self, features: dict[str, Any], status: str, reason: str | None = None) -> None:
        self.features = features
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"ApplyResult(status={self.status!r}, reason={self.reason!r}, features={self.features!r})"


class EntityState:
    """The state of one entity key: plain data only (times, counters, lists, dicts).

    ``tmax``: newest applied event time; ``late_rejected``: how many events were rejected
    (too old for the allowed lateness, or not provably new: see ``dedup_mark``);
    ``dedup``: event id -> feature values of its first application (a tuple) for the
    remembered ids (``dedup_ids`` / ``dedup_ts``: the ids and their times, a queue whose
    live part starts at ``dedup_head``); ``dedup_mark``: the newest event time among the
    ids forgotten to keep the id memory within its bound (``_NEG`` if none was): an event
    whose id is not remembered and whose time is at or before it may be a redelivery, so
    it is rejected; ``dedup_rejected``: how many were (also counted in ``late_rejected``);
    ``feats``: one state object per feature; ``vals`` / ``umin``: see below.
    """

    __slots__ = (
        "dedup",
        "dedup_head",
        "dedup_ids",
        "dedup_mark",
        "dedup_rejected",
        "dedup_ts",
        "entity",
        "feats",
        "late_rejected",
        "tmax",
        "umin",
        "vals",
    )

    def __init__(self, entity: str, feats: list[Any]) -> None:
        self.entity = entity
        self.tmax = _NEG
        self.late_rejected = 0
        self.dedup: dict[str, tuple[Any, ...]] = {}
        self.dedup_ids: list[str] = []  # a queue: [dedup_head:] are live
        self.dedup_ts: list[int] = []  # their event times (parallel to dedup_ids)
        self.dedup_head = 0
        self.dedup_mark = _NEG
        self.dedup_rejected = 0
        self.feats = feats
        # per feature: its value for an in-order event that does not match it (a copy of
        # its state's ``val``), valid while the event time is before ``umin`` (at most
        # every such feature's ``until``)
        self.vals: list[Any] = [st.val for st in feats]
        self.umin = _NEG

    @property
    def empty(self) -> bool:
        """True when no event was ever applied (or all were forgotten)."""
        return self.tmax == _NEG


class _Plan:
    """Everything the engine needs for one entity kind, prepared once."""

    __slots__ = (
        "always",
        "applies",
        "features",
        "keys",
        "layout",
        "logics",
        "matchers",
        "mi",
        "names",
        "span",
        "type_cache",
        "type_only",
        "unbounded",
    )

    def __init__(self, feats: tuple[Feature, ...], cap: int, lateness_ms: int) -> None:
        self.features = feats
        self.names = tuple(f.name for f in feats)
        self.keys = tuple(f.state_key for f in feats)
        self.layout = hashlib.blake2b(",".join(self.keys).encode(), digest_size=4).hexdigest()
        self.logics: tuple[Logic, ...] = tuple(LOGICS[f.agg](f, cap, lateness_ms) for f in feats)
        self.applies = tuple(lg.apply for lg in self.logics)
        # features whose value changes with every event: called for every event
        self.always = tuple(lg.always for lg in self.logics)
        # share one compiled matcher between features with the same `where`
        matchers: list[Callable[[Mapping[str, Any]], bool]] = []
        index: dict[Any, int] = {}
        mi: list[int] = []
        for f, lg in zip(feats, self.logics, strict=True):
            # an aggregation may narrow its `where` to the events that can change it
            where = type(lg).effective_where(f)
            if not where:
                mi.append(-1)
                continue
            if where not in index:
                m = make_matcher(dict(where))
                assert m is not None  # noqa: S101 - non-empty where
                index[where] = len(matchers)
                matchers.append(m)
            mi.append(index[where])
        self.matchers = tuple(matchers)
        self.mi = tuple(mi)
        # when every `where` tests only the event type, the match vector depends on the
        # type alone: compute it once per type and reuse it
        self.type_only = all(p == "type" for w in index for p, _ in w)
        self.type_cache: dict[str, tuple[tuple[bool, ...], tuple[int, ...]]] = {}
        spans = [s for f in feats if (s := f.span_ms()) is not None]
        self.span = max(spans, default=0)
        self.unbounded = any(f.span_ms() is None for f in feats)

    def match(self, event: Mapping[str, Any]) -> tuple[tuple[bool, ...], tuple[int, ...]]:
        """One flag per feature (does the event match its ``where``), and the indices of
        the features an in-order event must be applied to (matched, or ``always``)."""
        ms = [m(event) for m in self.matchers]
        ms.append(True)  # index -1: no `where`
        flags = tuple([ms[k] for k in self.mi])
        calls = tuple(i for i, (f, a) in enumerate(zip(flags, self.always, strict=True)) if f or a)
        return flags, calls


class FeatureEngine:
    """Applies events to per-entity state; pure and deterministic (event time only).

    ``cap``: entries per (entity key, feature) before a feature degrades (see each
    aggregation's bound in ``features._aggs``); also the most event ids one key remembers.
    ``allowed_lateness_ms``: an event older than the key's newest by more is rejected.
    ``dedup_horizon_ms``: how long (event time) applied event ids are remembered, so a
    redelivered event is a no-op; must be at least the allowed lateness.

    Redelivery guarantee: no event id is ever applied twice to a key's state (ids past the
    horizon are older than the allowed lateness, so rejected anyway). A key remembers the
    ids of the events applied within the dedup horizon, at most ``cap`` of them (a hot key's
    id memory stays bounded); when it would hold more, it forgets the ids with the oldest
    event times (whole milliseconds at a time) down to ``cap - cap // 4`` and raises its
    ``dedup_mark`` to the newest time it forgot. An event whose id is remembered is a
    "duplicate" (the values of its first application); one whose id is not remembered is
    applied only if its time is after the mark (and within the allowed lateness), otherwise
    it cannot be told apart from a redelivery and is "late_rejected" (reason says so;
    counted in the state's ``late_rejected`` and ``dedup_rejected``). The mark stays below
    the key's newest event time, so a new event at or after the newest time is always
    applied (never rejected), unless more than ``cap`` distinct events of the key share that
    newest millisecond: then it forgets some of those and new events at that very
    millisecond are rejected until a newer one arrives. While at most ``cap - cap // 4`` of
    a key's events lie within the dedup horizon of its newest, nothing is forgotten for
    space and the mark is never set (results are exact as without the bound).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        cap: int = 10_000,
        allowed_lateness_ms: int = 3_600_000,
        dedup_horizon_ms: int = 86_400_000,
    ) -> None:
        if cap < 8:
            raise ConfigError(f"state cap must be at least 8, got {cap}", setting="BYPASS_STATE_CAP")
        if allowed_lateness_ms < 0:
            raise ConfigError(
                f"allowed lateness must be >= 0 ms, got {allowed_lateness_ms}",
                setting="BYPASS_ALLOWED_LATENESS_MS",
            )
        if dedup_horizon_ms < allowed_lateness_ms:
            raise ConfigError(
                f"dedup horizon ({dedup_horizon_ms} ms) must be at least the allowed lateness "
                f"({allowed_lateness_ms} ms), or a redelivered late event could be applied twice",
                setting="BYPASS_DEDUP_HORIZON_MS",
            )
        self.spec = spec
        self.cap = cap
        self.allowed_lateness_ms = allowed_lateness_ms
        self.dedup_horizon_ms = dedup_horizon_ms
        self.id_cap = cap  # the most event ids a key remembers
        self.id_keep = cap - cap // 4  # how many it keeps when it must forget some
        self._plans = {e: _Plan(spec.features_of(e), cap, allowed_lateness_ms) for e in spec.entities}

    def _plan(self, entity: str) -> _Plan:
        plan = self._plans.get(entity)
        if plan is None:
            raise ConfigError(
                f"unknown entity {entity!r} (the feature spec declares: {', '.join(self._plans)})",
                entity=entity,
            )
        return plan

    def skipped_values(self) -> dict[str, int]:
        """Feature name -> how many applied events matched the feature but held, at its
        field, a value its aggregation cannot use and skipped like a missing one: a string
        or a boolean where a number is needed (``"amount": "50000"`` is not 50000), an
        object or array for ``distinct``, an invalid geo point. Counted since the engine
        was built, for metrics; never part of any state or result (features stay pure)."""
        out: dict[str, int] = {}
        for plan in self._plans.values():
            for lg in plan.logics:
                if lg.skipped:
                    out[lg.name] = out.get(lg.name, 0) + lg.skipped
        return out

    def feature_names(self, entity: str) -> tuple[str, ...]:
        """The feature names of an entity kind, in spec order (the keys of ``features``)."""
        return self._plan(entity).names

    def new_state(self, entity: str) -> EntityState:
        """A fresh, empty state for one key of ``entity``."""
        plan = self._plan(entity)
        return EntityState(entity, [lg.new() for lg in plan.logics])

    def apply(self, entity: str, state: EntityState, event: Mapping[str, Any]) -> ApplyResult:
        """Apply one event to one key's state (mutated in place) and return the features.

        In-order and late-but-allowed events are "applied" (a late event's features are
        computed as of its own time over what was applied so far); an event id already
        applied within the dedup horizon is a "duplicate": the state is unchanged and the
        features are those of its first application; an event older than the key's newest
        by more than the allowed lateness is "late_rejected" (counted in the state), and
        so is a not remembered one at or before the key's ``dedup_mark`` (see the class).
        """
        try:
            plan = self._plans[entity]
        except KeyError:
            plan = self._plan(entity)  # raises the ConfigError
        try:
            t = event["ts"]
            eid = event["event_id"]
        except KeyError:
            t = event.get("ts")
            eid = event.get("event_id")
        if type(t) is not int or type(eid) is not str:
            raise EventError(
                f"event {eid!r}: needs an integer 'ts' (epoch ms) and a string 'event_id'",
                event_id=eid,
            )
        dedup = state.dedup
        if eid in dedup:
            return ApplyResult(
                dict(zip(plan.names, dedup[eid], strict=False)), DUPLICATE, "event id already applied"
            )
        tmax = state.tmax
        if t < tmax - self.allowed_lateness_ms:
            state.late_rejected += 1
            return ApplyResult(
                {},
                LATE_REJECTED,
                f"event time {t} is {tmax - t} ms older than the key's newest event ({tmax}); "
                f"allowed lateness is {self.allowed_lateness_ms} ms",
            )
        if t <= state.dedup_mark:
            state.late_rejected += 1
            state.dedup_rejected += 1
            return ApplyResult(
                {},
                LATE_REJECTED,
                f"event id {eid!r} is not remembered and its time {t} is at or before "
                f"{state.dedup_mark}, the newest time of the ids this key forgot to stay within "
                f"{self.id_cap} remembered ids: it may be a redelivery, so it is not applied",
            )
        if plan.type_only:
            ty = event.get("type")
            if type(ty) is str:
                cache = plan.type_cache
                try:
                    ms, calls = cache[ty]
                except KeyError:
                    ms, calls = cache_entry = plan.match(event)
                    if len(cache) < 1024:
                        cache[ty] = cache_entry
            else:
                ms, calls = plan.match(event)
        else:
            ms, calls = plan.match(event)
        feats = state.feats
        applies = plan.applies
        always = plan.always
        cached = state.vals
        vals: tuple[Any, ...]
        if t >= tmax:
            state.tmax = tmax = t
            out = cached.copy()
            umin = state.umin
            if t < umin:
                # every feature this event neither matches nor always changes keeps its value
                for i in calls:
                    st = feats[i]
                    out[i] = applies[i](st, t, event, ms[i], t)
                    cached[i] = st.val
                    if st.until < umin and not always[i]:
                        umin = st.until
            else:
                umin = _POS
                for i, st in enumerate(feats):
                    if ms[i] or always[i] or t >= st.until:
                        out[i] = applies[i](st, t, event, ms[i], t)
                    else:
                        out[i] = st.val
                    cached[i] = st.val
                    if st.until < umin and not always[i]:
                        umin = st.until
            state.umin = umin
            vals = tuple(out)
        else:
            vals = tuple([fn(st, t, event, m, tmax) for fn, st, m in zip(applies, feats, ms, strict=False)])
            for st in feats:
                st.until = _NEG  # the cached value is as of tmax: recompute next time
            state.umin = _NEG
        # remember the id and the values of this first application (never mutated)
        dedup[eid] = vals
        ids = state.dedup_ids
        tss = state.dedup_ts
        ids.append(eid)
        tss.append(t)
        horizon = tmax - self.dedup_horizon_ms  # ids of events at or after it are kept
        dh = state.dedup_head
        if tss[dh] < horizon:
            # past the horizon: a redelivery would be older than the allowed lateness
            # (the horizon is at least the lateness), so rejected anyway: no mark needed
            n = len(tss)
            while dh < n and tss[dh] < horizon:
                del dedup[ids[dh]]
                dh += 1
            if dh > 2 and 2 * dh > n:
                del ids[:dh]
                del tss[:dh]
                dh = 0
            state.dedup_head = dh
        if len(tss) - dh > self.id_cap:
            self._forget_ids(state, horizon)
        return ApplyResult(dict(zip(plan.names, vals, strict=False)), APPLIED)

    def _forget_ids(self, state: EntityState, horizon: int) -> None:
        """Bring the remembered ids of a key that holds more than ``id_cap`` down to
        ``id_keep``: drop those past the horizon, then the oldest by event time, whole
        milliseconds at a time and never the key's newest millisecond unless it alone
        holds more than ``id_cap``; ``dedup_mark`` becomes the newest time forgotten.
        Runs once per ``cap // 4`` applied events at most: O(log cap) amortized."""
        dedup = state.dedup
        tmax = state.tmax
        live: list[tuple[int, int, str]] = []  # (event time, application order, id)
        for i, (eid, t) in enumerate(
            zip(state.dedup_ids[state.dedup_head :], state.dedup_ts[state.dedup_head :], strict=True)
        ):
            if t < horizon:
                del dedup[eid]
            else:
                live.append((t, i, eid))
        drop = len(live) - self.id_keep
        if drop > 0:
            live.sort()
            n = len(live)
            newest = n  # live[newest:] are the ids at tmax
            while newest and live[newest - 1][0] == tmax:
                newest -= 1
            if drop <= newest:
                cut = live[drop - 1][0]
                while drop < newest and live[drop][0] == cut:
                    drop += 1  # the whole millisecond
            elif n - newest > self.id_cap:
                cut = tmax  # more than id_cap ids at the newest millisecond alone
            else:
                drop = newest  # keep the newest millisecond whole (at most id_cap ids)
                cut = live[drop - 1][0] if drop else _NEG
            if drop:
                for _t, _i, eid in live[:drop]:
                    del dedup[eid]
                del live[:drop]
                if cut > state.dedup_mark:
                    state.dedup_mark = cut
        state.dedup_ids = [eid for _t, _i, eid in live]
        state.dedup_ts = [t for t, _i, _eid in live]
        state.dedup_head = 0

    def evictable(self, state: EntityState, now_ms: int) -> bool:
        """True when dropping this key's state changes no future result.

        That is: no event of the key is inside its longest window, the dedup horizon or
        the allowed lateness as of ``now_ms`` (event time). A key of an entity with a
        whole-history feature (no window) is evictable only when it never saw an event.
        """
        if state.tmax == _NEG:
            return True
        plan = self._plan(state.entity)
        if plan.unbounded:
            return False
        keep = max(plan.span, self.dedup_horizon_ms, self.allowed_lateness_ms)
        return now_ms - state.tmax >= keep

    def state_keys(self, entity: str) -> tuple[str, ...]:
        """The state keys of an entity kind's features, in spec order (a feature's state key
        changes whenever one of its parameters does)."""
        return self._plan(entity).keys

    def apply_except(
        self, entity: str, state: EntityState, event: Mapping[str, Any], keep: frozenset[str]
    ) -> ApplyResult:
        """:meth:`apply`, leaving the features whose state key is in ``keep`` as they were
        (their values in the result include the event; their states do not).  A warm start
        uses it for events its rebuild from history already holds."""
        plan = self._plan(entity)
        idx = [i for i, k in enumerate(plan.keys) if k in keep]
        saved = [copy.deepcopy(state.feats[i]) for i in idx]
        result = self.apply(entity, state, event)
        if idx and result.status == APPLIED:
            for i, st in zip(idx, saved, strict=True):
                state.feats[i] = st
                state.vals[i] = st.val
            state.umin = _NEG  # the cached values are recomputed with the next event
        return result

    def adopt(self, state: EntityState, donor: EntityState, donor_engine: FeatureEngine) -> int:
        """Splice the features of ``donor`` (a state of ``donor_engine``, whose spec holds some
        of this engine's features) into ``state``, matched by state key: a warm start
        rebuilds new features from history with an engine over just those features, then
        hands their states to the live key.  The values remembered for the key's event ids
        (what a redelivery gets) take the donor's values where it remembers the id too.
        Returns how many features were spliced."""
        plan = self._plan(state.entity)
        dplan = donor_engine._plan(donor.entity)
        pos = {k: i for i, k in enumerate(plan.keys)}
        pairs = [(pos[k], j) for j, k in enumerate(dplan.keys) if k in pos]
        for i, j in pairs:
            state.feats[i] = donor.feats[j]
            state.vals[i] = donor.feats[j].val
        state.umin = _NEG
        if pairs:
            width = len(plan.names)
            ddedup = donor.dedup
            for eid, vals in state.dedup.items():
                dv = ddedup.get(eid)
                if dv is None:
                    continue
                new = list(vals) + [None] * (width - len(vals))
                for i, j in pairs:
                    new[i] = dv[j] if j < len(dv) else None
                state.dedup[eid] = tuple(new)
        return len(pairs)

    def dumps(self, state: EntityState) -> bytes:
        """A compact, versioned snapshot (orjson bytes) that ``loads`` restores exactly."""
        plan = self._plan(state.entity)
        tmax = state.tmax
        if tmax == _NEG:
            return orjson.dumps([_FORMAT, None, state.late_rejected])  # never forgot an id
        dedup: list[Any] = []
        dh = state.dedup_head
        for eid, t in zip(state.dedup_ids[dh:], state.dedup_ts[dh:], strict=True):
            dedup.append(eid)
            dedup.append(tmax - t)
            dedup.append(state.dedup[eid])
        feats = {
            key: lg.dump(st, tmax) for key, lg, st in zip(plan.keys, plan.logics, state.feats, strict=True)
        }
        if state.dedup_mark == _NEG:
            return orjson.dumps([_FORMAT, tmax, state.late_rejected, plan.layout, dedup, feats])
        return orjson.dumps(
            [
                _FORMAT,
                tmax,
                state.late_rejected,
                plan.layout,
                dedup,
                feats,
                tmax - state.dedup_mark,
                state.dedup_rejected,
            ]
        )

    def loads(self, entity: str, data: bytes) -> EntityState:
        """Restore a snapshot made by ``dumps``.

        A feature whose parameters changed since the snapshot (a different state key)
        starts empty instead of misreading old state; remembered event ids are kept,
        but if the feature list changed their remembered values are replaced by None.
        Snapshot formats: 2 (``[2, tmax, late_rejected, layout, ids, feats]`` plus
        ``tmax - dedup_mark, dedup_rejected`` when the key forgot ids for space) and 1 (no
        mark: a format-1 key holding ``cap`` ids or more may have forgotten some, so its
        mark is set conservatively to its oldest remembered id's time plus the allowed
        lateness, at most its newest time). More ids than ``cap`` are trimmed on load.
        """
        plan = self._plan(entity)
        try:
            raw = orjson.loads(data)
            if not isinstance(raw, list) or raw[0] not in (1, _FORMAT):
                raise StateError(
                    f"state snapshot of {entity!r}: unknown format {raw[0] if raw else raw!r}",
                    entity=entity,
                )
            st = self.new_state(entity)
            st.late_rejected = int(raw[2])
            if raw[1] is None:
                return st
            tmax = st.tmax = int(raw[1])
            same_layout = raw[3] == plan.layout
            flat = raw[4]
            nulls = (None,) * len(plan.names)
            for i in range(0, len(flat), 3):
                eid, d, vals = flat[i], flat[i + 1], flat[i + 2]
                if eid not in st.dedup:
                    st.dedup_ids.append(eid)
                    st.dedup_ts.append(tmax - int(d))
                st.dedup[eid] = tuple(vals) if same_layout else nulls
            if len(raw) > 6:
                st.dedup_mark = tmax - int(raw[6])
                st.dedup_rejected = int(raw[7])
            elif raw[0] == 1 and st.dedup_ts and len(st.dedup_ts) >= self.id_cap:
                # the old format forgot ids for space in application order without a
                # mark: any it forgot was applied before the oldest remembered one, so at
                # most that one's time plus the allowed lateness
                st.dedup_mark = min(st.dedup_ts[0] + self.allowed_lateness_ms, tmax)
            if len(st.dedup_ts) > self.id_cap:  # a snapshot made with a larger cap
                self._forget_ids(st, tmax - self.dedup_horizon_ms)
            feats = raw[5]
            for i, (key, lg) in enumerate(zip(plan.keys, plan.logics, strict=True)):
                blob = feats.get(key)
                if blob is not None:
                    st.feats[i] = lg.load(blob, tmax)
            return st
        except StateError:
            raise
        except (orjson.JSONDecodeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"state snapshot of {entity!r} is corrupt ({type(exc).__name__}: {exc})",
                entity=entity,
            ) from exc
