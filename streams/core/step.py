"""The batch step: decoded source events in; state writes, hits, blacklist and dead letters out.

Live and replay run every event through this one piece of code, and tests drive it from
a list::

    sources (decoded, validated, in the processing order of streams.core.order)
      │ fan_out        per entity kind of the spec: (key, event) pairs, order kept
      ▼
      │ group_by_key   per key: its events, order kept
      ▼
      │ process_keys   each key's state loaded once from a StateStore, its events applied
      │                and evaluated (streams.core.processor), the new state saved once;
      │                records serialized
      ▼
    StepResult         hits and blacklist entries (record + bytes + source event), dead
                       letters, late events, counters

``run(sources, store)`` does all three; the live pipeline splits them across Kafka: its
ingest agent calls :meth:`BatchStep.fan_out` and sends each entity's pairs through the
repartition topics; each entity agent calls :func:`group_by_key` and
:meth:`BatchStep.process_keys` with its Faust table as the store.  Replay calls
:meth:`BatchStep.run` on each chunk with a :class:`MemoryStore`.

Warm-up.  ``evaluate_from_ms`` (replay's ``T1``): older events are applied to the state
but not evaluated; they rebuild windows and can hit nothing.

Poison isolation.  Processing must never stall a partition or lose an event that is not
at fault.  When processing the keys of a call raises (a bug, a value the state cannot
hold), the keys are redone one by one from their stored snapshots (a decoded state may
be half-applied), and a key that fails again is redone event by event from its last good
snapshot: exactly the events whose processing raises become dead letters
(``processing_error``, :mod:`streams.core.deadletter`), and the key's state is the state
after its other events.  That outcome does not depend on how events were batched, so
live and replay dead-letter the same events.

Dependencies.  A dependency that does not answer (Redis for ``in_list``: a
:class:`sinks.base.SinkBackpressureError`) is not the events' fault: the call raises it
with nothing saved (decoded states forgotten), and the driver retries the same keys later.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

import features
from sinks.base import SinkBackpressureError
from sinks.records import BlacklistRecord, DecisionRecord, HitRecord
from streams.core.deadletter import DeadLetter, processing_failure
from streams.core.order import SourceEvent
from streams.core.processor import KeyBatch, KeyResult, Processor

__all__ = [
    "BatchStep",
    "Emitted",
    "MemoryStore",
    "StateStore",
    "StepResult",
    "group_by_key",
]

log = logging.getLogger("bypass.step")


class StateStore(Protocol):
    """Where the step reads and writes entity states (a Faust table live, a dict in replay)."""

    def load(self, entity: str, key: str) -> tuple[bytes | None, features.EntityState | None]:
        """(the stored snapshot or None, a decoded state equal to it or None)."""
        ...

    def save(
        self, entity: str, key: str, data: bytes | None, state: features.EntityState | None, changed: bool
    ) -> None:
        """After the key's events: ``data`` is the new snapshot when ``changed``, else the
        stored one; ``state`` the decoded state (None: nothing to cache)."""
        ...

    def forget(self, entity: str, key: str) -> None:
        """Drop any decoded state of the key (it may be half-applied after a failure)."""
        ...


R = TypeVar("R", HitRecord, BlacklistRecord, DecisionRecord)


@dataclass(slots=True)
class Emitted(Generic[R]):
    """An output record: a ``bypass.hits`` or ``bypass.blacklist`` record, its JSON bytes,
    the (entity, key) whose state produced it and the source event it is about."""

    entity: str
    key: str
    record: R
    value: bytes
    source: SourceEvent


@dataclass(slots=True)
class StepResult:
    """What one step call produced, in processing order per key."""

    hits: list[Emitted[HitRecord]] = field(default_factory=list)
    blacklist: list[Emitted[BlacklistRecord]] = field(default_factory=list)
    #: ``bypass.decisions`` records (a processor with ``decision_sample`` set)
    decisions: list[Emitted[DecisionRecord]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (entity, key, source, reason) of each event features/ rejected as too late
    late: list[tuple[str, str, SourceEvent, str]] = field(default_factory=list)
    events: int = 0  # (event, entity) pairs processed
    applied: int = 0
    duplicates: int = 0
    warmup: int = 0
    rule_errors: int = 0
    states_written: int = 0

    def merge(self, other: StepResult) -> None:
        self.hits += other.hits
        self.blacklist += other.blacklist
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.late += other.late
        _add_counts(self, other, ("events", "states_written", *_KEY_COUNTS))


@dataclass(slots=True)
class _KeyOut:
    """One key's processed outcome, serialized, not yet committed to the store/result."""

    key: str
    changed: bool
    data: bytes | None  # the new snapshot when changed
    state: features.EntityState | None
    hits: list[Emitted[HitRecord]]
    blacklist: list[Emitted[BlacklistRecord]]
    late: list[tuple[SourceEvent, str]]
    applied: int = 0
    duplicates: int = 0
    warmup: int = 0
    rule_errors: int = 0
    decisions: list[Emitted[DecisionRecord]] = field(default_factory=list)


