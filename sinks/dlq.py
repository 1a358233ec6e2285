"""The dead-letter header contract, shared by every writer of the DLQ.

A record on the DLQ keeps its original key and value; these headers say why and where
from. Stdlib only: the worker, replay and the sinks import it without pulling in a
Kafka client or faust.

    header                      value
    bypass.reason               a short code (below) to filter and count by
    bypass.error                the human-readable message
    bypass.source.topic         where the record was read
    bypass.source.partition     (decimal text)
    bypass.source.offset        (decimal text)
    bypass.source.timestamp     the record's timestamp, epoch ms (when known)
    bypass.sink                 the sink that refused it (sinks only)

Reason codes written by the sinks (the ingest codes of :mod:`streams.core.envelope` -
``not_json``, ``missing_field`` ... - mean the same thing there):

    empty_value             a tombstone (no value)
    not_json                the value is not JSON
    not_object              the JSON value is not an object
    missing_field           a required field is missing (or null)
    wrong_type              a field has the wrong JSON type
    bad_value               right type, unusable value (empty id, out of range, not finite)
    unknown_topic           the sink has no table for the record's topic
    rejected_by_clickhouse  ClickHouse refused the row for its data (constraint, parse)
    unconvertible           converting the record failed in an unforeseen way (never stops the sink)
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "H_ERROR",
    "H_OFFSET",
    "H_PARTITION",
    "H_REASON",
    "H_SINK",
    "H_TIMESTAMP",
    "H_TOPIC",
    "MAX_ERROR_BYTES",
    "dlq_headers",
]

H_REASON: Final = "bypass.reason"
H_ERROR: Final = "bypass.error"
H_TOPIC: Final = "bypass.source.topic"
H_PARTITION: Final = "bypass.source.partition"
H_OFFSET: Final = "bypass.source.offset"
H_TIMESTAMP: Final = "bypass.source.timestamp"
H_SINK: Final = "bypass.sink"

MAX_ERROR_BYTES: Final = 2000


def dlq_headers(
    reason: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    timestamp_ms: int | None = None,
    **extra: str,
) -> list[tuple[str, bytes]]:
    """The DLQ headers of one record, in the contract's order.

    ``extra`` adds ``bypass.<name>`` headers (``sink="sink-clickhouse"`` ->
    ``bypass.sink``); the error text is cut to ``MAX_ERROR_BYTES``.
    """
    headers = [
        (H_REASON, reason.encode()),
        (H_ERROR, error.encode()[:MAX_ERROR_BYTES].decode(errors="ignore").encode()),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
    ]
    if timestamp_ms is not None:
        headers.append((H_TIMESTAMP, str(timestamp_ms).encode()))
    headers.extend((f"bypass.{name}", value.encode()) for name, value in extra.items())
    return headers
