"""On-call work on the real stack: a live backfill reaches the inline services (Redis), and a
rule set is rolled back on running workers within seconds."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sinks_support import bypass, read_all, sink_settings, spawn, start_in_thread, wait_for
from test_pipeline import FEATURES, USER_RULES, Worker, ev, publish, read_topic, values
from test_pipeline import produce as produce_events
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


@pytest.mark.slow
def test_activate_rolls_two_running_workers_back_within_two_seconds_and_history_says_so(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 15, item 2: before, re-publishing an old version did nothing, so a bad rule set
    could not be rolled back; nothing listed the versions or what the workers ran."""
    from sinks.clickhouse import connect

    s = settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 6_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "operator": "oncall-test",
        }
    )
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, s.blacklist_topic])
    for version in ("u-1", "u-2"):
        assert publish(s, USER_RULES.format(version=version), tmp_path, f"{version}.yaml").returncode == 0
    one, two = Worker(s, tmp_path / "w1.log"), Worker(s, tmp_path / "w2.log")
    workers = [one, two]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            w.metric("bypass_ruleset_info", 'version="u-2"') == 1.0 for w in workers
        ):
            time.sleep(0.2)
        assert all(w.metric("bypass_ruleset_info", 'version="u-2"') == 1.0 for w in workers)

        called = time.monotonic()
        done = bypass(s, "rules", "activate", "u-1")
        assert done.returncode == 0, done.stderr
        assert "activated rule-set version u-1 (was u-2)" in done.stdout
        assert "warning" not in done.stderr  # the audit row was written
        switched = time.monotonic()
        while time.monotonic() - switched < 5 and not all(
            w.metric("bypass_ruleset_info", 'version="u-1"') == 1.0 for w in workers
        ):
            time.sleep(0.02)
        took = time.monotonic() - switched
        print(
            f"\nbypass rules activate took {switched - called:.2f} s; both workers on u-1 {took:.2f} s after"
        )
        assert took < 2.0
        again = bypass(s, "rules", "activate", "u-1")
        assert again.returncode == 0 and "already active: nothing to do" in again.stdout

        later = [
            ev(f"rb-{i}", "phone_change", int(time.time() * 1000) + i, "u-rb", phone=f"+8613700{i:06d}")
            for i in range(3)
        ]
        produce_events(s, later)
        hits = values(
            read_topic(
                s,
                s.hits_topic,
                lambda m: any(b'"rb-2"' in x.value() for x in m),
                timeout_s=60,
                settle_s=1,
            )
        )
        assert {h["ruleset_version"] for h in hits if h["key"] == "u-rb"} == {"u-1"}

        # a malformed message for the on-call screen's dead-letter count (below)
        plain = kafka.producer(s)
        plain.produce(s.raw_topics[0], b"{not json", key=b"u-x")
        assert plain.flush(10) == 0
        read_topic(s, s.dlq_topic, lambda m: len(m) >= 1, timeout_s=60, settle_s=0)

        # a worker started now starts on the activated version, not the last published one
        three = Worker(s, tmp_path / "w3.log")
        workers.append(three)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and three.metric("bypass_ruleset_info", 'version="u-1"') != 1.0:
            time.sleep(0.2)
        assert three.metric("bypass_ruleset_info", 'version="u-1"') == 1.0

        deadline = time.monotonic() + 30
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            shown = bypass(s, "rules", "history", "--json")
            assert shown.returncode == 0, shown.stderr
            rows = {r["version"]: r for r in map(orjson.loads, shown.stdout.splitlines())}
            if len(rows.get("u-1", {}).get("workers", [])) == 3:
                break
            time.sleep(1)
        assert rows["u-1"]["active"] and not rows["u-2"]["active"]
        assert len(rows["u-1"]["workers"]) == 3 and rows["u-2"]["workers"] == []
        assert [a["by"] for a in rows["u-1"]["activated"]] == ["oncall-test", "oncall-test"]
        assert rows["u-1"]["source"].endswith("u-1.yaml") and rows["u-1"]["rules"] >= 3
        table = bypass(s, "rules", "history")
        assert "ACTIVE" in table.stdout and "u-2" in table.stdout

        # issue 15, item 4: one screen for on-call over every running worker and writer
        mirror_proc = spawn(s, "sink", "redis")
        deadline = time.monotonic() + 30
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            shown = bypass(s, "status", "--all", "--json")
            view = orjson.loads(shown.stdout)
            kinds = [p["kind"] for p in view.get("processes", [])]
            if view["dlq_last_hour"].get("not_json") == 1 and shown.returncode == 0 and "sink-redis" in kinds:
                break
            time.sleep(1)
        assert view["healthy"], view["problems"]
        assert view["dependencies"] == {"kafka": "ok", "clickhouse": "ok", "redis": "ok"}
        running = [p for p in view["processes"] if p["kind"] == "worker"]
        assert len(running) == 3 and {p["ruleset"] for p in running} == {"u-1"}
        assert all(p["code"] == 200 and "consumer_lag" in p["health"] for p in running)
        assert view["dlq_last_hour"] == {"not_json": 1}
        screen = bypass(s, "status", "--all")
        assert screen.returncode == 0 and "workers (3)" in screen.stdout
        assert "dead letters in the last hour: not_json 1" in screen.stdout
        # the mirror may have written the blacklist entries of the rb- events meanwhile
        assert "sink-redis" in screen.stdout and re.search(r"written \d+", screen.stdout), screen.stdout
        mirror_proc.terminate()
        mirror_proc.wait(timeout=30)
    finally:
        for w in workers:
            w.stop()
    client = connect(s.clickhouse_url, username=s.clickhouse_user)
    audit = client.query(
        f"SELECT version, action, by FROM {s.clickhouse_database}.risk_ruleset_versions FINAL ORDER BY at"  # noqa: S608
    ).result_rows
    assert [tuple(r) for r in audit] == [
        ("u-1", "publish", "oncall-test"),
        ("u-2", "publish", "oncall-test"),
        ("u-1", "activate", "oncall-test"),
    ]
