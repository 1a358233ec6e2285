"""Every query of examples/queries.sql (and `bypass hits`) on the real schema, with known rows."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sinks_support import bypass

from sinks._sample import sample_blacklist, sample_hit
from sinks.base import SourceRecord
from sinks.clickhouse import ClickHouseSink, connect
from sinks.clickhouse_schema import migrate
from streams.settings import Settings

QUERIES = Path(__file__).resolve().parents[2] / "examples" / "queries.sql"


def load_queries(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        out[name.strip()] = sql.strip().rstrip(";")
    return out


DAY_MS = 86_400_000


def event_ts(event: int, now_ms: int) -> int:
    """Event ``event`` (1..5) at now - (10 - event) min, but never before midnight UTC:
    ``top_rules_today`` counts from the start of today (so just after 00:00 the events
    are pressed into the first seconds of the day, still in order)."""
    return max(now_ms - (10 - event) * 60_000, now_ms // DAY_MS * DAY_MS + event * 1_000)


def test_event_ts_stays_in_order_and_within_today() -> None:
    for now_ms in (1_763_856_000_000, 1_763_856_000_000 + 1, 1_763_856_000_000 + 300_000, 1_763_942_399_000):
        stamps = [event_ts(e, now_ms) for e in (1, 2, 3, 4, 5)]
        assert stamps == sorted(set(stamps))
        assert all(s // DAY_MS == now_ms // DAY_MS for s in stamps)
        assert all(s >= now_ms - 10 * 60_000 for s in stamps)


def _hit(
    event: int, rule: str, version: str, run_id: str, key: str, now_ms: int, mode: str
) -> dict[str, Any]:
    h = sample_hit(event, ruleset_version=version, run_id=run_id, mode=mode)
    h.update(
        rule_id=rule,
        key=key,
        event_ts=event_ts(event, now_ms),
        counted=mode == "active",
        hit_id=hashlib.sha256(f"e{event}|{rule}|{version}".encode()).hexdigest()[:32],
    )
    return h


KEYS = {1: "u1", 2: "u1", 3: "u2", 4: "u3", 5: "u1"}


@pytest.fixture
def loaded(settings: Settings) -> tuple[Settings, Any]:
    client = connect(
        settings.clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )
    migrate(client, settings.clickhouse_database)
    now = time.time_ns() // 1_000_000
    if DAY_MS - now % DAY_MS < 20_000:  # the queries would run tomorrow: start after midnight
        time.sleep((DAY_MS - now % DAY_MS) / 1000 + 0.5)
        now = time.time_ns() // 1_000_000
    hits = [_hit(e, "rA", "v1", "live", KEYS[e], now, "active") for e in (1, 2, 3, 4)]
    hits += [_hit(e, "rB", "v1", "live", KEYS[e], now, "shadow") for e in (1, 2)]
    hits += [_hit(e, "rA", "v2", "replay-1", KEYS[e], now, "active") for e in (1, 2, 5)]
    hits += [_hit(1, "rB", "v2", "replay-1", "u1", now, "shadow")]
    hits += [hits[0]]  # a redelivered copy
    blacklist = [
        sample_blacklist(1, expires_at=now + 3_600_000, rule_ids=["r1"]),
        {**sample_blacklist(1, expires_at=now + 1_800_000, rule_ids=["r2"]), "event_id": "e7"},
        sample_blacklist(2, expires_at=now - 1_000),
    ]
    sink = ClickHouseSink(client, settings.clickhouse_database, {"h": "hits", "b": "blacklist"})
    for i, h in enumerate(hits):
        sink.add(SourceRecord("h", 0, i, None, orjson.dumps(h)))
        if i == 5:
            sink.flush()  # two inserts, so the copy lands in another part
    for i, b in enumerate(blacklist):
        sink.add(SourceRecord("b", 0, i, None, orjson.dumps(b)))
    sink.flush()
    _load_analyst_tables(client, settings.clickhouse_database, now)
    db_client = connect(
        settings.clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
        database=settings.clickhouse_database,
    )
    return settings, db_client


def _event(e: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"e{e}",
        "type": "order" if e % 2 == 0 else "login",
        "ts": event_ts(e, now_ms),
        "user_id": KEYS[e],
        "device_id": f"d{e % 2}",
        "phone": "+86 139 0000 0000",
        "attrs": {"amount": e * 100},
    }


def _decision(
    e: int, now_ms: int, decision: str, rule_ids: list[str], shadow: list[str], rate: float
) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{e}", "event_type": "order", "event_ts": event_ts(e, now_ms), "entity": "user",
            "key": KEYS[e], "decision": decision, "score": 60.0 if rule_ids else 0.0, "rule_ids": rule_ids,
            "shadow_rule_ids": shadow, "sample_rate": rate, "ruleset_version": "v1", "run_id": "live",
            "source_topic": "raw", "source_partition": 0, "source_offset": e,
        }
    )  # fmt: skip


def _load_analyst_tables(client: Any, db: str, now: int) -> None:
    """risk_events (e1..e5, e1 twice), risk_decisions (rA on e1..e4, rB shadow on e1, e2, a
    sampled pass on e5 at rate 0.5) and risk_labels (u1 bad, u3 good)."""
    from streams.core.envelope import EnvelopeDecoder

    sink = ClickHouseSink(client, db, {"raw": "events", "d": "decisions"}, decoder=EnvelopeDecoder(b"q" * 16))
    for i, e in enumerate([1, 2, 3, 4, 5, 1]):
        sink.add(SourceRecord("raw", 0, i, None, orjson.dumps(_event(e, now)), event_ts(e, now)))
    for e in (1, 2, 3, 4):
        sink.add(
            SourceRecord("d", 0, e, None, _decision(e, now, "review", ["rA"], ["rB"] if e < 3 else [], 1.0))
        )
    sink.add(SourceRecord("d", 0, 5, None, _decision(5, now, "pass", [], [], 0.5)))
    sink.flush()
    client.insert(
        f"{db}.risk_labels",
        [["user", "u1", "chargeback", 0, "bank"], ["user", "u3", "good", 0, "ops"]],
        column_names=["entity", "key", "label", "ts", "source"],
    )


def _run(client: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    result = client.query(load_queries(QUERIES.read_text())[name], parameters=params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def test_queries_file_names_every_query() -> None:
    assert set(load_queries(QUERIES.read_text())) == {
        "top_rules_today",
        "entity_history",
        "shadow_vs_active",
        "ruleset_version_comparison",
        "hourly_trend_of_rule",
        "blocked_now",
        "hit_rate_by_rule_and_day",
        "precision_by_rule_version",
        "events_around_hit",
        "feature_prototype_user_devices_and_orders",
    }


def test_hit_rate_by_rule_and_day(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "hit_rate_by_rule_and_day", days=1)
    # 4 logged decisions + a pass sampled at 0.5 (counts 2): 6 evaluated
    assert [(r["rule_id"], r["mode"], r["hits"], r["evaluated"], r["hit_rate"]) for r in rows] == [
        ("rA", "active", 4, 6, round(4 / 6, 6)),
        ("rB", "shadow", 2, 6, round(2 / 6, 6)),
    ]


def test_precision_by_rule_version(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "precision_by_rule_version")
    assert [
        (r["ruleset_version"], r["rule_id"], r["flagged"], r["flagged_bad"], r["precision"]) for r in rows
    ] == [
        ("v1", "rA", 3, 1, round(1 / 3, 4)),  # u1, u2, u3 flagged; u1 bad, u3 labelled good
        ("v1", "rB", 1, 1, 1.0),
    ]


def test_events_around_hit(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    hit_id = hashlib.sha256(b"e2|rA|v1").hexdigest()[:32]
    rows = _run(client, "events_around_hit", hit_id=hit_id, minutes=30)
    assert [(r["event_id"], r["is_hit_event"]) for r in rows] == [("e1", 0), ("e2", 1), ("e5", 0)]
    assert {r["user_id"] for r in rows} == {"u1"}
    assert all(r["phone"].startswith("ph_") for r in rows)  # archived hashed, as at ingest


def test_feature_prototype_user_devices_and_orders(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "feature_prototype_user_devices_and_orders", hours=24, min_devices=1)
    assert [(r["user_id"], r["events"], r["devices"], r["order_amount"]) for r in rows] == [
        ("u1", 3, 2, 200.0),
        ("u3", 1, 1, 400.0),
        ("u2", 1, 1, 0.0),
    ]
    assert [
        r["user_id"]
        for r in _run(client, "feature_prototype_user_devices_and_orders", hours=24, min_devices=2)
    ] == ["u1"]


def test_top_rules_today(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "top_rules_today")
    assert [(r["rule_id"], r["mode"], r["hits"], r["counted"], r["entities"]) for r in rows] == [
        ("rA", "active", 4, 4, 3),  # the live run only: replay-1's e1, e2 and e5 are left out
        ("rB", "shadow", 2, 0, 1),
    ]


def test_entity_history(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "entity_history", entity="user", key="u1")
    assert len(rows) == 8  # 9 rows stored for u1 (one redelivered copy), 8 distinct hits
    assert (rows[0]["rule_id"], rows[0]["event_id"], rows[0]["ruleset_version"]) == ("rA", "e5", "v2")
    assert sorted((r["rule_id"], r["event_id"], r["ruleset_version"]) for r in rows) == [
        ("rA", "e1", "v1"),
        ("rA", "e1", "v2"),
        ("rA", "e2", "v1"),
        ("rA", "e2", "v2"),
        ("rA", "e5", "v2"),
        ("rB", "e1", "v1"),
        ("rB", "e1", "v2"),
        ("rB", "e2", "v1"),
    ]
    times = [r["event_time"] for r in rows]
    assert times == sorted(times, reverse=True)
    assert rows[0]["features_text"] == {"city": "Beijing"}


def test_shadow_vs_active(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "shadow_vs_active", days=1)
    got = [
        (r["rule_id"], r["mode"], r["hits"], r["hits_per_day"], r["events"], r["share_of_flagged"])
        for r in rows
    ]
    assert got == [("rA", "active", 4, 4.0, 4, 1.0), ("rB", "shadow", 2, 2.0, 2, 0.5)]


def test_ruleset_version_comparison(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "ruleset_version_comparison", old_version="v1", new_version="v2")
    assert [(r["rule_id"], r["both"], r["only_old"], r["only_new"]) for r in rows] == [
        ("rA", 2, 2, 1),
        ("rB", 1, 1, 0),
    ]


def test_hourly_trend_of_rule(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "hourly_trend_of_rule", rule_id="rA", hours=2)
    assert {r["mode"] for r in rows} == {"active"}
    assert sum(r["hits"] for r in rows) == 7  # the events may straddle an hour boundary


def test_blocked_now(loaded: tuple[Settings, Any]) -> None:
    _, client = loaded
    rows = _run(client, "blocked_now")
    assert [(r["entity"], r["key"], r["label"], r["rule_ids"]) for r in rows] == [
        ("user", "u1", "fraud", ["r1", "r2"])
    ]


def test_hits_cli_prints_the_tables(loaded: tuple[Settings, Any]) -> None:
    settings, _ = loaded
    top = bypass(settings, "hits", "top", "--since", "1d")
    assert top.returncode == 0, top.stderr
    lines = [line for line in top.stdout.splitlines() if "│" in line]
    # live labels only by default, like top_rules_today (a replay of v2 is in the table too)
    assert re.search(r"│ rA\s+│ active\s+│\s+4 │\s+4 │\s+3 │", lines[0]), top.stdout
    assert re.search(r"│ rB\s+│ shadow\s+│\s+2 │\s+0 │\s+1 │", lines[1]), top.stdout
    every = bypass(settings, "hits", "top", "--since", "1d", "--run-id", "all")
    lines = [line for line in every.stdout.splitlines() if "│" in line]
    assert re.search(r"│ rA\s+│ active\s+│\s+7 │\s+7 │\s+3 │", lines[0]), every.stdout
    assert re.search(r"│ rB\s+│ shadow\s+│\s+3 │\s+0 │\s+1 │", lines[1]), every.stdout
    history = bypass(settings, "hits", "entity", "user", "u1")
    assert history.returncode == 0, history.stderr
    rows = [line for line in history.stdout.splitlines() if "│ r" in line]
    assert len(rows) == 8 and "e5" in rows[0]
    nobody = bypass(settings, "hits", "entity", "user", "nobody")
    assert "no hits for user nobody" in nobody.stdout
