"""``EventProducer``: the small SDK apps use to send events to the raw topics.

    from streams.producer import EventProducer

    with EventProducer(settings) as producer:          # or EventProducer.from_env()
        producer.send({"event_id": "e-1", "type": "login", "ts": 1763856000000, "user_id": "u1"})
        report = producer.flush()                      # DeliveryReport(delivered, failed, errors)
    report.raise_for_errors()

- confluent-kafka, idempotent producer (``enable.idempotence``, acks=all);
- Kafka key = the user id, so one user's events stay in order on one partition;
- Kafka message timestamp = the event's ``ts`` (replay finds offsets by time);
- the envelope is validated before sending (:class:`streams.core.envelope.InvalidEventError`
  with the reason), so an invalid event never reaches the topic;
- delivery errors are surfaced: every ``send`` may take an ``on_delivery(error, event)``
  callback, and :meth:`EventProducer.flush` returns a :class:`DeliveryReport` whose
  :meth:`~DeliveryReport.raise_for_errors` raises :class:`DeliveryError`.

The phone number is sent as the app gave it: the worker's ingest hashes it before anything
downstream sees it (apps do not need the hash key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaException

from features.errors import BypassError
from streams.core import kafka
from streams.core.envelope import validate
from streams.settings import Settings, get_settings

__all__ = ["DeliveryError", "DeliveryReport", "EventProducer"]

DeliveryCallback = Callable[[str | None, Mapping[str, Any]], None]


class DeliveryError(BypassError):
    """Some events were not confirmed by the broker (``fields['failed']``, ``fields['errors']``)."""


@dataclass
class DeliveryReport:
    """Outcome of the events sent since the previous flush."""

    delivered: int = 0
    failed: int = 0
    pending: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (event_id, error), first 100

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0

    def raise_for_errors(self) -> None:
        if self.ok:
            return
        sample = "; ".join(f"{eid}: {err}" for eid, err in self.errors[:3])
        raise DeliveryError(
            f"{self.failed} event(s) failed and {self.pending} are unconfirmed"
            + (f" (e.g. {sample})" if sample else "")
            + ": check the broker (`bypass stack status`) and BYPASS_KAFKA_BOOTSTRAP, then send them again",
            failed=self.failed,
            pending=self.pending,
            errors=self.errors,
        )


class EventProducer:
    """Validates and sends events to a raw topic (default: the first of BYPASS_RAW_TOPICS)."""

    def __init__(self, settings: Settings | None = None, *, topic: str | None = None, **config: Any) -> None:
        self.settings = settings or get_settings()
        self.topic = topic or self.settings.raw_topics[0]
        options: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "queue.buffering.max.messages": 500_000,
        }
        options.update(config)
        self._producer = kafka.producer(self.settings, **options)
        self._report = DeliveryReport()
        self._in_flight = 0

    @classmethod
    def from_env(cls, **kwargs: Any) -> EventProducer:
        return cls(get_settings(), **kwargs)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def _callback(self, event_id: str, event: Mapping[str, Any], user_cb: DeliveryCallback | None) -> Any:
        def delivered(err: Any, msg: Any) -> None:
            self._in_flight -= 1
            if err is None:
                self._report.delivered += 1
                text = None
            else:
                text = err.str() if hasattr(err, "str") else str(err)
                self._report.failed += 1
                if len(self._report.errors) < 100:
                    self._report.errors.append((event_id, text))
            if user_cb is not None:
                user_cb(text, event)

        return delivered

    def send(
        self,
        event: Mapping[str, Any],
        *,
        topic: str | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Validate ``event`` and queue it; raises InvalidEventError for a bad envelope.

        ``on_delivery(error_or_None, event)`` is called from :meth:`poll`/:meth:`flush`.
        """
        checked = validate(dict(event))
        value = orjson.dumps(checked)
        if len(value) > self.settings.event_max_bytes:
            from streams.core.envelope import InvalidEventError

            raise InvalidEventError(
                f"the event is {len(value)} bytes, above the limit of {self.settings.event_max_bytes}",
                reason="too_large",
                field=None,
            )
        self._send_raw(topic or self.topic, checked, value, on_delivery)

    def _send_raw(
        self, topic: str, event: Mapping[str, Any], value: bytes, on_delivery: DeliveryCallback | None
    ) -> None:
        callback = self._callback(str(event["event_id"]), event, on_delivery)
        while True:
            try:
                self._producer.produce(
                    topic,
                    key=str(event["user_id"]).encode(),
                    value=value,
                    timestamp=int(event["ts"]),
                    on_delivery=callback,
                )
                self._in_flight += 1
                break
            except BufferError:  # local queue full: serve callbacks and retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise DeliveryError(f"cannot send to {topic!r}: {exc.args[0]}", failed=1, errors=[]) from exc
        self._producer.poll(0)

    def send_many(self, events: Iterable[Mapping[str, Any]], **kwargs: Any) -> int:
        """Send every event (each validated first); returns how many were queued."""
        n = 0
        for event in events:
            self.send(event, **kwargs)
            n += 1
        return n

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout_s))

    @property
    def confirmed(self) -> int:
        """Events the broker confirmed (or refused) since the last flush: what a progress
        bar may count as done."""
        return self._report.delivered + self._report.failed

    @property
    def in_flight(self) -> int:
        """Events queued and not yet confirmed or failed."""
        return self._in_flight

    def flush(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Wait for every queued event; return (and reset) the report since the last flush."""
        self._producer.flush(timeout_s)
        report = self._report
        report.pending = self._in_flight
        self._report = DeliveryReport()
        return report
