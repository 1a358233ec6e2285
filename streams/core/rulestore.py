"""Rule-set versions on the compacted ``bypass.rules`` topic: publish, read, follow.

Record format (topic ``settings.rules_topic``, one partition, ``cleanup.policy=compact``):

- a publication, one per version::

    key    the version string (UTF-8), so compaction keeps every version once
    value  JSON {"version": str, "text": str (the rule-set YAML), "published_ms": int,
                 "source": str | null (file name it was published from),
                 "publisher": str | null (who published it)}

- an activation (``bypass rules activate``), one per activation::

    key    "\x00activate:<uuid>" (a version string cannot start with NUL), so compaction
           keeps every activation
    value  JSON {"kind": "activate", "version": str, "activated_ms": int, "by": str | null}

Each record designates a version: a publication its own, an activation the published
version it names. The active version is the one the last record (highest offset)
designates, or the one before it when that does not load against the worker's feature
spec (:func:`designated`).  Publishing activates; ``activate`` makes any published
version active again (rollback, roll-forward).  Versions are immutable: publishing a
version that is already on the topic with a different text is refused; publishing the
same text again is a no-op.

Every worker follows the topic with its own :class:`RulesFollower`: a confluent-kafka
consumer outside any consumer group (all partitions assigned from the beginning, nothing
committed), in a daemon thread.  A new version is loaded and swapped in with one
reference assignment (the ``on_swap`` callback); one that fails to load is logged and
ignored, and the running version stays active.  A Faust GlobalTable is not used: writes
another process makes to its changelog only show up at the next restart (faust-streaming
0.15.3).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from features import FeatureSpec
from features.errors import BypassError
from streams.core import kafka
from streams.core.assembly import load_for_spec
from streams.settings import Settings

__all__ = [
    "Activation",
    "PublishError",
    "RuleSetRecord",
    "RulesFollower",
    "activate_ruleset",
    "designated",
    "operator_name",
    "parse_entry",
    "publish_ruleset",
    "read_entries",
    "read_versions",
    "topic_order",
]

log = logging.getLogger("bypass.rules")

#: what a follower loads a version into (a RuleSet; the feature spec follower's own pair)
T = TypeVar("T")

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
    publisher: str | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "text": self.text,
                "published_ms": self.published_ms,
                "source": self.source,
                "publisher": self.publisher,
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
            publisher=data.get("publisher") if isinstance(data.get("publisher"), str) else None,
        )


ACTIVATE_KEY_PREFIX = b"\x00activate:"


@dataclass(frozen=True, slots=True)
class Activation:
    """``bypass rules activate VERSION``: makes a published version the active one."""

    version: str
    activated_ms: int
    by: str | None = None
    offset: int = -1

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"kind": "activate", "version": self.version, "activated_ms": self.activated_ms, "by": self.by}
        )

    def key(self) -> bytes:
        return ACTIVATE_KEY_PREFIX + uuid.uuid4().hex.encode()


Entry = RuleSetRecord | Activation


def parse_entry(key: bytes | None, value: bytes | None, offset: int) -> Entry:
    """A rules-topic message -> a publication or an activation; ValueError otherwise."""
    if key is not None and key.startswith(ACTIVATE_KEY_PREFIX):
        if value is None:
            raise ValueError("tombstone")
        data = orjson.loads(value)
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise ValueError("not an activation record: expected a JSON object with 'version'")
        at = data.get("activated_ms")
        by = data.get("by")
        return Activation(
            version=data["version"],
            activated_ms=at if isinstance(at, int) else 0,
            by=by if isinstance(by, str) else None,
            offset=offset,
        )
    return RuleSetRecord.from_message(key, value, offset)


def designated(entries: list[Entry]) -> list[RuleSetRecord]:
    """Per entry in topic order, the publication it makes active: a publication itself, an
    activation the publication of its version (an activation of a version never published
    designates nothing). The active version is the last of these that loads."""
    published: dict[str, RuleSetRecord] = {}
    out: list[RuleSetRecord] = []
    for entry in sorted(entries, key=topic_order):
        if isinstance(entry, RuleSetRecord):
            published[entry.version] = entry
            out.append(entry)
        else:
            record = published.get(entry.version)
            if record is not None:
                out.append(record)
    return out


def _active_spec(settings: Settings) -> FeatureSpec:
    """The feature spec rules are checked against: the active published one, else the
    BYPASS_FEATURES_SPEC file (:mod:`streams.core.featurestore`)."""
    from streams.core.featurestore import active_spec

    return active_spec(settings).spec


def operator_name(settings: Settings) -> str:
    """Who publishes or activates: BYPASS_OPERATOR, else the login name and host."""
    if settings.operator:
        return settings.operator
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _reader(settings: Settings) -> Consumer:
    # a private group id: librdkafka wants one, but nothing is ever committed or joined
    return kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-rules-reader-{uuid.uuid4().hex[:12]}",
        enable_auto_commit=False,
        enable_partition_eof=True,
    )


def _catch_up(
    client: Consumer, topic: str, timeout_s: float, parse: Callable[[Message], Entry | None]
) -> tuple[list[Entry], set[int]]:
    """The rules topic read to its end (:func:`streams.core.kafka.read_to_end`), records in
    publish order; the client stays assigned, so a follower can go on polling it."""
    found, pending = kafka.read_to_end(client, topic, timeout_s, parse, poll_s=POLL_S)
    records = cast("list[Entry]", found)  # T is a union here: mypy infers object
    records.sort(key=topic_order)
    return records, pending


def topic_order(record: Entry) -> int:
    """The one order of versions: the topic's (offset). A publisher's clock (``published_ms``)
    never decides: a start and a running worker must agree on the latest version."""
    return record.offset


def _parse_quietly(msg: Message) -> Entry | None:
    try:
        return parse_entry(msg.key(), msg.value(), msg.offset() or 0)
    except ValueError:
        return None


def read_versions(
    settings: Settings, *, timeout_s: float = 15.0, topic: str | None = None
) -> list[RuleSetRecord]:
    """Every publication on the rules topic (or ``topic``: the feature specs' uses the same
    records), in publish order (empty when there is none)."""
    entries = read_entries(settings, timeout_s=timeout_s, topic=topic)
    return [e for e in entries if isinstance(e, RuleSetRecord)]


def read_entries(settings: Settings, *, timeout_s: float = 15.0, topic: str | None = None) -> list[Entry]:
    """Every record on the rules topic (or ``topic``), publications and activations, in topic order."""
    topic = topic or settings.rules_topic
    try:
        kafka.check_reachable(settings)  # one clear line within seconds, not a 15 s wait
    except kafka.KafkaSetupError as exc:
        raise PublishError(f"cannot read {topic!r}: {exc.message}", version=None) from None
    client = _reader(settings)
    try:
        try:
            records, pending = _catch_up(client, topic, timeout_s, _parse_quietly)
        except KafkaException as exc:
            raise PublishError(
                f"cannot read {topic!r}: Kafka at {settings.kafka_bootstrap} does not "
                f"answer ({exc.args[0]}). Is the broker up (`bypass stack status`) and "
                "BYPASS_KAFKA_BOOTSTRAP right?",
                version=None,
            ) from None
        if pending:
            raise PublishError(
                f"timed out reading {topic!r} at {settings.kafka_bootstrap}",
                version=None,
            )
        return records
    finally:
        client.close()


def produce_record(
    settings: Settings, key: bytes, value: bytes, what: str, version: str, *, topic: str | None = None
) -> int:
    """Produce one record to the rules topic (or ``topic``) and wait for the broker; returns
    its offset."""
    errors: list[str] = []
    offsets: list[int] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset() or 0)

    producer = kafka.producer(settings)
    producer.produce(topic or settings.rules_topic, key=key, value=value, on_delivery=delivered)
    left = producer.flush(15.0)
    if left or errors:
        raise PublishError(
            f"the broker did not confirm {what} {version!r}: {errors[0] if errors else 'timeout'}",
            version=version,
        )
    return offsets[0] if offsets else -1


def find_published(
    entries: Sequence[Entry], version: str, text: str | None, what: str, error: type[BypassError]
) -> RuleSetRecord | None:
    """The publication of ``version`` among ``entries`` (None: never published).  With
    ``text``: that version published with another text raises ``error`` (versions are
    immutable)."""
    for entry in entries:
        if isinstance(entry, RuleSetRecord) and entry.version == version:
            if text is not None and entry.text != text:
                raise error(
                    f"{what} version {version!r} is already published with a different text; "
                    f"versions are immutable - give the edited {what} a new `version:`",
                    version=version,
                )
            return entry
    return None


def require_published(
    entries: Sequence[Entry], version: str, topic: str, what: str, hint: str, error: type[BypassError]
) -> RuleSetRecord:
    """The publication of ``version``, or ``error`` naming the last ten published."""
    record = find_published(entries, version, None, what, error)
    if record is None:
        known = ", ".join([e.version for e in entries if isinstance(e, RuleSetRecord)][-10:]) or "none"
        raise error(
            f"{what} version {version!r} was never published on {topic} (published: {known}); "
            f"publish it first with `{hint}`",
            version=version,
        )
    return record


def write_publication(
    settings: Settings, topic: str, version: str, text: str, source: str | None, what: str
) -> RuleSetRecord:
    """Produce a new version's publication record to ``topic``; returns it with its offset."""
    record = RuleSetRecord(
        version=version,
        text=text,
        published_ms=int(time.time() * 1000),
        source=source,
        publisher=operator_name(settings),
    )
    offset = produce_record(settings, version.encode(), record.to_bytes(), what, version, topic=topic)
    return dataclasses.replace(record, offset=offset)


