"""Regression: replay printed a KafkaException traceback when Kafka was unreachable."""

from __future__ import annotations

import socket

import pytest

from streams.core.rulestore import PublishError, read_versions
from streams.settings import Settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


def test_reading_rule_sets_from_an_unreachable_kafka_is_a_clear_error() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{_closed_port()}")
    with pytest.raises(PublishError) as info:
        read_versions(settings, timeout_s=1.0)
    assert "cannot reach Kafka" in info.value.message
    assert "BYPASS_KAFKA_BOOTSTRAP" in info.value.message
