"""The Redis blacklist mirror's writes and reads, against an in-memory stand-in for redis-py."""

from __future__ import annotations

from typing import Any

import orjson

from sinks._sample import sample_blacklist
from sinks.base import SourceRecord
from sinks.redis_mirror import MirrorEntry, RedisBlacklistSink, encode_entry, lookup, mirror_key

NOW = 1_763_856_000_000


class _Pipeline:
    def __init__(self, calls: list[tuple[list[str], list[str]]]) -> None:
        self.calls = calls
        self.queued: list[tuple[list[str], list[str]]] = []

    def execute(self) -> list[Any]:
        self.calls.extend(self.queued)
        return [0] * len(self.queued)


class _Redis:
    """Records the merge script's calls; ``hgetall`` answers from ``hashes``."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def register_script(self, script: str) -> Any:
        assert "PEXPIREAT" in script

        def run(keys: list[str], args: list[str], client: _Pipeline) -> None:
            client.queued.append((keys, args))

        return run

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        assert transaction is False
        return _Pipeline(self.calls)

    def hgetall(self, name: str) -> dict[bytes, bytes]:
        return self.hashes.get(name, {})


def test_the_sink_calls_the_merge_script_with_the_entry_and_skips_expired_ones() -> None:
    client = _Redis()
    sink = RedisBlacklistSink(client, prefix="p:", clock_ms=lambda: NOW)
    records = [
        sample_blacklist(1, expires_at=NOW + 1000, rule_ids=["r2", "r1", "r2"]),
        sample_blacklist(2, expires_at=NOW),  # expired when written: skipped
    ]
    for i, record in enumerate(records):
        sink.add(SourceRecord("bypass.blacklist", 0, i, b"k", orjson.dumps(record)))
    assert sink.pending() == 2
    assert sink.flush() == 1
    assert client.calls == [(["p:bl:user:u1"], ["fraud", str(NOW + 1000), "v1", "e1", "r1,r2", str(NOW)])]
    assert (sink.written, sink.skipped_expired, sink.pending()) == (1, 1, 0)


def test_lookup_reports_the_live_labels_only() -> None:
    client = _Redis()
    live = MirrorEntry("user", "u1", "fraud", ("r1", "r2"), NOW + 1, "v1", "e|1")
    gone = MirrorEntry("user", "u1", "resale", ("r3",), NOW, "v1", "e2")
    client.hashes[mirror_key("p:", "user", "u1")] = {
        b"fraud": encode_entry(live).encode(),
        b"resale": encode_entry(gone).encode(),
        b"junk": b"not an entry",
    }
    assert mirror_key("p:", "user", "u1") == "p:bl:user:u1"
    assert lookup(client, "p:", "user", "u1", now_ms=NOW) == [live]
    assert lookup(client, "p:", "user", "u2", now_ms=NOW) == []
