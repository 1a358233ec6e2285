"""``bypass rules report`` on the real ClickHouse: precision and recall equal the values
computed by hand on a small labelled decision log."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sinks_support import bypass

from sinks.base import SourceRecord
from sinks.clickhouse import ClickHouseSink, connect
from sinks.clickhouse_schema import migrate
from streams.settings import Settings

T0 = 1_763_856_000_000
HOUR = 3_600_000
DAY = 24 * HOUR


def _decision(
    event_id: str,
    entity: str,
    key: str,
    decision: str,
    rule_ids: list[str],
    shadow: list[str],
    *,
    version: str = "v1",
    ts: int = T0,
    rate: float = 1.0,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "order",
        "event_ts": ts,
        "entity": entity,
        "key": key,
        "decision": decision,
        "score": 60.0 if rule_ids else 0.0,
        "rule_ids": rule_ids,
        "shadow_rule_ids": shadow,
        "sample_rate": rate,
        "ruleset_version": version,
        "run_id": "live",
        "source_topic": "raw",
        "source_partition": 0,
        "source_offset": 0,
    }


DECISIONS = [
    _decision("e1", "user", "u1", "review", ["A"], []),
    _decision("e2", "user", "u1", "review", ["A"], []),
    _decision("e3", "user", "u2", "review", ["A"], ["S"]),
    _decision("e4", "user", "u3", "pass", [], ["S"]),  # a pass with a shadow hit: never sampled out
    _decision("e5", "user", "u4", "pass", [], [], rate=0.1),  # sampled passes: 10 each
    _decision("e6", "user", "u5", "pass", [], [], rate=0.1),
    _decision("e1", "device", "d1", "reject", ["B"], []),
    _decision("e9", "user", "u1", "review", ["A"], [], version="v2", ts=T0 + 10 * DAY),
]
LABELS = [
    ("user", "u1", "chargeback", 0, "bank"),  # timeless: in every range
    ("user", "u3", "manual_review", T0 + HOUR, "ops"),
    ("user", "u6", "customer_complaint", T0 + 20 * DAY, "support"),  # bad, never flagged
    ("user", "u2", "good", T0, "ops"),  # benign
    ("device", "d1", "chargeback", 0, "bank"),
    ("device", "d2", "chargeback", 0, "bank"),
]


@pytest.fixture
def labelled(settings: Settings) -> Settings:
    client = connect(settings.clickhouse_url, username=settings.clickhouse_user)
    db = settings.clickhouse_database
    migrate(client, db)
    sink = ClickHouseSink(client, db, {"d": "decisions"})
    for i, d in enumerate(DECISIONS):
        sink.add(SourceRecord("d", 0, i, None, orjson.dumps(d)))
    assert sink.flush() == len(DECISIONS)
    client.insert(
        f"{db}.risk_labels",
        [list(row) for row in LABELS],
        column_names=["entity", "key", "label", "ts", "source"],
    )
    return settings


def _report(settings: Settings, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    result = bypass(settings, "rules", "report", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert "scaled by 1/rate" in data["note"]
    return {(r["ruleset_version"], r["rule_id"]): r for r in data["rules"]}


def test_precision_and_recall_equal_the_hand_computed_values(labelled: Settings) -> None:
    every = _report(labelled)
    assert set(every) == {("v1", "A"), ("v1", "S"), ("v1", "B"), ("v2", "A")}
    a = every[("v1", "A")]
    # A hit e1, e2 (u1), e3 (u2): u1 is bad, u2 good; bad users: u1, u3, u6
    assert (a["evaluated"], a["hits"], a["flagged"], a["flagged_bad"], a["labelled_bad"]) == (24, 3, 2, 1, 3)
    assert a["precision"] == pytest.approx(1 / 2) and a["recall"] == pytest.approx(1 / 3)
    assert a["mode"] == "active" and a["added"] is None
    s = every[("v1", "S")]
    # S held on e3 (u2) and e4 (u3); u2 was flagged by A anyway, u3 (bad) is what S adds
    assert (s["mode"], s["hits"], s["flagged"], s["flagged_bad"]) == ("shadow", 2, 2, 1)
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 3)
    assert (s["added"], s["added_bad"]) == (1, 1)
    b = every[("v1", "B")]
    assert (b["entity"], b["evaluated"], b["hits"], b["flagged_bad"], b["labelled_bad"]) == (
        "device",
        1,
        1,
        1,
        2,
    )
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx(1 / 2)
    assert every[("v2", "A")]["precision"] == 1.0 and every[("v2", "A")]["evaluated"] == 1

    # a range: v2's decisions and u6's label fall outside; bad users in range: u1 (timeless), u3
    ranged = _report(labelled, "--from", str(T0 - HOUR), "--to", str(T0 + DAY))
    assert set(ranged) == {("v1", "A"), ("v1", "S"), ("v1", "B")}
    assert ranged[("v1", "A")]["recall"] == pytest.approx(1 / 2)
    assert ranged[("v1", "A")]["precision"] == pytest.approx(1 / 2)
    assert set(_report(labelled, "--version", "v2")) == {("v2", "A")}

    table = bypass(labelled, "rules", "report", "--version", "v1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ruleset_version", "rule_id", "mode", "entity"]
    assert any(line.split()[:4] == ["v1", "S", "shadow", "user"] for line in lines)
    assert "estimate" in table.stdout
    csv = bypass(labelled, "rules", "report", "--format", "csv", "--version", "v1")
    assert csv.stdout.splitlines()[0].startswith("ruleset_version,rule_id,mode,entity,evaluated")
