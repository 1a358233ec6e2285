"""Rule-set versions on the compacted ``bypass.rules`` topic: publish, read, follow.

Record format (one Kafka message per version, topic ``settings.rules_topic``, one
partition, ``cleanup.policy=compact``):

    key    the version string (UTF-8), so compaction keeps every version once
    value  JSON {"version": str, "text": str (the rule-set YAML), "published_ms": int,
                 "source": str | null (file name it was published from)}

The active version is the last record on the topic (highest offset) that loads against
the worker's feature spec.  Versions are immutable: publishing a version that is already
on the topic with a different text is refused; publishing the same text again is a no-op.

Every worker follows the topic with its own :class:`RulesFollower`: a confluent-kafka
consumer outside any consumer group (all partitions assigned from the beginning, nothing
committed), in a daemon thread.  A new version is loaded and swapped in with one
reference assignment (the ``on_swap`` callback); one that fails to load is logged and
ignored, and the running version stays active.  A Faust GlobalTable is not used: writes
another process makes to its changelog only show up at the next restart (faust-streaming
0.15.3).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from features.errors import BypassError
from rules import RuleSet
from streams.core import kafka
from streams.core.assembly import load_for_spec, load_spec
from streams.settings import Settings

__all__ = [
    "PublishError",
    "RuleSetRecord",
    "RulesFollower",
    "publish_ruleset",
    "read_versions",
    "topic_order",
]

log = logging.getLogger("bypass.rules")

POLL_S = 0.2


class PublishError(BypassError):
    """A rule set could not be published (``fields['version']``)."""


@dataclass(frozen=True, slots=True)
class RuleSetRecord:
    """One version as stored on the rules topic (plus where it was read)."""

    version: str
    text: str
    published_ms: int
    source: str | None = None
    offset: int = -1

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "text": self.text,
                "published_ms": self.published_ms,
                "source": self.source,
            }
        )

    @classmethod
    def from_message(cls, key: bytes | None, value: bytes | None, offset: int) -> RuleSetRecord:
        """Parse a rules-topic message; ValueError when it is not a rule-set record."""
        if value is None:
            raise ValueError("tombstone")
        data = orjson.loads(value)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError("not a rule-set record: expected a JSON object with 'text'")
        version = data.get("version")
        if not isinstance(version, str):
            version = key.decode(errors="replace") if key else "?"
        published = data.get("published_ms")
        return cls(
            version=version,
            text=data["text"],
            published_ms=published if isinstance(published, int) else 0,
            source=data.get("source") if isinstance(data.get("source"), str) else None,
            offset=offset,
        )


def _reader(settings: Settings) -> Consumer:
    # a private group id: librdkafka wants one, but nothing is ever committed or joined
    return kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-rules-reader-{uuid.uuid4().hex[:12]}",
        enable_auto_commit=False,
        enable_partition_eof=True,
    )


def _partitions(client: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    meta = client.list_topics(topic, timeout=timeout_s)
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        return []
    return sorted(info.partitions)


def _catch_up(
    client: Consumer, topic: str, timeout_s: float, parse: Callable[[Message], RuleSetRecord | None]
) -> tuple[list[RuleSetRecord], set[int]]:
    """Assign every partition of ``topic`` from the beginning and read up to its end.

    The end is the ``PARTITION_EOF`` event, not the high watermark (Tansu reports a too
    low watermark after batched produces). Returns the parsed records in publish order
    and the partitions not read to the end before ``timeout_s``; the client stays
    assigned, positioned after what it read, so a follower can go on polling it.
    """
    parts = _partitions(client, topic, timeout_s)
    pending: set[int] = set()
    for p in parts:
        low, high = client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if high > low:
            pending.add(p)
    client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    records: list[RuleSetRecord] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        msg = client.poll(POLL_S)
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
    records.sort(key=topic_order)
    return records, pending


def topic_order(record: RuleSetRecord) -> int:
    """The one order of versions: the topic's (offset). A publisher's clock (``published_ms``)
    never decides: a start and a running worker must agree on the latest version."""
    return record.offset


def _parse_quietly(msg: Message) -> RuleSetRecord | None:
    try:
        return RuleSetRecord.from_message(msg.key(), msg.value(), msg.offset() or 0)
    except ValueError:
        return None


def read_versions(settings: Settings, *, timeout_s: float = 15.0) -> list[RuleSetRecord]:
    """Every record on the rules topic, in publish order (empty when the topic is empty/missing)."""
    client = _reader(settings)
    try:
        try:
            records, pending = _catch_up(client, settings.rules_topic, timeout_s, _parse_quietly)
        except KafkaException as exc:
            raise PublishError(
                f"cannot read {settings.rules_topic!r}: Kafka at {settings.kafka_bootstrap} does not "
                f"answer ({exc.args[0]}). Is the broker up (`bypass stack status`) and "
                "BYPASS_KAFKA_BOOTSTRAP right?",
                version=None,
            ) from None
        if pending:
            raise PublishError(
                f"timed out reading {settings.rules_topic!r} at {settings.kafka_bootstrap}",
                version=None,
            )
        return records
    finally:
        client.close()


def publish_ruleset(
    settings: Settings, text: str, *, source: str | None = None
) -> tuple[RuleSetRecord, bool]:
    """Validate ``text`` against BYPASS_FEATURES_SPEC and publish it.

    Returns (record, published): ``published`` is False when that exact version and text
    are already on the topic.  Raises ``rules.RuleSetError`` (nothing published) for an
    invalid set, :class:`PublishError` when the version exists with another text or the
    broker does not confirm the write.
    """
    spec = load_spec(settings)
    ruleset = load_for_spec(text, spec, source=source)
    version = str(ruleset.version)
    kafka.ensure_topics(settings, [settings.rules_topic], partitions=1, compacted=True)
    for existing in read_versions(settings):
        if existing.version == version:
            if existing.text == text:
                return existing, False
            raise PublishError(
                f"version {version!r} is already published with a different text; versions are "
                "immutable - give the edited rule set a new `version:`",
                version=version,
            )
    record = RuleSetRecord(version=version, text=text, published_ms=int(time.time() * 1000), source=source)
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    producer = kafka.producer(settings)
    producer.produce(
        settings.rules_topic, key=version.encode(), value=record.to_bytes(), on_delivery=delivered
    )
    left = producer.flush(15.0)
    if left or errors:
        raise PublishError(
            f"the broker did not confirm rule set {version!r}: {errors[0] if errors else 'timeout'}",
            version=version,
        )
    return record, True


class RulesFollower:
    """Follows the rules topic in a daemon thread; calls ``on_swap(ruleset, record)`` per new version.

    ``load(text, source)`` builds a RuleSet (raising on an invalid one).  :meth:`start`
    first reads the topic up to its end and activates the latest valid version before it
    returns it (None when the topic holds none), so a worker starting later begins with
    the latest version; the thread then applies every later record as it arrives.
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[str, str | None], RuleSet],
        on_swap: Callable[[RuleSet, RuleSetRecord], None],
        *,
        on_reject: Callable[[RuleSetRecord, Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self._load = load
        self._on_swap = on_swap
        self._on_reject = on_reject
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Consumer | None = None
        self.active: RuleSetRecord | None = None

    def _try_load(self, record: RuleSetRecord) -> RuleSet | None:
        try:
            return self._load(record.text, record.source)
        except Exception as exc:  # a broken set must never stop the worker
            log.error(
                "rule set %r on %s rejected, version %r stays active: %s",
                record.version,
                self.settings.rules_topic,
                self.active.version if self.active else None,
                getattr(exc, "message", exc),
            )
            if self._on_reject is not None:
                self._on_reject(record, exc)
            return None

    def _activate(self, record: RuleSetRecord) -> bool:
        if (
            self.active is not None
            and record.version == self.active.version
            and record.text == self.active.text
        ):
            return False
        ruleset = self._try_load(record)
        if ruleset is None:
            return False
        self.active = record
        self._on_swap(ruleset, record)
        return True

    def start(self, *, timeout_s: float = 30.0) -> RuleSetRecord | None:
        """Catch up to the end of the topic, activate the latest valid version, then follow."""
        kafka.ensure_topics(self.settings, [self.settings.rules_topic], partitions=1, compacted=True)
        client = _reader(self.settings)
        records, _ = _catch_up(client, self.settings.rules_topic, timeout_s, self._parse)
        # the latest version that loads wins; broken ones are reported and skipped
        for record in reversed(records):
            if self._activate(record):
                break
        self._client = client
        self._thread = threading.Thread(target=self._run, name="bypass-rules-follower", daemon=True)
        self._thread.start()
        return self.active

    def _parse(self, msg: Message) -> RuleSetRecord | None:
        try:
            return RuleSetRecord.from_message(msg.key(), msg.value(), msg.offset() or 0)
        except ValueError as exc:
            log.error(
                "ignoring a message on %s at offset %s: %s", self.settings.rules_topic, msg.offset(), exc
            )
            return None

    def _run(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            while not self._stop.is_set():
                try:
                    msg = client.poll(POLL_S)
                except KafkaException as exc:  # pragma: no cover - broker trouble: keep trying
                    log.warning("rules reader: %s", exc)
                    time.sleep(1.0)
                    continue
                if msg is None or msg.error():
                    continue
                record = self._parse(msg)
                if record is not None:
                    self._activate(record)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
