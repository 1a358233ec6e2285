"""The one processing core: events of one entity key in, new state + hits + blacklist out.

Both the live Faust agents (``streams.agents``) and replay call :class:`Processor`, so the
same events with the same rule set give the same hits, with the same ``hit_id`` s, on both
paths. It does no I/O, reads no clock and knows nothing about Kafka beyond the source
coordinates it copies into the records::

    processor = Processor(spec, engine, ruleset, run_id="live")
    result = processor.process("user", "u1", state_bytes_or_None, [SourceEvent(...), ...])
    table["u1"] = processor.dumps(result.state)   # only when result.changed
    for record in result.hits: produce(hits_topic, record)
    for record in result.blacklist: produce(blacklist_topic, record, key=f"{entity}:{key}")

Order: the events of one key are applied in the order given (the caller passes them in
partition offset order - live - or merged by event time - replay).  All events are applied
first (features/), then the rules are evaluated per event over the features that event
produced (rules/), so a list provider with a ``prefetch(probes)`` method can look up every
``in_list`` value of the batch at once.  Rule evaluation is pure, so this order gives the
same hits as evaluating right after each apply.

Redelivery (at-least-once delivery, repartition duplicates): features/ returns the first
application's feature values for an ``event_id`` it already holds and leaves the state
unchanged; the processor evaluates and emits the hits again, identical to the first ones
(same ``hit_id`` and content), so a hit lost in a crash between state write and hit send
is re-sent.  A late event that features/ rejects is counted and produces no hits.

Record formats (issue 5 contract; extra fields may be added, none renamed):

``bypass.hits``: hit_id, event_id, event_type, event_ts, user_id, entity, key, rule_id,
label, score, mode, action, counted, suppressed, rollout_excluded, error, features (the
values of the features the rule reads), decision, total_score, ruleset_version,
source_topic, source_partition, source_offset, run_id.

``bypass.blacklist`` (Kafka key ``entity:key``): entity, key, label, rule_ids, event_id,
event_ts, expires_at, ruleset_version.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import rules as _rules

__all__ = [
    "KeyBatch",
    "KeyResult",
    "Processor",
    "SourceEvent",
    "blacklist_key",
    "blacklist_record",
    "hit_record",
    "merge_sources",
]


class _Engine(Protocol):  # features.FeatureEngine
    def new_state(self, entity: str) -> Any: ...
    def apply(self, entity: str, state: Any, event: Mapping[str, Any]) -> Any: ...
    def dumps(self, state: Any) -> bytes: ...
    def loads(self, entity: str, data: bytes) -> Any: ...
    def evictable(self, state: Any, now_ms: int) -> bool: ...


class _RuleSet(Protocol):  # rules.RuleSet
    @property
    def version(self) -> str: ...
    def evaluate(
        self, event: Mapping[str, Any], entity: str, key: str, features: Mapping[str, Any], lists: Any = None
    ) -> Any: ...
    def list_probes(
        self, event: Mapping[str, Any], entity: str, features: Mapping[str, Any]
    ) -> set[tuple[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A validated (phone-hashed) event and where it was read from.

    ``topic``/``partition``/``offset`` are the raw-topic coordinates (not a repartition
    topic's), ``timestamp_ms`` the raw message's Kafka timestamp (None if unknown).
    """

    event: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(slots=True)
class KeyBatch:
    """Input of :meth:`Processor.process_many`: one key's state and its ordered events."""

    key: str
    state: Any  # bytes snapshot, a features/ state object, or None for a new key
    events: Sequence[SourceEvent]


@dataclass(slots=True)
class KeyResult:
    """Output for one key.

    ``state`` is the features/ state object after the events (serialize it with
    :meth:`Processor.dumps`); ``changed`` is False when every event was a duplicate or
    rejected, so there is nothing to write back.  ``late`` holds (event, reason) for each
    event features/ rejected as too late; ``hit_sources`` the source event of each record
    in ``hits`` (same order), for latency metrics.
    """

    entity: str
    key: str
    state: Any
    changed: bool = False
    hits: list[dict[str, Any]] = field(default_factory=list)
    hit_sources: list[SourceEvent] = field(default_factory=list)
    blacklist: list[dict[str, Any]] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    late: list[tuple[SourceEvent, str]] = field(default_factory=list)
    rule_errors: int = 0


def _order(source: SourceEvent) -> tuple[int, str, int, int]:
    return (source.event["ts"], source.topic, source.partition, source.offset)


def merge_sources(sequences: Iterable[Sequence[SourceEvent]]) -> Iterator[SourceEvent]:
    """Merge per-source-partition sequences (each in offset order) into the processing order.

    The heads are compared by (event time, topic, partition, offset), and each sequence
    keeps its own order even where its event times go backwards (a late event stays after
    the events its partition delivered before it).  The live ingest agent merges each batch
    this way; replay should merge its whole range the same way.
    """
    return heapq.merge(*sequences, key=_order)


def blacklist_key(entity: str, key: str) -> str:
    """The Kafka key of a ``bypass.blacklist`` record."""
    return f"{entity}:{key}"


