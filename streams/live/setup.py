"""Faust set-up shared by the worker and the benchmark baselines: broker URL, credentials,
consumer tuning, and the entity table whose key decides its partition (and, with
``BYPASS_TABLE_STORE=rocksdb://``, its RocksDB store).

Re-keying uses Kafka's default partitioner (murmur2 of the UTF-8 key, as aiokafka and the
Java client do) both for the repartition topics and for the table changelogs, so the
partition of a repartition topic that carries a key also holds that key's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.stores.rocksdb import RocksDBOptions as _RocksOptions
from faust.stores.rocksdb import Store as _RocksStore
from faust.types import TP as FaustTP
from yarl import URL

from streams.settings import Settings

__all__ = [
    "ROCKSDB_OPTIONS",
    "EntityRocksStore",
    "EntityTable",
    "bundle_partition",
    "credentials",
    "faust_base_options",
    "faust_broker_url",
    "tune_faust_consumer",
]


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
            if key[:1] == b"\x00":  # b"\x00order-progress:<partition>": that partition itself
                partition = cache[key] = int(key.rsplit(b":", 1)[1])
            else:
                partition = cache[key] = bundle_partition(key, self.partitions or 1)
        return partition

    def _new_store_by_url(self, url: str | URL) -> Any:
        """``rocksdb://`` -> :class:`EntityRocksStore` (Faust's own store files a key under
        the current event's partition, and our agents write outside any event)."""
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return EntityRocksStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options={**ROCKSDB_OPTIONS, **(self.options or {})},
        )


#: RocksDB options of an entity table's partition databases.  Faust's defaults give each
#: database a 2 GiB block cache and three 64 MiB write buffers, which multiply by entity
#: kinds x partitions on one worker; here every database of a worker process shares one
#: block cache and one write-buffer budget (hot decoded states are in the agents' own
#: cache anyway).
ROCKSDB_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 16 * 1024 * 1024,  # one memtable, at most
    "max_write_buffer_number": 2,
    "target_file_size_base": 64 * 1024 * 1024,
}
#: The block cache all RocksDB databases of a worker process share.
ROCKSDB_BLOCK_CACHE_BYTES = 128 * 1024 * 1024
#: The memtable budget of all RocksDB databases of a worker process (a database over its
#: share flushes early).
ROCKSDB_WRITE_BUFFER_BYTES = 128 * 1024 * 1024

_shared: dict[str, Any] = {}


