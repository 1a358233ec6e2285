"""``bypass rules validate | test | diff`` (the CLI contract)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parents[3]
RULES = str(ROOT / "examples/rules.yaml")
FEATURES = str(ROOT / "examples/features.yaml")
T0 = 1_763_856_000_000
MIN = 60_000

EVENTS = [
    {"event_id": "e1", "type": "phone_change", "ts": T0, "user_id": "u1", "phone": "h1"},
    {"event_id": "e2", "type": "phone_change", "ts": T0 + MIN, "user_id": "u1", "phone": "h2"},
    {
        "event_id": "e3",
        "type": "phone_change",
        "ts": T0 + 2 * MIN,
        "user_id": "u1",
        "phone": "h3",
        "device_id": "d1",
    },
    {"event_id": "e4", "type": "phone_change", "ts": T0 + 3 * MIN, "user_id": "u1", "phone": "h4"},
    {"event_id": "e5", "type": "contract_sign", "ts": T0 + 4 * MIN, "user_id": "u1", "device_id": "d1"},
    {
        "event_id": "e6",
        "type": "login",
        "ts": T0,
        "user_id": "u2",
        "geo": {"lat": 39.9, "lon": 116.4, "city": "Beijing"},
    },
    {
        "event_id": "e7",
        "type": "login",
        "ts": T0 + MIN,
        "user_id": "u2",
        "geo": {"lat": 31.2, "lon": 121.5, "city": "Shanghai"},
    },
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write_events(tmp_path: Path, events: list[dict[str, object]]) -> str:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def test_validate_ok_prints_one_line_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["rules", "validate", RULES, "--features", FEATURES], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ok:") and "2026-11-23.1" in lines[0]


def test_validate_lists_every_problem_with_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "v2"\n'
        "decisions: {reject: 80, review: 50}\n"
        "rules:\n"
        "  - id: r1\n"
        "    entity: user\n"
        "    when: phone_change_30d > 3\n"
        "    score: 10\n"
        "  - id: r2\n"
        "    entity: user\n"
        "    when: event.__class__ == 1\n"
        "    score: 10\n"
        "    mode: shdow\n"
    )
    code, out, err = run(["rules", "validate", str(bad), "--features", FEATURES], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        f"{bad}:6:11: rule r1: unknown feature 'phone_change_30d' (did you mean 'phone_changes_30d'?)",
        f"{bad}:10:11: rule r2: event field names starting with '_' are not allowed ('__class__')",
        f"{bad}:12:11: rule r2: unknown mode 'shdow' (did you mean 'shadow'?)",
    ]
    assert "3 problems" in err


def test_validate_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["rules", "validate", "/nonexistent/rules.yaml", "--features", FEATURES], capsys)
    assert code == 1 and err.startswith("error: cannot read rule set /nonexistent/rules.yaml")


def test_test_prints_one_line_per_event_entity_in_input_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path, EVENTS)
    code, out, _ = run(
        ["rules", "test", "--rules", RULES, "--features", FEATURES, "--events", events], capsys
    )
    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["event_id"], r["entity"]) for r in rows] == [
        ("e1", "user"),
        ("e2", "user"),
        ("e3", "user"),
        ("e3", "device"),
        ("e4", "user"),
        ("e5", "user"),
        ("e5", "device"),
        ("e6", "user"),
        ("e7", "user"),
    ]
    for r in rows:
        assert set(r) == {"event_id", "entity", "key", "ruleset_version", "score", "decision", "hits"}
        for h in r["hits"]:
            assert set(h) == {
                "rule_id",
                "label",
                "score",
                "mode",
                "action",
                "counted",
                "suppressed",
                "rollout_excluded",
                "error",
            }
    sign = rows[5]
    assert (sign["score"], sign["decision"]) == (90, "reject")
    hits = {h["rule_id"]: h for h in sign["hits"]}
    assert hits["resale_change_then_sign"]["counted"] is True
    assert hits["resale_phone_churn"]["suppressed"] is True
    assert hits["phone_churn_shadow"]["mode"] == "shadow"
    travel = rows[8]
    assert travel["decision"] == "review" and travel["hits"][0]["rule_id"] == "impossible_travel"


def test_test_hits_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path, EVENTS)
    argv = ["rules", "test", "--rules", RULES, "--features", FEATURES, "--events", events, "--hits-only"]
    code, out, _ = run(argv, capsys)
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and rows and all(r["hits"] for r in rows)
    assert [r["event_id"] for r in rows] == ["e3", "e4", "e5", "e7"]


def test_test_with_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text(
        'version: "l1"\nrules:\n'
        "  - id: listed_device\n    entity: device\n    score: 100\n"
        "    when: in_list('bad_devices', event.device_id)\n"
    )
    lists = tmp_path / "lists.json"
    lists.write_text('{"bad_devices": ["d1"]}')
    events = write_events(tmp_path, EVENTS)
    argv = ["rules", "test", "--rules", str(rules_file), "--features", FEATURES, "--events", events]
    code, out, _ = run([*argv, "--lists", str(lists), "--hits-only"], capsys)
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["event_id"], r["decision"]) for r in rows] == [
        ("e3", "reject"),
        ("e5", "reject"),
    ]
    # without a provider the rule is reported with its error, never crashing the run
    code, out, _ = run([*argv, "--hits-only"], capsys)
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and all("list provider" in r["hits"][0]["error"] for r in rows)


def test_test_bad_json_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id": "e1", "type": "login", "ts": 1, "user_id": "u"}\n{not json\n')
    code, _, err = run(
        ["rules", "test", "--rules", RULES, "--features", FEATURES, "--events", str(path)], capsys
    )
    assert code == 1 and f"{path}:2: invalid JSON" in err


def test_test_with_invalid_rules_exits_1_listing_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "x"\nrules:\n  - id: a\n    entity: user\n    score: 1\n    when: nope > 1\n')
    events = write_events(tmp_path, EVENTS)
    code, out, err = run(
        ["rules", "test", "--rules", str(bad), "--features", FEATURES, "--events", events], capsys
    )
    assert code == 1 and out == ""
    assert err.startswith("error: rule set") and f"{bad}:6:11: rule a: unknown feature 'nope'" in err


def test_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = Path(RULES).read_text()
    new = tmp_path / "new.yaml"
    new.write_text(
        text.replace('version: "2026-11-23.1"', 'version: "2026-11-24.1"')
        .replace("when: travel_kmh_24h > 900", "when: travel_kmh_24h > 1000")
        .replace("  - id: device_farm\n", "  - id: device_farm_v2\n")
    )
    code, out, _ = run(["rules", "diff", RULES, str(new)], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "version 2026-11-23.1 -> 2026-11-24.1"
    assert "+ device_farm_v2" in lines and "- device_farm" in lines
    assert "~ impossible_travel: when: 'travel_kmh_24h > 900' -> 'travel_kmh_24h > 1000'" in lines
    code, out, _ = run(["rules", "diff", RULES, str(new), "--json", "--features", FEATURES], capsys)
    d = orjson.loads(out)
    assert d["added"] == ["device_farm_v2"] and d["removed"] == ["device_farm"]
    assert d["changed"][0]["rule_id"] == "impossible_travel"


def test_test_reports_a_rule_that_fails_at_run_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14, finding 6: a rule failing on every event looked like a rule that hits."""
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text(
        'version: "t-err"\n'
        "rules:\n"
        "  - {id: per_order, entity: user, when: 'distinct_phones_30d / order_amount_1h > 1', score: 10}\n"
    )
    events = write_events(tmp_path, EVENTS[:3])
    code, out, err = run(
        ["rules", "test", "--rules", str(rules_file), "--features", FEATURES, "--events", events], capsys
    )
    assert code == 0
    hits = [h for line in out.splitlines() for h in orjson.loads(line)["hits"]]
    assert len(hits) == 3 and all(h["error"] and not h["counted"] for h in hits)
    assert (
        "warning: rule 'per_order' failed at run time on 3 (event, entity) pairs "
        f"(never counted as a hit); first at {events}:1: " in err
    )
    assert "division by zero" in err


