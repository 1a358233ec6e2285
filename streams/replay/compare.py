"""The live side of ``--compare`` and of the relabel warning: live hits already in ClickHouse."""

from __future__ import annotations

from typing import Any

from streams.core import outputs
from streams.replay.options import LIVE_RUN_ID, ReplayError, hit_element
from streams.settings import Settings

__all__ = ["clickhouse_client", "count_live_hits", "read_bad_entities", "read_live_hits"]


def clickhouse_client(settings: Settings) -> Any:
    """A client on the bypass database (a ClickHouseUnavailableError says what to check)."""
    return outputs.clickhouse_client(settings, database=settings.clickhouse_database)


def count_live_hits(
    settings: Settings, from_ms: int, to_ms: int, topics: list[str], ruleset_version: str
) -> int:
    """How many live hits in ``[from, to)`` from ``topics`` were made by ``ruleset_version``."""
    client = clickhouse_client(settings)
    db = settings.clickhouse_database
    try:
        result = client.query(
            f"SELECT count() FROM {db}.risk_hits FINAL "  # noqa: S608 - db is a checked identifier
            "WHERE run_id = {run:String} AND ruleset_version = {v:String} "
            "AND event_time >= fromUnixTimestamp64Milli({t1:Int64}, 'UTC') "
            "AND event_time < fromUnixTimestamp64Milli({t2:Int64}, 'UTC') "
            "AND source_topic IN {topics:Array(String)} AND error = ''",
            parameters={
                "run": LIVE_RUN_ID,
                "v": ruleset_version,
                "t1": from_ms,
                "t2": to_ms,
                "topics": topics,
            },
        )
    except Exception as exc:
        raise ReplayError(
            f"cannot read {db}.risk_hits ({str(exc)[:300]}); "
            "is the schema migrated (`bypass clickhouse migrate`)?",
        ) from None
    return int(result.result_rows[0][0])


def read_live_hits(settings: Settings, from_ms: int, to_ms: int, topics: list[str]) -> dict[str, set[str]]:
    """rule id -> event ids of the live hits (``run_id = 'live'``) in ``[from, to)`` from ``topics``."""
    client = clickhouse_client(settings)
    db = settings.clickhouse_database
    try:
        result = client.query(
            f"SELECT rule_id, event_id, toString(entity), key FROM {db}.risk_hits FINAL "  # noqa: S608 - db is a checked identifier
            "WHERE run_id = {run:String} "
            "AND event_time >= fromUnixTimestamp64Milli({t1:Int64}, 'UTC') "
            "AND event_time < fromUnixTimestamp64Milli({t2:Int64}, 'UTC') "
            "AND source_topic IN {topics:Array(String)} AND error = ''",
            parameters={"run": LIVE_RUN_ID, "t1": from_ms, "t2": to_ms, "topics": list(topics)},
        )
    except Exception as exc:
        raise ReplayError(
            f"--compare could not read the live hits from {db}.risk_hits ({str(exc)[:300]}); "
            "is the schema migrated (`bypass clickhouse migrate`)?",
        ) from None
    live: dict[str, set[str]] = {}
    for rule_id, event_id, entity, key in result.result_rows:
        live.setdefault(str(rule_id), set()).add(hit_element(str(event_id), str(entity), str(key)))
    return live


def read_bad_entities(settings: Settings, from_ms: int, to_ms: int) -> set[tuple[str, str]]:
    """The (entity, key) pairs labelled bad (``bypass labels import``) for ``[from, to)`` (a
    label without a time counts for every range); empty without labels or without the table."""
    from streams.cli.labels import BENIGN_LABELS

    db = settings.clickhouse_database
    try:
        result = clickhouse_client(settings).query(
            f"SELECT DISTINCT toString(entity), key FROM {db}.risk_labels FINAL "  # noqa: S608
            "WHERE label NOT IN {benign:Array(String)} AND (toUnixTimestamp64Milli(ts) = 0 OR "
            "(ts >= fromUnixTimestamp64Milli({t1:Int64}) AND ts < fromUnixTimestamp64Milli({t2:Int64})))",
            parameters={"benign": sorted(BENIGN_LABELS), "t1": from_ms, "t2": to_ms},
        )
    except Exception:  # no labels table (an older schema): compare without outcomes
        return set()
    return {(str(e), str(k)) for e, k in result.result_rows}
