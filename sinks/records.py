"""The record contracts of ``bypass.hits`` and ``bypass.blacklist``, in one place.

Both topics carry one JSON object per message (the contract: fields may be added,
none renamed). This module holds, once each:

- the field names and types: :data:`HIT_FIELDS` / :class:`HitRecord` and
  :data:`BLACKLIST_FIELDS` / :class:`BlacklistRecord` (the tuples are the TypedDicts'
  keys, in the order the builders write them);
- the builders the processor calls (pure, no clock, no I/O): :func:`hit_record`,
  :func:`blacklist_record` and :func:`blacklist_key`, the Kafka key ``entity:key`` of a
  blacklist record;
- the checks a reader applies to a decoded record before using it (:func:`decode_object`,
  :func:`check_hit`, :func:`check_blacklist`), raising :class:`sinks.base.RecordError`
  with a reason code of :mod:`sinks.dlq` and a message naming the field.

``bypass.hits`` (one per evaluated hit: counted, suppressed and shadow ones)::

    hit_id              sha256(event id, rule id, rule-set version) (``rules.hit_id``)
    event_id event_type event_ts user_id        from the event (``event_ts``: epoch ms)
    entity key                                  the entity the rule was evaluated for
    rule_id label score mode action             from the rule
    counted suppressed rollout_excluded error   how the hit was decided
    features            values of the features the rule read
    decision total_score                        the (event, entity) outcome
    ruleset_version run_id                      which rules, which run (``live`` or a replay's id)
    source_topic source_partition source_offset the raw event's coordinates
    unblock             null, or the unblock override that suppressed the hit's blacklist entry

``bypass.blacklist`` (Kafka key ``entity:key``): entity, key, label, rule_ids, event_id,
event_ts, expires_at (epoch ms: event time + the longest ttl), ruleset_version.

``bypass.decisions`` (Kafka key ``entity:key``; :func:`decision_record`): one per (event,
entity) evaluated - event_id, event_type, event_ts, entity, key, decision, score, rule_ids
(the counted hits), shadow_rule_ids, sample_rate, ruleset_version, run_id and the raw
event's coordinates; a ``pass`` without any hit only when :func:`decision_sampled`.

The checks cover what the writers store and rely on: a hit's ``user_id``, ``action`` and
``total_score`` are not stored in ClickHouse and not checked, so a reader accepts records
of producers that do not write them; ``error`` (null, or why the rule failed at run time)
is stored, and checked to be a string or null. ``label`` and ``decision`` may be
null (stored as ""). Stdlib, orjson and the ``rules`` types only: the processor imports
this module, so nothing here pulls in a client.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any, Final, TypedDict

import orjson

from rules import BlacklistEntry, Evaluation, Hit, hit_id
from sinks.base import RecordError

__all__ = [
    "BLACKLIST_FIELDS",
    "HIT_FIELDS",
    "MAX_MS",
    "MIN_MS",
    "BlacklistRecord",
    "DecisionRecord",
    "HitRecord",
    "blacklist_key",
    "blacklist_record",
    "check_blacklist",
    "check_decision",
    "check_hit",
    "decision_record",
    "decision_sampled",
    "decode_object",
    "hit_record",
]


class HitRecord(TypedDict):
    """One ``bypass.hits`` record, as :func:`hit_record` builds it (JSON-serializable)."""

    hit_id: str
    event_id: str
    event_type: str
    event_ts: int
    user_id: str | None
    entity: str
    key: str
    rule_id: str
    label: str
    score: int | float
    mode: str
    action: str
    counted: bool
    suppressed: bool
    rollout_excluded: bool
    error: str | None
    features: dict[str, Any]
    decision: str
    total_score: int | float
    ruleset_version: str
    source_topic: str
    source_partition: int
    source_offset: int
    run_id: str
    #: null, or the unblock override that kept this hit's blacklist entry from being emitted:
    #: {"until": iso, "until_ms": ms, "who": str, "why": str, "at": iso}
    unblock: dict[str, Any] | None


class BlacklistRecord(TypedDict):
    """One ``bypass.blacklist`` record (Kafka key :func:`blacklist_key`)."""

    entity: str
    key: str
    label: str
    rule_ids: list[str]
    event_id: str
    event_ts: int
    expires_at: int
    ruleset_version: str


class DecisionRecord(TypedDict):
    """One ``bypass.decisions`` record: the outcome of one (event, entity) evaluation
    (:func:`decision_record`); ``pass`` ones only when sampled (:func:`decision_sampled`)."""

    event_id: str
    event_type: str
    event_ts: int
    entity: str
    key: str
    decision: str
    score: int | float
    rule_ids: list[str]
    shadow_rule_ids: list[str]
    sample_rate: float
    ruleset_version: str
    run_id: str
    source_topic: str
    source_partition: int
    source_offset: int


#: The ``bypass.hits`` fields, in record order (the keys of :class:`HitRecord`).
HIT_FIELDS: Final[tuple[str, ...]] = tuple(HitRecord.__annotations__)
#: The ``bypass.blacklist`` fields, in record order (the keys of :class:`BlacklistRecord`).
BLACKLIST_FIELDS: Final[tuple[str, ...]] = tuple(BlacklistRecord.__annotations__)

#: Bounds of an epoch-ms time: 1970..2286 (10-digit seconds: what DateTime64(3) text parsing
#: accepts); anything else is a unit mistake (seconds or microseconds).
MIN_MS: Final = 0
MAX_MS: Final = 9_999_999_999_999


# --------------------------------------------------------------------------- builders


def hit_record(
    hit: Hit,
    evaluation: Evaluation,
    event: Mapping[str, Any],
    *,
    entity: str,
    key: str,
    ruleset_version: str,
    run_id: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
) -> HitRecord:
    """One ``bypass.hits`` record: ``hit`` of ``evaluation`` on the validated ``event``, which
    was read at ``source_topic``/``source_partition``/``source_offset`` (the raw topic's)."""
    return {
        "hit_id": hit_id(event["event_id"], hit.rule_id, ruleset_version),
        "event_id": event["event_id"],
        "event_type": event["type"],
        "event_ts": event["ts"],
        "user_id": event.get("user_id"),
        "entity": entity,
        "key": key,
        "rule_id": hit.rule_id,
        "label": hit.label,
        "score": hit.score,
        "mode": hit.mode,
        "action": hit.action,
        "counted": hit.counted,
        "suppressed": hit.suppressed,
        "rollout_excluded": hit.rollout_excluded,
        "error": hit.error,
        "features": dict(hit.features),
        "decision": evaluation.decision,
        "total_score": evaluation.score,
        "ruleset_version": ruleset_version,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "run_id": run_id,
        "unblock": None,
    }


def blacklist_record(
    entry: BlacklistEntry, event: Mapping[str, Any], ruleset_version: str
) -> BlacklistRecord:
    """One ``bypass.blacklist`` record: the rule engine's ``entry`` for the validated ``event``."""
    return {
        "entity": entry.entity,
        "key": entry.key,
        "label": entry.label,
        "rule_ids": list(entry.rule_ids),
        "event_id": event["event_id"],
        "event_ts": event["ts"],
        "expires_at": entry.expires_at,
        "ruleset_version": ruleset_version,
    }


def decision_sampled(event_id: str, sample: float) -> bool:
    """Whether a ``pass`` decision on ``event_id`` is logged at sample rate ``sample``: the
    CRC-32 of the event id against the rate (cheap: it runs once per evaluation), so the live
    path and every replay sample the same events (and every entity of one event alike)."""
    if sample >= 1.0:
        return True
    if sample <= 0.0:
        return False
    return zlib.crc32(event_id.encode()) < sample * 4_294_967_296


def decision_record(
    evaluation: Evaluation,
    event: Mapping[str, Any],
    *,
    sample: float,
    run_id: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
) -> DecisionRecord | None:
    """The ``bypass.decisions`` record of ``evaluation`` on the validated ``event``, or None for
    a ``pass`` decision without any hit outside the sample (:func:`decision_sampled`): every
    decision with a hit (shadow ones too) is logged, so hit counts stay exact. ``rule_ids``:
    the counted hits; ``shadow_rule_ids``: the shadow (or rollout-excluded) rules that held;
    ``sample_rate``: 1.0, or ``sample`` for a sampled row (a reader scales those by 1/rate)."""
    rate = 1.0
    if evaluation.decision == "pass" and not evaluation.hits:
        if not decision_sampled(str(event["event_id"]), sample):
            return None
        rate = float(sample)
    hits = evaluation.hits
    return {
        "event_id": event["event_id"],
        "event_type": event["type"],
        "event_ts": event["ts"],
        "entity": evaluation.entity,
        "key": evaluation.key,
        "decision": evaluation.decision,
        "score": evaluation.score,
        "rule_ids": [h.rule_id for h in hits if h.counted],
        "shadow_rule_ids": [h.rule_id for h in hits if h.mode == "shadow" and h.error is None],
        "sample_rate": rate,
        "ruleset_version": evaluation.ruleset_version,
        "run_id": run_id,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
    }


def check_decision(obj: Mapping[str, Any]) -> DecisionRecord:
    """A decoded ``bypass.decisions`` record, checked -> the record, or RecordError naming the
    first field that does not fit."""
    lists: dict[str, list[str]] = {}
    for name in ("rule_ids", "shadow_rule_ids"):
        value = obj.get(name)
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise RecordError(f"field {name!r} must be a list of strings", reason="wrong_type", field=name)
        lists[name] = value
    return {
        "event_id": _str(obj, "event_id", nonempty=True),
        "event_type": _str(obj, "event_type"),
        "event_ts": _ms(obj, "event_ts"),
        "entity": _str(obj, "entity", nonempty=True),
        "key": _str(obj, "key"),
        "decision": _str(obj, "decision", nonempty=True),
        "score": _float(obj, "score"),
        "rule_ids": lists["rule_ids"],
        "shadow_rule_ids": lists["shadow_rule_ids"],
        "sample_rate": _float(obj, "sample_rate"),
        "ruleset_version": _str(obj, "ruleset_version", nonempty=True),
        "run_id": _str(obj, "run_id", nonempty=True),
        "source_topic": _str(obj, "source_topic"),
        "source_partition": _int(obj, "source_partition", lo=-(2**31), hi=2**31 - 1),
        "source_offset": _int(obj, "source_offset", lo=-(2**63), hi=2**63 - 1),
    }


def blacklist_key(entity: str, key: str) -> str:
    """The Kafka key of a ``bypass.blacklist`` record: ``entity:key``."""
    return f"{entity}:{key}"


# --------------------------------------------------------------------------- checks


def decode_object(value: bytes | None) -> dict[str, Any]:
    """A record's value -> the JSON object it holds, or RecordError (``empty_value``,
    ``not_json``, ``not_object``)."""
    if value is None:
        raise RecordError("record has no value (tombstone)", reason="empty_value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"value is not JSON: {exc}", reason="not_json") from None
    if not isinstance(obj, dict):
        raise RecordError(f"value is not a JSON object (got {type(obj).__name__})", reason="not_object")
    return obj


def check_hit(obj: Mapping[str, Any]) -> None:
    """Check a decoded ``bypass.hits`` record; RecordError names the first field that does
    not fit (``missing_field``, ``wrong_type``, ``bad_value``).

    Checked: every field the ClickHouse writer stores (ids and ``mode`` non-empty,
    ``event_ts`` epoch ms, ``score`` a finite number, the flags booleans, ``features`` an
    object or null, ``label``/``decision`` a string or null, ``source_partition`` an Int32,
    ``source_offset`` an Int64, ``error`` a string or null). ``user_id``, ``action`` and
    ``total_score`` are not checked."""
    features = obj.get("features")
    if features is not None and not isinstance(features, dict):
        raise RecordError("field 'features' must be an object", reason="wrong_type", field="features")
    for name in ("decision", "label", "error"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"field {name!r} must be a string", reason="wrong_type", field=name)
    _str(obj, "hit_id", nonempty=True)
    _str(obj, "event_id", nonempty=True)
    _str(obj, "event_type")
    _ms(obj, "event_ts")
    _str(obj, "entity", nonempty=True)
    _str(obj, "key")
    _str(obj, "rule_id", nonempty=True)
    _float(obj, "score")
    _str(obj, "mode", nonempty=True)
    _bool(obj, "counted")
    _bool(obj, "suppressed")
    _bool(obj, "rollout_excluded")
    _str(obj, "ruleset_version", nonempty=True)
    _str(obj, "run_id", nonempty=True)
    _str(obj, "source_topic")
    _int(obj, "source_partition", lo=-(2**31), hi=2**31 - 1)
    _int(obj, "source_offset", lo=-(2**63), hi=2**63 - 1)


def check_blacklist(obj: Mapping[str, Any]) -> BlacklistRecord:
    """A decoded ``bypass.blacklist`` record, checked -> the record (``rule_ids`` a new list,
    as given), or RecordError naming the first field that does not fit: ``rule_ids`` a list
    of strings, ``entity``, ``label``, ``event_id`` and ``ruleset_version`` non-empty
    strings, ``key`` a string, ``event_ts`` and ``expires_at`` epoch ms."""
    rule_ids = obj.get("rule_ids")
    if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
        raise RecordError("field 'rule_ids' must be a list of strings", reason="wrong_type", field="rule_ids")
    return {
        "entity": _str(obj, "entity", nonempty=True),
        "key": _str(obj, "key"),
        "label": _str(obj, "label", nonempty=True),
        "rule_ids": list(rule_ids),
        "event_id": _str(obj, "event_id", nonempty=True),
        "event_ts": _ms(obj, "event_ts"),
        "expires_at": _ms(obj, "expires_at"),
        "ruleset_version": _str(obj, "ruleset_version", nonempty=True),
    }


def _str(obj: Mapping[str, Any], name: str, *, nonempty: bool = False) -> str:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
    if not isinstance(value, str):
        raise RecordError(
            f"field {name!r} must be a string, got {type(value).__name__}",
            reason="wrong_type",
            field=name,
        )
    if nonempty and not value:
        raise RecordError(f"field {name!r} is empty", reason="bad_value", field=name)
    return value


def _int(obj: Mapping[str, Any], name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(
            f"field {name!r} must be an integer, got {type(value).__name__}",
            reason="wrong_type",
            field=name,
        )
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RecordError(f"field {name!r} = {value} is out of range", reason="bad_value", field=name)
    return value


def _ms(obj: Mapping[str, Any], name: str) -> int:
    return _int(obj, name, lo=MIN_MS, hi=MAX_MS)


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        if value is None:
            raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
        raise RecordError(f"field {name!r} must be true or false", reason="wrong_type", field=name)
    return value


def _float(obj: Mapping[str, Any], name: str) -> float:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"field {name!r} must be a number", reason="wrong_type", field=name)
    result = float(value)
    if not math.isfinite(result):
        raise RecordError(f"field {name!r} is not finite", reason="bad_value", field=name)
    return result
