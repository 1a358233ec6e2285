"""Shared Kafka client builders (confluent-kafka) and idempotent topic creation.

Every process of bypass builds its Kafka clients here, from ``Settings.kafka_config()``,
so security options (SASL/SSL) are applied in one place. The helpers work against
Apache Kafka and against Tansu (the local broker, see ``streams.local.stack`` for what Tansu
does and does not do).

    admin(settings)                                  -> AdminClient
    ensure_topics(settings, names, partitions=None, compacted=False)
    producer(settings, **extra)                      -> Producer
    consumer(settings, group_id=None, **extra)       -> Consumer
    end_offsets(settings, reported)                  -> the true end offset of partitions
    check_reachable(settings)                        -> a KafkaSetupError within seconds when
                                                        no bootstrap server accepts a connection

Every client logs through Python logging (logger ``bypass.rdkafka``, confluent-kafka's
``logger`` option) instead of printing librdkafka's ``%3|...|FAIL|...`` lines to stderr:
the lines arrive when the client is polled, and a line repeating within
``RDKAFKA_REPEAT_S`` is logged once (the next one says how many were dropped).

``extra`` keys are librdkafka option names, either dotted (``**{"linger.ms": 5}``) or
with underscores (``linger_ms=5``); they override the defaults. Python callbacks keep
their names (``error_cb``, ``on_delivery``, ``logger`` ...).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from features.errors import BypassError
from streams.settings import Settings

__all__ = [
    "KafkaSetupError",
    "admin",
    "check_reachable",
    "committed_offsets",
    "consumer",
    "end_offsets",
    "ensure_dlq",
    "ensure_topics",
    "producer",
    "rdkafka_logger",
    "read_to_end",
    "topic_partitions",
]

log = logging.getLogger("bypass.kafka")

# How long admin calls wait for the broker before giving up (seconds).
ADMIN_TIMEOUT_S = 15.0


class KafkaSetupError(BypassError):
    """Topics could not be created or checked. ``fields['topic']`` names the topic."""


# confluent-kafka options whose names really contain underscores (Python callbacks)
_PY_OPTIONS = {"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "on_commit", "logger"}


def _options(extra: dict[str, Any]) -> dict[str, Any]:
    return {(key if key in _PY_OPTIONS else key.replace("_", ".")): value for key, value in extra.items()}


#: A librdkafka log line repeating within this many seconds is logged once.
RDKAFKA_REPEAT_S = 60.0

# "(after 3ms in state CONNECT, 2 identical error(s) suppressed)" and the like: not part of
# what makes two lines the same
_VARYING = re.compile(r"\(after \d+ms[^)]*\)|\d+ identical error\(s\) suppressed|#(producer|consumer)-\d+")


class _RepeatFilter(logging.Filter):
    """Drops a librdkafka line seen less than ``window_s`` ago (same level and text, minus
    timings and client numbers); the next one let through says how many were dropped."""

    def __init__(self, window_s: float = RDKAFKA_REPEAT_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = _VARYING.sub("", record.getMessage())
        key = (record.levelno, text)
        now = self.clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} ({last[1]} more like it in the last {self.window_s:.0f} s)"
            record.args = None
        return True


_RDKAFKA_LOG = logging.getLogger("bypass.rdkafka")
_RDKAFKA_LOG.addFilter(_RepeatFilter())


def rdkafka_logger() -> logging.Logger:
    """The logger every bypass Kafka client hands librdkafka's log lines to."""
    return _RDKAFKA_LOG


def _with_logger(conf: dict[str, Any]) -> dict[str, Any]:
    conf.setdefault("logger", _RDKAFKA_LOG)
    return conf


