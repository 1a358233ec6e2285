"""On-call work on the real stack: a live backfill reaches the inline services (Redis)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sinks_support import read_all, sink_settings, start_in_thread, wait_for
from test_pipeline import FEATURES, Worker, publish, read_topic
from test_replay import RULES, direct_hits, produce, run_replay

from sinks.redis_mirror import RedisBlacklistSink, redis_client
from streams.core import kafka
from streams.core.outputs import build_runner
from streams.local.simulate import SimConfig, Simulator
from streams.settings import Settings

DAY = 86_400_000


def mirror(settings: Settings, new: int | None = None) -> dict[str, dict[bytes, bytes]]:
    """Run the Redis mirror over the ``new`` messages of the blacklist topic it has not
    consumed yet (default: all); return what it left in Redis (key without the prefix ->
    hash)."""
    total = len(read_all(settings, settings.blacklist_topic)) if new is None else new
    client = redis_client(settings.redis_url)
    sink = RedisBlacklistSink(client, prefix=settings.redis_key_prefix)
    running = start_in_thread(build_runner(settings, sink, [settings.blacklist_topic], "redis"))
    try:
        wait_for(lambda: running.runner.stats.consumed, total, timeout=60)
        wait_for(lambda: running.runner.stats.commits > 0, True)
    finally:
        running.close()
    prefix = settings.redis_key_prefix
    return {
        key.decode()[len(prefix) :]: client.hgetall(key) for key in client.scan_iter(match=f"{prefix}bl:*")
    }


@pytest.mark.slow
def test_a_live_backfill_with_emit_blacklist_gives_redis_the_live_entries_and_twice_nothing_more(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 15, item 1: before, a replay never produced to the blacklist topic, so a
    backfill after an outage never reached inline services."""
    now = time.time_ns() // 1_000_000
    config = SimConfig(users=120, rate=100, duration_s=30, seed=11, start_ms=now - 3 * DAY)
    events = list(Simulator(config).events())
    s = sink_settings(
        settings.model_copy(
            update={
                "features_spec": FEATURES,
                "topic_partitions": 2,
                "consumer_session_timeout_ms": 6_000,
                "consumer_heartbeat_interval_ms": 500,
                "worker_batch_within_ms": 20,
                "table_standby_replicas": 0,
                "replay_batch_size": 500,
            }
        )
    )
    raw = s.raw_topics[0]
    produce(s, raw, events, partitions=2)
    kafka.ensure_topics(s, [s.hits_topic, s.blacklist_topic, s.dlq_topic])
    rules_text = RULES.read_text()
    assert publish(s, rules_text, tmp_path).returncode == 0
    expected = direct_hits(s, raw, rules_text)
    assert expected

    # the live run: worker -> blacklist topic -> Redis mirror
    worker = Worker(s, tmp_path / "worker.log")
    try:
        read_topic(s, s.hits_topic, lambda m: len(m) >= len(expected), timeout_s=180, settle_s=3)
    finally:
        worker.stop()
    live = mirror(s.model_copy(update={"redis_key_prefix": s.redis_key_prefix + "live:"}))
    assert live, "the live run left no blacklist entry in Redis"

    # the backfill of the same range: its own blacklist topic and Redis prefix, run twice
    bf = s.model_copy(
        update={"blacklist_topic": s.blacklist_topic + ".bf", "redis_key_prefix": s.redis_key_prefix + "bf:"}
    )
    kafka.ensure_topics(bf, [bf.blacklist_topic])
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    first = run_replay(bf, from_ms=t1, to_ms=t2, run_id="live", emit_blacklist=True)
    assert first.stats.blacklist_emitted > 0
    assert first.stats.blacklist_emitted + first.stats.blacklist_expired == first.stats.blacklist
    assert mirror(bf) == live
    second = run_replay(bf, from_ms=t1, to_ms=t2, run_id="live", emit_blacklist=True)
    assert second.stats.blacklist_emitted == first.stats.blacklist_emitted
    messages = read_all(bf, bf.blacklist_topic)
    assert len(messages) == 2 * first.stats.blacklist_emitted  # produced twice ...
    ids = [dict(m.headers() or [])["bypass.entry_id"] for m in messages]
    assert len(set(ids)) == first.stats.blacklist_emitted  # ... with the same deterministic ids
    assert mirror(bf, new=second.stats.blacklist_emitted) == live  # ... and Redis did not change