def hit_record(
    hit: Any,
    evaluation: Any,
    source: SourceEvent,
    entity: str,
    key: str,
    ruleset_version: str,
    run_id: str,
) -> dict[str, Any]:
    """One ``bypass.hits`` record (a plain dict, JSON-serializable)."""
    event = source.event
    return {
        "hit_id": _rules.hit_id(event["event_id"], hit.rule_id, ruleset_version),
        "event_id": event["event_id"],
        "event_type": event["type"],
        "event_ts": event["ts"],
        "user_id": event.get("user_id"),
        "entity": entity,
        "key": key,
        "rule_id": hit.rule_id,
        "label": hit.label,
        "score": hit.score,
        "mode": hit.mode,
        "action": hit.action,
        "counted": hit.counted,
        "suppressed": hit.suppressed,
        "rollout_excluded": hit.rollout_excluded,
        "error": hit.error,
        "features": dict(hit.features),
        "decision": evaluation.decision,
        "total_score": evaluation.score,
        "ruleset_version": ruleset_version,
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "run_id": run_id,
    }


def blacklist_record(entry: Any, source: SourceEvent, ruleset_version: str) -> dict[str, Any]:
    """One ``bypass.blacklist`` record."""
    event = source.event
    return {
        "entity": entry.entity,
        "key": entry.key,
        "label": entry.label,
        "rule_ids": list(entry.rule_ids),
        "event_id": event["event_id"],
        "event_ts": event["ts"],
        "expires_at": entry.expires_at,
        "ruleset_version": ruleset_version,
    }


class Processor:
    """Turns (entity, key, state, ordered events) into new state + hit and blacklist records.

    ``spec`` is the ``features.FeatureSpec``, ``engine`` a ``features.FeatureEngine`` built
    from it, ``ruleset`` the active ``rules.RuleSet`` (swap it with :meth:`set_ruleset`:
    one reference assignment, picked up by the next call), ``run_id`` goes into every hit
    (``"live"`` for the worker), ``lists`` is the ``rules.ListProvider`` for ``in_list``.

    Not thread-safe for concurrent ``process`` calls (the state objects are private to a
    call, but the caller owns ordering per key); swapping the rule set from another thread
    is safe.
    """

    def __init__(
        self, spec: Any, engine: _Engine, ruleset: _RuleSet, *, run_id: str, lists: Any = None
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.ruleset: _RuleSet = ruleset
        self.run_id = run_id
        self.lists = lists

    def set_ruleset(self, ruleset: _RuleSet) -> None:
        """Make ``ruleset`` active for every later call (atomic reference swap)."""
        self.ruleset = ruleset

    def dumps(self, state: Any) -> bytes:
        """Serialize a state object (for the Faust table / a checkpoint)."""
        return self.engine.dumps(state)

    def load_state(self, entity: str, state: Any) -> Any:
        """bytes -> state object; None -> a new state; a state object is returned as is."""
        if state is None:
            return self.engine.new_state(entity)
        if isinstance(state, bytes | bytearray | memoryview):
            return self.engine.loads(entity, bytes(state))
        return state

    def process(self, entity: str, key: str, state: Any, events: Sequence[SourceEvent]) -> KeyResult:
        """Apply ``events`` (in order) to ``key``'s state and evaluate the rules on each."""
        return self.process_many(entity, [KeyBatch(key, state, events)])[0]

    def process_many(self, entity: str, batches: Iterable[KeyBatch]) -> list[KeyResult]:
        """:meth:`process` for several keys of one entity kind, with one list prefetch."""
        ruleset = self.ruleset  # one version for the whole call
        version = ruleset.version
        engine = self.engine
        results: list[KeyResult] = []
        to_evaluate: list[tuple[KeyResult, SourceEvent, Mapping[str, Any]]] = []
        for batch in batches:
            state = self.load_state(entity, batch.state)
            result = KeyResult(entity=entity, key=batch.key, state=state)
            for source in batch.events:
                applied = engine.apply(entity, state, source.event)
                status = applied.status
                if status == "applied":
                    result.applied += 1
                    result.changed = True
                elif status == "duplicate":
                    result.duplicates += 1
                else:
                    result.late.append((source, str(applied.reason or status)))
                    continue
                to_evaluate.append((result, source, applied.features))
            results.append(result)

        lists = self.lists
        prefetch = getattr(lists, "prefetch", None)
        if prefetch is not None and to_evaluate:
            probes: set[tuple[str, Any]] = set()
            for _result, source, features in to_evaluate:
                probes |= ruleset.list_probes(source.event, entity, features)
            if probes:
                prefetch(probes)

        run_id = self.run_id
        for result, source, features in to_evaluate:
            evaluation = ruleset.evaluate(source.event, entity, result.key, features, lists)
            for hit in evaluation.hits:
                result.hits.append(hit_record(hit, evaluation, source, entity, result.key, version, run_id))
                result.hit_sources.append(source)
                if hit.error:
                    result.rule_errors += 1
            for entry in evaluation.blacklist:
                result.blacklist.append(blacklist_record(entry, source, version))
        return results
