"""Faust set-up shared by the worker and the benchmark baselines: broker URL, credentials,
consumer tuning, and the entity table whose key decides its partition.

Re-keying uses Kafka's default partitioner (murmur2 of the UTF-8 key, as aiokafka and the
Java client do) both for the repartition topics and for the table changelogs, so the
partition of a repartition topic that carries a key also holds that key's state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from aiokafka.partitioner import murmur2

from streams.settings import Settings

__all__ = [
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
