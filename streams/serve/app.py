"""The check API: a Starlette app over the Redis blacklist mirror, run by uvicorn (``bypass serve``).

Read endpoints (open, or ``Authorization: Bearer <BYPASS_SERVE_READ_TOKEN>`` when that is set;
the write token is accepted too)::

    GET  /healthz                        200 {"status": "ok", ...} | 503 when Redis does not answer
    GET  /v1/check/{entity}/{key}        one check answer (streams.serve.core) + "freshness"
    POST /v1/check                       {"checks": [{"entity", "key"}, ... (<= 100)]}
                                         -> {"results": [...], "freshness": {...}}
    GET  /v1/lists                       {"lists": [names]}
    GET  /v1/lists/{name}                {"name", "values": [...]}

Write endpoints (``Authorization: Bearer <BYPASS_SERVE_TOKEN>``; refused with 403 while the
setting is unset); each change is recorded in ClickHouse ``risk_list_changes`` first
(:mod:`sinks.list_admin`)::

    POST   /v1/lists/{name}              {"values": [...], "who"?, "why"?}
    DELETE /v1/lists/{name}/{value}      ?who=&why=
    POST   /v1/unblock/{entity}/{key}    {"until": "7d" | ISO 8601, "why": "...", "who"?}
    DELETE /v1/unblock/{entity}/{key}    ?who=&why=

The request path reads Redis only (one pipelined round trip per request: the mirror hash and
the unblock override of every key asked); the freshness comes from a background refresh
(:class:`streams.serve.freshness.FreshnessMonitor`). Redis down is a 503 whose body says so
(``{"error": "redis_unavailable", "reason": ...}``), never a "not listed"; an unknown entity
kind is a 404 naming the known ones. No token is ever logged or echoed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sinks.list_admin import (
    ListChange,
    Unblock,
    decode_unblock,
    encode_unblock,
    unblock_key,
    unblock_list_name,
)
from sinks.redis_lists import _member, list_key
from sinks.redis_mirror import MirrorEntry, decode_entry, mirror_key
from streams.serve.core import (
    BadRequestError,
    bearer,
    check_answer,
    check_key,
    check_list_name,
    parse_batch,
    parse_until,
    token_ok,
    write_body,
)
from streams.serve.freshness import FreshnessMonitor
from streams.settings import Settings, mask_url

__all__ = ["ServeConfig", "check_answers", "create_app"]

log = logging.getLogger(__name__)

Audit = Callable[[Sequence[ListChange]], None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


#: what a Redis call that did not get an answer raises (a 503, never "not listed")
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, error: str, reason: str, **extra: Any) -> Response:
    return ORJSONResponse({"error": error, "reason": reason, **extra}, status_code=status)


class ServeConfig:
    """What the app needs, built once: the async Redis client, the entity kinds, the tokens,
    the freshness monitor and the audit writer."""

    def __init__(
        self,
        *,
        redis: Any,
        kinds: Sequence[str],
        prefix: str,
        monitor: FreshnessMonitor,
        audit: Audit,
        write_token: str | None,
        read_token: str | None,
        redis_label: str = "redis",
        start_monitor: bool = True,
    ) -> None:
        self.redis = redis
        self.kinds = tuple(kinds)
        self._kinds = frozenset(kinds)
        self.prefix = prefix
        self.monitor = monitor
        self.audit = audit
        self.write_token = write_token or None
        self.read_token = read_token or None
        self.redis_label = redis_label
        self.start_monitor = start_monitor

    @classmethod
    def from_settings(cls, settings: Settings) -> ServeConfig:
        import redis.asyncio

        from streams.core import rulestore
        from streams.core.assembly import load_spec
        from streams.core.workers import read_workers

        kinds = list(load_spec(settings).entities)
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # one immediate retry (a pooled connection that died with a Redis restart), never the
        # client's default of 10 with back-off: a caller waiting on us needs a fast 503
        client = redis.asyncio.Redis.from_url(
            settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 1),
        )

        def read_rules() -> dict[str, str]:
            return {r.version: r.text for r in rulestore.read_versions(settings, timeout_s=5.0)}

        monitor = FreshnessMonitor(
            read_reports=lambda: read_workers(settings, timeout_s=5.0),
            read_rules=read_rules,
            refresh_s=settings.serve_freshness_s,
        )
        token = settings.serve_token.get_secret_value() if settings.serve_token else None
        read = settings.serve_read_token.get_secret_value() if settings.serve_read_token else None
        return cls(
            redis=client,
            kinds=kinds,
            prefix=settings.redis_key_prefix,
            monitor=monitor,
            audit=clickhouse_audit(settings),
            write_token=token,
            read_token=read,
            redis_label=mask_url(settings.redis_url),
        )

    def known(self, entity: str) -> bool:
        return entity in self._kinds


def clickhouse_audit(settings: Settings) -> Audit:
    """An audit writer inserting into ``risk_list_changes`` (one client, made on first use)."""
    import threading

    from sinks.list_admin import record_changes

    lock = threading.Lock()
    holder: list[Any] = []

    def write(changes: Sequence[ListChange]) -> None:
        from sinks.clickhouse_schema import check_identifier
        from streams.core.outputs import clickhouse_client

        with lock:
            if not holder:
                holder.append(
                    clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))
                )
            record_changes(holder[0], changes)

    return write


# --------------------------------------------------------------------------- helpers


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(entity: str, key: str, raw: dict[Any, Any], now: int) -> list[MirrorEntry]:
    out = []
    for label, value in raw.items():
        entry = decode_entry(entity, key, _text(label), _text(value))
        if entry is not None and entry.expires_at > now:
            out.append(entry)
    return sorted(out, key=lambda e: e.label)


def _active(entity: str, key: str, raw: Any, now: int) -> Unblock | None:
    found = decode_unblock(entity, key, raw)
    return found if found is not None and found.active(now) else None


def _cfg(request: Request) -> ServeConfig:
    cfg: ServeConfig = request.app.state.cfg
    return cfg


def _read_denied(request: Request, cfg: ServeConfig) -> Response | None:
    if cfg.read_token is None:
        return None
    if token_ok(bearer(request.headers), cfg.read_token, cfg.write_token):
        return None
    return _error(401, "unauthorized", "this endpoint needs Authorization: Bearer <read token>")


def _write_denied(request: Request, cfg: ServeConfig) -> Response | None:
    if cfg.write_token is None:
        return _error(403, "writes_disabled", "set BYPASS_SERVE_TOKEN to allow list changes and unblocks")
    if token_ok(bearer(request.headers), cfg.write_token):
        return None
    return _error(401, "unauthorized", "this endpoint needs Authorization: Bearer <BYPASS_SERVE_TOKEN>")


def _unknown_kind(cfg: ServeConfig, entity: str) -> Response:
    return _error(404, "unknown_entity", f"unknown entity kind {entity!r}", known=list(cfg.kinds))


def _redis_down(cfg: ServeConfig, exc: BaseException) -> Response:
    log.warning("Redis at %s did not answer: %s", cfg.redis_label, exc)
    return _error(
        503,
        "redis_unavailable",
        f"Redis did not answer ({type(exc).__name__}); listed status unknown, fall back",
        retry_after_s=1,
    )


async def check_answers(cfg: ServeConfig, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    pipe = cfg.redis.pipeline(transaction=False)
    for entity, key in pairs:
        pipe.hgetall(mirror_key(cfg.prefix, entity, key))
        pipe.hget(unblock_key(cfg.prefix, entity), key)
    raw = await pipe.execute()
    now = _now_ms()
    scores = cfg.monitor.scores
    out = []
    for i, (entity, key) in enumerate(pairs):
        entries = _entries(entity, key, raw[2 * i], now)
        out.append(
            check_answer(entity, key, entries, _active(entity, key, raw[2 * i + 1], now), scores=scores)
        )
    return out


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from None


async def _audit(cfg: ServeConfig, changes: Sequence[ListChange]) -> Response | None:
    try:
        await run_in_threadpool(cfg.audit, changes)
    except Exception as exc:
        log.warning("recording list changes in ClickHouse failed: %s", exc)
        return _error(
            503,
            "audit_unavailable",
            f"the change could not be recorded in ClickHouse ({type(exc).__name__}); nothing was changed",
        )
    return None


# --------------------------------------------------------------------------- endpoints


async def healthz(request: Request) -> Response:
    cfg = _cfg(request)
    fresh = cfg.monitor.current.as_dict(_now_ms())
    try:
        await cfg.redis.ping()
    except REDIS_ERRORS as exc:
        return ORJSONResponse(
            {"status": "down", "redis": f"error: {type(exc).__name__}", "freshness": fresh}, status_code=503
        )
    return ORJSONResponse({"status": "ok", "redis": "ok", "freshness": fresh})


def _entity_request(request: Request, cfg: ServeConfig, *, write: bool) -> tuple[str, str] | Response:
    """The (entity, key) of an entity route, or the answer that refuses it: no token (401/403)
    or an entity kind the feature spec does not have (404)."""
    denied = _write_denied(request, cfg) if write else _read_denied(request, cfg)
    if denied is not None:
        return denied
    entity = request.path_params["entity"]
    if not cfg.known(entity):
        return _unknown_kind(cfg, entity)
    return entity, request.path_params["key"]


async def _audited_write(
    cfg: ServeConfig, changes: Sequence[ListChange], write: Callable[[], Awaitable[Any]]
) -> Any:
    """Record ``changes`` in ClickHouse first, then make the Redis ``write``; its result, or
    the error answer (audit not written: nothing changed; Redis down: 503)."""
    failed = await _audit(cfg, changes)
    if failed is not None:
        return failed
    try:
        return await write()
    except REDIS_ERRORS as exc:
        return _redis_down(cfg, exc)


async def check_one(request: Request) -> Response:
    started = time.perf_counter()
    cfg = _cfg(request)
    target = _entity_request(request, cfg, write=False)
    if isinstance(target, Response):
        return target
    entity, key = target
    try:
        (answer,) = await check_answers(cfg, [(entity, key)])
    except REDIS_ERRORS as exc:
        return _redis_down(cfg, exc)
    answer["freshness"] = cfg.monitor.current.as_dict(_now_ms())
    # how long the answer took inside the service (the Redis round trip included): a
    # caller can tell the service's time from the network's and its own
    elapsed_ms = (time.perf_counter() - started) * 1000
    return ORJSONResponse(answer, headers={"server-timing": f"app;dur={elapsed_ms:.3f}"})


async def check_batch(request: Request) -> Response:
    cfg = _cfg(request)
    denied = _read_denied(request, cfg)
    if denied is not None:
        return denied
    try:
        pairs = parse_batch(await _json_body(request))
    except BadRequestError as exc:
        return _error(400, "bad_request", str(exc))
    for entity, _key in pairs:
        if not cfg.known(entity):
            return _unknown_kind(cfg, entity)
    try:
        results = await check_answers(cfg, pairs)
    except REDIS_ERRORS as exc:
        return _redis_down(cfg, exc)
    return ORJSONResponse({"results": results, "freshness": cfg.monitor.current.as_dict(_now_ms())})


async def list_names(request: Request) -> Response:
    cfg = _cfg(request)
    denied = _read_denied(request, cfg)
    if denied is not None:
        return denied
    start = len(list_key(cfg.prefix, ""))
    try:
        found = {
            _text(k)[start:] async for k in cfg.redis.scan_iter(match=list_key(cfg.prefix, "*"), count=1000)
        }
    except REDIS_ERRORS as exc:
        return _redis_down(cfg, exc)
    return ORJSONResponse({"lists": sorted(found)})


async def list_show(request: Request) -> Response:
    cfg = _cfg(request)
    denied = _read_denied(request, cfg)
    if denied is not None:
        return denied
    name = request.path_params["name"]
    try:
        members = await cfg.redis.smembers(list_key(cfg.prefix, name))
    except REDIS_ERRORS as exc:
        return _redis_down(cfg, exc)
    return ORJSONResponse({"name": name, "values": sorted(_text(m) for m in members)})


async def list_add(request: Request) -> Response:
    cfg = _cfg(request)
    denied = _write_denied(request, cfg)
    if denied is not None:
        return denied
    try:
        name = check_list_name(request.path_params["name"])
        body = await _json_body(request)
        who = write_body(body, request.client.host if request.client else None)
        values = body.get("values") if isinstance(body, dict) else None
        if isinstance(body, dict) and "value" in body and values is None:
            values = [body["value"]]
        if not isinstance(values, list) or not values or len(values) > 1000:
            raise BadRequestError('body must hold "values": a list of 1..1000 values')
        members = [check_key(_member(v), "value") for v in values]
    except BadRequestError as exc:
        return _error(400, "bad_request", str(exc))
    now = _now_ms()
    added = await _audited_write(
        cfg,
        [ListChange(name, m, "add", who.who, who.why, None, now) for m in members],
        lambda: cfg.redis.sadd(list_key(cfg.prefix, name), *members),
    )
    if isinstance(added, Response):
        return added
    return ORJSONResponse({"name": name, "added": int(added), "values": members, "who": who.who})


def _query_who(request: Request) -> Any:
    return {"who": request.query_params.get("who"), "why": request.query_params.get("why")}


async def list_remove(request: Request) -> Response:
    cfg = _cfg(request)
    denied = _write_denied(request, cfg)
    if denied is not None:
        return denied
    try:
        name = check_list_name(request.path_params["name"])
        value = check_key(request.path_params["value"], "value")
        who = write_body(_query_who(request), request.client.host if request.client else None)
    except BadRequestError as exc:
        return _error(400, "bad_request", str(exc))
    removed = await _audited_write(
        cfg,
        [ListChange(name, value, "remove", who.who, who.why, None, _now_ms())],
        lambda: cfg.redis.srem(list_key(cfg.prefix, name), value),
    )
    if isinstance(removed, Response):
        return removed
    return ORJSONResponse({"name": name, "removed": int(removed), "value": value, "who": who.who})


async def unblock_set(request: Request) -> Response:
    cfg = _cfg(request)
    target = _entity_request(request, cfg, write=True)
    if isinstance(target, Response):
        return target
    entity, key = target
    now = _now_ms()
    try:
        body = await _json_body(request)
        who = write_body(body, request.client.host if request.client else None)
        until = parse_until(body.get("until") if isinstance(body, dict) else None, now)
        if not who.why:
            raise BadRequestError("why is required: say why this entity is unblocked")
    except BadRequestError as exc:
        return _error(400, "bad_request", str(exc))
    unblock = Unblock(entity, key, until, who.who, who.why, now)
    change = ListChange(unblock_list_name(entity), key, "unblock", who.who, who.why, until, now)
    done = await _audited_write(
        cfg, [change], lambda: cfg.redis.hset(unblock_key(cfg.prefix, entity), key, encode_unblock(unblock))
    )
    if isinstance(done, Response):
        return done
    return ORJSONResponse({"entity": entity, "key": key, "unblock": unblock.as_dict()})


async def unblock_remove(request: Request) -> Response:
    cfg = _cfg(request)
    target = _entity_request(request, cfg, write=True)
    if isinstance(target, Response):
        return target
    entity, key = target
    try:
        who = write_body(_query_who(request), request.client.host if request.client else None)
    except BadRequestError as exc:
        return _error(400, "bad_request", str(exc))
    change = ListChange(unblock_list_name(entity), key, "unblock_remove", who.who, who.why, None, _now_ms())
    removed = await _audited_write(
        cfg, [change], lambda: cfg.redis.hdel(unblock_key(cfg.prefix, entity), key)
    )
    if isinstance(removed, Response):
        return removed
    return ORJSONResponse({"entity": entity, "key": key, "removed": bool(removed)})


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/v1/check/{entity}/{key:path}", check_one, methods=["GET"]),
    Route("/v1/check", check_batch, methods=["POST"]),
    Route("/v1/lists", list_names, methods=["GET"]),
    Route("/v1/lists/{name}", list_show, methods=["GET"]),
    Route("/v1/lists/{name}", list_add, methods=["POST"]),
    Route("/v1/lists/{name}/{value:path}", list_remove, methods=["DELETE"]),
    Route("/v1/unblock/{entity}/{key:path}", unblock_set, methods=["POST"]),
    Route("/v1/unblock/{entity}/{key:path}", unblock_remove, methods=["DELETE"]),
]


def create_app(cfg: ServeConfig, *, console: Any = None, extra_routes: Sequence[Route] = ()) -> Starlette:
    """The ASGI app for ``cfg`` (the freshness monitor runs while the app does); with
    ``console`` (a :class:`streams.serve.console.ConsoleBackend`) the web console too."""
    if console is not None:
        from streams.serve.console import console_routes

        extra_routes = [*extra_routes, *console_routes(console)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if cfg.start_monitor:
            cfg.monitor.start()
            # what start-up allocated stays: keep it out of every later GC pass (fewer, shorter
            # pauses on the request path)
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            cfg.monitor.stop()
            with contextlib.suppress(Exception):
                await cfg.redis.aclose()

    app = Starlette(routes=[*ROUTES, *extra_routes], lifespan=lifespan)
    app.state.cfg = cfg
    return app
