"""streams.serve.core and streams.serve.freshness: the pure parts of the check API."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.list_admin import Unblock
from sinks.redis_mirror import MirrorEntry
from streams.core.workers import WorkerReport
from streams.serve.core import (
    MAX_BATCH,
    BadRequestError,
    bearer,
    check_answer,
    check_list_name,
    parse_batch,
    parse_until,
    token_ok,
)
from streams.serve.freshness import Freshness, FreshnessMonitor, freshness_from_reports, rule_scores

NOW = 1_763_856_000_000


def _entry(label: str, exp: int, rules: tuple[str, ...] = ("r1",)) -> MirrorEntry:
    return MirrorEntry("user", "u1", label, rules, exp, "v1", "e1")


def test_a_listed_answer_has_labels_rule_ids_scores_and_the_latest_expiry() -> None:
    entries = [_entry("fraud", NOW + 10, ("r1", "r2")), _entry("resale", NOW + 20, ("r9",))]
    a = check_answer("user", "u1", entries, None, scores={"r1": 50, "r2": 90})
    assert a["listed"] is True and a["unblock"] is None
    assert [(lb["label"], lb["rule_ids"], lb["score"]) for lb in a["labels"]] == [
        ("fraud", ["r1", "r2"], 90),
        ("resale", ["r9"], None),
    ]
    assert a["score"] == 90 and a["expires_at_ms"] == NOW + 20
    assert a["expires_at"] == "2025-11-23T00:00:00.020Z"
    assert check_answer("user", "u1", entries, None)["score"] is None  # no rule set known


def test_not_listed_and_unblocked_answers() -> None:
    a = check_answer("user", "u2", [], None)
    assert (a["listed"], a["labels"], a["expires_at"], a["score"]) == (False, [], None, None)
    u = Unblock("user", "u1", NOW + 99, "ana", "fp", NOW)
    b = check_answer("user", "u1", [_entry("fraud", NOW + 10)], u)
    assert b["listed"] is False and b["labels"] == [] and b["expires_at"] is None
    assert [lb["label"] for lb in b["unblocked_labels"]] == ["fraud"]
    assert b["unblock"]["who"] == "ana" and b["unblock"]["until_ms"] == NOW + 99


def test_parse_batch() -> None:
    assert parse_batch({"checks": [{"entity": "user", "key": "u1"}]}) == [("user", "u1")]
    bad: list[Any] = [
        None,
        [],
        {"checks": []},
        {"checks": [1]},
        {"checks": [{"entity": "user"}]},
        {"checks": [{"entity": "user", "key": 5}]},
        {"checks": [{"entity": "user", "key": "u"}] * (MAX_BATCH + 1)},
    ]
    for body in bad:
        with pytest.raises(BadRequestError):
            parse_batch(body)


def test_parse_until() -> None:
    assert parse_until("7d", NOW) == NOW + 7 * 86_400_000
    assert parse_until("+12h", NOW) == NOW + 12 * 3_600_000
    assert parse_until("2030-01-01T00:00:00Z", NOW) == 1_893_456_000_000
    assert parse_until(NOW + 5, NOW) == NOW + 5
    for bad in (None, "", "soon", "2020-01-01T00:00:00Z", True, NOW):
        with pytest.raises(BadRequestError):
            parse_until(bad, NOW)


def test_reserved_list_names_are_refused() -> None:
    assert check_list_name("vip") == "vip"
    with pytest.raises(BadRequestError, match="reserved"):
        check_list_name("unblock.user")


def test_tokens() -> None:
    assert bearer({"authorization": "Bearer abc"}) == "abc"
    assert bearer({"authorization": "bearer  abc "}) == "abc"
    assert bearer({"authorization": "Basic abc"}) is None and bearer({}) is None
    assert token_ok("abc", None, "abc") and not token_ok("abc", "abd") and not token_ok(None, "abc")
    assert not token_ok("", "") and not token_ok("x", None, None)


def _report(wid: str, wm: int | None, version: str = "v1", updated: int = NOW) -> WorkerReport:
    health = {"watermark_ms": wm} if wm is not None else {}
    return WorkerReport(wid, "h", 1, NOW, updated, version, "bypass", health=health)


def test_freshness_is_the_slowest_worker() -> None:
    f = freshness_from_reports([_report("a", NOW - 5000), _report("b", NOW - 2000), _report("c", None)], NOW)
    d = f.as_dict(NOW + 1000)
    assert d["status"] == "ok" and d["workers"] == 3 and d["watermark_ms"] == NOW - 5000
    assert d["lag_s"] == 6.0 and d["age_s"] == 1.0 and d["ruleset_version"] == "v1"
    assert freshness_from_reports([], NOW).as_dict(NOW)["status"] == "no_workers"
    assert Freshness().as_dict(NOW)["status"] == "unknown"
    assert Freshness(as_of_ms=NOW, workers=1, stale_after_s=60).as_dict(NOW + 61_000)["status"] == "stale"


def test_monitor_keeps_the_last_watermark_when_a_read_fails_and_reads_scores_once() -> None:
    calls: list[str] = []
    reports: list[Any] = [[_report("a", NOW - 1000)]]

    def read() -> list[WorkerReport]:
        value = reports[0]
        if isinstance(value, Exception):
            raise value
        return list(value)

    def rules_text() -> dict[str, str]:
        calls.append("rules")
        return {"v1": "version: v1\nrules:\n  - {id: r1, score: 90}\n  - {id: r2}\n"}

    m = FreshnessMonitor(read_reports=read, read_rules=rules_text, clock_ms=lambda: NOW)
    assert m.refresh().watermark_ms == NOW - 1000 and m.scores == {"r1": 90.0}
    m.refresh()
    assert calls == ["rules"]  # same version: not read again
    reports[0] = RuntimeError("broker away")
    kept = m.refresh()
    assert kept.watermark_ms == NOW - 1000 and "broker away" in (kept.error or "")
    assert kept.as_dict(NOW)["status"] == "unknown"


def test_rule_scores_tolerates_junk() -> None:
    assert rule_scores(": :") == {} and rule_scores("[]") == {}
    assert rule_scores("rules: [{id: a, score: 1.5}, {id: b, score: true}, 3]") == {"a": 1.5}


def test_the_serve_tokens_are_secrets_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli.settings import settings as settings_cmd
    from streams.settings import Settings

    monkeypatch.setenv("BYPASS_SERVE_TOKEN", "w-token-9f8e7d")
    monkeypatch.setenv("BYPASS_SERVE_READ_TOKEN", "r-token-1a2b3c")
    s = Settings()
    assert s.serve_token is not None and s.serve_token.get_secret_value() == "w-token-9f8e7d"
    shown = [s.masked(), s.model_dump_json(), repr(s), str(s)]
    printed = CliRunner().invoke(settings_cmd, []).output
    for text in [*map(str, shown), printed]:
        assert "w-token-9f8e7d" not in text and "r-token-1a2b3c" not in text
    assert s.masked()["BYPASS_SERVE_TOKEN"] == "**********"
    assert "BYPASS_SERVE_TOKEN" in printed
    assert s.to_env()["BYPASS_SERVE_TOKEN"] == "w-token-9f8e7d"  # for child processes only
