# ruff: noqa: S608  (database names come from the test fixtures)
"""The event archive (risk_events) on the real stack: every valid raw event once after FINAL,
through a writer SIGKILL, malformed messages left out, phone numbers hashed."""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson
import pytest
from sinks_support import produce, sink_settings, spawn, wait_for

from sinks.clickhouse import connect
from sinks.clickhouse_schema import migrate
from streams.settings import Settings

PHONE_DIGITS = "13912345678"


def _client(settings: Settings) -> Any:
    return connect(
        settings.clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )


def _count(client: Any, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def _events(n: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    for i in range(n):
        event: dict[str, Any] = {
            "event_id": f"ev-{i:05d}",
            "type": "login" if i % 3 else "phone_change",
            "ts": now - (n - i) * 10,
            "user_id": f"u{i % 50}",
            "device_id": f"d{i % 70}",
            "ip": f"10.0.{i % 5}.{i % 200}",
            "attrs": {"amount": i},
        }
        if i % 3 == 0:
            event["phone"] = f"+86 {PHONE_DIGITS[:3]}-{PHONE_DIGITS[3:7]}-{PHONE_DIGITS[7:]}"
            event["geo"] = {"lat": 39.9, "lon": 116.4, "city": "Beijing"}
        out.append(event)
    return out


@pytest.fixture
def ch_settings(settings: Settings) -> Settings:
    s = sink_settings(settings, sink_batch_size=500)
    migrate(_client(s), s.clickhouse_database)
    return s


def test_archive_holds_each_valid_event_once_across_a_writer_sigkill(ch_settings: Settings) -> None:
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    raw_topic = ch_settings.raw_topics[0]
    events = _events(2_000)
    malformed: list[bytes] = [
        b"not json",
        orjson.dumps({"event_id": "bad-1", "type": "login"}),  # no ts, no user
        orjson.dumps({**events[0], "event_id": "bad-2", "password": "x"}),  # unknown field
        orjson.dumps({**events[0], "event_id": "bad-3", "phone": "call me"}),  # not a phone number
    ]
    produce(ch_settings, raw_topic, [*events[:1_000], *malformed, *events[1_000:]])
    # redelivered copies of events already produced (an at-least-once producer)
    produce(ch_settings, raw_topic, events[:100])
    crashing = spawn(ch_settings, "sink", "clickhouse", "--crash-after-flushes", "2")
    out, _ = crashing.communicate(timeout=120)
    assert crashing.returncode == 17, out  # exited after its 2nd insert, before committing it
    inserted = _count(client, f"SELECT count() FROM {db}.risk_events")
    assert 0 < inserted < 2_000
    writer = spawn(ch_settings, "sink", "clickhouse")
    try:
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_events FINAL"), 2_000, timeout=90)
        time.sleep(1.0)  # nothing more arrives
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=30)
    assert writer.returncode == 0
    ids = [
        r[0]
        for r in client.query(f"SELECT event_id FROM {db}.risk_events FINAL ORDER BY event_id").result_rows
    ]
    assert ids == sorted(e["event_id"] for e in events)  # no malformed one, each valid one once
    # personal data: only the keyed hash is stored
    text = str(client.query(f"SELECT * FROM {db}.risk_events").result_rows)
    assert PHONE_DIGITS not in text and "+86" not in text
    phones = client.query(f"SELECT DISTINCT phone FROM {db}.risk_events FINAL WHERE phone != ''").result_rows
    assert len(phones) == 1 and phones[0][0].startswith("ph_")
    row = client.query(
        f"SELECT event_type, user_id, geo_city, JSONExtractInt(attrs, 'amount'), source_topic "
        f"FROM {db}.risk_events FINAL WHERE event_id = 'ev-00003'"
    ).result_rows[0]
    assert row == ("phone_change", "u3", "Beijing", 3, raw_topic)


def test_archive_off_writes_no_event(ch_settings: Settings) -> None:
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    s = ch_settings.model_copy(update={"archive_events": False})
    produce(s, s.raw_topics[0], _events(20))
    produce(s, s.hits_topic, [])
    result = spawn(s, "sink", "clickhouse", "--idle-exit", "3")
    out, _ = result.communicate(timeout=90)
    assert result.returncode == 0, out
    assert _count(client, f"SELECT count() FROM {db}.risk_events") == 0
