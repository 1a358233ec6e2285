"""The web console of ``bypass serve``: server-rendered HTML pages, a little JavaScript, no build.

Pages (GET; behind a login when ``BYPASS_SERVE_READ_TOKEN`` is set)::

    /                       overview: events/s, workers, freshness, active rule set, DLQ by reason
                            (last hour), hits per rule per hour (``risk_hits_hourly``, last 24 h)
    /rules                  rule-set versions (``rulestore.read_entries`` + ``history_rows``)
    /rules/{rule_id}        one rule's hit history by hour, rule-set version and mode
    /entity/{entity}/{key}  its hits with the feature values each rule read, its blacklist labels,
                            unblock override and named lists, an unblock form
    /lists                  the named lists, add / remove forms, the latest changes
    /login, /logout         a session cookie (HttpOnly, SameSite=Strict) for the token

Actions (POST forms) need a session opened with ``BYPASS_SERVE_TOKEN`` and the session's CSRF
token in the form; they go through the same audited path as the API (``risk_list_changes``
first, then Redis). No token is ever written into a page, a URL or a log.
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sinks.list_admin import ListChange, Unblock, encode_unblock, unblock_key, unblock_list_name
from sinks.redis_lists import list_key
from streams.serve.core import BadRequestError, check_key, check_list_name, iso, parse_until, token_ok

__all__ = ["ConsoleBackend", "Sessions", "console_routes", "settings_backend"]

log = logging.getLogger(__name__)

COOKIE = "bypass_console"
SESSION_TTL_S = 8 * 3600


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- data


@dataclass
class ConsoleBackend:
    """The slow reads of the console (ClickHouse, Kafka), each a blocking call run in a thread;
    a failure is shown on the page, never a crash."""

    hourly: Callable[[int], list[dict[str, Any]]]
    rule_history: Callable[[str, int], list[dict[str, Any]]]
    entity_hits: Callable[[str, str], list[dict[str, Any]]]
    changes: Callable[[int], list[dict[str, Any]]]
    dlq: Callable[[int], tuple[dict[str, int], bool]]
    versions: Callable[[], list[Any]]


HOURLY_SQL = """
SELECT hour, rule_id, mode, uniqExactMerge(hits) AS hits, uniqExactMerge(counted_hits) AS counted
FROM risk_hits_hourly
WHERE hour >= toStartOfHour(fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')) AND run_id = 'live'
GROUP BY hour, rule_id, mode
ORDER BY rule_id, mode, hour
"""

RULE_SQL = """
SELECT hour, ruleset_version, mode, uniqExactMerge(hits) AS hits, uniqExactMerge(counted_hits) AS counted
FROM risk_hits_hourly
WHERE rule_id = {rule_id:String} AND run_id = 'live'
  AND hour >= toStartOfHour(fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC'))
GROUP BY hour, ruleset_version, mode
ORDER BY hour DESC, ruleset_version, mode
LIMIT 1000
"""

CHANGES_SQL = """
SELECT changed_at, list, key, action, who, why, until
FROM risk_list_changes ORDER BY changed_at DESC LIMIT {limit:UInt32}
"""


def settings_backend(settings: Any) -> ConsoleBackend:
    """The backend over the real ClickHouse and Kafka of ``settings`` (one ClickHouse client,
    made on first use, shared under a lock)."""
    lock = threading.Lock()
    holder: list[Any] = []

    def query(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        from sinks.clickhouse_schema import check_identifier
        from streams.core.outputs import clickhouse_client

        with lock:
            if not holder:
                holder.append(
                    clickhouse_client(settings, database=check_identifier(settings.clickhouse_database))
                )
            result = holder[0].query(sql, parameters=params)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def entity_hits(entity: str, key: str) -> list[dict[str, Any]]:
        from sinks.analytics import ENTITY_HISTORY_SQL

        return query(ENTITY_HISTORY_SQL, {"entity": entity, "key": key, "limit": 200, "run_id": ""})

    def dlq(since_ms: int) -> tuple[dict[str, int], bool]:
        from streams.core.overview import dlq_by_reason

        return dlq_by_reason(settings, since_ms, timeout_s=3.0)

    def versions() -> list[Any]:
        from streams.cli.rules_history import history_rows
        from streams.core.assembly import load_spec
        from streams.core.rulestore import read_entries
        from streams.core.workers import read_workers

        entries = read_entries(settings, timeout_s=5.0)
        running = read_workers(settings, timeout_s=5.0)
        return history_rows(
            entries, load_spec(settings), {w.worker_id: w.ruleset_version or "" for w in running}
        )

    return ConsoleBackend(
        hourly=lambda since: query(HOURLY_SQL, {"since_ms": since}),
        rule_history=lambda rule, since: query(RULE_SQL, {"rule_id": rule, "since_ms": since}),
        entity_hits=entity_hits,
        changes=lambda limit: query(CHANGES_SQL, {"limit": limit}),
        dlq=dlq,
        versions=versions,
    )


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    write: bool
    csrf: str
    expires: float


@dataclass
class Sessions:
    """Console sessions in memory (a restart logs everyone out)."""

    items: dict[str, Session] = field(default_factory=dict)

    def open(self, write: bool) -> tuple[str, Session]:
        now = time.monotonic()
        self.items = {k: v for k, v in self.items.items() if v.expires > now}
        sid = secrets.token_urlsafe(32)
        session = Session(write, secrets.token_urlsafe(24), now + SESSION_TTL_S)
        self.items[sid] = session
        return sid, session

    def get(self, request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        session = self.items.get(sid) if sid else None
        if session is None or session.expires < time.monotonic():
            return None
        return session

    def close(self, request: Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self.items.pop(sid, None)


# --------------------------------------------------------------------------- html


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _url(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, int) and value > 0:
        return iso(value)
    return "-" if value is None else str(value)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#223;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#cde}main{padding:16px}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eee}
.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}.warn{color:#a60}
.bar{display:inline-block;background:#58a;height:10px;vertical-align:middle}
form.inline{display:inline}input{margin:2px}code{background:#f4f4f4;padding:0 3px}
"""

JS = """
document.querySelectorAll('form[data-confirm]').forEach(function (f) {
  f.addEventListener('submit', function (e) { if (!confirm(f.dataset.confirm)) e.preventDefault(); });
});
var r = document.body.dataset.refresh;
if (r) setTimeout(function () { location.reload(); }, parseInt(r, 10) * 1000);
"""


def page(
    title: str, body: str, session: Session | None, *, refresh_s: int = 0, status: int = 200
) -> HTMLResponse:
    who = (
        '<form class="inline" method="post" action="/logout"><button>log out</button></form>'
        if session is not None
        else '<a href="/login">log in</a>'
    )
    search = (
        '<form class="inline" method="get" action="/entity">'
        '<input name="entity" placeholder="entity" size="8"><input name="key" placeholder="key" size="16">'
        "<button>look up</button></form>"
    )
    refresh = f' data-refresh="{refresh_s}"' if refresh_s else ""
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} - bypass</title>"
        f"<style>{CSS}</style></head><body{refresh}><header><b>bypass</b>"
        '<a href="/">overview</a><a href="/rules">rule sets</a><a href="/lists">lists</a>'
        f"{search}<span style='margin-left:auto'>{who}</span></header>"
        f"<main><h1>{esc(title)}</h1>{body}</main><script>{JS}</script></body></html>"
    )
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def fmt_features(numbers: Mapping[str, Any] | None, texts: Mapping[str, Any] | None) -> str:
    parts = [
        f"{k}={'null' if v is None else (f'{v:g}' if isinstance(v, float) else v)}"
        for k, v in sorted((numbers or {}).items())
    ]
    parts += [f"{k}={v}" for k, v in sorted((texts or {}).items())]
    return " ".join(parts)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (the console's forms) -> field -> value (the first of each);
    bodies over 64 KiB are cut."""
    body = (await request.body())[:65_536]
    return dict(reversed(parse_qsl(body.decode(errors="replace"), keep_blank_values=True)))


def _csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(session.csrf)}">'


async def _try(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    try:
        return await run_in_threadpool(fn, *args), None
    except Exception as exc:
        log.warning("console read failed: %s", exc)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _problem(what: str, why: str | None) -> str:
    return f"<p class='bad'>{esc(what)} unavailable: {esc(why)}</p>" if why else ""


# --------------------------------------------------------------------------- the routes


def console_routes(backend: ConsoleBackend, sessions: Sessions | None = None) -> list[Route]:
    """The console's routes, over the app's ``ServeConfig`` (``request.app.state.cfg``)."""
    from streams.serve.app import ServeConfig, check_answers

    sessions = sessions or Sessions()

    def cfg_of(request: Request) -> ServeConfig:
        cfg: ServeConfig = request.app.state.cfg
        return cfg

    def gate(request: Request) -> tuple[Session | None, Response | None]:
        cfg = cfg_of(request)
        session = sessions.get(request)
        if cfg.read_token is not None and session is None:
            return None, RedirectResponse("/login", status_code=303)
        return session, None

    async def login_form(request: Request) -> Response:
        msg = "<p class='bad'>wrong token</p>" if request.query_params.get("failed") else ""
        body = (
            f"{msg}<form method='post' action='/login'><label>token <input type='password' name='token' "
            "autocomplete='off'></label> <button>log in</button></form>"
            "<p>BYPASS_SERVE_TOKEN allows actions (unblock, list changes); "
            "BYPASS_SERVE_READ_TOKEN reading only.</p>"
        )
        return page("log in", body, sessions.get(request))

    async def login(request: Request) -> Response:
        cfg = cfg_of(request)
        form = await _form(request)
        token = str(form.get("token") or "")
        write = token_ok(token, cfg.write_token)
        if not write and not token_ok(token, cfg.read_token):
            return RedirectResponse("/login?failed=1", status_code=303)
        sid, _ = sessions.open(write)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", max_age=SESSION_TTL_S)
        return response

    async def logout(request: Request) -> Response:
        sessions.close(request)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def overview(request: Request) -> Response:
        session, denied = gate(request)
        if denied is not None:
            return denied
        cfg = cfg_of(request)
        now = _now_ms()
        fresh = cfg.monitor.current.as_dict(now)
        reports = [r for r in cfg.monitor.reports if r.kind == "worker"]
        rows = []
        eps_total = 0.0
        for r in reports:
            h = r.health or {}
            eps = h.get("events_per_s") or 0
            eps_total += float(eps) if isinstance(eps, int | float) else 0.0
            lag = h.get("consumer_lag") or {}
            rows.append(
                [
                    esc(r.worker_id),
                    esc(h.get("status", "?")),
                    esc(r.ruleset_version or "-"),
                    esc(f"{int(h.get('events_in') or 0):,}"),
                    esc(eps),
                    esc(sum(int(v) for v in lag.values()) if isinstance(lag, dict) and lag else "-"),
                    esc(h.get("event_time_lag_s", "-")),
                ]
            )
        versions = sorted({r.ruleset_version for r in reports if r.ruleset_version})
        status_cls = "ok" if fresh["status"] == "ok" else "bad"
        body = [
            f"<p>freshness: <span class='{status_cls}' id='freshness'>{esc(fresh['status'])}</span>, "
            f"watermark {esc(fresh['watermark'] or '-')}, lag <span id='lag'>{esc(fresh['lag_s'])}</span> s; "
            f"events/s <b id='eps'>{eps_total:g}</b>; active rule set "
            f"<b id='ruleset'>{esc(', '.join(versions) or '-')}</b></p>",
            "<h2>workers</h2>",
            table(["worker", "status", "rules", "events", "events/s", "lag", "event-time lag s"], rows)
            if rows
            else "<p class='warn'>no worker reported in the last minute</p>",
        ]
        dlq, why = await _try(backend.dlq, now - 3_600_000)
        body.append("<h2>dead letters, last hour</h2>")
        body.append(_problem("DLQ", why))
        if dlq is not None:
            counts, capped = dlq
            body.append(
                table(["reason", "messages"], [[esc(k), esc(f"{v:,}")] for k, v in counts.items()])
                + ("<p>(at least: the count stopped at its cap)</p>" if capped else "")
                if counts
                else "<p>none</p>"
            )
        hourly, why = await _try(backend.hourly, now - 24 * 3_600_000)
        body.append("<h2>hits per rule per hour, last 24 h (live)</h2>")
        body.append(_problem("ClickHouse", why))
        if hourly is not None:
            body.append(_hourly_table(hourly, now))
        return page("overview", "".join(body), session, refresh_s=30)

    async def versions(request: Request) -> Response:
        session, denied = gate(request)
        if denied is not None:
            return denied
        rows, why = await _try(backend.versions)
        body = [_problem("the rules topic", why)]
        if rows is not None:
            out = []
            for row in rows:
                again = row.activations[1:]
                state = (
                    "ACTIVE" if row.active else ("refused: " + (row.problem or "") if not row.loads else "")
                )
                out.append(
                    [
                        f"<b>{esc(row.version)}</b>",
                        esc(row.rules),
                        esc(row.source or "-"),
                        esc(_when(row.published_ms)),
                        esc(row.publisher or "-"),
                        esc(", ".join(f"{_when(at)}{f' by {by}' if by else ''}" for at, by in again) or "-"),
                        f"<span class='{_state_class(row)}'>{esc(state)}</span>",
                        esc(", ".join(row.workers) or "-"),
                    ]
                )
            body.append(
                table(["version", "rules", "source", "published", "by", "activated", "state", "workers"], out)
                if out
                else "<p>no rule set published yet</p>"
            )
        return page("rule-set versions", "".join(body), session)

    async def rule(request: Request) -> Response:
        session, denied = gate(request)
        if denied is not None:
            return denied
        rule_id = request.path_params["rule_id"]
        rows, why = await _try(backend.rule_history, rule_id, _now_ms() - 7 * 86_400_000)
        body = [_problem("ClickHouse", why)]
        if rows is not None:
            totals: dict[tuple[str, str], list[int]] = {}
            for r in rows:
                t = totals.setdefault((str(r["ruleset_version"]), str(r["mode"])), [0, 0])
                t[0] += int(r["hits"])
                t[1] += int(r["counted"])
            body.append("<h2>by rule-set version and mode, last 7 days</h2>")
            body.append(
                table(
                    ["version", "mode", "hits", "counted"],
                    [[esc(v), esc(m), esc(h), esc(c)] for (v, m), (h, c) in sorted(totals.items())],
                )
            )
            body.append("<h2>by hour</h2>")
            body.append(
                table(
                    ["hour", "version", "mode", "hits", "counted"],
                    [
                        [
                            esc(_when(r["hour"])),
                            esc(r["ruleset_version"]),
                            esc(r["mode"]),
                            esc(r["hits"]),
                            esc(r["counted"]),
                        ]
                        for r in rows
                    ],
                )
                if rows
                else "<p>no live hits of this rule in the last 7 days</p>"
            )
        return page(f"rule {rule_id}", "".join(body), session)

    async def entity_search(request: Request) -> Response:
        entity = request.query_params.get("entity", "").strip()
        key = request.query_params.get("key", "").strip()
        if not entity or not key:
            return RedirectResponse("/", status_code=303)
        return RedirectResponse(_url("entity", entity, key), status_code=303)

    async def entity(request: Request) -> Response:
        session, denied = gate(request)
        if denied is not None:
            return denied
        cfg = cfg_of(request)
        entity_kind = request.path_params["entity"]
        key = request.path_params["key"]
        if not cfg.known(entity_kind):
            known = esc(", ".join(cfg.kinds))
            text = f"<p class='bad'>unknown entity kind {esc(entity_kind)}: known {known}</p>"
            return page("entity", text, session, status=404)
        body: list[str] = []
        try:
            (answer,) = await check_answers(cfg, [(entity_kind, key)])
            names = await _lists_holding(cfg, key)
        except Exception as exc:
            answer, names = None, None
            body.append(_problem("Redis", type(exc).__name__))
        if answer is not None:
            state = (
                "<span class='bad' id='listed'>LISTED</span>"
                if answer["listed"]
                else "<span class='ok' id='listed'>not listed</span>"
            )
            body.append(f"<p>{state}</p>")
            labels = answer["labels"] or answer.get("unblocked_labels") or []
            if labels:
                body.append(
                    table(
                        ["label", "rules", "score", "expires", "rule-set version", "event"],
                        [
                            [
                                esc(lb["label"]),
                                ", ".join(
                                    f"<a href='{_url('rules', r)}'>{esc(r)}</a>" for r in lb["rule_ids"]
                                ),
                                esc(f"{lb['score']:g}" if lb["score"] is not None else "-"),
                                esc(lb["expires_at"]),
                                esc(lb["ruleset_version"]),
                                esc(lb["event_id"]),
                            ]
                            for lb in labels
                        ],
                    )
                )
            u = answer["unblock"]
            if u is not None:
                body.append(
                    f"<p id='unblock'>unblocked until <b>{esc(u['until'])}</b> by {esc(u['who'])}: "
                    f"{esc(u['why'])} (set {esc(u['at'])}); the labels above are held back</p>"
                )
            if names:
                body.append(
                    "<p>in named lists: " + ", ".join(f"<code>{esc(n)}</code>" for n in names) + "</p>"
                )
        body.append(_unblock_form(session, entity_kind, key, answer))
        hits, why = await _try(backend.entity_hits, entity_kind, key)
        body.append("<h2>hits</h2>")
        body.append(_problem("ClickHouse", why))
        if hits is not None:
            body.append(
                table(
                    [
                        "event time",
                        "rule",
                        "label",
                        "mode",
                        "score",
                        "decision",
                        "version",
                        "run",
                        "event",
                        "features read",
                    ],
                    [
                        [
                            esc(_when(h["event_time"])),
                            f"<a href='{_url('rules', str(h['rule_id']))}'>{esc(h['rule_id'])}</a>",
                            esc(h["label"]),
                            esc(f"{h['mode']} (failed: {h['error']})" if h.get("error") else h["mode"]),
                            esc(f"{h['score']:g}" if isinstance(h["score"], float) else h["score"]),
                            esc(h["decision"]),
                            esc(h["ruleset_version"]),
                            esc(h["run_id"]),
                            esc(h["event_id"]),
                            f"<code>{esc(fmt_features(h.get('features'), h.get('features_text')))}</code>",
                        ]
                        for h in hits
                    ],
                    cls="hits",
                )
                if hits
                else "<p>no hits</p>"
            )
        return page(f"{entity_kind} {key}", "".join(body), session)

    async def lists_page(request: Request) -> Response:
        session, denied = gate(request)
        if denied is not None:
            return denied
        cfg = cfg_of(request)
        body: list[str] = []
        try:
            start = len(list_key(cfg.prefix, ""))
            names = sorted(
                {
                    (k.decode() if isinstance(k, bytes) else str(k))[start:]
                    async for k in cfg.redis.scan_iter(match=list_key(cfg.prefix, "*"), count=1000)
                }
            )
            pipe = cfg.redis.pipeline(transaction=False)
            for n in names:
                pipe.srandmember(list_key(cfg.prefix, n), 200)
                pipe.scard(list_key(cfg.prefix, n))
            raw = await pipe.execute()
        except Exception as exc:
            names, raw = [], []
            body.append(_problem("Redis", type(exc).__name__))
        writable = session is not None and session.write
        for i, n in enumerate(names):
            values = sorted(v.decode() if isinstance(v, bytes) else str(v) for v in raw[2 * i] or [])
            size = int(raw[2 * i + 1] or 0)
            cells = []
            for v in values:
                remove = (
                    f"<form class='inline' method='post' action='{_url('lists', n, 'remove')}' "
                    f"data-confirm='remove {esc(v)} from {esc(n)}?'>{_csrf_field(session)}"
                    f"<input type='hidden' name='value' value='{esc(v)}'><button>remove</button></form>"
                    if writable and session is not None
                    else ""
                )
                cells.append([f"<code>{esc(v)}</code>", remove])
            shown = f" (200 of {size:,} shown)" if size > len(values) else ""
            body.append(f"<h2>{esc(n)}{esc(shown)}</h2>" + table(["value", ""], cells))
        if writable and session is not None:
            body.append(
                "<h2>add to a list</h2><form method='post' action='/lists/add'>"
                f"{_csrf_field(session)}<input name='name' placeholder='list' required>"
                "<input name='value' placeholder='value' required><input name='why' placeholder='why'>"
                "<input name='who' placeholder='who'><button>add</button></form>"
            )
        else:
            body.append("<p><a href='/login'>log in</a> with the write token to change lists</p>")
        changes, why = await _try(backend.changes, 50)
        body.append("<h2>latest changes (risk_list_changes)</h2>")
        body.append(_problem("ClickHouse", why))
        if changes is not None:
            body.append(
                table(
                    ["when", "action", "list", "key", "until", "who", "why"],
                    [
                        [
                            esc(_when(c["changed_at"])),
                            esc(c["action"]),
                            esc(c["list"]),
                            esc(c["key"]),
                            esc(_when(c["until"])),
                            esc(c["who"]),
                            esc(c["why"]),
                        ]
                        for c in changes
                    ],
                )
                if changes
                else "<p>none yet</p>"
            )
        return page("lists", "".join(body), session)

    async def _action_session(request: Request) -> tuple[Session | None, Any, Response | None]:
        session = sessions.get(request)
        form = await _form(request)
        if session is None or not session.write:
            return (
                None,
                form,
                page(
                    "not allowed", "<p class='bad'>log in with the write token first</p>", session, status=401
                ),
            )
        if not token_ok(str(form.get("csrf") or ""), session.csrf):
            return (
                None,
                form,
                page("not allowed", "<p class='bad'>bad or missing CSRF token</p>", session, status=403),
            )
        return session, form, None

    def _who(form: Any, request: Request) -> str:
        who = str(form.get("who") or "").strip()
        return (who or f"console@{request.client.host if request.client else 'unknown'}")[:200]

    async def _apply(cfg: ServeConfig, change: ListChange, write: Callable[[], Any]) -> str | None:
        try:
            await run_in_threadpool(cfg.audit, [change])
        except Exception as exc:
            return (
                f"the change could not be recorded in ClickHouse ({type(exc).__name__}); nothing was changed"
            )
        try:
            await write()
        except Exception as exc:
            return f"Redis did not answer ({type(exc).__name__})"
        return None

    async def unblock_action(request: Request) -> Response:
        session, form, denied = await _action_session(request)
        if denied is not None:
            return denied
        cfg = cfg_of(request)
        entity_kind, key = request.path_params["entity"], request.path_params["key"]
        if not cfg.known(entity_kind):
            return page("unblock", "<p class='bad'>unknown entity kind</p>", session, status=404)
        now = _now_ms()
        who = _who(form, request)
        why = str(form.get("why") or "").strip()[:1000]
        back = _url("entity", entity_kind, key)
        if form.get("remove"):
            change = ListChange(unblock_list_name(entity_kind), key, "unblock_remove", who, why, None, now)
            problem = await _apply(
                cfg, change, lambda: cfg.redis.hdel(unblock_key(cfg.prefix, entity_kind), key)
            )
        else:
            try:
                until = parse_until(str(form.get("until") or ""), now)
                if not why:
                    raise BadRequestError("why is required")
            except BadRequestError as exc:
                return page(
                    "unblock", f"<p class='bad'>{esc(exc)}</p><a href='{back}'>back</a>", session, status=400
                )
            unblock = Unblock(entity_kind, key, until, who, why, now)
            change = ListChange(unblock_list_name(entity_kind), key, "unblock", who, why, until, now)
            problem = await _apply(
                cfg,
                change,
                lambda: cfg.redis.hset(unblock_key(cfg.prefix, entity_kind), key, encode_unblock(unblock)),
            )
        if problem:
            return page(
                "unblock", f"<p class='bad'>{esc(problem)}</p><a href='{back}'>back</a>", session, status=503
            )
        return RedirectResponse(back, status_code=303)

    async def list_action(request: Request) -> Response:
        session, form, denied = await _action_session(request)
        if denied is not None:
            return denied
        cfg = cfg_of(request)
        action = request.path_params.get("action", "add")
        try:
            name = check_list_name(request.path_params.get("name") or form.get("name"))
            value = check_key(str(form.get("value") or ""), "value")
        except BadRequestError as exc:
            return page(
                "lists", f"<p class='bad'>{esc(exc)}</p><a href='/lists'>back</a>", session, status=400
            )
        who = _who(form, request)
        why = str(form.get("why") or "").strip()[:1000]
        change = ListChange(name, value, action, who, why, None, _now_ms())
        op = cfg.redis.sadd if action == "add" else cfg.redis.srem
        problem = await _apply(cfg, change, lambda: op(list_key(cfg.prefix, name), value))
        if problem:
            return page(
                "lists", f"<p class='bad'>{esc(problem)}</p><a href='/lists'>back</a>", session, status=503
            )
        return RedirectResponse("/lists", status_code=303)

    return [
        Route("/", overview, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/rules", versions, methods=["GET"]),
        Route("/rules/{rule_id}", rule, methods=["GET"]),
        Route("/entity", entity_search, methods=["GET"]),
        Route("/entity/{entity}/{key:path}", entity, methods=["GET"]),
        Route("/entity/{entity}/{key:path}/unblock", unblock_action, methods=["POST"]),
        Route("/lists", lists_page, methods=["GET"]),
        Route("/lists/add", list_action, methods=["POST"]),
        Route("/lists/{name}/{action:str}", list_action, methods=["POST"]),
    ]


async def _lists_holding(cfg: Any, key: str) -> list[str]:
    """The named lists that hold ``key`` (one scan, one pipeline)."""
    start = len(list_key(cfg.prefix, ""))
    names = sorted(
        {
            (k.decode() if isinstance(k, bytes) else str(k))[start:]
            async for k in cfg.redis.scan_iter(match=list_key(cfg.prefix, "*"), count=1000)
        }
    )
    if not names:
        return []
    pipe = cfg.redis.pipeline(transaction=False)
    for n in names:
        pipe.sismember(list_key(cfg.prefix, n), key)
    found = await pipe.execute()
    return [n for n, hit in zip(names, found, strict=True) if hit]


def _unblock_form(session: Session | None, entity: str, key: str, answer: dict[str, Any] | None) -> str:
    if session is None or not session.write:
        return "<p><a href='/login'>log in</a> with the write token to unblock</p>"
    action = _url("entity", entity, key) + "/unblock"
    form = (
        f"<h2>unblock</h2><form method='post' action='{action}' id='unblock-form'>{_csrf_field(session)}"
        "<input name='until' placeholder='until: 7d or 2026-12-31' required>"
        "<input name='why' placeholder='why' required size='40'><input name='who' placeholder='who'>"
        "<button>unblock</button></form>"
    )
    if answer is not None and answer.get("unblock") is not None:
        form += (
            f"<form method='post' action='{action}' data-confirm='end the override now?'>"
            f"{_csrf_field(session)}"
            "<input type='hidden' name='remove' value='1'><input name='why' placeholder='why'>"
            "<button>end the override</button></form>"
        )
    return form


def _state_class(row: Any) -> str:
    return "ok" if row.active else ("bad" if not row.loads else "")


def _hourly_table(rows: list[dict[str, Any]], now_ms: int) -> str:
    if not rows:
        return "<p>no live hits in the last 24 hours</p>"
    first = (now_ms // 3_600_000 - 23) * 3_600_000
    hours = [first + i * 3_600_000 for i in range(24)]
    by_rule: dict[tuple[str, str], dict[int, int]] = {}
    for r in rows:
        hour = r["hour"]
        ms = int(hour.replace(tzinfo=UTC).timestamp() * 1000) if isinstance(hour, datetime) else int(hour)
        by_rule.setdefault((str(r["rule_id"]), str(r["mode"])), {})[ms] = int(r["hits"])
    peak = max((v for counts in by_rule.values() for v in counts.values()), default=1) or 1
    out = []
    for (rule_id, mode), counts in sorted(by_rule.items()):
        bars = "".join(
            f"<span class='bar' title='{esc(_when(h))}: {counts.get(h, 0)}' "
            f"style='width:6px;height:{max(1, int(20 * counts.get(h, 0) / peak))}px'></span>"
            for h in hours
        )
        out.append(
            [
                f"<a href='{_url('rules', rule_id)}'>{esc(rule_id)}</a>",
                esc(mode),
                esc(sum(counts.values())),
                esc(counts.get(hours[-1], 0)),
                bars,
            ]
        )
    return table(["rule", "mode", "hits 24 h", "this hour", "per hour"], out)
