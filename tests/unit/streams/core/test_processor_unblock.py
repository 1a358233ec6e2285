"""streams.core.processor: unblock overrides keep blacklist entries from being emitted."""

from __future__ import annotations

from typing import Any

from sinks.list_admin import Unblock, unblock_list_name
from streams.core.order import SourceEvent

from .test_processor import T0, make_processor, resale_events


class _Provider:
    def __init__(self, unblocks: dict[tuple[str, str], Unblock]) -> None:
        self.unblocks = unblocks
        self.prefetched: list[tuple[str, set[str]]] = []

    def contains(self, name: str, value: Any) -> bool:
        return False

    def prefetch_unblocks(self, entity: str, keys: set[str]) -> None:
        self.prefetched.append((entity, set(keys)))

    def unblock(self, entity: str, key: str) -> Unblock | None:
        return self.unblocks.get((entity, key))


def test_an_active_unblock_drops_the_blacklist_entry_and_the_hit_says_why() -> None:
    p = make_processor()
    until = T0 + 86_400_000
    p.lists = _Provider({("user", "u1"): Unblock("user", "u1", until, "ana", "false positive", T0 - 1)})
    result = p.process("user", "u1", None, resale_events())
    assert result.blacklist == [] and result.blacklist_sources == []
    assert result.unblocked == 1
    hit = next(h for h in result.hits if h["rule_id"] == "resale_phone_churn")
    assert hit["unblock"] is not None
    assert (hit["unblock"]["who"], hit["unblock"]["why"], hit["unblock"]["until_ms"]) == (
        "ana",
        "false positive",
        until,
    )
    # hits of other rules (no blacklist action) say nothing
    assert all(h["unblock"] is None for h in result.hits if h["rule_id"] != "resale_phone_churn")
    assert p.lists.prefetched == [("user", {"u1"})]  # one look-up for the keys with entries


def test_an_unblock_ending_before_the_event_does_not_suppress() -> None:
    p = make_processor()
    p.lists = _Provider({("user", "u1"): Unblock("user", "u1", T0 + 1, "ana", "old", T0 - 10)})
    result = p.process("user", "u1", None, resale_events())  # the sign is at T0 + 180 s
    assert [b["label"] for b in result.blacklist] == ["account_resale"]
    assert all(h["unblock"] is None for h in result.hits)


def test_no_provider_and_other_keys_emit_as_before() -> None:
    p = make_processor()
    assert [b["key"] for b in p.process("user", "u1", None, resale_events()).blacklist] == ["u1"]
    p2 = make_processor()
    p2.lists = _Provider({("user", "someone-else"): Unblock("user", "x", T0 * 2, "a", "b", T0)})
    assert [b["key"] for b in p2.process("user", "u1", None, resale_events()).blacklist] == ["u1"]


def test_no_lookup_when_nothing_would_be_blacklisted() -> None:
    p = make_processor()
    provider = _Provider({})
    p.lists = provider
    p.process(
        "user",
        "u1",
        None,
        [SourceEvent({"event_id": "x", "type": "login", "ts": T0, "user_id": "u1"}, "t", 0, 1, T0)],
    )
    assert provider.prefetched == []


def test_reserved_list_name() -> None:
    assert unblock_list_name("device") == "unblock.device"


def test_redis_down_for_the_unblock_look_up_is_back_pressure_not_a_blacklist_entry() -> None:
    import pytest

    from sinks.base import SinkBackpressureError
    from sinks.redis_lists import ListUnavailableError

    class _Down(_Provider):
        def prefetch_unblocks(self, entity: str, keys: set[str]) -> None:
            raise ListUnavailableError("Redis unblock look-up failed: refused", retry_after=1.0)

    p = make_processor()
    p.lists = _Down({})
    with pytest.raises(SinkBackpressureError):  # the batch step waits and retries (Redis down)
        p.process("user", "u1", None, resale_events())
