"""JsonlSink (one record value per line, file or stream, resumable) and NullSink."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sinks.base import NullSink, PipelinedSink, RecordError, Sink, SinkError, SourceRecord
from sinks.jsonl import JsonlSink


def _rec(value: bytes | None, offset: int = 0) -> SourceRecord:
    return SourceRecord("bypass.hits", 0, offset, None, value)


def test_lines_reach_the_file_on_flush_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "hits.jsonl"  # the directory is created
    sink = JsonlSink(path)
    assert sink.target == str(path) and sink.position() == 0
    sink.add(_rec(b'{"a":1}'))
    sink.add(_rec(b'{"a":2}'))
    assert sink.pending() == 2 and path.read_bytes() == b""
    assert sink.flush() == 2
    assert path.read_bytes() == b'{"a":1}\n{"a":2}\n'
    assert sink.pending() == 0 and sink.position() == 16 and sink.flush() == 0
    sink.add(_rec(b'{"a":3}'))
    sink.clear()  # dropped, never written
    sink.add(_rec(b'{"a":4}'))
    sink.close()  # flushes what is buffered
    assert path.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":4}\n'
    assert sink.written == 3


def test_a_new_run_without_resume_starts_the_file_over(tmp_path: Path) -> None:
    path = tmp_path / "hits.jsonl"
    path.write_bytes(b"old\n")
    sink = JsonlSink(path)
    sink.add(_rec(b"new"))
    sink.close()
    assert path.read_bytes() == b"new\n"


def test_resume_cuts_the_file_back_to_the_checkpoint_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "hits.jsonl"
    first = JsonlSink(path)
    first.add(_rec(b'{"n":1}'))
    first.flush()
    checkpoint = first.position()
    first.add(_rec(b'{"n":2}'))  # written after the checkpoint: the resumed run writes it again
    first.close()
    assert checkpoint == 8 and path.read_bytes() == b'{"n":1}\n{"n":2}\n'

    again = JsonlSink(path, resume_at=checkpoint)
    assert again.position() == checkpoint
    again.add(_rec(b'{"n":2}'))
    again.add(_rec(b'{"n":3}'))
    again.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n{"n":3}\n'


def test_resume_of_a_missing_file_starts_it_and_a_short_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "new.jsonl"
    sink = JsonlSink(missing, resume_at=100)
    sink.add(_rec(b"x"))
    sink.close()
    assert missing.read_bytes() == b"x\n"
    with pytest.raises(SinkError, match="has 2 bytes"):
        JsonlSink(missing, resume_at=3)  # not the file that run wrote: never pad it
    assert missing.read_bytes() == b"x\n"


def test_a_stream_gets_the_lines_and_is_never_closed() -> None:
    stream = io.BytesIO()
    sink = JsonlSink(None, stream=stream, resume_at=5)  # resume_at means nothing for a stream
    assert sink.target == "stdout"
    sink.add(_rec(b'{"h":1}'))
    assert sink.flush() == 1
    assert sink.position() is None
    sink.close()
    assert not stream.closed and stream.getvalue() == b'{"h":1}\n'


def test_stdout_is_the_default_stream(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    sink = JsonlSink(None)
    sink.add(_rec(b'{"to":"stdout"}'))
    sink.close()
    assert capfdbinary.readouterr().out == b'{"to":"stdout"}\n'


@pytest.mark.parametrize(
    ("value", "reason"), [(None, "empty_value"), (b"", "empty_value"), (b"{}\n{}", "bad_value")]
)
def test_a_value_that_is_not_one_line_is_refused(tmp_path: Path, value: bytes | None, reason: str) -> None:
    sink = JsonlSink(tmp_path / "h.jsonl")
    with pytest.raises(RecordError) as err:
        sink.add(_rec(value))
    assert err.value.reason == reason
    assert sink.pending() == 0
    sink.close()


def test_null_sink_counts_and_writes_nothing() -> None:
    sink = NullSink()
    assert sink.target == "nothing written"
    for i in range(3):
        sink.add(_rec(b"{}", i))
    sink.add(_rec(None, 3))  # counted like any other: nothing is decoded
    assert sink.pending() == 4
    assert sink.flush() == 4 and sink.pending() == 0 and sink.flush() == 0
    sink.add(_rec(b"{}"))
    sink.clear()
    sink.add(_rec(b"{}"))
    sink.close()
    assert sink.written == 5 and sink.position() is None


def test_both_follow_the_sink_interface_and_are_not_pipelined(tmp_path: Path) -> None:
    sinks: list[Sink] = [NullSink(), JsonlSink(tmp_path / "h.jsonl")]
    for sink in sinks:
        assert not isinstance(sink, PipelinedSink)
        sink.clear()
    for closable in (sinks[0], sinks[1]):
        assert isinstance(closable, NullSink | JsonlSink)
        closable.close()
