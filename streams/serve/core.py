"""The pure parts of the check API: answers, request bodies, ``until`` times, tokens.

A check answer (``GET /v1/check/{entity}/{key}``, one item of ``POST /v1/check``)::

    {"entity": "user", "key": "u1", "listed": true,
     "labels": [{"label": "account_resale", "rule_ids": ["resale_phone_churn"],
                 "score": 90, "expires_at": "2026-12-23T10:00:00.000Z", "expires_at_ms": ...,
                 "ruleset_version": "2026-11-23.1", "event_id": "e1"}],
     "score": 90, "expires_at": "...", "expires_at_ms": ...,
     "unblock": null,
     "freshness": {...}}          # streams.serve.freshness.Freshness.as_dict()

``listed`` is true when at least one label is live and no unblock override is active; an
unblocked entity answers ``listed: false`` with its labels moved to ``unblocked_labels`` and
the override in ``unblock``. ``score`` is the highest score of the label's rules in the rule
set the workers run (null when that rule set is not known to this process).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from features import parse_duration_ms, parse_time_ms
from features.errors import ConfigError
from sinks.list_admin import UNBLOCK_LIST_PREFIX, Unblock
from sinks.redis_mirror import MirrorEntry

__all__ = [
    "MAX_BATCH",
    "BadRequestError",
    "check_answer",
    "iso",
    "parse_batch",
    "parse_until",
    "token_ok",
]

#: Keys one ``POST /v1/check`` may ask about.
MAX_BATCH: Final = 100
#: Longest entity key / list value accepted.
MAX_KEY: Final = 1_024


class BadRequestError(ValueError):
    """A request body or parameter the API refuses (400), with a message for the caller."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _label(entry: MirrorEntry, scores: Mapping[str, float] | None) -> dict[str, Any]:
    known = [scores[r] for r in entry.rule_ids if scores is not None and r in scores]
    return {
        "label": entry.label,
        "rule_ids": list(entry.rule_ids),
        "score": max(known) if known else None,
        "expires_at": iso(entry.expires_at),
        "expires_at_ms": entry.expires_at,
        "ruleset_version": entry.ruleset_version,
        "event_id": entry.event_id,
    }


def check_answer(
    entity: str,
    key: str,
    entries: Sequence[MirrorEntry],
    unblock: Unblock | None,
    *,
    scores: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The answer for ``entity:key`` from its live mirror ``entries`` and active ``unblock``
    (freshness is added by the caller, once per request)."""
    labels = [_label(e, scores) for e in entries]
    listed = bool(labels) and unblock is None
    shown = labels if unblock is None else []
    answer: dict[str, Any] = {"entity": entity, "key": key, "listed": listed, "labels": shown}
    if unblock is not None:
        answer["unblocked_labels"] = labels
    known = [lb["score"] for lb in shown if lb["score"] is not None]
    answer["score"] = max(known) if known else None
    latest = max((e.expires_at for e in entries), default=None) if shown else None
    answer["expires_at"] = iso(latest) if latest is not None else None
    answer["expires_at_ms"] = latest
    answer["unblock"] = unblock.as_dict() if unblock is not None else None
    return answer


def check_key(value: Any, what: str = "key") -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{what} must be a non-empty string")
    if len(value) > MAX_KEY:
        raise BadRequestError(f"{what} is longer than {MAX_KEY} characters")
    return value


def parse_batch(body: Any) -> list[tuple[str, str]]:
    """``{"checks": [{"entity": "user", "key": "u1"}, ...]}`` -> [(entity, key), ...]
    (1..:data:`MAX_BATCH` items), or BadRequestError."""
    if not isinstance(body, dict) or not isinstance(body.get("checks"), list):
        raise BadRequestError('body must be {"checks": [{"entity": ..., "key": ...}, ...]}')
    checks = body["checks"]
    if not checks:
        raise BadRequestError("checks is empty")
    if len(checks) > MAX_BATCH:
        raise BadRequestError(f"at most {MAX_BATCH} checks per request, got {len(checks)}")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(checks):
        if not isinstance(item, dict):
            raise BadRequestError(f"checks[{i}] must be an object with entity and key")
        out.append(
            (
                check_key(item.get("entity"), f"checks[{i}].entity"),
                check_key(item.get("key"), f"checks[{i}].key"),
            )
        )
    return out


def parse_until(value: Any, now_ms: int) -> int:
    """An unblock's end -> epoch ms after ``now_ms``: a duration from now (``7d``, ``12h``),
    an ISO 8601 instant or epoch ms; BadRequestError otherwise or when not in the future."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BadRequestError("until is required: a duration from now (7d, 12h) or an ISO 8601 time")
    text = str(value).strip()
    until: int | None = None
    if not text.lstrip("+").isdigit():
        try:
            until = now_ms + parse_duration_ms(text.lstrip("+"))
        except ConfigError:
            until = None
    if until is None:
        try:
            until = parse_time_ms(text, now_ms=now_ms)
        except ConfigError as exc:
            raise BadRequestError(f"until {text!r}: {exc.message}") from None
    if until <= now_ms:
        raise BadRequestError(f"until {text!r} is not in the future ({iso(until)})")
    return until


def check_list_name(value: Any) -> str:
    name = check_key(value, "list name")
    if name.startswith(UNBLOCK_LIST_PREFIX):
        raise BadRequestError(
            f"list names starting with {UNBLOCK_LIST_PREFIX!r} are reserved for unblock overrides: "
            "use POST /v1/unblock/{entity}/{key}"
        )
    return name


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_ok(given: str | None, *accepted: str | None) -> bool:
    """Whether ``given`` equals one of the non-empty ``accepted`` tokens (constant time)."""
    if not given:
        return False
    ok = False
    for token in accepted:
        if token:
            ok |= hmac.compare_digest(given.encode(), token.encode())
    return ok


@dataclass(frozen=True, slots=True)
class WriteBody:
    """Who and why of a write request (``who`` defaults to ``api@<client address>``)."""

    who: str
    why: str


def write_body(body: Any, client_host: str | None) -> WriteBody:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON object")
    who = body.get("who") or f"api@{client_host or 'unknown'}"
    why = body.get("why") or ""
    if not isinstance(who, str) or not isinstance(why, str):
        raise BadRequestError("who and why must be strings")
    return WriteBody(who[:200], why[:1000])
