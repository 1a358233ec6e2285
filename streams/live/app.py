"""The live Faust application: raw topics -> ingest -> entity agents -> hits and blacklist.

Topology (``A`` = ``settings.app_id``, ``n`` = ``settings.topic_partitions``)::

    raw topics (BYPASS_RAW_TOPICS, key = user id, JSON envelope)
      │ agent "ingest": decode + validate + hash phones (streams.core.envelope);
      │   invalid -> settings.dlq_topic (original bytes, reason headers)
      │   valid   -> one bundle per (entity kind, partition) and batch
      ▼
    A-entity-<kind>  (n partitions; repartition topic per entity kind of the feature spec)
      │ agent "entity-<kind>": batches (take_events), grouped by key, each key's state
      │   loaded once from the table, the events applied in order (streams.core.processor),
      │   written back once (assigned, never mutated)
      ▼
    table "entity-<kind>" (changelog A-entity-<kind>-changelog, n partitions, standbys)
      ├──▶ settings.hits_topic       one JSON hit record per message, key "entity:key"
      └──▶ settings.blacklist_topic  one JSON blacklist record, key "entity:key"

Re-keying.  The ingest agent computes each (entity, key)'s partition with Kafka's default
partitioner (murmur2 of the UTF-8 key, as aiokafka and the Java client do) and sends all
events of one batch for one (entity kind, partition) as one *bundle* message to that
partition: a JSON array of ``[key, topic, partition, offset, kafka_ts_ms, event]``
entries, so the repartition hop costs one Kafka message per bundle instead of one per
event and entity.  The table assigns each key's changelog record to the same partition
(``EntityTable.partition_for_key``), so the partition of the repartition topic that carries
a key also holds that key's state: co-partitioned, and a worker that takes a partition
over rebuilds exactly the keys it will see.

Order.  Inside a bundle, the events are merged across the source partitions of the batch
by (event time, topic, partition, offset), each source partition kept in offset order
(:func:`streams.core.processor.merge_sources`): the order replay uses.  A key's bundles arrive
in the order they were sent.

Eviction.  Every ``evict_every_batches`` batches an entity agent sweeps its table: a key
of a partition it owns whose state ``engine.evictable(state, now_ms)`` says may go is
deleted (a tombstone on the changelog) and dropped from the decoded-state cache.
``now_ms`` is the worker's event-time watermark (the largest event time its entity agents
have processed), never the wall clock, as replay does with its own watermark.

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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2

from streams.core.envelope import EnvelopeDecoder, InvalidEventError
from streams.core.processor import KeyBatch, Processor, SourceEvent, blacklist_key, merge_sources
from streams.live.metrics import Metrics
from streams.settings import Settings

__all__ = ["DLQ_HEADERS", "EntityTable", "Pipeline", "bundle_partition", "faust_broker_url"]

log = logging.getLogger("bypass.worker")

#: Header names on a DLQ message (values are UTF-8 bytes).
DLQ_HEADERS = (
    "bypass.reason",  # short reason code (streams.core.envelope): not_json, missing_field, ...
    "bypass.error",  # the full message
    "bypass.source.topic",
    "bypass.source.partition",
    "bypass.source.offset",
    "bypass.source.timestamp",  # Kafka timestamp of the original message, epoch ms
)
BUNDLE_MAX_BYTES = 512 * 1024

#: A message an agent produced: topic, key, value, partition (None: the key's default
#: partition).
Outgoing = tuple[str, bytes, bytes, int | None]


def bundle_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), the one the table changelog uses too."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class EntityTable(faust.Table):  # type: ignore[type-arg]
    """A plain Faust table whose key -> partition mapping is Kafka's default partitioner.

    The entity agent handles bundles of several partitions in one batch, so the current
    event's partition (Faust's default) is not the key's partition; the key decides.
    """

    _partition_cache: dict[bytes, int]

    def partition_for_key(self, key: Any) -> int | None:
        cache: dict[bytes, int] = self.__dict__.setdefault("_partition_cache", {})
        partition = cache.get(key)
        if partition is None:
            if len(cache) > 200_000:
                cache.clear()
            partition = cache[key] = bundle_partition(key, self.partitions or 1)
        return partition


def tune_faust_consumer(settings: Settings) -> None:
    """Fix two things in the aiokafka consumer Faust's driver instantiates (this process only).

    - **Fetch wait.** faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500``.  A broker
      that holds a fetch for the whole wait when the partition has no new record yet (Tansu
      does) then adds up to 1.5 s per hop, and the pipeline has two hops (raw topic,
      repartition topic): capped at ``BYPASS_CONSUMER_FETCH_MAX_WAIT_MS``.
    - **End offsets.** Faust restores a table by reading its changelog up to the end offsets
      ListOffsets reports when the partitions are assigned.  Tansu reports the base offset
      of the last record batch + 1, so a restart restored states older than their last
      write while the stream went on from the committed offsets: events applied before the
      crash were missing from the state and their redeliveries were rejected as late.  The
      end offsets are checked with a fetch (:func:`streams.core.kafka.end_offsets`).
    """
    import types

    import aiokafka
    import faust.transport.drivers.aiokafka as driver

    from streams.core import kafka

    max_wait_ms = settings.consumer_fetch_max_wait_ms
    real = aiokafka.AIOKafkaConsumer

    class _Consumer(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = min(int(kwargs.get("fetch_max_wait_ms", max_wait_ms)), max_wait_ms)
            super().__init__(*args, **kwargs)

        async def end_offsets(self, partitions: Any) -> Any:
            reported = await super().end_offsets(partitions)
            checked = await asyncio.get_running_loop().run_in_executor(
                None,
                kafka.end_offsets,
                settings,
                {(tp.topic, tp.partition): off for tp, off in reported.items()},
            )
            return {tp: checked[(tp.topic, tp.partition)] for tp in reported}

    shim = types.SimpleNamespace(**vars(aiokafka))
    shim.AIOKafkaConsumer = _Consumer
    driver.aiokafka = shim  # type: ignore[attr-defined]


def faust_broker_url(bootstrap: str) -> str:
    """``"h1:9092,h2:9092"`` -> ``"kafka://h1:9092;kafka://h2:9092"``."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def faust_base_options(s: Settings) -> dict[str, Any]:
    """Faust options every bypass Faust app shares (the worker and the benchmark baselines):
    broker, consumer-group timeouts from settings, at-least-once, earliest offsets."""
    return {
        "broker": faust_broker_url(s.kafka_bootstrap),
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": s.consumer_session_timeout_ms / 1000,
        "broker_rebalance_timeout": s.consumer_rebalance_timeout_ms / 1000,
        "broker_heartbeat_interval": s.consumer_heartbeat_interval_ms / 1000,
        "consumer_auto_offset_reset": "earliest",
        "stream_recovery_delay": 0.1,
        "web_enabled": False,
    }


