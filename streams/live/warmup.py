"""Warm start: rebuild new or changed features from history while the worker keeps running.

When a worker switches to a feature spec holding features its states do not (a new
feature, or one whose parameters changed: a new state key), those features would start
empty, and a 30-day feature would be wrong for 30 days.  Instead, per entity kind:

1. **Cut.**  The worker reads the end offsets of the raw topics, ``H`` (per partition).
   Events before the cut are history; events from the cut on are the live path's.
2. **Rebuild** (:class:`Warmup`, a daemon thread).  It reads the raw topics from their
   earliest retained offset up to ``H`` in the processing order of live and replay
   (:class:`streams.replay.reader.ReplayReader`), and applies the events of the keys of
   the entity partitions the worker owns to states of an engine over just the warming
   features.
3. **Meanwhile** the live path runs the new spec: the warming features of a key get the
   events from the cut on; an event from before the cut arriving late (still in flight)
   leaves them as they are (``Processor.keep``: the rebuild holds it).  Rules that read a
   warming feature run in shadow mode: their hits are recorded (``mode: shadow``), never
   counted, and blacklist nobody.
4. **Hand-over**, in the entity agent between two batches, once the rebuild is done and
   the live path has processed every event before the cut (:meth:`Warmup.caught_up`):
   the events from ``H`` to the current end are read (the *tail*), and for each key the
   rebuilt state gets those of them the live key has applied (its remembered event ids),
   in order; the result replaces the warming features in the live state
   (``FeatureEngine.adopt``).  The key's features then equal those of a worker that had
   the features from the start.  The entity partition's marker
   (``\\x00features:<partition>`` in the entity table: the state keys that are warm, and the
   last cut) records it, so a restart or a move does not warm again; the rules count.

A worker that restarts during a warm start warms again (the marker says the features are
not warm); one that loses a partition drops its part.  History is what the raw topics
retain and, below their earliest retained offsets, what the event archive holds
(``risk_events``, when BYPASS_ARCHIVE_EVENTS is on; :class:`streams.replay.archive.ArchiveReader`,
the same order); with the archive off the log says which offsets are not rebuilt.  Keys whose state the worker
evicted before the hand-over keep no rebuilt history: a feature with a longer window than
the spec's others should be published before the keys it needs are evicted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

import features
from features.errors import BypassError
from streams.core.assembly import build_engine
from streams.core.envelope import decoder_from_settings
from streams.core.order import RunningMax
from streams.live.setup import bundle_partition
from streams.settings import Settings

__all__ = ["MARKER_PREFIX", "Marker", "Warmup", "marker_key", "read_marker"]

log = logging.getLogger("bypass.warmup")

#: entity table key prefix of the per-partition feature markers (never an entity key)
MARKER_PREFIX = b"\x00features:"

TP = tuple[str, int]


def marker_key(partition: int) -> bytes:
    return MARKER_PREFIX + str(partition).encode()


@dataclass(frozen=True, slots=True)
class Marker:
    """What an entity partition's states hold: the ``warm`` state keys, and the last warm
    start's ``keep`` state keys and cut ``H`` (events before it are in those features)."""

    warm: frozenset[str]
    keep: frozenset[str] = frozenset()
    cut: Mapping[TP, int] | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "warm": sorted(self.warm),
                "keep": sorted(self.keep),
                "cut": [[t, p, o] for (t, p), o in sorted((self.cut or {}).items())],
            }
        )


