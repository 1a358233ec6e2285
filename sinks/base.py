"""The tiny sink interface every writer of bypass follows (``add()`` / ``flush()``).

A sink buffers records with ``add()`` and makes them durable with ``flush()``.
The runner that feeds it commits Kafka offsets only after ``flush()``
returned: a failed flush means no commit, so nothing is lost - the records are
flushed again (by this process or, after a restart, by the next one), and the
sink is idempotent so a second write changes nothing.

A sink that can write one batch while the next is read also has ``take()`` (hand the
buffered batch over) and ``write(batch)`` (:class:`PipelinedSink`; the runner writes in a
thread). :class:`NullSink` counts records and writes nothing (a replay without output).

    BypassError
    └── SinkError                  a sink could not do its job
        ├── SinkBackpressureError  the target is down or slow: retry after ``retry_after`` s
        └── RecordError            one record does not fit the schema: dead-letter it
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

from features.errors import BypassError

__all__ = [
    "NullSink",
    "PipelinedSink",
    "RecordError",
    "Sink",
    "SinkBackpressureError",
    "SinkError",
    "SourceRecord",
]


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


@runtime_checkable
class PipelinedSink(Protocol):
    """A sink whose writes can overlap the reading of the next batch: ``take()`` hands the
    buffered batch over (the buffer restarts empty), ``write(batch)`` writes it - from
    another thread - raising SinkBackpressureError and keeping what was not written. The
    batch is the sink's own (opaque to the runner)."""

    def take(self) -> Any: ...

    def write(self, batches: Any) -> int: ...


class NullSink:
    """Counts records and writes nothing: ``flush()`` returns how many were added since the
    last one, ``written`` the total."""

    target: str = "nothing written"

    def __init__(self) -> None:
        self._pending = 0
        self.written = 0

    def add(self, record: SourceRecord) -> None:
        self._pending += 1

    def flush(self) -> int:
        n, self._pending = self._pending, 0
        self.written += n
        return n

    def pending(self) -> int:
        return self._pending

    def clear(self) -> None:
        self._pending = 0

    def position(self) -> int | None:
        """Nothing is written anywhere: None (as for a stream)."""
        return None

    def close(self) -> None:
        """Count what is pending as written; nothing to release."""
        self.flush()