def _credentials(settings: Settings) -> Any:
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            key_password = settings.kafka_ssl_key_password
            ssl_context.load_cert_chain(
                settings.kafka_ssl_certfile,
                settings.kafka_ssl_keyfile,
                key_password.get_secret_value() if key_password else None,
            )
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    mechanism = (settings.kafka_sasl_mechanism or "PLAIN").upper()
    if mechanism == "PLAIN":
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=password, ssl_context=ssl_context
        )
    from faust.auth import SASLCredentials

    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password,
        ssl_context=ssl_context,
        mechanism=mechanism,
    )


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
        self.metrics = metrics or Metrics()
        self.decoder = EnvelopeDecoder(settings.require_phone_hash_key(), max_bytes=settings.event_max_bytes)
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
        # entity -> key -> (table bytes, the features/ state object they decode to): skips
        # decoding a hot key's snapshot on every batch (LRU, BYPASS_STATE_CACHE_KEYS per entity)
        self._state_cache: dict[str, dict[bytes, tuple[bytes, Any]]] = {e: {} for e in self.entities}
        # ingest: key -> partition of the repartition topics (murmur2 costs ~4 us a call)
        self._partition_of: dict[str, int] = {}
        # event-time watermark: the largest event time the entity agents processed (None: none yet)
        self.watermark_ms: int | None = None
        self._batches: dict[str, int] = dict.fromkeys(self.entities, 0)
        # the messages each agent produced in its current batch (Outgoing); _drain sends them
        self._outbox: dict[str, list[Outgoing]] = {"ingest": []}
        # write table states straight to the store + changelog (see process_keys)
        self._direct_tables = settings.table_store == "memory://"
        self.entity_topics: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
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
        self.app.agent(self.raw_topic, name="ingest")(self._ingest_agent)
        for entity in self.entities:
            self.app.agent(self.entity_topics[entity], name=f"entity-{entity}")(
                self._make_entity_agent(entity)
            )

    # --- app ----------------------------------------------------------------
    def _build_app(self, datadir: Path | None) -> faust.App:
        s = self.settings
        tune_faust_consumer(s)
        datadir = datadir or (Path(s.state_dir) / "faust")
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.app_id,
            **faust_base_options(s),
            broker_credentials=_credentials(s),
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
        )
        # Faust pauses every stream while its producer buffer holds more than 100 messages
        # (and logs a warning each time); our agents put a whole batch of changelog writes
        # and hits into it at once and drain it themselves before acknowledging (_drain).
        app.producer.buffer.max_messages = 1_000_000
        return app

    # --- ingest ---------------------------------------------------------------
    def _dlq(self, message: Any, exc: InvalidEventError) -> None:
        headers = list(message.headers or [])
        headers.extend(
            [
                ("bypass.reason", exc.reason.encode()),
                ("bypass.error", exc.message.encode()),
                ("bypass.source.topic", message.topic.encode()),
                ("bypass.source.partition", str(message.partition).encode()),
                ("bypass.source.offset", str(message.offset).encode()),
                ("bypass.source.timestamp", str(round(message.timestamp * 1000)).encode()),
            ]
        )
        self.dlq_topic.send_soon(key=message.key, value=message.value, headers=headers)
        self.metrics.dlq.labels(reason=exc.reason).inc()
        log.warning(
            "DLQ %s[%s]@%s: %s (%s)",
            message.topic,
            message.partition,
            message.offset,
            exc.reason,
            exc.message,
        )

    def _dlq_processing(self, entity: str, key: str, events: Sequence[SourceEvent], exc: Exception) -> None:
        """Events whose processing raised: to the DLQ as their validated (phone-hashed) JSON,
        reason ``processing_error``, plus ``bypass.entity`` / ``bypass.key`` headers."""
        for source in events:
            headers = [
                ("bypass.reason", b"processing_error"),
                ("bypass.error", f"{type(exc).__name__}: {exc}".encode()[:2000]),
                ("bypass.source.topic", source.topic.encode()),
                ("bypass.source.partition", str(source.partition).encode()),
                ("bypass.source.offset", str(source.offset).encode()),
                ("bypass.source.timestamp", str(source.timestamp_ms).encode()),
                ("bypass.entity", entity.encode()),
                ("bypass.key", key.encode()),
            ]
            self.dlq_topic.send_soon(
                key=str(source.event.get("user_id", "")).encode(),
                value=orjson.dumps(source.event),
                headers=headers,
            )
        self.metrics.dlq.labels(reason="processing_error").inc(len(events))

    def ingest(self, messages: Sequence[Any]) -> dict[tuple[str, int], list[bytes]]:
        """Decode a batch of raw messages; return bundle payload parts per (entity, partition).

        Invalid messages are sent to the DLQ here.
        """
        decode = self.decoder.decode
        entity_keys = self.spec.entity_keys
        n = self.partitions
        per_source: dict[tuple[str, int], list[SourceEvent]] = defaultdict(list)
        events_in = self.metrics.events_in
        counts: dict[str, int] = defaultdict(int)
        for message in messages:
            counts[message.topic] += 1
            try:
                event = decode(message.value)
            except InvalidEventError as exc:
                self._dlq(message, exc)
                continue
            per_source[(message.topic, message.partition)].append(
                SourceEvent(
                    event, message.topic, message.partition, message.offset, round(message.timestamp * 1000)
                )
            )
        for topic, count in counts.items():
            events_in.labels(topic=topic).inc(count)
        out: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        partition_of = self._partition_of
        if len(partition_of) > 500_000:
            partition_of.clear()
        for source in merge_sources(per_source.values()):
            fragment = None
            for entity, raw_key in entity_keys(source.event):
                key = str(raw_key)
                if fragment is None:
                    fragment = orjson.dumps(source.event)
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
                            orjson.Fragment(fragment),
                        ]
                    )
                )
        return out

    async def _ingest_agent(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.take_events(s.worker_batch_size, s.worker_batch_within_ms / 1000):
            messages = [event.message for event in events]
            self.metrics.batch_size.labels(agent="ingest").observe(len(messages))
            bundles = self.ingest(messages)
            out = self._outbox["ingest"]
            for (entity, partition), parts in bundles.items():
                topic = self.entity_topics[entity].get_topic_name()
                for payload in _pack(parts):
                    out.append((topic, entity.encode(), payload, partition))
            await self._drain("ingest")

    # --- entity agents --------------------------------------------------------
    def _make_entity_agent(self, entity: str) -> Any:
        async def entity_agent(stream: Any) -> None:
            s = self.settings
            async for events in stream.take_events(s.worker_batch_size, s.worker_batch_within_ms / 1000):
                await self.process_bundles(entity, [event.message.value for event in events])
                await self._drain(entity)  # the batch's state writes before any tombstone
                every = s.evict_every_batches
                if every:
                    n = self._batches[entity] = self._batches[entity] + 1
                    if n % every == 0:
                        await self.evict(entity)
                        await self._drain(entity)

        entity_agent.__name__ = f"entity_{entity}"
        return entity_agent

    async def process_bundles(self, entity: str, bundles: Sequence[bytes]) -> None:
        """Group the bundled events of a batch by key and run them through the processor.

        The keys are processed in slices of about ``worker_batch_size`` events, yielding to
        the event loop in between, so consumer-group heartbeats keep flowing however large
        the batch.
        """
        by_key: dict[str, list[SourceEvent]] = {}
        total = 0
        top = self.watermark_ms
        if top is None:
            top = -(2**63)
        for payload in bundles:
            for key, topic, partition, offset, ts_ms, event in orjson.loads(payload):
                item = SourceEvent(event, topic, partition, offset, ts_ms)
                total += 1
                if event["ts"] > top:
                    top = event["ts"]
                group = by_key.get(key)
                if group is None:
                    by_key[key] = [item]
                else:
                    group.append(item)
        if not by_key:
            return
        self.watermark_ms = top
        self.metrics.batch_size.labels(agent=f"entity-{entity}").observe(total)
        slice_events = self.settings.worker_batch_size
        chunk: list[tuple[str, list[SourceEvent]]] = []
        size = 0
        for key_events in by_key.items():
            chunk.append(key_events)
            size += len(key_events[1])
            if size >= slice_events:
                self.process_keys(entity, chunk)
                chunk, size = [], 0
                await asyncio.sleep(0)
        if chunk:
            self.process_keys(entity, chunk)

    def process_keys(self, entity: str, items: Sequence[tuple[str, list[SourceEvent]]]) -> None:
        """Load each key's state once, run its events through the processor, write it back once."""
        table = self.tables[entity]
        cache = self._state_cache[entity]
        batches: list[KeyBatch] = []
        stored: list[Any] = []
        for key, events in items:
            kb = key.encode()
            raw = table.get(kb)
            stored.append(raw)
            hit = cache.pop(kb, None)
            # the cached object is valid only while the table still holds the bytes it came from
            state = (
                hit[1] if hit is not None and raw is not None and (hit[0] is raw or hit[0] == raw) else raw
            )
            batches.append(KeyBatch(key, state, events))
        try:
            results: list[Any] = list(self.processor.process_many(entity, batches))
        except Exception:
            # A bug or a poison event must not stall the partition: redo the keys one by
            # one from their stored bytes (the cached objects may be half-applied) and send
            # the events of a key that still fails to the DLQ.
            cache.clear()
            results = []
            for batch, raw in zip(batches, stored, strict=True):
                try:
                    results.extend(
                        self.processor.process_many(entity, [KeyBatch(batch.key, raw, batch.events)])
                    )
                except Exception as exc:
                    log.exception(
                        "processing %s %r failed; its %d events go to the DLQ",
                        entity,
                        batch.key,
                        len(batch.events),
                    )
                    self._dlq_processing(entity, batch.key, batch.events, exc)
                    results.append(None)
        cache_cap = self.settings.state_cache_keys
        m = self.metrics
        out = self._outbox[entity]
        hits_name = self.hits_topic.get_topic_name()
        bl_name = self.blacklist_topic.get_topic_name()
        direct = self._direct_tables
        if direct:
            data = table.data
            changelog = table.changelog_topic.get_topic_name()
        dumps = orjson.dumps
        applied = duplicates = late = 0
        # metric updates are counted here and applied once per call (a labelled
        # prometheus-client inc costs microseconds)
        hit_counts: dict[tuple[str, str], int] = defaultdict(int)
        error_counts: dict[str, int] = defaultdict(int)
        blacklist_counts: dict[str, int] = defaultdict(int)
        latencies: list[float] = []
        now = time.time()
        for result, raw in zip(results, stored, strict=True):
            if result is None:
                continue
            kb = result.key.encode()
            if result.changed:
                raw = self.processor.dumps(result.state)  # assigned, never mutated
                if direct:
                    # what ``table[kb] = raw`` does, minus Faust's per-message buffer:
                    # the store, then the changelog record to the key's partition
                    data[kb] = raw
                    out.append((changelog, kb, raw, table.partition_for_key(kb)))
                else:
                    table[kb] = raw
            if raw is not None and cache_cap:
                cache[kb] = (raw, result.state)
            applied += result.applied
            duplicates += result.duplicates
            late += len(result.late)
            if result.hits or result.blacklist:
                kafka_key = blacklist_key(entity, result.key).encode()
                for record, source in zip(result.hits, result.hit_sources, strict=True):
                    out.append((hits_name, kafka_key, dumps(record), None))
                    hit_counts[(record["rule_id"], record["mode"])] += 1
                    if record.get("error"):
                        error_counts[record["rule_id"]] += 1
                    if source.timestamp_ms is not None:
                        latencies.append(now - source.timestamp_ms / 1000)
                for record in result.blacklist:
                    bl_key = blacklist_key(record["entity"], record["key"]).encode()
                    out.append((bl_name, bl_key, dumps(record), None))
                    blacklist_counts[record["entity"]] += 1
            for source, reason in result.late:
                log.info(
                    "late event %s for %s %s rejected: %s",
                    source.event.get("event_id"),
                    entity,
                    result.key,
                    reason,
                )
        if len(cache) > cache_cap:
            for kb in list(itertools.islice(cache, len(cache) - cache_cap)):  # least recently used
                del cache[kb]
        for (rule_id, mode), count in hit_counts.items():
            m.hits.labels(rule_id=rule_id, mode=mode).inc(count)
        for rule_id, count in error_counts.items():
            m.rule_errors.labels(rule_id=rule_id).inc(count)
        for kind, count in blacklist_counts.items():
            m.blacklist.labels(entity=kind).inc(count)
        if latencies:
            observe = m.latency.observe
            for seconds in latencies:
                observe(seconds if seconds > 0.0 else 0.0)
        if applied:
            m.applied.labels(entity=entity).inc(applied)
        if duplicates:
            m.duplicates.labels(entity=entity).inc(duplicates)
        if late:
            m.late.labels(entity=entity).inc(late)

    def _owned_partitions(self, entity: str) -> set[int] | None:
        """Partitions of ``entity``'s repartition topic (= of its table) actively assigned to
        this worker; a standby copy of another worker's partition is never swept."""
        name = self.entity_topics[entity].get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    async def evict(self, entity: str) -> int:
        """Delete the keys of ``entity`` whose state is evictable at the watermark.

        Each deletion writes a tombstone to the table's changelog (so a worker recovering
        the partition drops the key too) and drops the key from the decoded-state cache.
        Only keys of partitions this worker owns are swept.  Returns how many went.
        """
        now_ms = self.watermark_ms
        if now_ms is None:
            return 0
        table = self.tables[entity]
        cache = self._state_cache[entity]
        engine = self.processor.engine
        owned = self._owned_partitions(entity)
        gone = 0
        for i, kb in enumerate(list(table.keys())):
            if i % 1000 == 999:
                await asyncio.sleep(0)  # heartbeats keep flowing during a long sweep
            if owned is not None and table.partition_for_key(kb) not in owned:
                continue
            raw = table.get(kb)
            if raw is None:
                continue
            hit = cache.get(kb)
            state = (
                hit[1] if hit is not None and (hit[0] is raw or hit[0] == raw) else engine.loads(entity, raw)
            )
            if engine.evictable(state, now_ms):
                del table[kb]
                cache.pop(kb, None)
                gone += 1
        if gone:
            self.metrics.evicted.labels(entity=entity).inc(gone)
            log.info("evicted %d %s keys at watermark %d", gone, entity, now_ms)
        return gone

    async def _drain(self, agent: str) -> None:
        """Hand the messages ``agent`` produced for its batch to the Kafka client, in order,
        then whatever Faust buffered (DLQ, eviction tombstones), before the batch is
        acknowledged.  Faust flushes the client before it commits offsets, so a committed
        offset never runs ahead of these messages (at-least-once).

        The agent's messages go straight to the transport producer: Faust's ``send_soon``
        buffer costs a future, a task and a ``wait_for`` per message, about a third of a
        live worker's CPU at 2,000 events/s.
        """
        out = self._outbox[agent]
        if out:
            self._outbox[agent] = []
            send = self.app.producer.send
            for topic, key, value, partition in out:
                await send(topic, key, value, partition, None, None)
        buffer = self.app.producer.buffer
        while buffer.size:
            await buffer.flush_atmost(None)  # type: ignore[arg-type]
            if buffer.size:
                await asyncio.sleep(0)


def _pack(parts: list[bytes]) -> list[bytes]:
    """Join encoded entries into JSON-array payloads of at most BUNDLE_MAX_BYTES each."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 2
    for part in parts:
        if chunk and size + len(part) + 1 > BUNDLE_MAX_BYTES:
            out.append(b"[" + b",".join(chunk) + b"]")
            chunk, size = [], 2
        chunk.append(part)
        size += len(part) + 1
    if chunk:
        out.append(b"[" + b",".join(chunk) + b"]")
    return out
