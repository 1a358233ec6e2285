# ruff: noqa: S608  (database names come from the test fixtures)
"""The ClickHouse writer on the real stack: exactly once by hit_id through faults."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import pytest
from sinks_support import bypass, produce, read_all, sink_settings, spawn, start_in_thread, wait_for

from sinks._sample import sample_blacklist, sample_hit
from sinks.clickhouse import ClickHouseSink, connect
from sinks.clickhouse_schema import MIGRATIONS, migrate
from sinks.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_REASON, H_SINK, H_TOPIC
from streams.core.outputs import build_runner
from streams.settings import Settings


def _client(settings: Settings) -> Any:
    return connect(
        settings.clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )


def _final_ids(client: Any, db: str) -> list[str]:
    return [
        r[0] for r in client.query(f"SELECT hit_id FROM {db}.risk_hits FINAL ORDER BY hit_id").result_rows
    ]


def _count(client: Any, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def _runner(settings: Settings) -> Any:
    client = _client(settings)
    sink = ClickHouseSink(
        client,
        settings.clickhouse_database,
        {settings.hits_topic: "hits", settings.blacklist_topic: "blacklist"},
    )
    return build_runner(settings, sink, [settings.hits_topic, settings.blacklist_topic], "clickhouse")


@pytest.fixture
def ch_settings(settings: Settings) -> Settings:
    s = sink_settings(settings)
    migrate(_client(s), s.clickhouse_database)
    return s


def test_migrate_cli_is_idempotent_and_versioned(ch_settings: Settings) -> None:
    first = bypass(ch_settings, "clickhouse", "migrate")
    assert first.returncode == 0, first.stderr
    latest = max(m.version for m in MIGRATIONS)
    assert f"schema version {latest}; applied none (up to date)" in first.stdout  # migrated already
    ttl = bypass(ch_settings.model_copy(update={"clickhouse_ttl_days": 30}), "clickhouse", "migrate")
    assert "TTL set to 30 days on risk_hits" in ttl.stdout, ttl.stdout + ttl.stderr
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    versions = client.query(f"SELECT version FROM {db}.schema_migrations FINAL ORDER BY version").result_rows
    assert [v[0] for v in versions] == [m.version for m in MIGRATIONS]
    ddl = client.query(f"SHOW CREATE TABLE {db}.risk_hits").result_rows[0][0]
    assert "toIntervalDay(30)" in ddl
    again = bypass(ch_settings.model_copy(update={"clickhouse_ttl_days": 30}), "clickhouse", "migrate")
    assert "TTL set" not in again.stdout


def _ttl_of(client: Any, db: str, table: str) -> str:
    ddl = str(client.query(f"SHOW CREATE TABLE {db}.{table}").result_rows[0][0])
    match = re.search(r"^TTL (.*)$", ddl, re.M)
    return match.group(1).strip() if match else ""


def test_blacklist_ttl_counts_from_expires_at_not_event_time(ch_settings: Settings) -> None:
    # a rule's blacklist ttl may be longer than BYPASS_CLICKHOUSE_TTL_DAYS: an entry still
    # active must not be deleted, so its TTL starts when it expires
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    # a database migrated by the earlier code (TTL from event_time) is corrected by migrate
    client.command(f"ALTER TABLE {db}.risk_blacklist MODIFY TTL toDateTime(event_time) + toIntervalDay(7)")
    result = migrate(client, db, ttl_days=7)
    assert "risk_blacklist" in result.ttl_changed
    assert _ttl_of(client, db, "risk_blacklist") == "toDateTime(expires_at) + toIntervalDay(7)"
    assert _ttl_of(client, db, "risk_hits") == "toDateTime(event_time) + toIntervalDay(7)"
    assert migrate(client, db, ttl_days=7).ttl_changed == ()  # idempotent
    assert "risk_blacklist" in migrate(client, db, ttl_days=90).ttl_changed
    assert _ttl_of(client, db, "risk_blacklist") == "toDateTime(expires_at) + toIntervalDay(90)"
    assert "risk_blacklist" in migrate(client, db, ttl_days=0).ttl_changed
    assert _ttl_of(client, db, "risk_blacklist") == ""
    assert migrate(client, db, ttl_days=0).ttl_changed == ()


def test_redelivered_hits_are_stored_exactly_once_by_hit_id(ch_settings: Settings) -> None:
    hits = [sample_hit(i) for i in range(300)]
    produce(ch_settings, ch_settings.hits_topic, hits + hits[:120])  # 120 hits emitted twice
    produce(
        ch_settings,
        ch_settings.blacklist_topic,
        [sample_blacklist(i, expires_at=4_000_000_000_000) for i in range(5)] * 2,
    )
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    running = start_in_thread(_runner(ch_settings))
    try:
        wait_for(lambda: running.runner.stats.written, 430)  # every copy was inserted
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 300)
    finally:
        running.close()
    assert _final_ids(client, db) == sorted(h["hit_id"] for h in hits)
    rollup = _count(client, f"SELECT uniqExactMerge(hits) FROM {db}.risk_hits_hourly")
    assert rollup == 300  # the MV saw 420 rows; uniqExact of hit ids stays exact
    assert _count(client, f"SELECT count() FROM {db}.risk_blacklist FINAL") == 5
    row = client.query(
        f"SELECT features, features_text, toUnixTimestamp64Milli(event_time) FROM {db}.risk_hits FINAL "
        "WHERE hit_id = {h:String}",
        parameters={"h": hits[7]["hit_id"]},
    ).result_rows[0]
    assert row == (
        {"logins_1h": 7.0, "distinct_devices_1d": 2.0, "x": None},
        {"city": "Beijing"},
        hits[7]["event_ts"],
    )


def test_failed_rules_are_stored_with_their_error_and_never_counted(settings: Settings) -> None:
    """Issue 14, finding 6: a rule failing on every event (`x / 0`) used to look like a rule
    that hits, in `risk_hits` and in the rollup behind `bypass hits top`. Also: a database
    at schema version 3 (no `error` column, unfiltered rollup) is upgraded in place."""
    from sinks.clickhouse_schema import MIGRATIONS

    s = sink_settings(settings)
    client = _client(s)
    db = s.clickhouse_database
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(applied_at) "
        "ORDER BY version"
    )
    for m in MIGRATIONS[:3]:  # what an earlier release left behind
        for statement in m.statements:
            client.command(statement.format(db=db))
        client.insert(f"{db}.schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
    assert migrate(client, db).applied == tuple(m.version for m in MIGRATIONS[3:])
    now = int(time.time() * 1000)
    good = [{**sample_hit(i), "event_ts": now - 1000 - i} for i in range(5)]
    failed = [
        {
            **sample_hit(100 + i),
            "rule_id": "broken",
            "counted": False,
            "error": "division by zero",
            "event_ts": now - i,
        }
        for i in range(7)
    ]
    produce(s, s.hits_topic, good + failed)
    running = start_in_thread(_runner(s))
    try:
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 12)
    finally:
        running.close()
    errors = client.query(f"SELECT error, count() FROM {db}.risk_hits FINAL GROUP BY error ORDER BY error")
    assert errors.result_rows == [("", 5), ("division by zero", 7)]
    assert _count(client, f"SELECT uniqExactMerge(hits) FROM {db}.risk_hits_hourly") == 5
    top = bypass(s, "hits", "top", "--since", "1d")
    assert top.returncode == 0, top.stderr
    assert "broken" not in top.stdout and good[0]["rule_id"] in top.stdout


def test_same_batch_retried_with_its_token_is_dropped_by_clickhouse(ch_settings: Settings) -> None:
    import orjson

    from sinks.base import SourceRecord

    client = _client(ch_settings)
    db = ch_settings.clickhouse_database

    def insert(offsets: list[int], first_offset: int) -> None:
        sink = ClickHouseSink(client, db, {"h": "hits"})
        for i in offsets:
            sink.add(SourceRecord("h", 0, first_offset + i, None, orjson.dumps(sample_hit(i))))
        sink.flush()

    client.command(f"SYSTEM STOP MERGES {db}.risk_hits")  # raw row counts stay what was inserted
    insert(list(range(50)), 0)
    # the same offsets (same token) in another order: another block hash, still dropped
    insert(list(reversed(range(50))), 0)
    assert _count(client, f"SELECT count() FROM {db}.risk_hits") == 50
    # the same rows under other offsets (another token): inserted, collapsed only by FINAL
    insert(list(range(50)), 1000)
    assert _count(client, f"SELECT count() FROM {db}.risk_hits") == 100
    assert _count(client, f"SELECT count() FROM {db}.risk_hits FINAL") == 50


def test_clickhouse_stopped_mid_stream_then_catches_up(stack: Any, ch_settings: Settings) -> None:
    if not stack.restartable("clickhouse"):
        pytest.skip("ClickHouse is external in this session")  # only the local stack can be stopped
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    first = [sample_hit(i) for i in range(200)]
    second = [sample_hit(i) for i in range(200, 700)]
    running = start_in_thread(_runner(ch_settings))
    try:
        produce(ch_settings, ch_settings.hits_topic, first)
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 200)
        stack.stop_part("clickhouse")
        produce(ch_settings, ch_settings.hits_topic, second)
        wait_for(lambda: running.runner.stats.failed_flushes > 0, True, timeout=30)
        commits = running.runner.stats.commits
        time.sleep(2)  # keep it down for a few retries: lag grows, nothing more is committed
        assert running.runner.stats.commits == commits
        stack.start_part("clickhouse")
        client = _client(ch_settings)
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 700, timeout=90)
    finally:
        running.close()
    assert _final_ids(client, db) == sorted(h["hit_id"] for h in first + second)


def test_writer_killed_between_insert_and_commit_loses_and_duplicates_nothing(ch_settings: Settings) -> None:
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    hits = [sample_hit(i) for i in range(2_000)]
    produce(ch_settings, ch_settings.hits_topic, hits)
    s = ch_settings.model_copy(update={"sink_batch_size": 500})
    crashing = spawn(s, "sink", "clickhouse", "--crash-after-flushes", "2")
    out, _ = crashing.communicate(timeout=120)
    assert crashing.returncode == 17, out  # exited after its 2nd insert, before committing it
    inserted = _count(client, f"SELECT count() FROM {db}.risk_hits")
    assert 0 < inserted < 2_000
    writer = spawn(s, "sink", "clickhouse")
    try:
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 2_000, timeout=90)
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=30)
    assert writer.returncode == 0
    assert _final_ids(client, db) == sorted(h["hit_id"] for h in hits)
    assert _count(client, f"SELECT uniqExactMerge(hits) FROM {db}.risk_hits_hourly") == 2_000


def test_malformed_hit_goes_to_dlq_with_its_reason(ch_settings: Settings) -> None:
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    bad_missing = {k: v for k, v in sample_hit(1).items() if k != "rule_id"}
    bad_type = {**sample_hit(2), "event_ts": "yesterday"}
    produce(
        ch_settings,
        ch_settings.hits_topic,
        [sample_hit(0), bad_missing, b"not json", bad_type, sample_hit(3)],
    )
    running = start_in_thread(_runner(ch_settings))
    try:
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 2)
        wait_for(lambda: running.runner.stats.dead_lettered, 3)
    finally:
        running.close()
    dead = read_all(ch_settings, ch_settings.dlq_topic)
    # the worker's contract: bypass.reason a code, bypass.error the text, dotted coordinates
    found = sorted((dict(m.headers())[H_REASON].decode(), dict(m.headers())[H_ERROR].decode()) for m in dead)
    assert [reason for reason, _ in found] == ["missing_field", "not_json", "wrong_type"]
    assert found[0][1] == "field 'rule_id' is missing"
    assert found[1][1].startswith("value is not JSON: ")
    assert found[2][1] == "field 'event_ts' must be an integer, got str"
    for m in dead:
        headers = dict(m.headers())
        assert headers[H_TOPIC].decode() == ch_settings.hits_topic
        assert headers[H_SINK] == b"sink-clickhouse"
        assert int(headers[H_PARTITION]) >= 0 and int(headers[H_OFFSET]) >= 0
    assert b"not json" in [m.value() for m in dead]


def test_writer_refuses_a_database_without_the_schema(settings: Settings) -> None:
    result = bypass(sink_settings(settings), "sink", "clickhouse", timeout=60)
    assert result.returncode == 1
    assert "has no bypass schema: run `bypass clickhouse migrate`" in result.stderr


def test_row_refused_by_clickhouse_is_isolated_and_dead_lettered(ch_settings: Settings) -> None:
    client = _client(ch_settings)
    db = ch_settings.clickhouse_database
    # a rule the Python checks do not know: only ClickHouse refuses the row
    client.command(f"ALTER TABLE {db}.risk_hits ADD CONSTRAINT score_sane CHECK score < 1000")
    hits = [sample_hit(i) for i in range(40)]
    hits[17]["score"] = 5000.0
    produce(ch_settings, ch_settings.hits_topic, hits)
    running = start_in_thread(_runner(ch_settings))
    try:
        wait_for(lambda: _count(client, f"SELECT count() FROM {db}.risk_hits FINAL"), 39)
        wait_for(lambda: running.runner.stats.dead_lettered, 1)
        wait_for(lambda: running.runner.stats.commits > 0, True, timeout=30)
    finally:
        running.close()
    assert hits[17]["hit_id"] not in _final_ids(client, db)
    dead = read_all(ch_settings, ch_settings.dlq_topic)
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert headers[H_REASON] == b"rejected_by_clickhouse"
    assert headers[H_ERROR].decode().startswith("rejected by ClickHouse (code 469)")
    assert headers[H_SINK] == b"sink-clickhouse"
    assert b'"score":5000.0' in dead[0].value()