def test_validate_rejects_a_typo_in_event_types_with_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 item 5: `events: [contract_sgn]` used to validate and never fire."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "v2"\n'
        "decisions: {reject: 80, review: 50}\n"
        "rules:\n"
        "  - id: r1\n"
        "    entity: user\n"
        "    when: phone_changes_30d > 3\n"
        "    events: [phone_change, contract_sgn]\n"
        "    score: 10\n"
    )
    code, out, err = run(["rules", "validate", str(bad), "--features", FEATURES], capsys)
    assert code == 1
    assert out.strip().splitlines() == [
        f"{bad}:7:28: rule r1: unknown event type 'contract_sgn': the feature spec does not declare it, "
        "so the rule would never fire (did you mean 'contract_sign'?)"
    ]
    assert "1 problem," in err


def test_validate_and_test_default_to_bypass_features_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 item 8: `rules validate` reads BYPASS_FEATURES_SPEC like `rules publish`."""
    monkeypatch.setenv("BYPASS_FEATURES_SPEC", FEATURES)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["rules", "validate", RULES], capsys)
    assert code == 0 and out.startswith("ok:")
    events = write_events(tmp_path, EVENTS)
    code, out, _ = run(["rules", "test", "--rules", RULES, "--events", events, "--hits-only"], capsys)
    assert code == 0 and out.strip()
    monkeypatch.setenv("BYPASS_FEATURES_SPEC", str(tmp_path / "nope.yaml"))
    code, _, err = run(["rules", "validate", RULES], capsys)
    assert code == 1
    assert "nope.yaml' not found: pass --features FEATURES.yaml or set BYPASS_FEATURES_SPEC" in err
