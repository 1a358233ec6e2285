"""The one processing core: events of one entity key in, new state + hits + blacklist out.

Both the live Faust agents and replay call :class:`Processor` (through the batch step,
:mod:`streams.core.step`), so the same events with the same rule set give the same hits,
with the same ``hit_id`` s, on both paths. It does no I/O, reads no clock and knows
nothing about Kafka beyond the source coordinates it copies into the records::

    processor = Processor(spec, engine, ruleset, run_id="live")
    result = processor.process("user", "u1", state_bytes_or_None, [SourceEvent(...), ...])
    table["u1"] = processor.dumps(result.state)   # only when result.changed
    for record in result.hits: produce(hits_topic, record)
    for record in result.blacklist: produce(blacklist_topic, record, key=f"{entity}:{key}")

Order: the events of one key are applied in the order given (:mod:`streams.core.order`).
All events are applied first (features/), then the models of the entity kind (``models:`` in
the feature spec) score the rows of the call in one vectorized call per model, their scores
joining the features as ``model.<name>``, then the rules are evaluated per event over the features that event
produced (rules/), so a list provider with a ``prefetch(probes)`` method can look up every
``in_list`` value of the batch at once.  Rule evaluation is pure, so this order gives the
same hits as evaluating right after each apply.

Redelivery (at-least-once delivery, repartition duplicates): features/ returns the first
application's feature values for an ``event_id`` it already holds and leaves the state
unchanged; the processor evaluates and emits the hits again, identical to the first ones
(same ``hit_id`` and content), so a hit lost in a crash between state write and hit send
is re-sent.  A late event that features/ rejects is counted and produces no hits.

Warm-up: events older than ``evaluate_from_ms`` (replay's ``T1``) are applied to the state
but not evaluated: they rebuild windows and can hit nothing.

Unblock overrides (:mod:`sinks.list_admin`): before blacklist entries of a key are emitted,
the list provider's ``unblock(entity, key)`` is consulted (one pipelined look-up for the keys
of the call that have entries, ``prefetch_unblocks``); an override whose ``until`` is after
the event's time drops the entries, and the hits of their rules say so (``unblock``).

The records (``bypass.hits``, ``bypass.blacklist``) are built by :mod:`sinks.records`, their
one home.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import features
import rules
from sinks.records import (
    BlacklistRecord,
    DecisionRecord,
    HitRecord,
    blacklist_record,
    decision_record,
    hit_record,
)
from streams.core.order import SourceEvent

__all__ = ["KeyBatch", "KeyResult", "Processor"]

#: A state as a caller may hand it over: a snapshot, a decoded state, or None (a new key).
StateLike = bytes | features.EntityState | None


@dataclass(slots=True)
class KeyBatch:
    """Input of :meth:`Processor.process_many`: one key's state and its ordered events."""

    key: str
    state: StateLike
    events: Sequence[SourceEvent]


@dataclass(slots=True)
class KeyResult:
    """Output for one key.

    ``state`` is the features/ state object after the events (serialize it with
    :meth:`Processor.dumps`); ``changed`` is False when every event was a duplicate or
    rejected, so there is nothing to write back.  ``late`` holds (event, reason) for each
    event features/ rejected as too late; ``hit_sources`` the source event of each record
    in ``hits`` (same order); ``warmup`` counts events applied without evaluation.
    """

    entity: str
    key: str
    state: features.EntityState
    changed: bool = False
    hits: list[HitRecord] = field(default_factory=list)
    hit_sources: list[SourceEvent] = field(default_factory=list)
    blacklist: list[BlacklistRecord] = field(default_factory=list)
    blacklist_sources: list[SourceEvent] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    warmup: int = 0
    late: list[tuple[SourceEvent, str]] = field(default_factory=list)
    rule_errors: int = 0
    #: ``bypass.decisions`` records (with ``decision_sample`` set), their sources alongside
    decisions: list[DecisionRecord] = field(default_factory=list)
    decision_sources: list[SourceEvent] = field(default_factory=list)
    #: blacklist entries not emitted because the key had an active unblock override
    unblocked: int = 0


