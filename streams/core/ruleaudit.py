"""The rule-set audit trail in ClickHouse (``risk_ruleset_versions``).

``bypass rules publish`` and ``bypass rules activate`` record each action after the rules
topic has confirmed it: version, action (``publish`` | ``activate``), time, who, source
file, rule count, YAML and the record's topic offset. The topic stays the source of truth
(the workers read it, and ``bypass rules history`` too); a ClickHouse that does not answer
costs the audit row, never the action, and the command says so.
"""

from __future__ import annotations

import logging

from streams.core.outputs import clickhouse_client
from streams.settings import Settings

__all__ = ["record_action", "rule_count"]

log = logging.getLogger(__name__)


def rule_count(text: str) -> int:
    """How many rules a rule-set YAML holds (0 when it does not parse)."""
    import rules

    try:
        return len(rules.load_ruleset(text, None).rules)
    except Exception:  # a set that no longer loads is still part of the history
        return 0


def record_action(
    settings: Settings,
    *,
    version: str,
    action: str,
    at_ms: int,
    by: str,
    source: str | None,
    text: str,
    topic_offset: int,
) -> str | None:
    """Insert one audit row; None when written, else why not (for a warning)."""
    from datetime import UTC, datetime

    from sinks.clickhouse_schema import migrate

    db = settings.clickhouse_database
    try:
        client = clickhouse_client(settings)
        # idempotent: the database and the table exist after it (a first publish may come first)
        migrate(client, db, ttl_days=settings.clickhouse_ttl_days)
        client.insert(
            f"{db}.risk_ruleset_versions",
            [
                [
                    version,
                    action,
                    datetime.fromtimestamp(at_ms / 1000, UTC),
                    by,
                    source or "",
                    rule_count(text),
                    text,
                    topic_offset,
                ]
            ],
            column_names=["version", "action", "at", "by", "source", "rules", "yaml", "topic_offset"],
        )
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc).splitlines()[0][:300]
        log.debug("audit row not written", exc_info=True)
        return f"not recorded in ClickHouse {db}.risk_ruleset_versions ({message})"
    return None