_reachable: set[str] = set()


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Fail fast (a KafkaSetupError with the one line to read) when no bootstrap server of
    BYPASS_KAFKA_BOOTSTRAP accepts a TCP connection within ``timeout_s``.

    A short probe before any client is built: a librdkafka client would otherwise retry for
    its whole timeout, logging every refused connection.  A bootstrap found reachable once
    is not probed again by this process."""
    bootstrap = settings.kafka_bootstrap
    if bootstrap in _reachable:
        return
    reasons: list[str] = []
    for server in (part.strip() for part in bootstrap.split(",")):
        if not server:
            continue
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                _reachable.add(bootstrap)
                return
        except ValueError:
            reasons.append(f"{server}: no port")
        except OSError as exc:
            reasons.append(f"{server}: {(exc.strerror or str(exc) or type(exc).__name__).lower()}")
    raise KafkaSetupError(
        f"cannot reach Kafka at {bootstrap} ({'; '.join(reasons) or 'no server given'}). "
        "Is the broker up (`bypass stack status`) and BYPASS_KAFKA_BOOTSTRAP right?",
        bootstrap=bootstrap,
    )


def admin(settings: Settings, **extra: Any) -> AdminClient:
    """An AdminClient for the configured cluster."""
    return AdminClient(_with_logger({**settings.kafka_config(), **_options(extra)}))


def producer(settings: Settings, **extra: Any) -> Producer:
    """A Producer with safe defaults (acks=all, idempotence off: Tansu has no transactions)."""
    conf: dict[str, Any] = {
        **settings.kafka_config(),
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
    }
    conf.update(_options(extra))
    return Producer(_with_logger(conf))


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
    return Consumer(_with_logger(conf))


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
    check_reachable(settings)
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


def end_offsets(
    settings: Settings, reported: Mapping[tuple[str, int], int], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """The end offset (last offset + 1) of each ``(topic, partition)``, checked by a fetch.

    ``reported`` is what ListOffsets (``latest``) answered.  Apache Kafka answers the end;
    Tansu answers the base offset of the partition's last record batch + 1, too low as soon
    as that batch holds several records.  A fetch response's high watermark is right on
    both, so this fetches from ``reported - 1`` (the last batch, or nothing on Kafka) and
    returns ``max(reported, fetch high watermark)``.  A partition reported empty (0) is
    left as it is; one that does not answer within ``timeout_s`` keeps its reported value
    (logged).
    """
    out = dict(reported)
    todo = {tp: off for tp, off in reported.items() if off > 0}
    if not todo:
        return out
    client = consumer(
        settings,
        group_id=f"{settings.app_id}-end-offsets",
        enable_partition_eof=True,
        fetch_wait_max_ms=20,
        auto_offset_reset="latest",
    )
    try:
        client.assign([TopicPartition(t, p, off - 1) for (t, p), off in todo.items()])
        pending = set(todo)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = client.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                continue
            tp = (msg.topic(), msg.partition())
            if tp in pending:
                pending.discard(tp)
                _low, high = client.get_watermark_offsets(TopicPartition(*tp), cached=True)
                if high is not None and high > out[tp]:
                    out[tp] = high
        if pending:
            log.warning(
                "end offsets of %s not checked within %.0f s; kept as reported", sorted(pending), timeout_s
            )
    finally:
        client.close()
    return out


def ensure_dlq(settings: Settings) -> list[str]:
    """The DLQ topic, created with BYPASS_DLQ_RETENTION_MS when bypass creates it (it holds
    what producers sent: keep it no longer than the data may be kept)."""
    config = {"retention.ms": str(settings.dlq_retention_ms)} if settings.dlq_retention_ms else None
    return ensure_topics(settings, [settings.dlq_topic], config=config)


def topic_partitions(
    settings: Settings, topics: Sequence[str], *, timeout_s: float = 15.0
) -> list[tuple[str, int]]:
    """Every (topic, partition) of ``topics`` (a KafkaSetupError when one is missing)."""
    metadata = admin(settings).list_topics(timeout=timeout_s)
    out: list[tuple[str, int]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaSetupError(
                f"topic {topic!r} does not exist on {settings.kafka_bootstrap}", topic=topic
            )
        out.extend((topic, p) for p in sorted(meta.partitions))
    return out


def ensure_partitioned(
    settings: Settings, names: Sequence[str], *, compacted: bool = False, config: dict[str, str] | None = None
) -> list[str]:
    """:func:`ensure_topics` for topics that must have ``settings.topic_partitions``
    partitions (co-partitioned state: entity topics, their changelogs); an existing one with
    another count is a KafkaSetupError saying so.  Returns the names created."""
    created = ensure_topics(settings, names, compacted=compacted, config=config)
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:  # a topic just created may take a moment to show in the metadata
        try:
            listed = topic_partitions(settings, names)
            break
        except KafkaSetupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    counts: dict[str, int] = {}
    for topic, _ in listed:
        counts[topic] = counts.get(topic, 0) + 1
    for topic in names:
        if counts.get(topic) != settings.topic_partitions:
            raise KafkaSetupError(
                f"topic {topic!r} has {counts.get(topic, 0)} partitions, BYPASS_TOPIC_PARTITIONS is "
                f"{settings.topic_partitions}: an entity's state is partitioned like its topic, so "
                "they must agree (set BYPASS_TOPIC_PARTITIONS to the topic's count, or start a new "
                "BYPASS_APP_ID)",
                topic=topic,
            )
    return created


def committed_offsets(
    settings: Settings, group_id: str, partitions: Sequence[tuple[str, int]], *, timeout_s: float = 15.0
) -> dict[tuple[str, int], int]:
    """The offsets ``group_id`` committed for ``partitions`` (the low watermark where it has
    none: the group starts at the earliest offset).  Reads only: it never joins the group."""
    client = consumer(settings, group_id=group_id, **{"enable.auto.commit": False})
    try:
        out: dict[tuple[str, int], int] = {}
        for tp in client.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s):
            offset = tp.offset
            if offset < 0:
                offset, _high = client.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout_s
                )
            out[(tp.topic, tp.partition)] = int(offset)
        return out
    finally:
        client.close()


T = TypeVar("T")


def read_to_end(
    client: Consumer,
    topic: str,
    timeout_s: float,
    parse: Callable[[Message], T | None],
    *,
    poll_s: float = 0.2,
) -> tuple[list[T], set[int]]:
    """Assign every partition of ``topic`` from the beginning and read up to its end: what
    ``parse`` makes of each message (None: skipped), in the order read.

    The end is the ``PARTITION_EOF`` event (the client needs ``enable.partition.eof``), not
    the high watermark: Tansu reports a too low watermark after batched produces. Returns
    the records and the partitions not read to the end before ``timeout_s`` (none for a
    missing topic); the client stays assigned, positioned after what it read.
    """
    info = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    parts = [] if info is None or info.error is not None else sorted(info.partitions)
    pending: set[int] = set()
    for p in parts:
        low, high = client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if high > low:
            pending.add(p)
    client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    records: list[T] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        msg = client.poll(poll_s)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
            continue
        record = parse(msg)
        if record is not None:
            records.append(record)
    return records, pending