def read_marker(raw: bytes | None) -> Marker | None:
    """A marker from the table (None: absent or unreadable)."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        return Marker(
            warm=frozenset(str(k) for k in data["warm"]),
            keep=frozenset(str(k) for k in data.get("keep", ())),
            cut={(str(t), int(p)): int(o) for t, p, o in data.get("cut", ())},
        )
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring an unreadable feature marker")
        return None


def _whole(reader: Any, positions: dict[TP, int], **options: Any) -> Iterator[list[Any]]:
    """The chunks of a replay or archive reader over whole partitions (no time range, no
    retention warnings), from ``positions``, in the processing order."""
    chunks: Iterator[list[Any]] = reader.records(
        positions,
        stop_ms=2**62,
        to_ms=2**62,
        skew_ms=0,
        select_from_ms=0,
        chunk_size=2000,
        retention_edge=set(),
        **options,
    )
    return chunks


class Warmup:
    """Rebuilds the ``keys`` features (state keys) of ``entity`` from the raw topics up to
    the cut ``stops``, for the keys of the entity ``partitions`` a worker owns (module
    docstring).  :meth:`start` runs it in a daemon thread; :meth:`progress` says how far."""

    def __init__(
        self,
        settings: Settings,
        spec: features.FeatureSpec,
        entity: str,
        keys: frozenset[str],
        partitions: set[int],
        stops: Mapping[TP, int],
        *,
        retained_from: Mapping[TP, int] | None = None,
    ) -> None:
        self.settings = settings
        #: per raw partition, the first offset to read from Kafka (default: the earliest it
        #: retains); the events below it come from the event archive when it is on
        self.retained_from = dict(retained_from) if retained_from is not None else None
        self.archived = 0  # events read from the archive
        self.entity = entity
        self.keys = keys
        self.partitions = set(partitions)
        self.stops = dict(stops)
        warming = tuple(f for f in spec.features_of(entity) if f.state_key in keys)
        self.names = tuple(f.name for f in warming)
        self.spec = features.FeatureSpec(entities=dict(spec.entities), features=warming, events=spec.events)
        self.engine = build_engine(self.spec, settings)
        self.states: dict[str, features.EntityState] = {}
        self.clock: RunningMax | None = None
        self.starts: dict[TP, int] = {}
        self.read = 0
        self.total = 0
        self.applied = 0
        self.started = time.time()
        self.finished_at: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the rebuild ---------------------------------------------------------------
    def start(self) -> Warmup:
        self._thread = threading.Thread(target=self._run, name=f"bypass-warmup-{self.entity}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def done(self) -> bool:
        return self.finished_at is not None and self.error is None

    def _reader(self) -> Any:
        from streams.replay.reader import ReplayReader

        return ReplayReader(
            self.settings,
            list(self.settings.raw_topics),
            f"warmup-{self.entity}-{uuid.uuid4().hex[:8]}",
            decoder_from_settings(self.settings),
            warn=log.warning,
        )

    def _run(self) -> None:
        try:
            self._rebuild()
        except Exception as exc:  # reported in the status; the features stay warming
            self.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.error(
                "warm start of %s features %s failed: %s", self.entity, ", ".join(self.names), self.error
            )
            return
        if self._stop.is_set():
            return
        self.finished_at = time.time()
        log.info(
            "warm start of %s features %s: history rebuilt (%d events, %d keys) in %.1f s",
            self.entity,
            ", ".join(self.names),
            self.applied,
            len(self.states),
            self.finished_at - self.started,
        )

    def _rebuild(self) -> None:
        reader = self._reader()
        try:
            tps = reader.discover()
            reader.find_offsets(0, 0)
            positions = {tp: reader.marks[tp][0] for tp in tps}
            if self.retained_from is not None:
                positions = {tp: max(positions[tp], self.retained_from.get(tp, 0)) for tp in tps}
            self.starts = dict(positions)
            self.total = sum(max(0, self.stops.get(tp, 0) - positions[tp]) for tp in tps)
            stops = {tp: self.stops.get(tp, 0) for tp in tps}
            clock = self._from_archive(positions) if any(positions.values()) else None
            for chunk in _whole(
                reader,
                positions,
                should_stop=self._stop.is_set,
                stop_offsets=stops,
                clock=clock,
            ):
                self.read += len(chunk)
                self._apply([r.event for r in chunk if r.event is not None])
            self.clock = reader.clock
        finally:
            reader.close()

    def _from_archive(self, below: Mapping[TP, int]) -> RunningMax | None:
        """The events the raw topics no longer retain (offsets below ``below``), from the
        event archive in the replay order, when it is on; returns the partitions' running
        maxima to continue the raw read with (None: nothing read)."""
        if not self.settings.archive_events:
            log.warning(
                "warm start of %s: the raw topics no longer hold offsets below %s and the event archive "
                "is off (BYPASS_ARCHIVE_EVENTS): that history is not rebuilt",
                self.entity,
                dict(below),
            )
            return None
        from streams.replay.archive import ArchiveReader

        try:
            archive = ArchiveReader(self.settings, list(self.settings.raw_topics), warn=log.warning)
        except BypassError as exc:
            log.warning("warm start of %s: the event archive cannot be read (%s)", self.entity, exc.message)
            return None
        try:
            tps = archive.discover()
            archive.find_offsets(0, 2**62)
            positions = {tp: archive.marks[tp][0] for tp in tps}
            self.total += sum(max(0, below.get(tp, 0) - positions[tp]) for tp in tps)
            for chunk in _whole(
                archive,
                positions,
                should_stop=self._stop.is_set,
                stop_offsets=dict(below),
            ):
                self.read += len(chunk)
                self.archived += len(chunk)
                self._apply([r.event for r in chunk if r.event is not None])
        except BypassError as exc:
            log.warning("warm start of %s: the event archive cannot be read (%s)", self.entity, exc.message)
            return None
        finally:
            archive.close()
        log.info("warm start of %s: %d events from the event archive", self.entity, self.archived)
        return archive.clock

    def _apply(self, events: Sequence[Mapping[str, Any]]) -> None:
        entity = self.entity
        engine = self.engine
        states = self.states
        n = self.settings.topic_partitions
        mine = self.partitions
        for event in events:
            for ent, key in self.spec.entity_keys(event):
                if ent != entity or bundle_partition(key.encode(), n) not in mine:
                    continue
                state = states.get(key)
                if state is None:
                    state = states[key] = engine.new_state(entity)
                try:
                    engine.apply(entity, state, event)
                except BypassError:  # the live path dead-letters it
                    continue
                self.applied += 1

    def progress(self) -> dict[str, Any]:
        """For the worker report and ``bypass features status``."""
        elapsed = (self.finished_at or time.time()) - self.started
        share = 1.0 if self.total == 0 else min(1.0, self.read / self.total)
        rate = self.read / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total - self.read)
        return {
            "entity": self.entity,
            "features": list(self.names),
            "partitions": sorted(self.partitions),
            "state": "rebuilt" if self.done else ("failed" if self.error else "warming"),
            "progress": round(share, 4),
            "events_read": self.read,
            "events_total": self.total,
            "eta_s": None if self.done or rate <= 0 else round(left / rate, 1),
            "elapsed_s": round(elapsed, 1),
            "keys": len(self.states),
            "archived": self.archived,
            "error": self.error,
        }

    # --- the hand-over ------------------------------------------------------------
    def read_tail(self) -> dict[str, list[Mapping[str, Any]]]:
        """The events from the cut to the current end, per key of this worker's partitions,
        in processing order (blocking: run it in an executor)."""
        reader = self._reader()
        out: dict[str, list[Mapping[str, Any]]] = {}
        n = self.settings.topic_partitions
        try:
            tps = reader.discover()
            reader.find_offsets(0, 0)
            positions = {tp: max(self.stops.get(tp, 0), reader.marks[tp][0]) for tp in tps}
            for chunk in _whole(
                reader,
                positions,
                clock=self.clock,
            ):
                for record in chunk:
                    if record.event is None:
                        continue
                    for ent, key in self.spec.entity_keys(record.event):
                        if ent == self.entity and bundle_partition(key.encode(), n) in self.partitions:
                            out.setdefault(key, []).append(record.event)
        finally:
            reader.close()
        return out

    def rebuilt(
        self, key: str, live: features.EntityState, tail: Mapping[str, Sequence[Mapping[str, Any]]]
    ) -> features.EntityState | None:
        """The warming features' state of ``key`` as of what the live state ``live`` has
        applied: the history, then the tail events whose ids the live key remembers (None:
        the key has neither)."""
        state = self.states.get(key)
        events = tail.get(key, ())
        if state is None and not events:
            return None
        if state is None:
            state = self.engine.new_state(self.entity)
        seen = live.dedup
        for event in events:
            if event.get("event_id") in seen:
                try:
                    self.engine.apply(self.entity, state, event)
                except BypassError:
                    continue
        return state


def raw_end_offsets(settings: Settings) -> dict[TP, int]:
    """The end offset of every raw partition now: the cut of a warm start."""
    from confluent_kafka import TopicPartition

    from streams.core import kafka

    tps = kafka.topic_partitions(settings, settings.raw_topics)
    client = kafka.consumer(settings, group_id=f"{settings.app_id}-warmup-cut")
    try:
        reported = {tp: int(client.get_watermark_offsets(TopicPartition(*tp), timeout=10)[1]) for tp in tps}
    finally:
        client.close()
    return kafka.end_offsets(settings, reported)


class WarmStarts:
    """The warm starts of one worker's :class:`streams.live.app.Pipeline` (module docstring).

    :meth:`mark_dirty` (a new spec, a rebalance) makes the next :meth:`tick` of that entity
    kind re-read its partitions' markers and start, keep or drop a :class:`Warmup`; the
    entity agent calls :meth:`tick` before each batch, so the hand-over happens between
    two batches.
    """

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.running: dict[str, Warmup] = {}
        self.finished: dict[str, dict[str, Any]] = {}  # entity -> the last hand-over, for status
        self._dirty: set[str] = set(pipeline.entities)

    def mark_dirty(self, entities: Sequence[str] | None = None) -> None:
        self._dirty.update(entities if entities is not None else self.pipeline.entities)

    def report(self) -> dict[str, Any]:
        """What ``bypass features status`` shows for this worker."""
        p = self.pipeline
        return {
            "warming": [w.progress() for w in self.running.values()],
            "warmed": dict(self.finished),
            "cold": {e: sorted(names) for e, names in p.processor.cold.items() if e not in self.running},
        }

    def stop(self) -> None:
        for w in self.running.values():
            w.stop()
        self.running.clear()

    async def tick(self, entity: str) -> None:
        p = self.pipeline
        if not p.settings.warm_start:
            return
        if entity in self._dirty:
            self._dirty.discard(entity)
            await self._plan(entity)
        w = self.running.get(entity)
        if w is not None and w.done and self._caught_up(entity, w):
            await self._hand_over(entity, w)

    async def _plan(self, entity: str) -> None:
        import asyncio

        p = self.pipeline
        processor = p.processor
        owned = p._owned_partitions(entity)
        table = p.tables[entity]
        store = p.stores[entity]
        now = frozenset(processor.engine.state_keys(entity))
        need: set[int] = set()
        warming: set[str] = set()
        for q in sorted(owned):
            marker = read_marker(table.get(marker_key(q)))
            if marker is None:  # never marked: its states hold the spec they were built with
                store.put_raw(marker_key(q), Marker(warm=now).to_bytes(), q)
                continue
            missing = now - marker.warm
            if missing:
                need.add(q)
                warming |= missing
            elif marker.keep and marker.cut and entity not in processor.keep:
                processor.keep[entity] = (marker.keep & now, dict(marker.cut))
        old = self.running.get(entity)
        if old is not None and (old.partitions != need or old.keys != warming):
            old.stop()
            del self.running[entity]
        names = [f.name for f in processor.spec.features_of(entity) if f.state_key in warming]
        processor.set_cold(entity, names)
        if not need or entity in self.running:
            return
        cut = await asyncio.get_running_loop().run_in_executor(None, raw_end_offsets, p.settings)
        keys = frozenset(warming)
        processor.keep[entity] = (keys, cut)
        self.running[entity] = Warmup(p.settings, processor.spec, entity, keys, need, cut).start()
        log.warning(
            "warm start of %s features %s for partitions %s: rebuilding from the raw topics up to %s; "
            "rules reading them run in shadow mode until then",
            entity,
            ", ".join(names),
            ",".join(map(str, sorted(need))),
            ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(cut.items())),
        )

    def _caught_up(self, entity: str, w: Warmup) -> bool:
        """True when the live path has processed every event before the cut for the warm
        start's partitions (with event-time order: each raw partition reported reading past
        it, and nothing before it is held back)."""
        p = self.pipeline
        if not p.settings.event_time_order:
            return True
        for q in w.partitions:
            order = p._orders.get((entity, q))
            if order is None:
                return False
            for tp, cut in w.stops.items():
                if cut <= 0:
                    continue
                reported = order.progress.get(tp)
                if reported is None or reported[1] is None or reported[1] < cut:
                    return False
                if order.buffer.holds_before(tp, cut):
                    return False
        return True

    async def _hand_over(self, entity: str, w: Warmup) -> None:
        import asyncio

        p = self.pipeline
        started = time.time()
        tail = await asyncio.get_running_loop().run_in_executor(None, w.read_tail)
        if self.running.get(entity) is not w or p._owned_partitions(entity) < w.partitions:
            return  # dropped or moved meanwhile (a rebalance): planned again
        engine = p.processor.engine
        table = p.tables[entity]
        store = p.stores[entity]
        spliced = 0
        for i, key in enumerate(sorted(set(w.states) | set(tail))):
            if i % 500 == 499:
                await asyncio.sleep(0)  # heartbeats keep flowing
            kb = key.encode()
            raw = table.get(kb)
            if raw is None:  # evicted, or never seen by the live path
                continue
            live = engine.loads(entity, raw)
            rebuilt = w.rebuilt(key, live, tail)
            if rebuilt is None:
                continue
            engine.adopt(live, rebuilt, w.engine)
            store.cache.pop(kb, None)
            store.put_raw(kb, engine.dumps(live), table.partition_for_key(kb))
            spliced += 1
        now = frozenset(engine.state_keys(entity))
        for q in sorted(w.partitions):
            marker = Marker(warm=now, keep=w.keys, cut=w.stops)
            store.put_raw(marker_key(q), marker.to_bytes(), q)
        del self.running[entity]
        p.processor.set_cold(entity, ())
        self.finished[entity] = {
            "features": list(w.names),
            "partitions": sorted(w.partitions),
            "keys": spliced,
            "events": w.applied,
            "rebuild_s": round((w.finished_at or started) - w.started, 1),
            "hand_over_s": round(time.time() - started, 2),
            "at_ms": int(time.time() * 1000),
        }
        log.warning(
            "warm start of %s features %s done: %d keys rebuilt from %d events; their rules count now",
            entity,
            ", ".join(w.names),
            spliced,
            w.applied,
        )
