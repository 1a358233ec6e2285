"""``bypass produce`` counts what the broker confirmed, never what it only queued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import streams.cli.produce as produce_cli
from streams.cli.produce import produce
from streams.core import kafka
from streams.producer import DeliveryReport


class _Unconfirmed:
    """An EventProducer whose broker never confirms anything."""

    topic = "bypass.events"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.queued = 0

    def send(self, event: Any) -> None:
        self.queued += 1

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    @property
    def confirmed(self) -> int:
        return 0

    @property
    def in_flight(self) -> int:
        return self.queued

    def flush(self, timeout_s: float = 30.0) -> DeliveryReport:
        return DeliveryReport(delivered=0, failed=0, pending=self.queued)


def test_the_bar_never_shows_unconfirmed_events_as_done(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("streams.producer.EventProducer", _Unconfirmed)
    monkeypatch.setattr(kafka, "check_reachable", lambda settings, timeout_s=3.0: None)
    monkeypatch.setattr(produce_cli, "FLUSH_TIMEOUT_S", 0.3)
    monkeypatch.setenv("BYPASS_PHONE_HASH_KEY", "k" * 32)
    events = tmp_path / "e.jsonl"
    events.write_text(
        "".join(
            json.dumps({"event_id": f"e{i}", "type": "login", "ts": 1_763_856_000_000, "user_id": "u"}) + "\n"
            for i in range(2500)
        )
    )
    result = CliRunner().invoke(produce, ["--file", str(events)])
    assert result.exit_code != 0
    assert "2500/2500" not in result.output
    assert "0/2500" in result.output
    assert "2500 are unconfirmed" in str(result.exception)
