"""streams.serve.console: the pages show what the backend and Redis hold; actions need a session and CSRF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.cli.rules_history import VersionRow
from streams.core.workers import WorkerReport
from streams.serve.console import ConsoleBackend

from .test_app import PREFIX, READ, TOKEN, Env, _now

HOUR = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)


def _backend(fail: bool = False) -> ConsoleBackend:
    def boom(*_: Any) -> Any:
        raise OSError("ClickHouse refused the connection")

    hit = {
        "event_time": HOUR,
        "rule_id": "resale_phone_churn",
        "label": "account_resale",
        "mode": "active",
        "score": 90.0,
        "decision": "reject",
        "ruleset_version": "v1",
        "run_id": "live",
        "event_id": "e<1>",
        "features": {"phone_changes_30d": 4.0, "property_views_total": 0.0},
        "features_text": {},
        "error": None,
    }
    return ConsoleBackend(
        hourly=boom
        if fail
        else lambda since: [
            {"hour": HOUR, "rule_id": "resale_phone_churn", "mode": "active", "hits": 7, "counted": 7}
        ],
        rule_history=lambda rule, since: [
            {"hour": HOUR, "ruleset_version": "v1", "mode": "active", "hits": 5, "counted": 5},
            {"hour": HOUR, "ruleset_version": "v2", "mode": "shadow", "hits": 2, "counted": 0},
        ],
        entity_hits=boom if fail else lambda entity, key: [hit] if key == "u1" else [],
        changes=lambda limit: [
            {
                "changed_at": HOUR,
                "list": "vip",
                "key": "u1",
                "action": "add",
                "who": "ana",
                "why": "partner",
                "until": None,
            }
        ],
        dlq=lambda since: ({"not_json": 3, "too_large": 1}, False),
        versions=lambda: [VersionRow("v1", "rules.yaml", "ana", _now(), 3, [(_now(), "ana")], active=True)],
    )


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env(console=_backend())
    e.monitor.reports = [
        WorkerReport(
            "w1",
            "h",
            1,
            _now(),
            _now(),
            "v1",
            "bypass",
            health={"status": "ok", "events_in": 1200, "events_per_s": 250.5, "event_time_lag_s": 1.5},
        )
    ]
    with e.client:
        yield e


def _login(env: Env, token: str = TOKEN) -> str:
    r = env.client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert (
        "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    )
    page = env.client.get("/entity/user/u1").text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    return found.group(1) if found else ""


def test_overview_shows_events_rules_dlq_and_hourly_hits(env: Env) -> None:
    page = env.client.get("/").text
    assert "250.5" in page and "v1" in page and "not_json" in page and "too_large" in page
    assert "resale_phone_churn" in page and 'id="freshness"' not in page  # single quotes in our markup
    assert "id='freshness'" in page and "<script>" in page


def test_entity_page_lists_the_rule_that_hit_and_its_feature_values(env: Env) -> None:
    env.blacklist("u1")
    env.redis.sets[f"{PREFIX}list:vip"] = {"u1"}
    page = env.client.get("/entity/user/u1").text
    assert "LISTED" in page and "resale_phone_churn" in page
    assert "phone_changes_30d=4" in page and "property_views_total=0" in page
    assert "e&lt;1&gt;" in page and "e<1>" not in page  # escaped
    assert "vip" in page and "log in</a> with the write token to unblock" in page
    assert env.client.get("/entity/usr/u1").status_code == 404


def test_rule_and_versions_and_lists_pages(env: Env) -> None:
    rule = env.client.get("/rules/resale_phone_churn").text
    assert "v2" in rule and "shadow" in rule
    assert "ACTIVE" in env.client.get("/rules").text
    env.redis.sets[f"{PREFIX}list:vip"] = {"u1", "u2"}
    lists = env.client.get("/lists").text
    assert "u2" in lists and "partner" in lists


def test_unblock_needs_a_session_and_the_csrf_token(env: Env) -> None:
    env.blacklist("u1")
    form = {"until": "7d", "why": "false positive", "who": "ana"}
    assert env.client.post("/entity/user/u1/unblock", data=form).status_code == 401
    csrf = _login(env)
    assert csrf
    assert env.client.post("/entity/user/u1/unblock", data=form).status_code == 403  # no CSRF
    assert env.client.post("/entity/user/u1/unblock", data={**form, "csrf": "x"}).status_code == 403
    r = env.client.post("/entity/user/u1/unblock", data={**form, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = env.client.get("/entity/user/u1").text
    assert "not listed" in page and "false positive" in page
    assert env.audited[-1].action == "unblock" and env.audited[-1].who == "ana"
    assert TOKEN not in page
    r = env.client.post("/entity/user/u1/unblock", data={"remove": "1", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "LISTED" in env.client.get("/entity/user/u1").text


def test_list_actions_from_the_console(env: Env) -> None:
    csrf = _login(env)
    r = env.client.post(
        "/lists/add", data={"name": "vip", "value": "u9", "csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and env.redis.sets[f"{PREFIX}list:vip"] == {"u9"}
    r = env.client.post("/lists/vip/remove", data={"value": "u9", "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and env.redis.sets[f"{PREFIX}list:vip"] == set()
    assert [c.action for c in env.audited] == ["add", "remove"]
    assert (
        env.client.post("/lists/add", data={"name": "unblock.user", "value": "u9", "csrf": csrf}).status_code
        == 400
    )


def test_a_read_session_cannot_act_and_reads_need_login_when_a_read_token_is_set() -> None:
    e = Env(read=READ, console=_backend())
    with e.client:
        r = e.client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert e.client.post("/login", data={"token": "wrong"}, follow_redirects=False).headers[
            "location"
        ] == ("/login?failed=1")
        e.client.post("/login", data={"token": READ})
        assert e.client.get("/").status_code == 200
        r = e.client.post("/entity/user/u1/unblock", data={"until": "1d", "why": "x", "csrf": "x"})
        assert r.status_code == 401 and e.audited == []


def test_backend_failures_are_shown_not_raised() -> None:
    e = Env(console=_backend(fail=True))
    with e.client:
        page = e.client.get("/").text
        assert "ClickHouse unavailable" in page
        assert "ClickHouse unavailable" in e.client.get("/entity/user/u1").text
        e.redis.down = True
        assert "Redis unavailable" in e.client.get("/entity/user/u1").text
