"""The DLQ header contract shared by the worker, replay and the sinks."""

from __future__ import annotations

import subprocess
import sys

from sinks.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_REASON, H_SINK, H_TIMESTAMP, H_TOPIC, dlq_headers


def test_header_names_are_the_workers_dotted_ones() -> None:
    # the names the live worker and replay write (streams.core.deadletter)
    assert (H_REASON, H_ERROR) == ("bypass.reason", "bypass.error")
    assert (H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP) == (
        "bypass.source.topic",
        "bypass.source.partition",
        "bypass.source.offset",
        "bypass.source.timestamp",
    )
    assert H_SINK == "bypass.sink"


def test_dlq_headers_puts_code_text_and_coordinates_in_order() -> None:
    headers = dlq_headers("not_json", "value is not JSON: bad", "bypass.hits", 3, 41, sink="sink-clickhouse")
    assert headers == [
        ("bypass.reason", b"not_json"),
        ("bypass.error", b"value is not JSON: bad"),
        ("bypass.source.topic", b"bypass.hits"),
        ("bypass.source.partition", b"3"),
        ("bypass.source.offset", b"41"),
        ("bypass.sink", b"sink-clickhouse"),
    ]
    with_ts = dict(dlq_headers("x", "y", "t", 0, 0, timestamp_ms=1_763_856_000_123))
    assert with_ts[H_TIMESTAMP] == b"1763856000123"


def test_long_error_text_is_cut_on_a_character_boundary() -> None:
    error = dict(dlq_headers("x", "é" * 5000, "t", 0, 0))[H_ERROR]
    assert 1990 <= len(error) <= 2000
    assert error.decode() == "é" * (len(error) // 2)  # still valid UTF-8


def test_importing_it_pulls_in_no_kafka_client_or_faust() -> None:
    code = "import sys, sinks.dlq; print(sorted(m for m in ('faust', 'confluent_kafka') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
