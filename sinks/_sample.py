"""Sample records in the issue-5 contract format, for tests, benchmarks and demos.

Built by the processor's own builders (:func:`sinks.records.hit_record`,
:func:`sinks.records.blacklist_record`) from ``rules`` values, so a sample has exactly the
fields and order of a real record (``hit_id`` included) and cannot drift from the contract.
"""

from __future__ import annotations

from rules import BlacklistEntry, Evaluation, Hit
from sinks.records import BlacklistRecord, HitRecord, blacklist_record, hit_record

__all__ = ["BASE_TS_MS", "sample_blacklist", "sample_hit"]

BASE_TS_MS = 1_763_856_000_000  # 2025-11-23T00:00:00Z


def sample_hit(
    i: int,
    *,
    rules: int = 10,
    users: int = 100,
    ts_ms: int | None = None,
    ruleset_version: str = "v1",
    run_id: str = "live",
    mode: str | None = None,
) -> HitRecord:
    """Hit ``i``: event ``e<i>`` (a login of user ``u<i % users>``, one second after the
    previous one unless ``ts_ms``), rule ``r<i % rules>`` (shadow when ``i % rules == 0``
    unless ``mode``), read from ``bypass.events`` partition ``i % 4`` at offset ``i``."""
    key = f"u{i % users}"
    score = 10.0 + i % 7
    hit = Hit(
        rule_id=f"r{i % rules:02d}",
        label="fraud" if i % 2 else "resale",
        score=score,
        mode=mode or ("shadow" if i % rules == 0 else "active"),
        action="review",
        counted=True,
        suppressed=False,
        rollout_excluded=False,
        error=None,
        features={"logins_1h": float(i % 13), "distinct_devices_1d": i % 5, "city": "Beijing", "x": None},
    )
    event = {
        "event_id": f"e{i}",
        "type": "login",
        "ts": BASE_TS_MS + i * 1000 if ts_ms is None else ts_ms,
        "user_id": key,
    }
    evaluation = Evaluation(
        event_id=event["event_id"],
        entity="user",
        key=key,
        ruleset_version=ruleset_version,
        score=score + 5.0,
        decision="review",
        hits=(hit,),
        blacklist=(),
    )
    return hit_record(
        hit,
        evaluation,
        event,
        entity="user",
        key=key,
        ruleset_version=ruleset_version,
        run_id=run_id,
        source_topic="bypass.events",
        source_partition=i % 4,
        source_offset=i,
    )


def sample_blacklist(
    i: int, *, expires_at: int, label: str = "fraud", rule_ids: list[str] | None = None
) -> BlacklistRecord:
    """Blacklist entry ``i``: user ``u<i>`` labelled by rule ``r<i % 3>`` (or ``rule_ids``,
    kept in their order) on event ``e<i>``, until ``expires_at``."""
    entry = BlacklistEntry(
        entity="user",
        key=f"u{i}",
        label=label,
        rule_ids=tuple(rule_ids or [f"r{i % 3:02d}"]),
        expires_at=expires_at,
    )
    return blacklist_record(entry, {"event_id": f"e{i}", "ts": BASE_TS_MS + i * 1000}, "v1")
