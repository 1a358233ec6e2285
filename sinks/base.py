"""The tiny sink interface every writer of bypass follows (STYLE.md habit 8).

A sink buffers records with ``add()`` and makes them durable with ``flush()``.
The runner that feeds it commits Kafka offsets only after ``flush()``
returned: a failed flush means no commit, so nothing is lost - the records are
flushed again (by this process or, after a restart, by the next one), and the
sink is idempotent so a second write changes nothing.

    BypassError
    └── SinkError                  a sink could not do its job
        ├── SinkBackpressureError  the target is down or slow: retry after ``retry_after`` s
        └── RecordError            one record does not fit the schema: dead-letter it
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from features.errors import BypassError


class SinkError(BypassError):
    """A sink could not write."""


class SinkBackpressureError(SinkError):
    """The target refused or failed the write; ``fields['retry_after']`` is the advised delay (s)."""

    @property
    def retry_after(self) -> float:
        return float(self.fields.get("retry_after", 1.0))


class RecordError(SinkError):
    """A record does not fit the schema. It goes to the DLQ: ``fields['reason']`` a short
    code (``bypass.reason``; :mod:`sinks.dlq` lists them), the message the human text
    (``bypass.error``), ``fields['field']`` the offending field when there is one."""

    @property
    def reason(self) -> str:
        return str(self.fields.get("reason", "invalid_record"))


class SourceRecord(NamedTuple):
    """One Kafka record handed to a sink, with its coordinates (a NamedTuple: immutable and
    about twice as cheap to build as a frozen dataclass, on a path run once per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class Sink(Protocol):
    """``add()`` buffers (raising RecordError for a record that can never be written);
    ``flush()`` writes everything buffered or raises SinkBackpressureError and keeps it."""

    def add(self, record: SourceRecord) -> None: ...

    def flush(self) -> int: ...

    def pending(self) -> int: ...

    def clear(self) -> None: ...
