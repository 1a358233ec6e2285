from __future__ import annotations

import pytest

from features.errors import ConfigError
from sinks.analytics import parse_since
from sinks.base import RecordError
from sinks.redis_mirror import MirrorEntry, decode_entry, encode_entry, entry_from_record

NOW = 1_763_856_000_000


def test_parse_since_durations_and_iso() -> None:
    assert parse_since("1d", now_ms=NOW) == NOW - 86_400_000
    assert parse_since("30m", now_ms=NOW) == NOW - 1_800_000
    assert parse_since("2025-11-23T00:00:00Z", now_ms=0) == NOW
    assert parse_since("-1d", now_ms=NOW) == parse_since("now-1d", now_ms=NOW) == NOW - 86_400_000
    assert parse_since("yesterday", now_ms=NOW + 3_600_000) == NOW - 86_400_000  # NOW is 00:00 UTC
    with pytest.raises(ConfigError, match="--since: bad time 'last week'"):
        parse_since("last week", now_ms=NOW)


def test_blacklist_entry_encoding_round_trips() -> None:
    e = MirrorEntry("user", "u1", "fraud", ("r1", "r2"), NOW, "v1", "e|1")
    assert decode_entry("user", "u1", "fraud", encode_entry(e)) == e
    assert decode_entry("user", "u1", "fraud", "garbage") is None


def test_entry_from_record_rejects_bad_fields() -> None:
    good = {
        "entity": "user",
        "key": "u1",
        "label": "fraud",
        "rule_ids": ["r1"],
        "event_id": "e1",
        "event_ts": 1,
        "expires_at": NOW,
        "ruleset_version": "v1",
    }
    assert entry_from_record(good).rule_ids == ("r1",)
    for field, value in [("expires_at", "soon"), ("rule_ids", "r1"), ("label", ""), ("label", "a|b")]:
        with pytest.raises(RecordError):
            entry_from_record({**good, field: value})
