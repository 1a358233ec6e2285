"""JSON Lines sink: one record value per line, to a file or a byte stream (stdout).

:class:`JsonlSink` follows the add()/flush() interface of :mod:`sinks.base`: ``add()``
buffers the record's value (already JSON: one ``bypass.hits`` record, say) followed by a
newline, ``flush()`` writes the buffered lines and flushes the file. A value must be one
line: a record without a value (or an empty one) is refused with reason ``empty_value``,
one holding a newline with ``bad_value`` (orjson never writes one).

Resuming (a replay restarted from its checkpoint): ``position()`` is the number of bytes
written so far to a file the sink owns; a new sink given that number as ``resume_at``
cuts the file back to it - dropping the lines written after the checkpoint - and appends
from there. A file shorter than ``resume_at`` was not written by that run: SinkError.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from sinks.base import RecordError, SinkError, SourceRecord

__all__ = ["JsonlSink"]


class JsonlSink:
    """Record values as JSON Lines to ``path`` (its directory created), or with ``path=None``
    to ``stream`` (default ``sys.stdout.buffer``; the sink never closes a stream).

    ``target`` names the output for messages: the path, or ``"stdout"``. ``written`` counts
    the lines written."""

    def __init__(
        self, path: Path | None, *, stream: IO[bytes] | None = None, resume_at: int | None = None
    ) -> None:
        self.path = path
        self._buf: list[bytes] = []
        self.written = 0
        if path is None:
            self._fh: IO[bytes] = sys.stdout.buffer if stream is None else stream
            self._own = False
            self.target = "stdout"
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is not None and path.exists():
            fh = open(path, "r+b")  # closed in close()
            size = fh.seek(0, 2)
            if not 0 <= resume_at <= size:
                fh.close()
                raise SinkError(
                    f"cannot resume {path} at byte {resume_at}: the file has {size} bytes",
                    path=str(path),
                    resume_at=resume_at,
                    size=size,
                )
            fh.truncate(resume_at)
            fh.seek(resume_at)
            self._fh = fh
        else:
            self._fh = open(path, "wb")  # closed in close()
        self._own = True
        self.target = str(path)

    def add(self, record: SourceRecord) -> None:
        value = record.value
        if not value:
            text = "record has no value (tombstone)" if value is None else "record value is empty"
            raise RecordError(text, reason="empty_value")
        if b"\n" in value:
            raise RecordError("value holds a newline: not one JSON line", reason="bad_value")
        self._buf.append(value + b"\n")

    def flush(self) -> int:
        """Write the buffered lines and flush the file; returns how many were written."""
        n = len(self._buf)
        if n:
            self._fh.write(b"".join(self._buf))
            self._buf.clear()
        self._fh.flush()
        self.written += n
        return n

    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def position(self) -> int | None:
        """Bytes written so far to the file (the ``resume_at`` of a later run); None for a stream."""
        return self._fh.tell() if self._own else None

    def close(self) -> None:
        """Flush what is buffered; close the file (never a stream handed in, nor stdout)."""
        self.flush()
        if self._own:
            self._fh.close()