def write_activation(settings: Settings, topic: str, version: str) -> Activation:
    """Produce an activation of ``version`` to ``topic``; returns it with its offset."""
    activation = Activation(version=version, activated_ms=int(time.time() * 1000), by=operator_name(settings))
    offset = produce_record(
        settings, activation.key(), activation.to_bytes(), "the activation of", version, topic=topic
    )
    return dataclasses.replace(activation, offset=offset)


def activate_ruleset(
    settings: Settings, version: str
) -> tuple[RuleSetRecord, RuleSetRecord | None, Activation | None]:
    """Make the published ``version`` the active one (rollback or roll-forward).

    Returns (its publication, the version active before, the activation written): None
    when it is active already. Raises :class:`PublishError` for a version never published,
    ``rules.RuleSetError`` when it does not load against BYPASS_FEATURES_SPEC (nothing is
    written: workers would refuse it)."""
    entries = read_entries(settings)
    chain = designated(entries)
    topic = settings.rules_topic
    record = require_published(entries, version, topic, "rule-set", "bypass rules publish FILE", PublishError)
    spec = _active_spec(settings)
    load_for_spec(record.text, spec, source=record.source)  # raises RuleSetError, names the problems
    before = chain[-1] if chain else None
    if before is not None and before.version == version:
        return record, before, None
    return record, before, write_activation(settings, topic, version)


