"""Dead letters of the pipeline: what goes to ``bypass.dlq``, built once for live and replay.

The header contract (names, reason codes) is :mod:`sinks.dlq`; this module fills it for
the two ways the pipeline gives up on a message:

- :func:`invalid_message`: a raw message that does not decode or validate
  (``streams.core.envelope``): its original key, value and headers, plus the reason;
- :func:`processing_failure`: a valid event whose processing raised for one entity
  (``processing_error``): the validated (phone-hashed) event as JSON, with
  ``bypass.entity`` / ``bypass.key`` naming the state it was to change.

Replay adds ``bypass.run_id``; every extra keyword becomes a ``bypass.<name>`` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import orjson

from sinks.dlq import dlq_headers
from streams.core.envelope import InvalidEventError
from streams.core.order import SourceEvent

__all__ = ["PROCESSING_ERROR", "DeadLetter", "invalid_message", "processing_failure"]

#: ``bypass.reason`` of an event whose processing raised.
PROCESSING_ERROR = "processing_error"


class DeadLetter(NamedTuple):
    """One message for the DLQ topic (``reason`` repeats the ``bypass.reason`` header)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str


def invalid_message(
    exc: InvalidEventError,
    *,
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    **extra: str,
) -> DeadLetter:
    """The dead letter of a raw message that failed to decode: original bytes and headers kept."""
    out = list(headers or ())
    out += dlq_headers(exc.reason, exc.message, topic, partition, offset, timestamp_ms=timestamp_ms, **extra)
    return DeadLetter(key, value, out, exc.reason)


def processing_failure(
    entity: str, key: str, source: SourceEvent, exc: BaseException, **extra: str
) -> DeadLetter:
    """The dead letter of ``source`` whose processing for ``entity`` ``key`` raised ``exc``."""
    event = source.event
    try:
        value: bytes | None = orjson.dumps(event)
    except (TypeError, RecursionError):  # not JSON-serializable: keep what identifies it
        value = orjson.dumps({"event_id": str(event.get("event_id")), "unserializable": True})
    headers = dlq_headers(
        PROCESSING_ERROR,
        f"{type(exc).__name__}: {exc}",
        source.topic,
        source.partition,
        source.offset,
        timestamp_ms=source.timestamp_ms,
        entity=entity,
        key=key,
        **extra,
    )
    return DeadLetter(str(event.get("user_id", "")).encode(), value, headers, PROCESSING_ERROR)
