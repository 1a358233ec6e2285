"""``bypass serve`` on the real stack: the check API, unblock in the API and in the worker, Redis down."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sinks_support import bypass, cli_env, spawn, wait_for
from test_pipeline import FEATURES, ROOT, Worker, _free_port, publish, read_topic, values

from sinks.clickhouse_schema import check_identifier
from streams.core import kafka
from streams.core.outputs import clickhouse_client
from streams.producer import EventProducer
from streams.settings import Settings

MIN = 60_000
TOKEN = "serve-test-token-0123456789"

RULES = """
version: "serve-1"
decisions: {reject: 80, review: 50}
rules:
  - id: seen_login
    entity: user
    when: property_views_total >= 0
    events: [login]
    score: 85
    label: seen
    action: blacklist
    ttl: 30d
"""


class Server:
    """A ``bypass serve`` subprocess on a free port, its output in a log file."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        self._out = log.open("ab")
        env = cli_env(settings)
        env.update(
            {
                "BYPASS_SERVE_TOKEN": TOKEN,
                "BYPASS_SERVE_FRESHNESS_S": "1",
                "BYPASS_SERVE_PORT": str(self.port),
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "serve"],
            env=env,
            cwd=str(ROOT),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.call("GET", "/healthz")[0] in (200, 503), True, timeout=30)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 (http to loopback)
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())
        except OSError:
            return 0, None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def ssettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 10_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "order_idle_ms": 500,
            "sink_batch_ms": 200,
            "sink_session_timeout_ms": 2000,
            "sink_retry_max_ms": 1000,
        }
    )


@pytest.fixture
def server(ssettings: Settings, tmp_path: Path) -> Iterator[Server]:
    migrated = bypass(ssettings, "clickhouse", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    s = Server(ssettings, tmp_path / "serve.log")
    try:
        yield s
    finally:
        s.stop()


def login(user: str, i: int, ts: int) -> dict[str, Any]:
    return {"event_id": f"sv-{user}-{i}", "type": "login", "ts": ts, "user_id": user, "device_id": "d-sv"}


def _audit_rows(settings: Settings) -> list[tuple[Any, ...]]:
    client = clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))
    rows = client.query(
        "SELECT list, key, action, who, why, until FROM risk_list_changes ORDER BY changed_at"
    )
    return [tuple(r) for r in rows.result_rows]


@pytest.mark.slow
def test_check_api_lists_labels_freshness_and_unblock_reaches_the_worker(
    ssettings: Settings, server: Server, tmp_path: Path
) -> None:
    s = ssettings
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [raw, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, RULES, tmp_path).returncode == 0
    # unblock u-ub before any of its events: the worker must not emit its blacklist entry
    status, body = server.call(
        "POST", "/v1/unblock/user/u-ub", {"until": "7d", "why": "known good partner", "who": "ana"}, TOKEN
    )
    assert status == 200, body
    worker = Worker(s, tmp_path / "worker.log")
    sink = spawn(s, "sink", "redis")
    try:
        now = time.time_ns() // 1_000_000
        with EventProducer(s, topic=raw) as producer:
            producer.send_many([login("u-bl", 0, now - 5 * MIN), login("u-ub", 0, now - 4 * MIN)])

        def listed() -> bool:
            return bool(server.call("GET", "/v1/check/user/u-bl")[1].get("listed"))

        wait_for(listed, True, timeout=90)
        # freshness comes from the worker reports (every 10 s), read in the background
        wait_for(
            lambda: server.call("GET", "/v1/check/user/u-bl")[1]["freshness"]["watermark_ms"] is not None,
            True,
            timeout=40,
        )
        status, answer = server.call("GET", "/v1/check/user/u-bl")
        assert status == 200
        assert [(lb["label"], lb["rule_ids"]) for lb in answer["labels"]] == [("seen", ["seen_login"])]
        assert answer["labels"][0]["ruleset_version"] == "serve-1"
        assert answer["score"] == 85.0 and answer["expires_at_ms"] > now + 29 * 86_400_000
        fresh = answer["freshness"]
        assert fresh["status"] == "ok" and fresh["workers"] == 1, fresh
        assert fresh["watermark_ms"] >= now - 4 * MIN and 0 <= fresh["lag_s"] < 600, fresh

        # u-ub: its hit went out, saying why; its blacklist entry did not
        hits = values(
            read_topic(
                s,
                s.hits_topic,
                lambda m: {orjson.loads(x.value())["key"] for x in m} >= {"u-bl", "u-ub"},
                timeout_s=60,
            )
        )
        ub = [h for h in hits if h["key"] == "u-ub"]
        assert ub and ub[0]["unblock"]["why"] == "known good partner" and ub[0]["unblock"]["who"] == "ana"
        assert all(h["unblock"] is None for h in hits if h["key"] == "u-bl")
        blacklist = values(read_topic(s, s.blacklist_topic, lambda m: len(m) >= 1, timeout_s=30))
        assert {b["key"] for b in blacklist} == {"u-bl"}, blacklist
        status, answer = server.call("GET", "/v1/check/user/u-ub")
        assert answer["listed"] is False and answer["unblock"]["who"] == "ana"

        # unblocking a listed entity: it checks as not listed, with the override shown
        assert server.call("POST", "/v1/unblock/user/u-bl", {"until": "1d", "why": "fp"})[0] == 401
        status, _ = server.call("POST", "/v1/unblock/user/u-bl", {"until": "1d", "why": "fp"}, TOKEN)
        assert status == 200
        status, answer = server.call("GET", "/v1/check/user/u-bl")
        assert answer["listed"] is False and [lb["label"] for lb in answer["unblocked_labels"]] == ["seen"]
        status, batch = server.call(
            "POST",
            "/v1/check",
            {"checks": [{"entity": "user", "key": k} for k in ("u-bl", "u-ub", "nobody")]},
        )
        assert status == 200 and [r["listed"] for r in batch["results"]] == [False, False, False]
        status, unknown = server.call("GET", "/v1/check/usr/u-bl")
        assert status == 404 and "user" in unknown["known"]
        # and the worker honours it for the next events of u-bl
        with EventProducer(s, topic=raw) as producer:
            producer.send_many([login("u-bl", 1, now - 3 * MIN)])
        hits = values(
            read_topic(
                s,
                s.hits_topic,
                lambda m: any(orjson.loads(x.value())["event_id"] == "sv-u-bl-1" for x in m),
                timeout_s=60,
            )
        )
        assert next(h for h in hits if h["event_id"] == "sv-u-bl-1")["unblock"]["why"] == "fp"
        assert len(values(read_topic(s, s.blacklist_topic, lambda m: True, timeout_s=10))) == len(blacklist)
    finally:
        worker.stop()
        sink.terminate()
        sink.wait(timeout=15)
    rows = _audit_rows(s)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("unblock.user", "u-ub", "unblock", "ana"),
        ("unblock.user", "u-bl", "unblock", "api@127.0.0.1"),
    ]
    assert rows[0][4] == "known good partner" and rows[0][5] is not None
    assert TOKEN not in server.text() and TOKEN not in worker.text()


