"""streams.serve.app: the check API's HTTP contract, over an in-memory async Redis stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from sinks.list_admin import ListChange
from sinks.redis_mirror import MirrorEntry, encode_entry, mirror_key
from streams.serve.app import ServeConfig, create_app
from streams.serve.freshness import Freshness, FreshnessMonitor

PREFIX = "t:"
TOKEN = "w-secret-123"
READ = "r-secret-456"


def _now() -> int:
    return time.time_ns() // 1_000_000


class _Pipe:
    def __init__(self, r: FakeRedis) -> None:
        self.r = r
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def hgetall(self, name: str) -> None:
        self.ops.append(("hgetall", (name,)))

    def hget(self, name: str, key: str) -> None:
        self.ops.append(("hget", (name, key)))

    def sismember(self, name: str, value: str) -> None:
        self.ops.append(("sismember", (name, value)))

    def srandmember(self, name: str, count: int) -> None:
        self.ops.append(("srandmember", (name, count)))

    def scard(self, name: str) -> None:
        self.ops.append(("scard", (name,)))

    async def execute(self) -> list[Any]:
        self.r.calls += 1
        self.r.fail()
        return [getattr(self.r, "_" + op)(*args) for op, args in self.ops]


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.down = False
        self.calls = 0

    def fail(self) -> None:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    def _hgetall(self, name: str) -> dict[bytes, bytes]:
        return {k.encode(): v.encode() for k, v in self.hashes.get(name, {}).items()}

    def _hget(self, name: str, key: str) -> bytes | None:
        v = self.hashes.get(name, {}).get(key)
        return v.encode() if v is not None else None

    def _sismember(self, name: str, value: str) -> int:
        return int(value in self.sets.get(name, set()))

    def _srandmember(self, name: str, count: int) -> list[bytes]:
        return [v.encode() for v in sorted(self.sets.get(name, set()))[:count]]

    def _scard(self, name: str) -> int:
        return len(self.sets.get(name, set()))

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe(self)

    async def ping(self) -> bool:
        self.fail()
        return True

    async def sadd(self, name: str, *values: str) -> int:
        self.fail()
        s = self.sets.setdefault(name, set())
        n = len(set(values) - s)
        s |= set(values)
        return n

    async def srem(self, name: str, *values: str) -> int:
        self.fail()
        s = self.sets.get(name, set())
        n = len(s & set(values))
        s -= set(values)
        return n

    async def smembers(self, name: str) -> set[bytes]:
        self.fail()
        return {v.encode() for v in self.sets.get(name, set())}

    async def scan_iter(self, match: str, count: int) -> Any:
        self.fail()
        for k in list(self.sets):
            if k.startswith(match.rstrip("*")):
                yield k.encode()

    async def hset(self, name: str, key: str, value: str) -> int:
        self.fail()
        self.hashes.setdefault(name, {})[key] = value
        return 1

    async def hdel(self, name: str, key: str) -> int:
        self.fail()
        return int(self.hashes.get(name, {}).pop(key, None) is not None)

    async def aclose(self) -> None:
        return None


class Env:
    def __init__(self, *, write: str | None = TOKEN, read: str | None = None, console: Any = None) -> None:
        self.redis = FakeRedis()
        self.audited: list[ListChange] = []
        self.audit_down = False
        self.monitor = FreshnessMonitor(read_reports=lambda: [], clock_ms=_now)
        self.monitor.current = Freshness(watermark_ms=_now() - 3000, workers=2, as_of_ms=_now())
        self.monitor.scores = {"r1": 90.0}

        def audit(changes: Any) -> None:
            if self.audit_down:
                raise OSError("ClickHouse refused the connection")
            self.audited.extend(changes)

        cfg = ServeConfig(
            redis=self.redis,
            kinds=["user", "device"],
            prefix=PREFIX,
            monitor=self.monitor,
            audit=audit,
            write_token=write,
            read_token=read,
            start_monitor=False,
        )
        self.client = TestClient(create_app(cfg, console=console))

    def blacklist(self, key: str, label: str = "fraud", *, exp: int | None = None) -> None:
        entry = MirrorEntry("user", key, label, ("r1",), exp or _now() + 3_600_000, "v1", "e1")
        self.redis.hashes.setdefault(mirror_key(PREFIX, "user", key), {})[label] = encode_entry(entry)


W = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    with e.client:
        yield e


def test_listed_and_not_listed_with_freshness(env: Env) -> None:
    env.blacklist("u1")
    env.blacklist("u1", "old", exp=_now() - 1)  # expired: never reported
    r = env.client.get("/v1/check/user/u1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["listed"] is True and [lb["label"] for lb in body["labels"]] == ["fraud"]
    assert body["labels"][0]["rule_ids"] == ["r1"] and body["score"] == 90.0
    fresh = body["freshness"]
    assert fresh["status"] == "ok" and fresh["workers"] == 2 and 2.5 < fresh["lag_s"] < 30
    r2 = env.client.get("/v1/check/user/nobody")
    assert r2.status_code == 200 and r2.json()["listed"] is False
    timing = r2.headers["server-timing"]  # the time inside the service, for the caller
    assert timing.startswith("app;dur=") and 0 <= float(timing.split("=")[1]) < 5_000
    assert env.client.get("/v1/check/user/a/b%2Fc").json()["key"] == "a/b/c"  # keys may hold '/'


def test_unknown_kind_is_404_with_the_known_kinds(env: Env) -> None:
    r = env.client.get("/v1/check/usr/u1")
    assert r.status_code == 404 and r.json()["known"] == ["user", "device"]
    r = env.client.post("/v1/check", json={"checks": [{"entity": "ip", "key": "1"}]})
    assert r.status_code == 404


def test_redis_down_is_503_with_a_reason_never_not_listed(env: Env) -> None:
    env.redis.down = True
    for r in (
        env.client.get("/v1/check/user/u1"),
        env.client.post("/v1/check", json={"checks": [{"entity": "user", "key": "u1"}]}),
        env.client.get("/healthz"),
    ):
        assert r.status_code == 503, r.text
        assert "listed" not in r.json()
    body = env.client.get("/v1/check/user/u1").json()
    assert body["error"] == "redis_unavailable" and "ConnectionError" in body["reason"]


def test_batch_is_one_round_trip(env: Env) -> None:
    env.blacklist("u1")
    calls = env.redis.calls
    r = env.client.post(
        "/v1/check", json={"checks": [{"entity": "user", "key": f"u{i}"} for i in range(100)]}
    )
    assert r.status_code == 200 and env.redis.calls == calls + 1
    results = r.json()["results"]
    assert [x["listed"] for x in results[:3]] == [False, True, False] and "freshness" in r.json()
    too_many = {"checks": [{"entity": "user", "key": "u"}] * 101}
    assert env.client.post("/v1/check", json=too_many).status_code == 400
    assert env.client.post("/v1/check", content=b"{nope").status_code == 400


def test_writes_need_the_token_and_reads_do_not(env: Env) -> None:
    assert env.client.post("/v1/lists/vip", json={"values": ["u1"]}).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert env.client.post("/v1/lists/vip", json={"values": ["u1"]}, headers=bad).status_code == 401
    assert env.client.delete("/v1/lists/vip/u1").status_code == 401
    assert env.client.post("/v1/unblock/user/u1", json={"until": "1d", "why": "x"}).status_code == 401
    assert env.audited == [] and env.redis.sets == {}
    assert env.client.get("/v1/check/user/u1").status_code == 200


def test_writes_are_refused_without_a_configured_token() -> None:
    e = Env(write=None)
    with e.client:
        r = e.client.post("/v1/lists/vip", json={"values": ["u1"]}, headers={"Authorization": "Bearer "})
        assert r.status_code == 403 and "BYPASS_SERVE_TOKEN" in r.json()["reason"]


def test_read_token_guards_reads_and_the_write_token_works_too() -> None:
    e = Env(read=READ)
    with e.client:
        assert e.client.get("/v1/check/user/u1").status_code == 401
        assert (
            e.client.get("/v1/check/user/u1", headers={"Authorization": f"Bearer {READ}"}).status_code == 200
        )
        assert e.client.get("/v1/check/user/u1", headers=W).status_code == 200
        # the read token cannot write
        r = e.client.post(
            "/v1/lists/vip", json={"values": ["u1"]}, headers={"Authorization": f"Bearer {READ}"}
        )
        assert r.status_code == 401
        assert READ not in r.text and TOKEN not in r.text


def test_list_add_remove_are_audited_first(env: Env) -> None:
    r = env.client.post(
        "/v1/lists/vip", json={"values": ["u1", 7], "who": "ana", "why": "partner"}, headers=W
    )
    assert r.status_code == 200 and r.json()["added"] == 2, r.text
    assert env.redis.sets[f"{PREFIX}list:vip"] == {"u1", "7"}
    assert [(c.list, c.key, c.action, c.who, c.why) for c in env.audited] == [
        ("vip", "u1", "add", "ana", "partner"),
        ("vip", "7", "add", "ana", "partner"),
    ]
    assert env.client.get("/v1/lists").json() == {"lists": ["vip"]}
    assert env.client.get("/v1/lists/vip").json()["values"] == ["7", "u1"]
    r = env.client.delete("/v1/lists/vip/7?why=done", headers=W)
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert env.audited[-1].action == "remove" and env.audited[-1].who.startswith("api@")
    assert env.client.post("/v1/lists/unblock.user", json={"values": ["u1"]}, headers=W).status_code == 400
    assert env.client.post("/v1/lists/vip", json={"values": []}, headers=W).status_code == 400


def test_audit_down_changes_nothing(env: Env) -> None:
    env.audit_down = True
    r = env.client.post("/v1/lists/vip", json={"values": ["u1"]}, headers=W)
    assert r.status_code == 503 and r.json()["error"] == "audit_unavailable"
    r = env.client.post("/v1/unblock/user/u1", json={"until": "1d", "why": "x"}, headers=W)
    assert r.status_code == 503
    assert env.redis.sets == {} and env.redis.hashes == {}


def test_unblock_makes_a_listed_entity_check_as_not_listed(env: Env) -> None:
    env.blacklist("u1")
    r = env.client.post("/v1/unblock/user/u1", json={"until": "7d", "why": "false positive"}, headers=W)
    assert r.status_code == 200, r.text
    assert env.audited[-1].list == "unblock.user" and env.audited[-1].until_ms is not None
    body = env.client.get("/v1/check/user/u1").json()
    assert body["listed"] is False and body["unblock"]["why"] == "false positive"
    assert [lb["label"] for lb in body["unblocked_labels"]] == ["fraud"]
    assert (
        env.client.post("/v1/unblock/user/u1", json={"until": "7d"}, headers=W).status_code == 400
    )  # no why
    assert env.client.post("/v1/unblock/user/u1", json={"why": "x"}, headers=W).status_code == 400  # no until
    assert (
        env.client.post("/v1/unblock/usr/u1", json={"until": "1d", "why": "x"}, headers=W).status_code == 404
    )
    r = env.client.delete("/v1/unblock/user/u1", headers=W)
    assert r.status_code == 200 and r.json()["removed"] is True
    assert env.client.get("/v1/check/user/u1").json()["listed"] is True
    assert env.audited[-1].action == "unblock_remove"
