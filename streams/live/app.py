"""The live Faust application: raw topics -> ingest -> entity agents -> hits and blacklist.

Topology (``A`` = ``settings.app_id``, ``n`` = ``settings.topic_partitions``)::

    raw topics (BYPASS_RAW_TOPICS, key = user id, JSON envelope)
      │ agent "ingest": decode + validate + hash phones (streams.core.envelope);
      │   invalid -> settings.dlq_topic (streams.core.deadletter)
      │   valid   -> merged into processing order, fanned out per entity kind
      │              (BatchStep.fan_out), one bundle per (entity kind, partition) and batch
      ▼
    A-entity-<kind>  (n partitions; repartition topic per entity kind of the feature spec)
      │ agent "entity-<kind>": batches of bundles, grouped by key, run through the shared
      │   batch step (BatchStep.process_keys) with the table as its StateStore
      ▼
    table "entity-<kind>" (changelog A-entity-<kind>-changelog, n partitions, standbys)
      ├──▶ settings.hits_topic       one JSON hit record per message, key "entity:key"
      ├──▶ settings.blacklist_topic  one JSON blacklist record, key "entity:key"
      ├──▶ settings.decisions_topic  one JSON decision record per (event, entity), pass ones sampled
      └──▶ settings.dlq_topic        events whose processing raised (processing_error)

The per-batch work - fan-out, grouping, warm-up, poison isolation, counters, records -
is :mod:`streams.core.step`, the code replay runs too; this module only moves its inputs
and outputs through Kafka.

Re-keying.  The ingest agent computes each (entity, key)'s partition with Kafka's default
partitioner (:func:`streams.live.setup.bundle_partition`) and sends all events of one
batch for one (entity kind, partition) as one *bundle* message to that partition,
``{"e": [[key, topic, partition, offset, kafka_ts_ms, running_max_ts, event], ...], "p":
progress, "t": ingest_read_ms}`` (:func:`pack_bundles`; ``t`` starts the processing
latency), so the repartition hop costs one Kafka message per bundle instead of one per
event and entity.
The table assigns each key's changelog record to the same partition, so the partition of
the repartition topic that carries a key also holds that key's state: co-partitioned, and
a worker that takes a partition over rebuilds exactly the keys it will see.

Order (:mod:`streams.core.order`).  The ingest gives each event its place in the
processing order from its own partition (the partition's running maximum of event time,
topic, partition, offset) and reports, with every batch and an idle heartbeat, per raw
partition it owns: the running maximum, the next offset and whether it is caught up.  Every
entity partition receives that report (an empty bundle when the batch had nothing for it),
so an entity agent knows, for each raw partition of every worker, the smallest place it
may still send.  It holds its events (:class:`~streams.core.order.OrderBuffer`) until no
raw partition can send an earlier one, then runs them through the batch step in order.  A
caught-up partition holds nothing back; a lagging one (or one not heard from) holds back
everything after it.  A bundle is acknowledged once all its events are processed, so held
events come again after a crash.  The reports are kept in the entity table (key
``\x00order-progress:<partition>``) so a new owner of a raw partition continues its running
maximum.  At BYPASS_ORDER_MAX_HELD held events the raw partitions running ahead are paused.

Eviction.  Every ``evict_every_batches`` batches an entity agent starts a sweep of its
table (``EVICT_SLICE_KEYS`` keys after each batch until done): a key of a partition it
owns whose state the step says is evictable at the worker's event-time watermark (the
largest event time its entity agents have processed, capped by the clock so an outlier
from the future cannot make every key look stale: :meth:`Pipeline.eviction_time`) is
deleted (a tombstone on the changelog) and dropped from the decoded-state cache.

Delivery.  At-least-once: the entity agent sends hits and writes state before the batch's
offsets are acknowledged, and Faust flushes the producer before it commits.  After a crash
the redelivered events are duplicates for features/ (no state change, same features) and
their hits are sent again, identical (same ``hit_id``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP as FaustTP

import features
from sinks.base import SinkBackpressureError
from sinks.records import blacklist_key
from streams.core import kafka
from streams.core.deadletter import DeadLetter, invalid_message
from streams.core.envelope import InvalidEventError, decoder_from_settings
from streams.core.order import OrderBuffer, RunningMax, SourceEvent, bound_of, merge_sources
from streams.core.processor import Processor
from streams.core.step import BatchStep, StepResult, group_by_key
from streams.live.metrics import Metrics
from streams.live.setup import (
    EntityRocksStore,
    EntityTable,
    bundle_partition,
    credentials,
    faust_base_options,
    tune_faust_consumer,
)
from streams.settings import Settings

__all__ = ["BUNDLE_MAX_BYTES", "Pipeline", "TableStore", "pack_bundles"]

log = logging.getLogger("bypass.worker")

BUNDLE_MAX_BYTES = 512 * 1024

#: Keys an eviction sweep checks per entity-agent batch (each check may decode a state:
#: a few ms per thousand keys).
EVICT_SLICE_KEYS = 2_000

#: A message an agent produced: topic, key, value, partition (None: the key's default
#: partition), headers (None: none).
Outgoing = tuple[str, bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]


#: Table key prefix of the per-partition ordering progress records (never an entity key:
#: envelope ids are non-empty strings, and these start with a NUL byte).
PROGRESS_PREFIX = b"\x00order-progress:"


def progress_key(partition: int) -> bytes:
    """The table key of entity partition ``partition``'s ordering progress (stored in that
    very partition: :class:`streams.live.setup.EntityTable` maps it there)."""
    return PROGRESS_PREFIX + str(partition).encode()


def _read_progress(raw: bytes | None) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    if not raw:
        return {}
    try:
        return {(str(t), int(p)): (top, nxt) for t, p, top, nxt in orjson.loads(raw)}
    except (ValueError, TypeError):
        log.warning("ignoring an unreadable ordering progress record")
        return {}


class _Bundle:
    """A bundle message, acknowledged once every event it carried has been processed."""

    __slots__ = ("event", "read_ms", "remaining")

    def __init__(self, event: Any, read_ms: int | None = None) -> None:
        self.event = event
        self.remaining = 0
        self.read_ms = read_ms  # when the ingest read its events (wall clock, ms)


class _Held:
    """An event held for event-time order: its key, source, bundle and order key."""

    __slots__ = ("bundle", "key", "order_key", "source")

    def __init__(self, key: str, source: SourceEvent, bundle: _Bundle, order_key: tuple[Any, ...]) -> None:
        self.key = key
        self.source = source
        self.bundle = bundle
        self.order_key = order_key


class _PartitionOrder:
    """Event-time order for one entity partition: the held events, what each raw partition
    reported (running max, next offset, caught up), the bundles not yet acknowledged."""

    def __init__(self, sources: Sequence[tuple[str, int]]) -> None:
        self.buffer: OrderBuffer[tuple[str, int], _Held] = OrderBuffer(sources)
        self.progress: dict[tuple[str, int], tuple[int | None, int | None, bool]] = {}
        self.bundles: deque[_Bundle] = deque()
        self.released: tuple[Any, ...] | None = None
        self.dirty = False

    def note(self, tp: tuple[str, int], top: int | None, nxt: int | None, caught: bool) -> None:
        old = self.progress.get(tp)
        if old is not None and old[0] is not None and (top is None or top < old[0]):
            top = old[0]  # a redelivered or restarted source cannot take back what it sent
        if old is not None and old[1] is not None and (nxt is None or nxt < old[1]):
            nxt = old[1]
        new = (top, nxt, caught)
        if new != old:
            self.progress[tp] = new
            self.dirty = True
        self.buffer.advance(tp, bound_of(top, tp[0], tp[1], nxt if nxt is not None else 0, caught))

    def dump_progress(self) -> bytes:
        return orjson.dumps([[t, p, top, nxt] for (t, p), (top, nxt, _) in sorted(self.progress.items())])


def _valid(hit: tuple[bytes, features.EntityState] | None, raw: bytes | None) -> features.EntityState | None:
    """A cached decoded state, if it was decoded from the bytes the table holds now."""
    if hit is not None and raw is not None and (hit[0] is raw or hit[0] == raw):
        return hit[1]
    return None


def _unexpected(exc: Exception) -> InvalidEventError:
    """An unexpected failure on one raw message, as a dead-letter reason (``ingest_error``)."""
    return InvalidEventError(f"{type(exc).__name__}: {exc}", reason="ingest_error")


class TableStore:
    """The :class:`streams.core.step.StateStore` of one entity agent: its Faust table, plus
    an LRU of decoded states (``cache_keys``) valid while the table holds the bytes they
    came from.

    A write goes into the table's store and its changelog record into the agent's outbox
    (what ``table[key] = value`` does, minus Faust's per-message buffer, future and task):
    with the memory store (``direct``) straight into its dict; with RocksDB
    (:class:`streams.live.setup.EntityRocksStore`) as a pending write that reaches the
    partition's database once the broker acknowledged its changelog record
    (:meth:`acknowledged`, called by the agent's drain).  Any other store goes through
    the table.
    """

    def __init__(self, table: Any, cache_keys: int, outbox: list[Outgoing], *, direct: bool) -> None:
        self.table = table
        self.cache_keys = cache_keys
        self.outbox = outbox
        self.direct = direct
        self.cache: dict[bytes, tuple[bytes, features.EntityState]] = {}
        self._changelog: str | None = None
        self._rocks: EntityRocksStore | None = None
        self._resolved = False

    def _resolve(self) -> None:
        """The table's store is built on first use (after the app's set-up)."""
        self._resolved = True
        data = self.table.data
        if isinstance(data, EntityRocksStore):
            self._rocks = data
        if self.direct or self._rocks is not None:
            self._changelog = self.table.changelog_topic.get_topic_name()

    def _get(self, kb: bytes) -> bytes | None:
        if not self._resolved:
            self._resolve()
        if self._rocks is not None:
            return self._rocks.get_raw(kb)
        raw: bytes | None = self.table.get(kb)
        return raw

    def load(self, entity: str, key: str) -> tuple[bytes | None, features.EntityState | None]:
        kb = key.encode()
        raw = self._get(kb)
        return raw, _valid(self.cache.pop(kb, None), raw)  # popped: save() puts it back last

    def peek(self, kb: bytes) -> tuple[bytes | None, features.EntityState | None]:
        """Like :meth:`load`, leaving the cache as it is (eviction sweeps)."""
        raw = self._get(kb)
        return raw, _valid(self.cache.get(kb), raw)

    def save(
        self, entity: str, key: str, data: bytes | None, state: features.EntityState | None, changed: bool
    ) -> None:
        if data is None:
            return
        kb = key.encode()
        if changed:
            self.put_raw(kb, data, self.table.partition_for_key(kb))
        if state is not None and self.cache_keys:
            self.cache[kb] = (data, state)

    def forget(self, entity: str, key: str) -> None:
        self.cache.pop(key.encode(), None)

    def put_raw(self, kb: bytes, data: bytes, partition: int) -> None:
        """Write ``kb`` into the table's ``partition`` (an entity state, or a record of the
        agent's own such as the ordering progress)."""
        if not self._resolved:
            self._resolve()
        if self._changelog is None:
            self.table[kb] = data
            return
        if self._rocks is not None:
            self._rocks.put_raw(kb, data)
        else:
            self.table.data[kb] = data
        self.outbox.append((self._changelog, kb, data, partition, None))

    def keys(self) -> list[bytes]:
        """The table's keys now (eviction sweeps), without Faust's per-key decoding."""
        if not self._resolved:
            self._resolve()
        if self._rocks is not None:
            return self._rocks.raw_keys()
        data = getattr(self.table.data, "data", None)
        if self.direct and isinstance(data, dict):
            return list(data)
        return list(self.table.keys())

    def awaits_acks(self) -> str | None:
        """The changelog topic whose records :meth:`acknowledged` wants (RocksDB), else None."""
        if not self._resolved:
            self._resolve()
        return self._changelog if self._rocks is not None else None

    async def acknowledged(self, sent: Sequence[tuple[bytes, bytes, Any]]) -> None:
        """``sent``: (key, value, delivery future) of changelog records in send order.  Once
        the broker acknowledged them, their writes go into the RocksDB databases with the
        last changelog offset of each partition."""
        assert self._rocks is not None  # noqa: S101
        offsets: dict[int, int] = {}
        values: dict[bytes, bytes] = {}
        for key, value, fut in sent:
            meta = await fut
            if meta.offset > offsets.get(meta.partition, -1):
                offsets[meta.partition] = meta.offset
            values[key] = value
        self._rocks.apply(offsets, values)

    def trim(self) -> None:
        """Keep the ``cache_keys`` most recently used decoded states."""
        cache = self.cache
        if len(cache) > self.cache_keys:
            for kb in list(itertools.islice(cache, len(cache) - self.cache_keys)):
                del cache[kb]


#: Seconds a rebalance waits for the agents' batches in progress.
REVOKE_WAIT_S = 15.0


class _Running:
    """How many agent batches are in progress, and an event set when none is."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self.count:
                self._idle.set()
        return self._idle

    def __enter__(self) -> None:
        self.count += 1
        self._event().clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if not self.count:
            self._event().set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no batch is in progress; False after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._event().wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Pipeline:
    """Builds the Faust app, its topics, tables and agents from settings and a Processor.

    ``processor`` is the shared core (its rule set is swapped by the rules follower);
    ``metrics`` the worker's Prometheus metrics.
    """

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        *,
        metrics: Metrics | None = None,
        datadir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self._skipped_seen: dict[str, int] = {}  # feature -> skipped values already counted
        self.metrics = metrics or Metrics()
        self.decoder = decoder_from_settings(settings)
        self.spec = processor.spec
        self.entities: list[str] = list(self.spec.entities)
        self.partitions = settings.topic_partitions
        self.app = self._build_app(datadir)
        self.raw_topic = self.app.topic(*settings.raw_topics, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = self.app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.hits_topic = self.app.topic(settings.hits_topic, key_serializer="raw", value_serializer="raw")
        self.blacklist_topic = self.app.topic(
            settings.blacklist_topic, key_serializer="raw", value_serializer="raw"
        )
        self.decisions_topic_name = settings.decisions_topic  # decision records (risk_decisions)
        self.step = BatchStep(processor)
        # event-time order (streams.core.order): the ingest's running maximum per raw
        # partition and the next offset it will read; per (entity, partition) the held events
        self.clock = RunningMax()
        self._next_offset: dict[tuple[str, int], int] = {}
        self._assigned_at: dict[tuple[str, int], float] = {}  # when this worker took a raw partition
        self._delivered: set[tuple[str, int]] = set()  # raw partitions that delivered since then
        self._orders: dict[tuple[str, int], _PartitionOrder] = {}
        self._raw_sources: list[tuple[str, int]] | None = None
        self._paused: set[tuple[str, int]] = set()
        self._ingest_lock = asyncio.Lock()  # a progress report never overtakes the events it covers
        self.running = _Running()  # the agents' batches in progress (a rebalance waits for them)
        self._progress_sent = 0.0
        # ingest: key -> partition of the repartition topics (murmur2 costs ~4 us a call)
        self._partition_of: dict[str, int] = {}
        # event-time watermark: the largest event time the entity agents processed (None: none yet)
        self.watermark_ms: int | None = None
        # per entity kind: id(source) -> when the ingest read it, for the events being processed
        self._read_at: dict[str, dict[int, int]] = {}
        # entity kind -> since when (unix time) a batch waits for a dependency (health)
        self.waiting: dict[str, float] = {}
        self._batches: dict[str, int] = dict.fromkeys(self.entities, 0)
        # per entity kind: the running eviction sweep's keys, how far it got, how many went
        self._sweeps: dict[str, tuple[list[bytes], int, int]] = {}
        # the messages each agent produced in its current batch (Outgoing); _drain sends them
        self._outbox: dict[str, list[Outgoing]] = {"ingest": []}
        self.entity_topics: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
        # per entity: the table as the batch step's StateStore (with its decoded-state cache)
        self.stores: dict[str, TableStore] = {}
        for entity in self.entities:
            self.entity_topics[entity] = self.app.topic(
                f"{settings.app_id}-entity-{entity}",
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.partitions,
                internal=True,
            )
            self.tables[entity] = self.app.Table(
                f"entity-{entity}",
                default=None,
                key_type=bytes,  # bytes -> the "raw" codec for the table and its changelog
                value_type=bytes,
                partitions=self.partitions,
                use_partitioner=True,
                help=f"features/ state snapshots of {entity} keys",
            )
            self._outbox[entity] = []
            self.stores[entity] = TableStore(
                self.tables[entity],
                settings.state_cache_keys,
                self._outbox[entity],
                # write states straight to the store + changelog (TableStore)
                direct=settings.table_store == "memory://",
            )
        from streams.live.warmup import WarmStarts

        self.warm = WarmStarts(self)  # feature warm starts (streams.live.warmup)
        self.app.agent(self.raw_topic, name="ingest")(self._ingest_agent)
        self.app.timer(settings.order_heartbeat_ms / 1000, name="order-heartbeat")(self._heartbeat)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        for entity in self.entities:
            self.app.agent(self.entity_topics[entity], name=f"entity-{entity}")(
                self._make_entity_agent(entity)
            )

    # --- app ----------------------------------------------------------------
    def _build_app(self, datadir: Path | None) -> faust.App:
        s = self.settings
        tune_faust_consumer(s)
        # per app id: two apps (a reference run, a second deployment) never share RocksDB files
        datadir = datadir or (Path(s.state_dir) / "faust" / s.app_id)
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.app_id,
            **faust_base_options(s),
            broker_credentials=credentials(s),
            store=s.table_store,
            datadir=str(datadir),
            topic_partitions=s.topic_partitions,
            topic_replication_factor=s.topic_replication,
            table_standby_replicas=s.table_standby_replicas,
            producer_acks=-1,
            # fewer, larger produce requests: changelog writes, hits and bundles of a batch
            # go out together (Faust's defaults: no linger, 16 KB batches)
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
            Table=EntityTable,
            # Faust waits at each rebalance and at stop until every message its streams took
            # is acknowledged.  Events held back for event-time order are acknowledged only
            # when released, and a release may wait for a partition that is moving: the
            # rebalance never ended (a worker killed while the others held events froze them
            # all).  Only the batches in progress are waited for (_on_revoked, on_stop); held
            # events stay unacknowledged, so their offsets are not committed and whoever
            # owns their partitions next reads them again (at least once).
            stream_wait_empty=False,
        )
        # Faust pauses every stream while its producer buffer holds more than 100 messages
        # (and logs a warning each time); our agents put a whole batch of changelog writes
        # and hits into it at once and drain it themselves before acknowledging (_drain).
        app.producer.buffer.max_messages = 1_000_000
        return app

    # --- ingest ---------------------------------------------------------------
    def _send_dead_letter(self, letter: DeadLetter, agent: str) -> None:
        dlq = self.dlq_topic.get_topic_name()
        self._outbox[agent].append((dlq, letter.key, letter.value, None, letter.headers))
        self.metrics.dlq.labels(reason=letter.reason).inc()

    def ingest(self, messages: Sequence[Any]) -> dict[tuple[str, int], list[bytes]]:
        """Decode a batch of raw messages; return bundle entries per (entity, partition).

        Each valid event gets its event-time order key from its partition's running
        maximum (:class:`streams.core.order.RunningMax`).  Whatever fails for one message -
        decoding, validation, or anything unexpected - makes that message a dead letter in
        the ingest outbox; the others go on.
        """
        decode = self.decoder.decode
        n = self.partitions
        clock = self.clock
        next_offset = self._next_offset
        entity_keys = self.step.keys
        per_source: dict[tuple[str, int], list[SourceEvent]] = defaultdict(list)
        # id(source) -> (the running maximum its key starts with, its event as JSON, its keys)
        prepared: dict[int, tuple[int, bytes, list[tuple[str, str]]]] = {}
        counts: dict[str, int] = defaultdict(int)
        now_ms = time.time_ns() // 1_000_000
        for message in messages:
            topic, partition, offset = message.topic, message.partition, message.offset
            counts[topic] += 1
            tp = (topic, partition)
            if tp not in next_offset:
                self._init_source(tp)
            next_offset[tp] = offset + 1
            self._delivered.add(tp)
            timestamp_ms = round(message.timestamp * 1000) if message.timestamp else None
            try:
                event = decode(message.value, timestamp_ms, now_ms=now_ms)
                keys = entity_keys(event)
                fragment = orjson.dumps(event)
            except Exception as exc:
                error = exc if isinstance(exc, InvalidEventError) else _unexpected(exc)
                self._send_dead_letter(
                    invalid_message(
                        error,
                        key=message.key,
                        value=self.decoder.redact(message.value),
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        timestamp_ms=timestamp_ms,
                        headers=message.headers,
                    ),
                    "ingest",
                )
                log.warning("DLQ %s[%s]@%s: %s (%s)", topic, partition, offset, error.reason, error.message)
                continue
            source = SourceEvent(event, topic, partition, offset, timestamp_ms)
            top = clock.key(topic, partition, offset, event["ts"])[0]
            prepared[id(source)] = (top, fragment, keys)
            per_source[tp].append(source)
        events_in = self.metrics.events_in
        for topic, count in counts.items():
            events_in.labels(topic=topic).inc(count)
        out: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        partition_of = self._partition_of
        if len(partition_of) > 500_000:
            partition_of.clear()
        for source in merge_sources(per_source.values()):
            top, fragment, keys = prepared[id(source)]
            for entity, key in keys:
                part = partition_of.get(key)
                if part is None:
                    part = partition_of[key] = bundle_partition(key.encode(), n)
                out[(entity, part)].append(
                    orjson.dumps(
                        [
                            key,
                            source.topic,
                            source.partition,
                            source.offset,
                            source.timestamp_ms,
                            top,
                            orjson.Fragment(fragment),
                        ]
                    )
                )
        return out

    def _owned_raw(self) -> list[tuple[str, int]]:
        """The raw partitions this worker's ingest owns now; state of the others is dropped."""
        raw = set(self.settings.raw_topics)
        owned = sorted(
            (tp.topic, tp.partition) for tp in self.app.assignor.assigned_actives() if tp.topic in raw
        )
        now = time.monotonic()
        for tp in owned:
            self._assigned_at.setdefault(tp, now)
        for tp in [tp for tp in self._assigned_at if tp not in owned]:
            del self._assigned_at[tp]
            self._next_offset.pop(tp, None)
            self._delivered.discard(tp)
            self.clock.forget(*tp)
        return owned

    def _init_source(self, tp: tuple[str, int]) -> None:
        """A raw partition newly owned: its running maximum continues from what any local
        entity partition knows of it (in memory, or persisted in the table), so a key
        computed after a restart or a move is the one the previous owner would have
        computed (see the README: what is left when a late event meets a restart)."""
        known = [order.progress.get(tp, (None,))[0] for order in self._orders.values()]
        known += [
            _read_progress(table.get(progress_key(partition))).get(tp, (None,))[0]
            for entity, table in self.tables.items()
            for partition in self._owned_partitions(entity)
        ]
        self.clock.seed(tp[0], tp[1], max((top for top in known if top is not None), default=None))

    def _progress(self, owned: Sequence[tuple[str, int]]) -> list[list[Any]]:
        """Per owned raw partition: [topic, partition, running max, next offset, caught up]:
        every event of it before the next offset has been sent, and a later one will have
        a key of at least (running max, topic, partition, next offset).  Caught up: nothing
        unread (the next offset is the high watermark of the last fetch)."""
        out: list[list[Any]] = []
        consumer = self.app.consumer
        now = time.monotonic()
        idle_s = self.settings.order_idle_ms / 1000
        for topic, partition in owned:
            tp = (topic, partition)
            nxt = self._next_offset.get(tp)
            caught = False
            # a partition silent since this worker took it over may be one whose producer
            # is just starting: it holds the others back for BYPASS_ORDER_IDLE_MS
            if nxt is not None and (tp in self._delivered or now - self._assigned_at.get(tp, now) >= idle_s):
                try:
                    high = consumer.highwater(FaustTP(topic, partition))
                except Exception:  # not fetched yet / not assigned any more
                    high = None
                caught = high is not None and nxt >= high
            out.append([topic, partition, self.clock.peek(topic, partition), nxt, caught])
        return out

    def _queue_bundles(
        self,
        bundles: dict[tuple[str, int], list[bytes]],
        progress: list[list[Any]] | None,
        read_ms: int | None = None,
    ) -> None:
        """Bundles into the ingest outbox.  With ``progress`` every entity partition gets a
        message, its entries (if any) and, last, the progress they are covered by."""
        out = self._outbox["ingest"]
        for entity in self.entities:
            topic = self.entity_topics[entity].get_topic_name()
            key = entity.encode()
            for partition in range(self.partitions):
                parts = bundles.get((entity, partition), [])
                if not parts and progress is None:
                    continue
                for payload in pack_bundles(parts, progress, read_ms=read_ms if parts else None):
                    out.append((topic, key, payload, partition, None))

    async def _ingest_agent(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.take_events(s.worker_batch_size, s.worker_batch_within_ms / 1000):
            messages = [event.message for event in events]
            self.metrics.batch_size.labels(agent="ingest").observe(len(messages))
            with self.running:  # a rebalance waits for the batch (_on_revoked)
                async with self._ingest_lock:
                    read_ms = time.time_ns() // 1_000_000
                    bundles = self.ingest(messages)
                    progress = self._progress(self._owned_raw()) if s.event_time_order else None
                    self._queue_bundles(bundles, progress, read_ms)
                    await self._drain("ingest")
                    self._progress_sent = time.monotonic()
            self._align()

    async def _heartbeat(self) -> None:
        """Tell every entity partition how far the owned raw partitions are when the ingest
        had nothing to send lately (idle or empty partitions must not hold others back)."""
        s = self.settings
        if not s.event_time_order or time.monotonic() - self._progress_sent < s.order_heartbeat_ms / 1000:
            return
        missing = [tp for tp in self._owned_raw() if tp not in self._next_offset]
        if missing:
            committed = await asyncio.get_running_loop().run_in_executor(
                None, kafka.committed_offsets, s, s.app_id, missing
            )
            still_owned = set(self._owned_raw())  # the assignment may have changed meanwhile
            for tp, offset in committed.items():
                if tp not in self._next_offset and tp in still_owned:
                    self._init_source(tp)
                    self._next_offset[tp] = offset
        async with self._ingest_lock:
            self._queue_bundles({}, self._progress(self._owned_raw()))
            await self._drain("ingest")
            self._progress_sent = time.monotonic()
        self._align()

    def _align(self) -> None:
        """Bounded memory: while the events held back for order exceed BYPASS_ORDER_MAX_HELD,
        pause the owned raw partitions that have events held (they run ahead: the partition
        everything waits for has none held) until the held events fall below half of it."""
        held = sum(len(order.buffer) for order in self._orders.values())
        self.metrics.order_held.set(held)
        cap = self.settings.order_max_held
        consumer = self.app.consumer
        if held >= cap:
            ahead = {
                tp
                for tp in self._owned_raw()
                if tp not in self._paused and any(o.buffer.held(tp) for o in self._orders.values())
            }
            if ahead:
                consumer.pause_partitions([FaustTP(*tp) for tp in ahead])
                self._paused |= ahead
                self.metrics.order_pauses.inc()
                log.warning(
                    "%d events held back for event-time order (BYPASS_ORDER_MAX_HELD=%d): pausing %s "
                    "until the lagging partitions catch up",
                    held,
                    cap,
                    ", ".join(f"{t}[{p}]" for t, p in sorted(ahead)),
                )
        elif self._paused and held < cap // 2:
            consumer.resume_partitions([FaustTP(*tp) for tp in self._paused])
            self._paused.clear()
        self.metrics.order_paused.set(len(self._paused))

    # --- entity agents --------------------------------------------------------
    def _make_entity_agent(self, entity: str) -> Any:
        async def entity_agent(stream: Any) -> None:
            s = self.settings
            async for events in stream.noack_take(s.worker_batch_size, s.worker_batch_within_ms / 1000):
                with self.running:
                    await self.warm.tick(entity)  # a warm start's hand-over happens between batches
                    await self.take_bundles(entity, events)
                    await self._drain(entity)  # the batch's state writes before any tombstone
                    for order in self._orders_of(entity):
                        queue = order.bundles
                        while queue and queue[0].remaining == 0:
                            await stream.ack(queue.popleft().event)
                    self._align()
                    every = s.evict_every_batches
                    if every:
                        n = self._batches[entity] = self._batches[entity] + 1
                        if n % every == 0 or entity in self._sweeps:  # a sweep goes on in slices
                            await self.evict(entity)
                            await self._drain(entity)

        entity_agent.__name__ = f"entity_{entity}"
        return entity_agent

    def ensure_state_topics(self) -> None:
        """Create the entity topics (retention BYPASS_REPARTITION_RETENTION_MS) and their
        state changelogs (compacted, segment.ms BYPASS_CHANGELOG_SEGMENT_MS) before Faust
        would with its defaults; both with BYPASS_TOPIC_PARTITIONS partitions, and existing
        ones checked to have that many."""
        s = self.settings
        entity_topics = [self.entity_topics[e].get_topic_name() for e in self.entities]
        changelogs = [self.tables[e].changelog_topic.get_topic_name() for e in self.entities]
        retention = {"retention.ms": str(s.repartition_retention_ms)} if s.repartition_retention_ms else {}
        kafka.ensure_partitioned(s, entity_topics, config=retention)
        segment = {"segment.ms": str(s.changelog_segment_ms)} if s.changelog_segment_ms else {}
        kafka.ensure_partitioned(s, changelogs, compacted=True, config=segment)

    def swap_processor(self, processor: Processor) -> None:
        """Run a new feature spec (same entity kinds) from the next batch on: the processor,
        its batch step, and no decoded state of the old spec's layout; every entity kind's
        warm starts are planned again."""
        self.processor = processor
        self.spec = processor.spec
        self.step = BatchStep(processor)
        for store in self.stores.values():
            store.cache.clear()
        self.warm.mark_dirty()

    def _orders_of(self, entity: str) -> list[_PartitionOrder]:
        return [order for (e, _), order in self._orders.items() if e == entity]

    def _order(self, entity: str, partition: int) -> _PartitionOrder:
        order = self._orders.get((entity, partition))
        if order is None:
            order = self._orders[(entity, partition)] = _PartitionOrder(self.raw_sources())
            for tp, (top, nxt) in _read_progress(self.tables[entity].get(progress_key(partition))).items():
                order.note(tp, top, nxt, False)  # restored: lagging until its owner says otherwise
            order.dirty = False
        return order

    def set_raw_sources(self, sources: Sequence[tuple[str, int]]) -> None:
        """The raw partitions every entity partition waits to hear from (from metadata)."""
        self._raw_sources = list(sources)

    def raw_sources(self) -> list[tuple[str, int]]:
        """Every partition of the raw topics (an entity partition waits to hear from each)."""
        if self._raw_sources is None:
            self._raw_sources = kafka.topic_partitions(self.settings, self.settings.raw_topics)
        return self._raw_sources

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """The batches in progress are finished first (Faust does not wait for them:
        ``stream_wait_empty`` is off); then held events of entity partitions that move away
        are dropped: they were never acknowledged, so their new owner reads them again."""
        if not await self.running.wait_idle(REVOKE_WAIT_S):
            log.warning(
                "a rebalance went on after %.0f s with %d batches still in progress",
                REVOKE_WAIT_S,
                self.running.count,
            )
        revoked = args[0] if args else kwargs.get("revoked", ())
        gone = {(tp.topic, tp.partition) for tp in revoked}
        names = {self.entity_topics[e].get_topic_name(): e for e in self.entities}
        for topic, partition in gone:
            entity = names.get(topic)
            if entity is not None:
                self._orders.pop((entity, partition), None)
        self._paused -= gone
        self.warm.mark_dirty()

    async def take_bundles(self, entity: str, events: Sequence[Any]) -> None:
        """One batch of bundle messages: hold their events, note their progress, and run
        what can be released in event-time order through the batch step."""
        ordered = self.settings.event_time_order
        touched: dict[int, _PartitionOrder] = {}
        late = 0
        pairs: list[tuple[str, SourceEvent]] = []
        read_at: dict[int, int] = {}
        for ev in events:
            message = ev.message
            order = self._order(entity, message.partition)
            touched[message.partition] = order
            payload = orjson.loads(message.value)
            bundle = _Bundle(ev, payload.get("t"))
            order.bundles.append(bundle)
            released = order.released
            for key, topic, partition, offset, ts_ms, eff_ts, event in payload["e"]:
                source = SourceEvent(event, topic, partition, offset, ts_ms)
                if not ordered:  # the behaviour before: arrival order
                    pairs.append((key, source))
                    if bundle.read_ms is not None:
                        read_at[id(source)] = bundle.read_ms
                    continue
                item = (eff_ts, topic, partition, offset)
                if released is not None and item < released:
                    late += 1
                order.buffer.add((topic, partition), item, _Held(key, source, bundle, item))
                bundle.remaining += 1
            for topic, partition, top, nxt, caught in payload.get("p", ()):
                order.note((topic, partition), top, nxt, caught)
        if late:
            self.metrics.order_out_of_order.labels(entity=entity).inc(late)
        for partition, order in touched.items():
            held = order.buffer.release()
            for h in held:
                pairs.append((h.key, h.source))
                h.bundle.remaining -= 1
                if h.bundle.read_ms is not None:
                    read_at[id(h.source)] = h.bundle.read_ms
            if held and (order.released is None or held[-1].order_key > order.released):
                order.released = held[-1].order_key
            if order.dirty:
                self.stores[entity].put_raw(progress_key(partition), order.dump_progress(), partition)
                order.dirty = False
        self._read_at[entity] = read_at
        try:
            await self.process_pairs(entity, pairs)
        finally:
            self._read_at.pop(entity, None)

    async def process_pairs(self, entity: str, pairs: Sequence[tuple[str, SourceEvent]]) -> None:
        """Group released (key, event) pairs by key and run them through the batch step.

        The keys are processed in slices of about ``worker_batch_size`` events, yielding to
        the event loop in between, so consumer-group heartbeats keep flowing however large
        the batch.
        """
        if not pairs:
            return
        top = self.watermark_ms
        if top is None:
            top = -(2**63)
        for _, source in pairs:
            if source.event["ts"] > top:
                top = source.event["ts"]
        self.watermark_ms = top
        self.metrics.batch_size.labels(agent=f"entity-{entity}").observe(len(pairs))
        slice_events = self.settings.worker_batch_size
        chunk: list[tuple[str, list[SourceEvent]]] = []
        size = 0
        for key_events in group_by_key(pairs).items():
            chunk.append(key_events)
            size += len(key_events[1])
            if size >= slice_events:
                await self._process_keys_until_done(entity, chunk)
                chunk, size = [], 0
                await asyncio.sleep(0)
        if chunk:
            await self._process_keys_until_done(entity, chunk)

    async def _process_keys_until_done(
        self, entity: str, items: Sequence[tuple[str, Sequence[SourceEvent]]]
    ) -> None:
        """A dependency that does not answer is backpressure, never data loss: the same keys
        are retried with back-off (0.5 s doubling to 30 s), nothing of theirs is saved or
        acknowledged meanwhile, and the outcome is that of a run without the outage."""
        delay = 0.5
        waiting = False
        try:
            while True:
                try:
                    self.process_keys(entity, items)
                    return
                except SinkBackpressureError as exc:
                    self.metrics.dependency_retries.labels(entity=entity).inc()
                    self.metrics.dependency_waiting.set(1)
                    self.waiting.setdefault(entity, time.time())
                    waiting = True
                    log.warning("%s; retrying %d %s keys in %.1f s", exc.message, len(items), entity, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            if waiting:
                self.waiting.pop(entity, None)
                self.metrics.dependency_waiting.set(1 if self.waiting else 0)
                log.warning("%s keys processed again after the dependency answered", entity)

    def process_keys(self, entity: str, items: Sequence[tuple[str, Sequence[SourceEvent]]]) -> StepResult:
        """Run the batch step over some keys; their records go to the agent's outbox."""
        store = self.stores[entity]
        result = self.step.process_keys(entity, items, store)
        store.trim()
        self._emit(entity, result)
        return result

    def _emit(self, entity: str, result: StepResult) -> None:
        """The step's records -> the agent's outbox; its counters -> metrics."""
        out = self._outbox[entity]
        m = self.metrics
        hits_name = self.hits_topic.get_topic_name()
        bl_name = self.blacklist_topic.get_topic_name()
        # metric updates are counted here and applied once per call (a labelled
        # prometheus-client inc costs microseconds)
        hit_counts: dict[tuple[str, str], int] = defaultdict(int)
        error_counts: dict[str, int] = defaultdict(int)
        blacklist_counts: dict[str, int] = defaultdict(int)
        now = time.time()
        observe = m.latency.observe
        read_at = self._read_at.get(entity) or {}
        keys: dict[str, bytes] = {}
        for hit in result.hits:
            kafka_key = keys.get(hit.key)
            if kafka_key is None:
                kafka_key = keys[hit.key] = blacklist_key(entity, hit.key).encode()
            out.append((hits_name, kafka_key, hit.value, None, None))
            record = hit.record
            hit_counts[(record["rule_id"], record["mode"])] += 1
            if record.get("error"):
                error_counts[record["rule_id"]] += 1
            # processing latency: from the ingest reading the event (its Kafka timestamp
            # when unknown, capped by it: a backlog or replayed event is not counted old)
            start_ms = read_at.get(id(hit.source))
            ts_ms = hit.source.timestamp_ms
            if ts_ms is not None and (start_ms is None or ts_ms > start_ms):
                start_ms = ts_ms
            if start_ms is not None:
                seconds = now - start_ms / 1000
                observe(seconds if seconds > 0.0 else 0.0)
        for entry in result.blacklist:
            out.append((bl_name, blacklist_key(entry.entity, entry.key).encode(), entry.value, None, None))
            blacklist_counts[entry.entity] += 1
        decisions_name = self.decisions_topic_name
        for made in result.decisions:  # one per (event, entity) evaluated; pass ones sampled
            kafka_key = keys.get(made.key)
            if kafka_key is None:
                kafka_key = keys[made.key] = blacklist_key(entity, made.key).encode()
            out.append((decisions_name, kafka_key, made.value, None, None))
        for letter in result.dead_letters:
            self._send_dead_letter(letter, entity)
        for _entity, key, source, reason in result.late:
            log.info(
                "late event %s for %s %s rejected: %s", source.event.get("event_id"), entity, key, reason
            )
        for (rule_id, mode), count in hit_counts.items():
            m.hits.labels(rule_id=rule_id, mode=mode).inc(count)
        for rule_id, count in error_counts.items():
            m.rule_errors.labels(rule_id=rule_id).inc(count)
        for kind, count in blacklist_counts.items():
            m.blacklist.labels(entity=kind).inc(count)
        if result.applied:
            m.applied.labels(entity=entity).inc(result.applied)
        if result.duplicates:
            m.duplicates.labels(entity=entity).inc(result.duplicates)
        if result.late:
            m.late.labels(entity=entity).inc(len(result.late))
        for name, total in self.processor.engine.skipped_values().items():
            seen = self._skipped_seen.get(name, 0)
            if total != seen:  # a new engine (smaller total) starts over
                m.feature_skipped.labels(feature=name).inc(total - seen if total > seen else total)
                self._skipped_seen[name] = total

    def state_size(self) -> dict[str, tuple[int, int]]:
        """Per entity kind: (keys, bytes) of its state table, ordering records left out.
        The memory store is counted (owned and standby partitions); a RocksDB table is
        not scanned: RocksDB's estimate for the active partitions (live data and
        memtables; a few percent off, the agent's own records included)."""
        out: dict[str, tuple[int, int]] = {}
        for entity, table in self.tables.items():
            data = table.data
            if isinstance(data, EntityRocksStore):
                out[entity] = data.estimate()
                continue
            items = getattr(data, "data", None)
            if not isinstance(items, dict):
                continue
            keys = sizes = 0
            for key, value in list(items.items()):
                if key[:1] == b"\x00":
                    continue
                keys += 1
                sizes += len(value) if isinstance(value, bytes | bytearray) else 0
            out[entity] = (keys, sizes)
        return out

    def eviction_time(self) -> int | None:
        """The event time eviction sweeps at: the largest event time processed, never beyond
        the clock, so an outlier from the future cannot make every key look stale (such
        events are dead-lettered at ingest anyway: BYPASS_MAX_FUTURE_MS)."""
        if self.watermark_ms is None:
            return None
        return min(self.watermark_ms, time.time_ns() // 1_000_000)

    def _owned_partitions(self, entity: str) -> set[int]:
        """Partitions of ``entity``'s repartition topic (= of its table) actively assigned to
        this worker; a standby copy of another worker's partition is never swept."""
        name = self.entity_topics[entity].get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    async def evict(self, entity: str) -> int:
        """One slice of a sweep deleting the keys of ``entity`` whose state is evictable at
        the watermark.

        A sweep goes through the keys the table had when it started, at most
        ``EVICT_SLICE_KEYS`` per call (the agent calls again after each batch until the
        sweep is done), so a table of millions of keys - each checked decodes its state -
        never holds the agent's events back for long.  Each deletion writes a tombstone to
        the table's changelog (so a worker recovering the partition drops the key too) and
        drops the key from the decoded-state cache.  Only keys of partitions this worker
        owns are swept.  Returns how many went in this slice.
        """
        now_ms = self.eviction_time()
        if now_ms is None:
            return 0
        table = self.tables[entity]
        store = self.stores[entity]
        running = self._sweeps.pop(entity, None)
        keys, at, swept = running if running is not None else (store.keys(), 0, 0)
        owned = self._owned_partitions(entity)
        gone = 0
        stop = min(at + EVICT_SLICE_KEYS, len(keys))
        for i in range(at, stop):
            if i % 1000 == 999:
                await asyncio.sleep(0)  # heartbeats keep flowing during a long slice
            kb = keys[i]
            if kb[:1] == b"\x00" or table.partition_for_key(kb) not in owned:  # progress, markers
                continue
            raw, state = store.peek(kb)
            if raw is None:
                continue
            if self.step.evictable(entity, raw, state, now_ms):
                del table[kb]
                store.cache.pop(kb, None)
                gone += 1
        if gone:
            self.metrics.evicted.labels(entity=entity).inc(gone)
        if stop < len(keys):
            self._sweeps[entity] = (keys, stop, swept + gone)
        elif swept + gone:
            log.info("evicted %d %s keys at watermark %d", swept + gone, entity, now_ms)
        return gone

    async def _drain(self, agent: str) -> None:
        """Hand the messages ``agent`` produced for its batch to the Kafka client, in order,
        then whatever Faust buffered (eviction tombstones), before the batch is
        acknowledged.  Faust flushes the client before it commits offsets, so a committed
        offset never runs ahead of these messages (at-least-once).

        The agent's messages go straight to the transport producer: Faust's ``send_soon``
        buffer costs a future, a task and a ``wait_for`` per message, about a third of a
        live worker's CPU at 2,000 events/s.  With RocksDB the agent then waits for the
        broker to acknowledge its changelog records, and its states go to disk with their
        offsets (:meth:`TableStore.acknowledged`).
        """
        box = self._outbox[agent]
        if box:
            out = box[:]
            box.clear()  # the same list: the agent's TableStore appends to it
            send = self.app.producer.send
            store = self.stores.get(agent)
            changelog = store.awaits_acks() if store is not None else None
            acks: list[tuple[bytes, bytes, Any]] = []
            for topic, key, value, partition, headers in out:
                fut = await send(topic, key, value, partition, None, headers)
                if topic == changelog and key is not None and value is not None:
                    acks.append((key, value, fut))
            if acks and store is not None:
                await store.acknowledged(acks)  # RocksDB: states reach disk once logged
        buffer = self.app.producer.buffer
        while buffer.size:
            await buffer.flush_atmost(None)  # type: ignore[arg-type]
            if buffer.size:
                await asyncio.sleep(0)


def pack_bundles(
    parts: list[bytes], progress: list[list[Any]] | None = None, *, read_ms: int | None = None
) -> list[bytes]:
    """Join encoded entries into bundle payloads of about BUNDLE_MAX_BYTES at most:
    ``{"e": [entry, ...]}``, the last one with ``"p": progress`` (it covers every entry
    before it); with ``progress`` and no entries, one payload carrying only the progress.
    ``read_ms`` (when the ingest read the entries' messages) rides on each as ``"t"``."""
    if read_ms is not None:
        return [b'{"t":' + str(int(read_ms)).encode() + b"," + p[1:] for p in pack_bundles(parts, progress)]
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 8
    for part in parts:
        if chunk and size + len(part) + 1 > BUNDLE_MAX_BYTES:
            out.append(b'{"e":[' + b",".join(chunk) + b"]}")
            chunk, size = [], 8
        chunk.append(part)
        size += len(part) + 1
    if progress is None:
        if chunk:
            out.append(b'{"e":[' + b",".join(chunk) + b"]}")
        return out
    out.append(b'{"p":' + orjson.dumps(progress) + b',"e":[' + b",".join(chunk) + b"]}")
    return out
