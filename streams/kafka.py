"""Shared Kafka client builders (confluent-kafka) and idempotent topic creation.

Every process of bypass builds its Kafka clients here, from ``Settings.kafka_config()``,
so security options (SASL/SSL) are applied in one place. The helpers work against
Apache Kafka and against Tansu (the local broker, see ``streams.stack`` for what Tansu
does and does not do).

    admin(settings)                                  -> AdminClient
    ensure_topics(settings, names, partitions=None, compacted=False)
    producer(settings, **extra)                      -> Producer
    consumer(settings, group_id=None, **extra)       -> Consumer

``extra`` keys are librdkafka option names, either dotted (``**{"linger.ms": 5}``) or
with underscores (``linger_ms=5``); they override the defaults. Python callbacks keep
their names (``error_cb``, ``on_delivery``, ``logger`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from features.errors import BypassError
from streams.settings import Settings

__all__ = ["KafkaSetupError", "admin", "consumer", "ensure_topics", "producer"]

# How long admin calls wait for the broker before giving up (seconds).
ADMIN_TIMEOUT_S = 15.0


class KafkaSetupError(BypassError):
    """Topics could not be created or checked. ``fields['topic']`` names the topic."""


# confluent-kafka options whose names really contain underscores (Python callbacks)
_PY_OPTIONS = {"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "on_commit", "logger"}


def _options(extra: dict[str, Any]) -> dict[str, Any]:
    return {(key if key in _PY_OPTIONS else key.replace("_", ".")): value for key, value in extra.items()}


def admin(settings: Settings, **extra: Any) -> AdminClient:
    """An AdminClient for the configured cluster."""
    return AdminClient({**settings.kafka_config(), **_options(extra)})


def producer(settings: Settings, **extra: Any) -> Producer:
    """A Producer with safe defaults (acks=all, idempotence off: Tansu has no transactions)."""
    conf: dict[str, Any] = {
        **settings.kafka_config(),
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
    }
    conf.update(_options(extra))
    return Producer(conf)


def consumer(settings: Settings, group_id: str | None = None, **extra: Any) -> Consumer:
    """A Consumer; ``group_id`` defaults to ``settings.app_id``.

    Offsets are not auto-committed: callers commit after their work is durable.
    """
    conf: dict[str, Any] = {
        **settings.kafka_config(),
        "group.id": group_id or settings.app_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    conf.update(_options(extra))
    return Consumer(conf)


def ensure_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int | None = None,
    compacted: bool = False,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Idempotent: a topic that already exists is left as it is (its partition count and
    config are not changed). ``partitions`` defaults to ``settings.topic_partitions``;
    ``compacted`` sets ``cleanup.policy=compact``.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    client = admin(settings)
    try:
        existing = set(client.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} to create topics: {exc.args[0]}. "
            "Is the broker up (`bypass stack status`) and BYPASS_KAFKA_BOOTSTRAP right?",
            topic=wanted[0],
        ) from exc
    topic_config = dict(config or {})
    if compacted:
        topic_config["cleanup.policy"] = "compact"
    new = [
        NewTopic(
            name,
            num_partitions=partitions or settings.topic_partitions,
            replication_factor=settings.topic_replication,
            config=topic_config,
        )
        for name in wanted
        if name not in existing
    ]
    if not new:
        return []
    created: list[str] = []
    futures = client.create_topics(new, operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created meanwhile by another process: fine
            raise KafkaSetupError(
                f"cannot create topic {name!r}: {error.str()}. Check the broker's permissions "
                "and BYPASS_TOPIC_REPLICATION (at most the number of brokers).",
                topic=name,
            ) from exc
    return created
