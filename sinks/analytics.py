"""Analyst queries behind ``bypass hits top`` / ``bypass hits entity`` (exact by ``hit_id``).

``top_rules`` reads the hourly rollup (``uniqExactMerge`` of hit ids, so retried or
re-delivered hits are not counted twice); its window starts at the hour that holds
``now - since``. ``entity_history`` reads ``risk_hits`` through the ``by_entity``
projection and de-duplicates with ``LIMIT 1 BY hit_id`` (no ``FINAL``, which would
bypass the projection); it lists rules that failed at run time too, with their ``error``
(the rollup leaves them out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features import parse_time_ms
from features.errors import ConfigError

if TYPE_CHECKING:
    from sinks.clickhouse_schema import QueryClient


def parse_since(text: str, *, now_ms: int) -> int:
    """A time in the one grammar of ``features.parse_time_ms`` read against ``now_ms``
    (``1d`` / ``-1d`` a day ago, ``yesterday``, ISO 8601, epoch ms ...) -> epoch ms."""
    try:
        return parse_time_ms(text, now_ms=now_ms)
    except ConfigError as exc:
        raise ConfigError(f"--since: {exc.message}", option="--since") from None


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
    ruleset_version, run_id, event_id, event_type, features, features_text, hit_id, error
FROM risk_hits
WHERE entity = {entity:String} AND key = {key:String}
  AND ({run_id:String} = '' OR run_id = {run_id:String})
ORDER BY event_time DESC, hit_id
LIMIT 1 BY hit_id
LIMIT {limit:UInt32}
"""


def top_rules(
    client: QueryClient, *, since_ms: int, limit: int = 20, run_id: str = ""
) -> list[dict[str, Any]]:
    result = client.query(TOP_RULES_SQL, parameters={"since_ms": since_ms, "limit": limit, "run_id": run_id})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def entity_history(
    client: QueryClient, entity: str, key: str, *, limit: int = 50, run_id: str = ""
) -> list[dict[str, Any]]:
    result = client.query(
        ENTITY_HISTORY_SQL, parameters={"entity": entity, "key": key, "limit": limit, "run_id": run_id}
    )
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