class Processor:
    """Turns (entity, key, state, ordered events) into new state + hit and blacklist records.

    ``spec`` is the feature spec, ``engine`` the features/ engine built from it, ``ruleset``
    the active rule set (swap it with :meth:`set_ruleset`: one reference assignment,
    picked up by the next call), ``run_id`` goes into every hit (``"live"`` for the
    worker), ``lists`` is the ``in_list`` provider.

    Not thread-safe for concurrent ``process`` calls (the state objects are private to a
    call, but the caller owns ordering per key); swapping the rule set from another thread
    is safe.
    """

    def __init__(
        self,
        spec: features.FeatureSpec,
        engine: features.FeatureEngine,
        ruleset: rules.RuleSet,
        *,
        run_id: str,
        lists: rules.ListProvider | None = None,
        decision_sample: float | None = None,
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.ruleset = ruleset
        self.run_id = run_id
        self.lists = lists
        #: share of ``pass`` decisions recorded (``sinks.records.decision_record``); None: no
        #: decision records at all
        self.decision_sample = decision_sample
        #: called with (entity, key, source, values) for every evaluated (event, entity) row,
        #: values being its features and model scores (``bypass model dataset`` reads them)
        self.observe: Callable[[str, str, SourceEvent, dict[str, Any]], None] | None = None

        # --- warm start (streams.live.warmup) ---
        #: per entity kind: feature names still warming (their rules run in shadow mode)
        self.cold: dict[str, frozenset[str]] = {}
        #: per entity kind: (state keys, cut): an event from before the cut (raw offset
        #: below it) leaves those features as they are - the warm start's rebuild holds it
        self.keep: dict[str, tuple[frozenset[str], dict[tuple[str, int], int]]] = {}
        #: the rule set as published (``ruleset`` is it with the rules reading cold features
        #: in shadow mode)
        self.published_ruleset = ruleset

    def set_ruleset(self, ruleset: rules.RuleSet) -> None:
        """Make ``ruleset`` active for every later call (atomic reference swap); its rules
        that read a feature still warming (``cold``) run in shadow mode."""
        self.published_ruleset = ruleset
        shadow = [
            rule_id
            for entity, names in self.cold.items()
            for rule_id in ruleset.reading(entity, self._with_models(entity, names))
        ]
        self.ruleset = ruleset.with_shadow(shadow) if shadow else ruleset

    def _with_models(self, entity: str, names: frozenset[str]) -> frozenset[str]:
        """``names`` plus the ``model.<name>`` columns of the models reading any of them."""
        extra = {decl.column for decl in self.spec.models_of(entity) if names & set(decl.model.features)}
        return names | extra

    def _rows_to_score(
        self,
        ruleset: rules.RuleSet,
        entity: str,
        column: str,
        rows: list[tuple[KeyResult, SourceEvent, dict[str, Any]]],
    ) -> list[int]:
        """The rows a model must score: those a rule reading its column evaluates (all of
        them when observed: a training set has every row's score)."""
        if self.observe is not None:
            return list(range(len(rows)))
        types = ruleset.types_reading(entity, column)
        if types is None:
            return list(range(len(rows)))
        if not types:
            return []
        return [i for i, (_r, source, _f) in enumerate(rows) if source.event.get("type") in types]

    def set_cold(self, entity: str, names: Iterable[str]) -> None:
        """Mark the features ``names`` of ``entity`` as warming (none: all warm) and re-derive
        the rules in shadow mode."""
        names = frozenset(names)
        if names:
            self.cold[entity] = names
        else:
            self.cold.pop(entity, None)
        self.set_ruleset(self.published_ruleset)

    def dumps(self, state: features.EntityState) -> bytes:
        """Serialize a state object (for the Faust table / a checkpoint)."""
        return self.engine.dumps(state)

    def load_state(self, entity: str, state: StateLike | bytearray | memoryview) -> features.EntityState:
        """bytes -> state object; None -> a new state; a state object is returned as is."""
        if state is None:
            return self.engine.new_state(entity)
        if isinstance(state, bytes | bytearray | memoryview):
            return self.engine.loads(entity, bytes(state))
        return state

    def process(self, entity: str, key: str, state: StateLike, events: Sequence[SourceEvent]) -> KeyResult:
        """Apply ``events`` (in order) to ``key``'s state and evaluate the rules on each."""
        return self.process_many(entity, [KeyBatch(key, state, events)])[0]

    def process_many(
        self, entity: str, batches: Iterable[KeyBatch], *, evaluate_from_ms: int | None = None
    ) -> list[KeyResult]:
        """:meth:`process` for several keys of one entity kind, with one list prefetch.

        Events with ``ts < evaluate_from_ms`` are applied but not evaluated (warm-up).
        """
        ruleset = self.ruleset  # one version for the whole call
        version = ruleset.version
        engine = self.engine
        results: list[KeyResult] = []
        to_evaluate: list[tuple[KeyResult, SourceEvent, dict[str, Any]]] = []
        keep = self.keep.get(entity)
        for batch in batches:
            state = self.load_state(entity, batch.state)
            result = KeyResult(entity=entity, key=batch.key, state=state)
            for source in batch.events:
                if keep is not None and source.offset < keep[1].get((source.topic, source.partition), -1):
                    applied = engine.apply_except(entity, state, source.event, keep[0])
                else:
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
                if evaluate_from_ms is not None and source.event["ts"] < evaluate_from_ms:
                    result.warmup += 1
                    continue
                to_evaluate.append((result, source, applied.features))
            results.append(result)

        # --- models: each model of the entity kind scores every row of the call in one
        # vectorized call; the score is read by rules (and shown in hits) as model.<name>
        if to_evaluate:
            for decl in self.spec.models_of(entity):
                # only the rows a rule reading the score evaluates (a model costs per row)
                wanted = self._rows_to_score(ruleset, entity, decl.column, to_evaluate)
                if not wanted:
                    continue
                rows = [to_evaluate[i][2] for i in wanted]
                for feats, score in zip(rows, decl.model.score_many(rows), strict=True):
                    feats[decl.column] = score
            observe = self.observe
            if observe is not None:
                for result, source, feats in to_evaluate:
                    observe(entity, result.key, source, feats)
        # --- end models

        lists = self.lists
        prefetch = getattr(lists, "prefetch", None)
        if prefetch is not None and to_evaluate:
            probes: set[tuple[str, Any]] = set()
            for _result, source, feats in to_evaluate:
                probes |= ruleset.list_probes(source.event, entity, feats)
            if probes:
                prefetch(probes)

        run_id = self.run_id
        sample = self.decision_sample
        pending: list[tuple[KeyResult, SourceEvent, tuple[rules.BlacklistEntry, ...], int]] = []
        for result, source, feats in to_evaluate:
            evaluation = ruleset.evaluate(source.event, entity, result.key, feats, lists)
            if sample is not None:
                decision = decision_record(
                    evaluation,
                    source.event,
                    sample=sample,
                    run_id=run_id,
                    source_topic=source.topic,
                    source_partition=source.partition,
                    source_offset=source.offset,
                )
                if decision is not None:
                    result.decisions.append(decision)
                    result.decision_sources.append(source)
            for hit in evaluation.hits:
                result.hits.append(
                    hit_record(
                        hit,
                        evaluation,
                        source.event,
                        entity=entity,
                        key=result.key,
                        ruleset_version=version,
                        run_id=run_id,
                        source_topic=source.topic,
                        source_partition=source.partition,
                        source_offset=source.offset,
                    )
                )
                result.hit_sources.append(source)
                if hit.error:
                    result.rule_errors += 1
            if evaluation.blacklist:
                pending.append(
                    (result, source, evaluation.blacklist, len(result.hits) - len(evaluation.hits))
                )
        if pending:
            self._emit_blacklist(entity, pending, version)
        return results

    def _emit_blacklist(
        self,
        entity: str,
        pending: list[tuple[KeyResult, SourceEvent, tuple[rules.BlacklistEntry, ...], int]],
        version: str,
    ) -> None:
        """Append the blacklist records of ``pending`` evaluations, except those of keys with an
        active unblock override at the event's time (list provider ``unblock(entity, key)``,
        :mod:`sinks.list_admin`): those are dropped, and the hits of their rules carry the
        override in ``unblock``."""
        lists = self.lists
        unblock_of = getattr(lists, "unblock", None)
        prefetch_unblocks = getattr(lists, "prefetch_unblocks", None)
        if prefetch_unblocks is not None:
            prefetch_unblocks(entity, {result.key for result, _s, _e, _i in pending})
        for result, source, entries, first_hit in pending:
            found = unblock_of(entity, result.key) if unblock_of is not None else None
            ts = source.event["ts"]
            if found is not None and found.until_ms > ts:
                shown = found.as_dict()
                suppressed = {rule_id for entry in entries for rule_id in entry.rule_ids}
                for record in result.hits[first_hit:]:
                    if record["event_id"] == source.event["event_id"] and record["rule_id"] in suppressed:
                        record["unblock"] = shown
                result.unblocked += len(entries)
                continue
            for entry in entries:
                result.blacklist.append(blacklist_record(entry, source.event, ruleset_version=version))
                result.blacklist_sources.append(source)
