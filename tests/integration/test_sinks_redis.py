"""The Redis mirror and named lists on the real stack."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sinks_support import bypass, produce, sink_settings, start_in_thread, wait_for

from sinks._sample import sample_blacklist
from sinks.redis_lists import PrefetchingListProvider
from sinks.redis_mirror import RedisBlacklistSink, lookup, redis_client
from streams.core.outputs import build_runner
from streams.settings import Settings


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _runner(settings: Settings, **kw: Any) -> Any:
    sink = RedisBlacklistSink(redis_client(settings.redis_url), prefix=settings.redis_key_prefix)
    return build_runner(settings, sink, [settings.blacklist_topic], "redis", **kw)


def _labels(settings: Settings, key: str) -> dict[str, tuple[str, ...]]:
    client = redis_client(settings.redis_url)
    return {e.label: e.rule_ids for e in lookup(client, settings.redis_key_prefix, "user", key)}


@pytest.fixture
def rd_settings(settings: Settings) -> Settings:
    return sink_settings(settings)


def test_mirror_merges_redeliveries_and_skips_expired_entries(rd_settings: Settings) -> None:
    now = _now_ms()
    far, later = now + 3_600_000, now + 7_200_000
    entries = [
        sample_blacklist(1, expires_at=far, rule_ids=["r1"]),
        sample_blacklist(1, expires_at=later, rule_ids=["r2"]),  # same label: rules merge, later expiry wins
        sample_blacklist(1, expires_at=far, rule_ids=["r1"]),  # redelivery: no change
        sample_blacklist(1, expires_at=far, label="resale", rule_ids=["r9"]),
        sample_blacklist(2, expires_at=now - 1_000),  # expired before it arrived: never written
    ]
    produce(rd_settings, rd_settings.blacklist_topic, entries)
    running = start_in_thread(_runner(rd_settings))
    try:
        wait_for(lambda: running.runner.stats.consumed, 5)
        wait_for(lambda: running.runner.stats.commits > 0, True)
    finally:
        running.close()
    assert _labels(rd_settings, "u1") == {"fraud": ("r1", "r2"), "resale": ("r9",)}
    client = redis_client(rd_settings.redis_url)
    key = f"{rd_settings.redis_key_prefix}bl:user:u1"
    expires = _now_ms() + client.pttl(key)  # (PEXPIRETIME needs Redis 7)
    assert abs(expires - later) <= 2_000  # the key expires with its latest label, not the first one
    assert not client.exists(f"{rd_settings.redis_key_prefix}bl:user:u2")
    listed = bypass(rd_settings, "lists", "check", "user", "u1")
    assert listed.returncode == 0, listed.stderr
    assert "label=fraud rules=r1,r2" in listed.stdout and "label=resale rules=r9" in listed.stdout
    not_listed = bypass(rd_settings, "lists", "check", "user", "u2")
    assert not_listed.returncode == 1 and "not listed" in not_listed.stdout


def test_redis_restarted_mirror_reapplies_and_expired_stay_expired(stack: Any, rd_settings: Settings) -> None:
    if not stack.restartable("redis"):
        pytest.skip("Redis is external in this session")  # only the local stack can be stopped
    now = _now_ms()
    produce(rd_settings, rd_settings.blacklist_topic, [sample_blacklist(1, expires_at=now + 3_600_000)])
    running = start_in_thread(_runner(rd_settings))
    try:
        wait_for(lambda: "fraud" in _labels(rd_settings, "u1"), True)
        stack.stop_part("redis")
        short = now + 4_000  # expires while Redis is down
        produce(
            rd_settings,
            rd_settings.blacklist_topic,
            [sample_blacklist(3, expires_at=short), sample_blacklist(4, expires_at=now + 3_600_000)],
        )
        wait_for(lambda: running.runner.stats.failed_flushes > 0, True, timeout=30)
        time.sleep(max(0.0, (short - _now_ms()) / 1000) + 0.5)
        stack.start_part("redis")
        wait_for(lambda: "fraud" in _labels(rd_settings, "u4"), True, timeout=60)
    finally:
        running.close()
    assert _labels(rd_settings, "u3") == {}
    assert not redis_client(rd_settings.redis_url).exists(f"{rd_settings.redis_key_prefix}bl:user:u3")
    assert "fraud" in _labels(rd_settings, "u1")
    # Redis lost everything (FLUSHDB): --from-beginning re-applies the topic, still skipping expired ones
    client = redis_client(rd_settings.redis_url)
    for k in client.scan_iter(match=f"{rd_settings.redis_key_prefix}*"):
        client.delete(k)
    fresh = rd_settings.model_copy(update={"app_id": rd_settings.app_id + "_rebuild"})
    rebuilt = start_in_thread(_runner(fresh, from_beginning=True))
    try:
        wait_for(lambda: sorted(k for k in ("u1", "u3", "u4") if _labels(fresh, k)), ["u1", "u4"], timeout=60)
    finally:
        rebuilt.close()


def test_named_lists_cli_and_prefetching_provider(rd_settings: Settings) -> None:
    assert bypass(rd_settings, "clickhouse", "migrate").returncode == 0  # list changes are audited there
    added = bypass(rd_settings, "lists", "add", "bad_ips", "10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert added.returncode == 0 and "added 3 of 3" in added.stdout
    removed = bypass(rd_settings, "lists", "remove", "bad_ips", "10.0.0.2")
    assert "removed 1 of 1" in removed.stdout
    shown = bypass(rd_settings, "lists", "show", "bad_ips")
    assert shown.stdout.split() == ["10.0.0.1", "10.0.0.3"]
    provider = PrefetchingListProvider(redis_client(rd_settings.redis_url), rd_settings.redis_key_prefix)
    provider.prefetch({("bad_ips", "10.0.0.1"), ("bad_ips", "10.0.0.2"), ("vip", "u1")})
    assert provider.round_trips == 1
    assert provider.contains("bad_ips", "10.0.0.1") is True
    assert provider.contains("bad_ips", "10.0.0.2") is False
    assert provider.contains("vip", "u1") is False
    assert provider.round_trips == 1 and provider.misses == 0  # all answered from memory
    assert provider.contains("bad_ips", "10.0.0.3") is True  # not prefetched: one look-up, counted
    assert provider.misses == 1


def test_provider_from_settings_is_what_the_worker_uses(rd_settings: Settings) -> None:
    from sinks.redis_lists import add, provider_from_settings
    from streams.core.assembly import list_provider

    add(redis_client(rd_settings.redis_url), rd_settings.redis_key_prefix, "vip", ["u7"])
    provider = list_provider(rd_settings)
    assert isinstance(provider, PrefetchingListProvider)
    provider.prefetch({("vip", "u7"), ("vip", "u8")})
    assert provider.contains("vip", "u7") and not provider.contains("vip", "u8")
    assert provider_from_settings(rd_settings).contains("vip", "u7")
