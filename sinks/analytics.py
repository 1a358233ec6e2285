"""Analyst queries behind ``bypass hits top`` / ``bypass hits entity`` (exact by ``hit_id``).

``top_rules`` reads the hourly rollup (``uniqExactMerge`` of hit ids, so retried or
re-delivered hits are not counted twice); its window starts at the hour that holds
``now - since``. ``entity_history`` reads ``risk_hits`` through the ``by_entity``
projection and de-duplicates with ``LIMIT 1 BY hit_id`` (no ``FINAL``, which would
bypass the projection).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from features.errors import ConfigError

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(text: str, *, now_ms: int) -> int:
    """``1d`` / ``6h`` / ``30m`` / ``45s`` / ``2w`` (before now) or an ISO time -> epoch ms."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if m:
        return now_ms - int(m.group(1)) * _UNITS_MS[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use a duration like 1d, 6h, 30m or an ISO time like 2025-11-23T00:00:00Z",
            option="--since",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


TOP_RULES_SQL = """
SELECT
    rule_id,
    mode,
    uniqExactMerge(hits)         AS hits,
    uniqExactMerge(counted_hits) AS counted,
    uniqExactMerge(entities)     AS entities,
    min(hour)                    AS first_hour,
    max(hour)                    AS last_hour
FROM risk_hits_hourly
WHERE hour >= toStartOfHour(fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC'))
  AND ({run_id:String} = '' OR run_id = {run_id:String})
GROUP BY rule_id, mode
ORDER BY hits DESC, rule_id, mode
LIMIT {limit:UInt32}
"""

ENTITY_HISTORY_SQL = """
SELECT
    event_time, rule_id, label, mode, score, decision, counted, suppressed,
    ruleset_version, run_id, event_id, event_type, features, features_text, hit_id
FROM risk_hits
WHERE entity = {entity:String} AND key = {key:String}
  AND ({run_id:String} = '' OR run_id = {run_id:String})
ORDER BY event_time DESC, hit_id
LIMIT 1 BY hit_id
LIMIT {limit:UInt32}
"""


def top_rules(client: Any, *, since_ms: int, limit: int = 20, run_id: str = "") -> list[dict[str, Any]]:
    result = client.query(TOP_RULES_SQL, parameters={"since_ms": since_ms, "limit": limit, "run_id": run_id})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def entity_history(
    client: Any, entity: str, key: str, *, limit: int = 50, run_id: str = ""
) -> list[dict[str, Any]]:
    result = client.query(
        ENTITY_HISTORY_SQL, parameters={"entity": entity, "key": key, "limit": limit, "run_id": run_id}
    )
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