#: the counters a key's outcome adds to a step result
_KEY_COUNTS = ("applied", "duplicates", "warmup", "rule_errors")


def _add_counts(into: object, other: object, names: tuple[str, ...]) -> None:
    for name in names:
        setattr(into, name, getattr(into, name) + getattr(other, name))


def group_by_key(pairs: Iterable[tuple[str, SourceEvent]]) -> dict[str, list[SourceEvent]]:
    """(key, event) pairs -> key -> its events, each key's order kept (first-seen key order)."""
    by_key: dict[str, list[SourceEvent]] = {}
    for key, source in pairs:
        group = by_key.get(key)
        if group is None:
            by_key[key] = [source]
        else:
            group.append(source)
    return by_key


class BatchStep:
    """The per-batch processing shared by live and replay (module docstring)."""

    def __init__(self, processor: Processor, *, evaluate_from_ms: int | None = None) -> None:
        self.processor = processor
        self.spec = processor.spec
        self.entities: tuple[str, ...] = tuple(processor.spec.entities)
        self.evaluate_from_ms = evaluate_from_ms

    # --- fan-out -------------------------------------------------------------
    def fan_out(self, sources: Iterable[SourceEvent]) -> dict[str, list[tuple[str, SourceEvent]]]:
        """Per entity kind: the (key, event) pairs of every event carrying its key field."""
        out: dict[str, list[tuple[str, SourceEvent]]] = {entity: [] for entity in self.entities}
        keys = self.keys
        for source in sources:
            for entity, key in keys(source.event):
                out[entity].append((key, source))
        return out

    def keys(self, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(entity kind, key) of every entity whose key field ``event`` carries."""
        return [(entity, str(key)) for entity, key in self.spec.entity_keys(event)]

    def run(self, sources: Iterable[SourceEvent], store: StateStore) -> StepResult:
        """Fan out, group and process one batch of sources (replay, tests)."""
        result = StepResult()
        for entity, pairs in self.fan_out(sources).items():
            if pairs:
                result.merge(self.process_keys(entity, list(group_by_key(pairs).items()), store))
        return result

    # --- processing ----------------------------------------------------------
    def process_keys(
        self, entity: str, items: Sequence[tuple[str, Sequence[SourceEvent]]], store: StateStore
    ) -> StepResult:
        """Load each key's state once, run its events through the processor, save it once."""
        result = StepResult()
        stored: list[bytes | None] = []
        batches: list[KeyBatch] = []
        for key, events in items:
            raw, state = store.load(entity, key)
            stored.append(raw)
            batches.append(KeyBatch(key, state if state is not None else raw, events))
            result.events += len(events)
        try:
            results = self.processor.process_many(entity, batches, evaluate_from_ms=self.evaluate_from_ms)
            outs = [self._encode(entity, r) for r in results]
        except SinkBackpressureError:
            self._forget(entity, batches, store)
            raise
        except Exception:
            log.warning(
                "processing a batch of %d %s keys raised; redoing them one by one", len(batches), entity
            )
            self._forget(entity, batches, store)
            outs = [
                self._isolate(entity, batch.key, raw, batch.events, result)
                for batch, raw in zip(batches, stored, strict=True)
            ]
        for out, raw in zip(outs, stored, strict=True):
            self._commit(entity, out, raw, store, result)
        return result

    @staticmethod
    def _forget(entity: str, batches: Sequence[KeyBatch], store: StateStore) -> None:
        for batch in batches:  # their decoded states may be half-applied
            store.forget(entity, batch.key)

    def _encode(self, entity: str, r: KeyResult) -> _KeyOut:
        dumps = orjson.dumps
        return _KeyOut(
            key=r.key,
            changed=r.changed,
            data=self.processor.dumps(r.state) if r.changed else None,
            state=r.state,
            hits=[
                Emitted(entity, r.key, record, dumps(record), source)
                for record, source in zip(r.hits, r.hit_sources, strict=True)
            ],
            blacklist=[
                Emitted(record["entity"], record["key"], record, dumps(record), source)
                for record, source in zip(r.blacklist, r.blacklist_sources, strict=True)
            ],
            late=r.late,
            decisions=[
                Emitted(entity, r.key, record, dumps(record), source)
                for record, source in zip(r.decisions, r.decision_sources, strict=True)
            ]
            if r.decisions
            else [],
            applied=r.applied,
            duplicates=r.duplicates,
            warmup=r.warmup,
            rule_errors=r.rule_errors,
        )

    def _isolate(
        self,
        entity: str,
        key: str,
        raw: bytes | None,
        events: Sequence[SourceEvent],
        result: StepResult,
    ) -> _KeyOut:
        """Redo one key from its stored snapshot; if that raises, event by event."""
        process = self.processor.process_many
        evaluate_from_ms = self.evaluate_from_ms
        try:
            return self._encode(
                entity, process(entity, [KeyBatch(key, raw, events)], evaluate_from_ms=evaluate_from_ms)[0]
            )
        except SinkBackpressureError:
            raise
        except Exception:
            log.warning("processing %s %r raised; redoing its %d events one by one", entity, key, len(events))
        out = _KeyOut(key=key, changed=False, data=None, state=None, hits=[], blacklist=[], late=[])
        good = raw
        for source in events:
            try:
                one = self._encode(
                    entity,
                    process(entity, [KeyBatch(key, good, [source])], evaluate_from_ms=evaluate_from_ms)[0],
                )
            except SinkBackpressureError:
                raise
            except Exception as exc:
                log.exception(
                    "processing event %s for %s %r failed; it goes to the DLQ",
                    source.event.get("event_id"),
                    entity,
                    key,
                )
                result.dead_letters.append(processing_failure(entity, key, source, exc))
                continue
            if one.changed:
                out.changed = True
                out.data = good = one.data
            out.state = one.state
            out.hits += one.hits
            out.blacklist += one.blacklist
            out.decisions += one.decisions
            out.late += one.late
            _add_counts(out, one, _KEY_COUNTS)
        return out

    def _commit(
        self, entity: str, out: _KeyOut, raw: bytes | None, store: StateStore, result: StepResult
    ) -> None:
        if out.changed:
            store.save(entity, out.key, out.data, out.state, True)
            result.states_written += 1
        elif raw is not None:
            store.save(entity, out.key, raw, out.state, False)
        result.hits += out.hits
        result.blacklist += out.blacklist
        if out.decisions:
            result.decisions += out.decisions
        result.late.extend((entity, out.key, source, reason) for source, reason in out.late)
        _add_counts(result, out, _KEY_COUNTS)

    # --- eviction ------------------------------------------------------------
    def evictable(self, entity: str, raw: bytes, state: features.EntityState | None, now_ms: int) -> bool:
        """True when the key holds nothing that can still matter at event time ``now_ms``."""
        engine = self.processor.engine
        return engine.evictable(state if state is not None else engine.loads(entity, raw), now_ms)


class MemoryStore:
    """A :class:`StateStore` in memory: snapshots per (entity, key), plus an LRU of decoded
    states (``cache_keys`` per entity kind) so a hot key is not decoded on every batch."""

    def __init__(self, cache_keys: int = 50_000) -> None:
        self.cache_keys = cache_keys
        self._data: dict[str, dict[str, bytes]] = {}
        self._cache: dict[str, dict[str, tuple[bytes, features.EntityState]]] = {}

    def load(self, entity: str, key: str) -> tuple[bytes | None, features.EntityState | None]:
        raw = self._data.get(entity, {}).get(key)
        hit = self._cache.get(entity, {}).pop(key, None)  # popped: save() puts it back last
        return raw, (hit[1] if hit is not None and raw is not None and hit[0] is raw else None)

    def peek(self, entity: str, key: str) -> tuple[bytes | None, features.EntityState | None]:
        """Like :meth:`load`, leaving the cache as it is (eviction sweeps, checks)."""
        raw = self._data.get(entity, {}).get(key)
        hit = self._cache.get(entity, {}).get(key)
        return raw, (hit[1] if hit is not None and raw is not None and hit[0] is raw else None)

    def save(
        self, entity: str, key: str, data: bytes | None, state: features.EntityState | None, changed: bool
    ) -> None:
        if data is None:
            return
        if changed:
            self._data.setdefault(entity, {})[key] = data
        if state is not None and self.cache_keys:
            cache = self._cache.setdefault(entity, {})
            cache[key] = (data, state)
            if len(cache) > self.cache_keys:
                for old in list(itertools.islice(cache, len(cache) - self.cache_keys)):
                    del cache[old]

    def forget(self, entity: str, key: str) -> None:
        self._cache.get(entity, {}).pop(key, None)

    def delete(self, entity: str, key: str) -> None:
        self._data.get(entity, {}).pop(key, None)
        self.forget(entity, key)

    def keys(self, entity: str) -> list[str]:
        return list(self._data.get(entity, {}))

    def cached(self, entity: str, key: str) -> features.EntityState | None:
        return self.peek(entity, key)[1]

    def snapshots(self) -> Iterator[tuple[str, str, bytes]]:
        """Every (entity, key, snapshot): for checkpoints."""
        for entity, keyed in self._data.items():
            for key, data in keyed.items():
                yield entity, key, data

    def restore(self, snapshots: Mapping[tuple[str, str], bytes]) -> None:
        for (entity, key), data in snapshots.items():
            self._data.setdefault(entity, {})[key] = data

    def __len__(self) -> int:
        return sum(len(keyed) for keyed in self._data.values())
