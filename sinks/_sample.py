"""Sample records in the issue-5 contract format, for tests, benchmarks and demos."""

from __future__ import annotations

import hashlib
from typing import Any

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
) -> dict[str, Any]:
    rule = f"r{i % rules:02d}"
    event_id = f"e{i}"
    hit_id = hashlib.sha256(f"{event_id}|{rule}|{ruleset_version}".encode()).hexdigest()[:32]
    return {
        "hit_id": hit_id,
        "event_id": event_id,
        "event_type": "login",
        "event_ts": BASE_TS_MS + i * 1000 if ts_ms is None else ts_ms,
        "entity": "user",
        "key": f"u{i % users}",
        "rule_id": rule,
        "label": "fraud" if i % 2 else "resale",
        "score": 10.0 + i % 7,
        "mode": mode or ("shadow" if i % rules == 0 else "active"),
        "counted": True,
        "suppressed": False,
        "rollout_excluded": False,
        "features": {"logins_1h": float(i % 13), "distinct_devices_1d": i % 5, "city": "Beijing", "x": None},
        "decision": "review",
        "ruleset_version": ruleset_version,
        "source_topic": "bypass.events",
        "source_partition": i % 4,
        "source_offset": i,
        "run_id": run_id,
    }


def sample_blacklist(
    i: int, *, expires_at: int, label: str = "fraud", rule_ids: list[str] | None = None
) -> dict[str, Any]:
    return {
        "entity": "user",
        "key": f"u{i}",
        "label": label,
        "rule_ids": rule_ids or [f"r{i % 3:02d}"],
        "event_id": f"e{i}",
        "event_ts": BASE_TS_MS + i * 1000,
        "expires_at": expires_at,
        "ruleset_version": "v1",
    }