def publish_ruleset(
    settings: Settings, text: str, *, source: str | None = None
) -> tuple[RuleSetRecord, bool]:
    """Validate ``text`` against BYPASS_FEATURES_SPEC and publish it.

    Returns (record, published): ``published`` is False when that exact version and text
    are already on the topic.  Raises ``rules.RuleSetError`` (nothing published) for an
    invalid set, :class:`PublishError` when the version exists with another text or the
    broker does not confirm the write.
    """
    spec = _active_spec(settings)
    ruleset = load_for_spec(text, spec, source=source)
    version = str(ruleset.version)
    kafka.ensure_topics(settings, [settings.rules_topic], partitions=1, compacted=True)
    existing = find_published(read_versions(settings), version, text, "rule set", PublishError)
    if existing is not None:
        return existing, False
    return write_publication(settings, settings.rules_topic, version, text, source, "rule set"), True


class RulesFollower(Generic[T]):
    """Follows the rules topic in a daemon thread; calls ``on_swap(ruleset, record)`` per new version.

    ``load(text, source)`` builds a RuleSet (raising on an invalid one).  :meth:`start`
    first reads the topic up to its end and activates the latest valid version before it
    returns it (None when the topic holds none), so a worker starting later begins with
    the latest version; the thread then applies every later record as it arrives.
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[str, str | None], T],
        on_swap: Callable[[T, RuleSetRecord], None],
        *,
        on_reject: Callable[[RuleSetRecord, Exception], None] | None = None,
        topic: str | None = None,
        what: str = "rule set",
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.rules_topic
        self.what = what
        self._load = load
        self._on_swap = on_swap
        self._on_reject = on_reject
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Consumer | None = None
        self.active: RuleSetRecord | None = None
        self._published: dict[str, RuleSetRecord] = {}  # version -> its publication

    def _try_load(self, record: RuleSetRecord) -> T | None:
        try:
            return self._load(record.text, record.source)
        except Exception as exc:  # a broken set must never stop the worker
            log.error(
                "%s %r on %s rejected, version %r stays active: %s",
                self.what,
                record.version,
                self.topic,
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
        kafka.ensure_topics(self.settings, [self.topic], partitions=1, compacted=True)
        client = _reader(self.settings)
        entries, _ = _catch_up(client, self.topic, timeout_s, self._parse)
        self._published.update((e.version, e) for e in entries if isinstance(e, RuleSetRecord))
        # the latest designated version that loads wins; broken ones are reported and skipped
        for record in reversed(designated(entries)):
            if self._activate(record):
                break
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"bypass-follower-{self.topic}", daemon=True)
        self._thread.start()
        return self.active

    def _parse(self, msg: Message) -> Entry | None:
        try:
            return parse_entry(msg.key(), msg.value(), msg.offset() or 0)
        except ValueError as exc:
            log.error("ignoring a message on %s at offset %s: %s", self.topic, msg.offset(), exc)
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
                    log.warning("%s reader: %s", self.topic, exc)
                    time.sleep(1.0)
                    continue
                if msg is None or msg.error():
                    continue
                entry = self._parse(msg)
                if isinstance(entry, RuleSetRecord):
                    self._published[entry.version] = entry
                    self._activate(entry)
                elif isinstance(entry, Activation):
                    record = self._published.get(entry.version)
                    if record is None:
                        log.error(
                            "activation of %s version %r on %s ignored: never published",
                            self.what,
                            entry.version,
                            self.topic,
                        )
                    else:
                        log.warning("%s version %r activated by %s", self.what, entry.version, entry.by)
                        self._activate(record)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