class _SharedMemoryOptions(_RocksOptions):
    """Faust's rocksdict options with the process-wide block cache and write-buffer budget."""

    def as_options(self) -> Any:
        import rocksdict

        if not _shared:
            _shared["cache"] = rocksdict.Cache(ROCKSDB_BLOCK_CACHE_BYTES)
            _shared["buffers"] = rocksdict.WriteBufferManager(ROCKSDB_WRITE_BUFFER_BYTES, False)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(_shared["buffers"])
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(_shared["cache"])
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class EntityRocksStore(_RocksStore):
    """Faust's RocksDB store (one database per partition, the changelog offset each holds
    up to), for tables written outside any event, by :class:`EntityTable`'s key ->
    partition mapping.

    Writes are *pending* until their changelog records are acknowledged by the broker:
    reads see them at once, the database gets them with their changelog offset
    (:meth:`apply`).  So a partition's database never holds a state its changelog lacks,
    and a restart replays only the changelog after the offset the database holds (Faust's
    own store writes the database first: a crash in between left states the changelog
    never got, lost when the partition moved).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = _SharedMemoryOptions(**(self.options or {}), use_rocksdict=True)
        self.pending: dict[bytes, bytes] = {}
        self._revoked: set[int] = set()  # partitions taken away since their last assignment

    def _partition(self, key: bytes) -> int:
        partition = self.table.partition_for_key(key)
        assert partition is not None  # EntityTable always knows  # noqa: S101
        return int(partition)

    # --- the raw byte interface (TableStore; Faust's codecs are bypassed) ----------
    def get_raw(self, key: bytes) -> bytes | None:
        value = self.pending.get(key)
        if value is not None:
            return value
        raw: bytes | None = self._db_for_partition(self._partition(key)).get(key)
        return raw

    def put_raw(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value

    def apply(self, offsets: Mapping[int, int], sent: Mapping[bytes, bytes]) -> None:
        """The changelog records ``sent`` (key -> value) are acknowledged, up to
        ``offsets`` (partition -> last offset): write them into their partitions'
        databases with that offset, one write batch per partition."""
        import rocksdict

        batches: dict[int, Any] = {}
        pending = self.pending
        for key, value in sent.items():
            partition = self._partition(key)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(key, value)
            if pending.get(key) is value:  # not written again since
                del pending[key]
        for partition, offset in offsets.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(self.offset_key, str(offset).encode())
        for partition, batch in batches.items():
            if partition not in self._revoked:  # else its next owner reads the changelog
                self._db_for_partition(partition).write(batch)

    def raw_keys(self) -> list[bytes]:
        """The keys of the active partitions (Faust's key decoding bypassed)."""
        return list(self._iterkeys())

    def estimate(self) -> tuple[int, int]:
        """(keys, bytes) of the active partitions, as RocksDB estimates them (no scan)."""
        keys = size = 0
        for db in self._dbs_for_actives():
            keys += db.property_int_value("rocksdb.estimate-num-keys") or 0
            size += db.property_int_value("rocksdb.estimate-live-data-size") or 0
            size += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return keys, size

    # --- Faust's store interface, routed by the key's partition ---------------------
    def _set(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self._del(key)
        else:
            self.pending[key] = value

    def _get(self, key: bytes) -> bytes | None:
        return self.get_raw(key)

    def _del(self, key: bytes) -> None:
        self.pending.pop(key, None)
        self._db_for_partition(self._partition(key)).delete(key)

    def _contains(self, key: bytes) -> bool:
        return self.get_raw(key) is not None

    def _iterkeys(self) -> Iterator[bytes]:
        yield from super()._iterkeys()
        if self.pending:  # written, not in a database yet (none between agent batches)
            active = self._active_partitions()
            for key in list(self.pending):
                partition = self._partition(key)
                if partition in active and self._db_for_partition(partition).get(key) is None:
                    yield key

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self._iterkeys():
            value = self.get_raw(key)
            if value is not None:
                yield key, value

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iterkeys())

    def _active_partitions(self) -> set[int]:
        topic = self.table.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def revoke_partitions(self, table: Any, tps: set[FaustTP]) -> None:
        """Pending writes of revoked partitions are dropped (their new owner has them from
        the changelog, or the events again)."""
        gone = {tp.partition for tp in tps if tp.topic in table.changelog_topic.topics}
        self._revoked |= gone
        if gone and self.pending:
            for key in [k for k in self.pending if self._partition(k) in gone]:
                del self.pending[key]
        super().revoke_partitions(table, tps)

    async def assign_partitions(self, table: Any, tps: set[FaustTP], generation_id: int = 0) -> None:
        self._revoked -= {tp.partition for tp in tps if tp.topic in table.changelog_topic.topics}
        await super().assign_partitions(table, tps, generation_id)


def tune_faust_consumer(settings: Settings) -> None:
    """Fix three things in the aiokafka consumer Faust's driver instantiates (this process only).

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
    - **Partitions never committed.** After a rebalance a stream partition without a
      committed offset is read again from its beginning (``seek_to_committed`` below): else
      the records Faust dropped during the rebalance were never read.
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

        async def seek_to_committed(self, *partitions: Any) -> Any:
            """Faust seeks its stream partitions to their committed offsets after every
            rebalance; aiokafka leaves a partition without one (or at 0) where the fetcher
            already is.  The records fetched for it while Faust's flow was stopped were
            dropped by Faust, so it went on after them: events lost for good (a raw
            partition a killed worker never committed, a new topic's first events during a
            rebalance).  Such a partition is sent back to its beginning (at least once: a
            record seen twice changes no state)."""
            committed = await super().seek_to_committed(*partitions)
            for tp, offset in committed.items():
                if (offset is None or offset <= 0) and _stream_topic(tp.topic):
                    await self.seek_to_beginning(tp)
            return committed

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


def _stream_topic(topic: str) -> bool:
    """A topic Faust consumes as a stream (not a table's changelog, not its assignor's)."""
    return not topic.endswith("-changelog") and "-__assignor-" not in topic


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


def credentials(settings: Settings) -> Any:
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