def test_redis_down_is_a_503_with_a_reason(stack: Any, ssettings: Settings, server: Server) -> None:
    if not stack.restartable("redis"):
        pytest.skip("needs the local stack's Redis (stop/start)")
    status, answer = server.call("GET", "/v1/check/user/u1")
    assert status == 200 and answer["listed"] is False
    stack.stop_part("redis")
    try:
        status, answer = server.call("GET", "/v1/check/user/u1")
        assert status == 503, answer
        assert answer["error"] == "redis_unavailable" and "listed" not in answer and answer["reason"]
        status, answer = server.call("POST", "/v1/check", {"checks": [{"entity": "user", "key": "u1"}]})
        assert status == 503 and answer["error"] == "redis_unavailable"
        assert server.call("GET", "/healthz")[0] == 503
    finally:
        stack.start_part("redis")
    wait_for(lambda: server.call("GET", "/v1/check/user/u1")[0], 200, timeout=30)


def test_lists_cli_records_every_change_and_unblock(ssettings: Settings) -> None:
    s = ssettings
    assert bypass(s, "clickhouse", "migrate").returncode == 0
    assert bypass(s, "lists", "add", "vip", "u1", "u2", "--who", "ana", "--why", "partners").returncode == 0
    assert bypass(s, "lists", "remove", "vip", "u2", "--why", "ended").returncode == 0
    assert bypass(s, "lists", "show", "vip").stdout.split() == ["u1"]
    refused = bypass(s, "lists", "add", "unblock.user", "u1")
    assert refused.returncode != 0 and "reserved" in (refused.stdout + refused.stderr)
    done = bypass(s, "lists", "unblock", "user", "u9", "--until", "2d", "--why", "ticket 42", "--who", "bob")
    assert done.returncode == 0 and "unblocked until" in done.stdout, done.stderr
    assert "u9" in bypass(s, "lists", "unblocks", "user").stdout
    check = bypass(s, "lists", "check", "user", "u9")
    assert check.returncode == 1 and "unblocked until" in check.stdout and "ticket 42" in check.stdout
    assert bypass(s, "lists", "unblock", "user", "u9", "--remove").returncode == 0
    assert bypass(s, "lists", "unblocks", "user").stdout.strip() == ""
    trail = bypass(s, "lists", "changes")
    assert trail.returncode == 0, trail.stderr
    rows = _audit_rows(s)
    # (rows of one millisecond have no order: compare as a set)
    assert {(r[1], r[2]) for r in rows} == {
        ("u1", "add"),
        ("u2", "add"),
        ("u2", "remove"),
        ("u9", "unblock"),
        ("u9", "unblock_remove"),
    }
    assert "ticket 42" in trail.stdout and "unblock_remove" in trail.stdout
