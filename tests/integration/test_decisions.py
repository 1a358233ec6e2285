# ruff: noqa: S608  (database names come from the test fixtures)
"""The decision log on the real stack: the live worker's decision records, written by the
ClickHouse writer into risk_decisions, equal the processor's own decisions on a small stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sinks_support import bypass, spawn, wait_for
from test_pipeline import USER_RULES, Worker, ev, produce, psettings, publish, read_topic, values

from sinks.clickhouse import connect
from sinks.clickhouse_schema import migrate
from streams.core.assembly import build_processor, load_for_spec, load_spec
from streams.core.order import SourceEvent
from streams.core.step import BatchStep, MemoryStore
from streams.settings import Settings

__all__ = ["psettings"]  # the fixture of test_pipeline, used here

T0 = 1_763_856_000_000
MIN = 60_000


def _stream() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for u in range(6):
        user = f"u{u}"
        for i in range(u):  # u phone changes: users 2.. hit `churn`
            out.append(
                ev(f"{user}-pc{i}", "phone_change", T0 + i * MIN, user, phone=f"+8613900{u:02d}{i:04d}")
            )
        for i, city in enumerate(["Beijing", "Shanghai"][: 1 + u % 2]):
            out.append(
                ev(
                    f"{user}-login{i}",
                    "login",
                    T0 + (10 + i) * MIN,
                    user,
                    device_id=f"d{u % 2}",
                    geo={"lat": 39.9 - i * 8, "lon": 116.4 + i * 5, "city": city},
                )
            )
        out.append(ev(f"{user}-order", "order", T0 + 20 * MIN, user, attrs={"amount": 1500 * u}))
    return sorted(out, key=lambda e: e["ts"])


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["event_id"],
        row["entity"],
        row["key"],
        row["decision"],
        float(row["score"]),
        tuple(row["rule_ids"]),
        tuple(row["shadow_rule_ids"]),
        row["ruleset_version"],
        row["run_id"],
    )


def _expected(settings: Settings, text: str, events: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """The processor's decisions over ``events`` (validated and hashed as at ingest)."""
    from streams.core.envelope import decoder_from_settings

    spec = load_spec(settings)
    processor = build_processor(settings, spec, load_for_spec(text, spec), run_id="live")
    decoder = decoder_from_settings(settings)
    sources = [SourceEvent(decoder.prepare(dict(e)), "raw", 0, i, e["ts"]) for i, e in enumerate(events)]
    result = BatchStep(processor).run(sources, MemoryStore())
    return {_key(dict(d.record)) for d in result.decisions}


def test_decision_rows_equal_the_processors_decisions(psettings: Settings, tmp_path: Path) -> None:
    s = psettings.model_copy(update={"decision_sample": 1.0, "archive_events": False})
    client = connect(
        s.clickhouse_url, username=s.clickhouse_user, password=s.clickhouse_password.get_secret_value()
    )
    db = s.clickhouse_database
    migrate(client, db)
    text = USER_RULES.format(version="dec-1")
    assert publish(s, text, tmp_path).returncode == 0
    events = _stream()
    expected = _expected(s, text, events)
    decisions = {row[3] for row in expected}
    assert {"pass", "review"} <= decisions  # a mix, shadow hits included
    assert any(row[6] for row in expected)
    assert len(expected) > len(events)  # user and device decisions

    worker = Worker(s, tmp_path / "worker.log", decision_sample=1.0)
    writer = None
    try:
        produce(s, events)
        live = values(read_topic(s, s.decisions_topic, lambda m: len(m) >= len(expected), timeout_s=120))
        assert {_key(r) for r in live} == expected, worker.text()[-3000:]
        writer = spawn(s, "sink", "clickhouse")
        wait_for(
            lambda: client.query(f"SELECT count() FROM {db}.risk_decisions FINAL").result_rows[0][0],
            len(expected),
            timeout=90,
        )
    finally:
        worker.stop()
        if writer is not None:
            writer.terminate()
            writer.communicate(timeout=30)
    rows = client.query(
        "SELECT event_id, entity, key, decision, score, rule_ids, shadow_rule_ids, ruleset_version, run_id, "
        f"sample_rate, toUnixTimestamp64Milli(event_time) FROM {db}.risk_decisions FINAL"
    ).result_rows
    names = ("event_id", "entity", "key", "decision", "score", "rule_ids", "shadow_rule_ids")
    stored = {_key(dict(zip((*names, "ruleset_version", "run_id"), r[:9], strict=True))) for r in rows}
    assert stored == expected
    assert {r[9] for r in rows} == {1.0}
    by_id = {e["event_id"]: e["ts"] for e in events}
    assert all(by_id[r[0]] == r[10] for r in rows)

    # a replay to ClickHouse logs the same decisions under its run id (sampled alike)
    replay = bypass(
        s,
        "replay",
        "--from",
        str(T0 - 3_600_000),
        "--to",
        str(T0 + 3_600_000),
        "--rules",
        str(tmp_path / "rules.yaml"),
        "--out",
        "clickhouse",
        "--run-id",
        "bf-dec",
        timeout=240,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    replayed = client.query(
        "SELECT event_id, entity, key, decision, score, rule_ids, shadow_rule_ids, ruleset_version, run_id "
        f"FROM {db}.risk_decisions FINAL WHERE run_id = 'bf-dec'"
    ).result_rows
    as_live = {
        (*_key(dict(zip((*names, "ruleset_version", "run_id"), r, strict=True)))[:8], "live")
        for r in replayed
    }
    assert as_live == expected
