# ruff: noqa: S608  (the database name is checked by check_identifier; values are parameters)
"""``bypass rules report``: rule quality from the decision log and the outcome labels.

Per rule and rule-set version, over ``risk_decisions`` (one run id, default ``live``) in an
event-time range:

- ``evaluated``: the (event, entity) decisions of the rule's entity kind - an estimate when
  ``pass`` decisions without a hit are sampled (``BYPASS_DECISION_SAMPLE``): each sampled row
  counts 1 / its ``sample_rate``;
- ``hits``: decisions the rule counted in (``rule_ids``), or for a shadow rule the decisions
  it held on (``shadow_rule_ids``): always exact, a decision with a hit is never sampled out;
- ``flagged``: distinct entities hit; ``flagged_bad``: those with a bad label in
  ``risk_labels`` (every label but :data:`streams.cli.labels.BENIGN_LABELS`);
- ``precision`` = flagged_bad / flagged; ``recall`` = flagged_bad / the entities of that kind
  with a bad label (labels in the range, and timeless ones);
- shadow rules: ``added`` the entities they flagged that no counted rule of the same version
  flagged (what they would have added if active), ``added_bad`` those labelled bad.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
import orjson

from streams.cli.params import TIME


@dataclass
class RuleQuality:
    ruleset_version: str
    rule_id: str
    mode: str
    entity: str
    evaluated: int
    hits: int
    flagged: int
    flagged_bad: int
    labelled_bad: int
    precision: float | None
    recall: float | None
    added: int | None = None
    added_bad: int | None = None


def _conditions(
    version: str | None, from_ms: int | None, to_ms: int | None, run_id: str
) -> tuple[str, dict[str, Any]]:
    where = ["run_id = {run:String}"]
    params: dict[str, Any] = {"run": run_id}
    if version:
        where.append("ruleset_version = {version:String}")
        params["version"] = version
    if from_ms is not None:
        where.append("event_time >= fromUnixTimestamp64Milli({from_ms:Int64})")
        params["from_ms"] = from_ms
    if to_ms is not None:
        where.append("event_time < fromUnixTimestamp64Milli({to_ms:Int64})")
        params["to_ms"] = to_ms
    return " AND ".join(where), params


def _label_conditions(from_ms: int | None, to_ms: int | None) -> str:
    from streams.cli.labels import BENIGN_LABELS

    benign = ", ".join(f"'{label}'" for label in sorted(BENIGN_LABELS))
    where = [f"label NOT IN ({benign})"]
    if from_ms is not None or to_ms is not None:
        inside = []
        if from_ms is not None:
            inside.append("ts >= fromUnixTimestamp64Milli({from_ms:Int64})")
        if to_ms is not None:
            inside.append("ts < fromUnixTimestamp64Milli({to_ms:Int64})")
        where.append(f"(toUnixTimestamp64Milli(ts) = 0 OR ({' AND '.join(inside)}))")
    return " AND ".join(where)


def rule_quality(
    client: Any,
    db: str,
    *,
    version: str | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    run_id: str = "live",
) -> list[RuleQuality]:
    """The report's rows, sorted by version, entity, mode, rule id."""
    cond, params = _conditions(version, from_ms, to_ms, run_id)
    bad = (
        f"SELECT toString(entity), key FROM {db}.risk_labels FINAL WHERE {_label_conditions(from_ms, to_ms)}"
    )
    evaluated = {
        (str(v), str(e)): float(n)
        for v, e, n in client.query(
            f"SELECT ruleset_version, entity, sum(1 / sample_rate) FROM {db}.risk_decisions FINAL "
            f"WHERE {cond} GROUP BY ruleset_version, entity",
            parameters=params,
        ).result_rows
    }
    labelled = {
        str(e): int(n)
        for e, n in client.query(
            f"SELECT e, uniqExact(k) FROM ({bad}) AS l(e, k) GROUP BY e", parameters=params
        ).result_rows
    }
    flags = client.query(
        f"""
SELECT ruleset_version, entity, rm.1 AS rule_id, rm.2 AS mode, count() AS hits,
       uniqExact(key) AS flagged, uniqExactIf(key, (toString(entity), key) IN ({bad})) AS flagged_bad
FROM (
    SELECT ruleset_version, entity, key,
           arrayJoin(arrayConcat(arrayMap(r -> (toString(r), 'active'), rule_ids),
                                 arrayMap(r -> (toString(r), 'shadow'), shadow_rule_ids))) AS rm
    FROM {db}.risk_decisions FINAL WHERE {cond}
)
GROUP BY ruleset_version, entity, rule_id, mode
""",
        parameters=params,
    ).result_rows
    added = {
        (str(v), str(e), str(r)): (int(n), int(nb))
        for v, e, r, n, nb in client.query(
            f"""
SELECT ruleset_version, entity, rule_id, uniqExact(key), uniqExactIf(key, (toString(entity), key) IN ({bad}))
FROM (
    SELECT ruleset_version, entity, key, toString(arrayJoin(shadow_rule_ids)) AS rule_id
    FROM {db}.risk_decisions FINAL WHERE {cond}
)
WHERE (toString(ruleset_version), toString(entity), key) NOT IN (
    SELECT toString(ruleset_version), toString(entity), key FROM {db}.risk_decisions FINAL
    WHERE {cond} AND notEmpty(rule_ids)
)
GROUP BY ruleset_version, entity, rule_id
""",
            parameters=params,
        ).result_rows
    }
    out: list[RuleQuality] = []
    for v, e, rule_id, mode, hits, flagged, flagged_bad in flags:
        v, e, rule_id, mode = str(v), str(e), str(rule_id), str(mode)
        denominator = labelled.get(e, 0)
        row = RuleQuality(
            ruleset_version=v,
            rule_id=rule_id,
            mode=mode,
            entity=e,
            evaluated=round(evaluated.get((v, e), 0.0)),
            hits=int(hits),
            flagged=int(flagged),
            flagged_bad=int(flagged_bad),
            labelled_bad=denominator,
            precision=int(flagged_bad) / int(flagged) if flagged else None,
            recall=int(flagged_bad) / denominator if denominator else None,
        )
        if mode == "shadow":
            row.added, row.added_bad = added.get((v, e, rule_id), (0, 0))
        out.append(row)
    return sorted(out, key=lambda r: (r.ruleset_version, r.entity, r.mode, r.rule_id))


COLUMNS = (
    "ruleset_version",
    "rule_id",
    "mode",
    "entity",
    "evaluated",
    "hits",
    "flagged",
    "flagged_bad",
    "labelled_bad",
    "precision",
    "recall",
    "added",
    "added_bad",
)

NOTE = (
    "evaluated: (event, entity) decisions of the rule's entity kind; pass decisions without a hit "
    "are sampled (BYPASS_DECISION_SAMPLE) and scaled by 1/rate, so it is an estimate. hits, flagged, "
    "precision and recall are exact; labels: risk_labels (bad = every label but "
    "good/legit/benign/false_positive/not_fraud). added: entities a shadow rule flagged that no "
    "counted rule of its version did."
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render(rows: Sequence[RuleQuality], fmt: str, run_id: str = "live") -> str:
    """The report as ``table``, ``csv`` or ``json`` text."""
    if fmt == "json":
        return orjson.dumps({"rules": [asdict(r) for r in rows], "note": NOTE}).decode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(["" if v is None else v for v in (getattr(r, c) for c in COLUMNS)])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(getattr(r, c)) for c in COLUMNS] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    if not rows:
        lines.append("(no decisions in the range: is the writer running, BYPASS_DECISIONS_TOPIC right?)")
    lines.append("")
    lines.append(NOTE)
    versions = len({r.ruleset_version for r in rows})
    plural = "" if versions == 1 else "s"
    lines.append(f"{len(rows)} rules over {versions} rule-set version{plural} (run {run_id})")
    return "\n".join(lines)


@click.command("report")
@click.option("--version", "version", default=None, help="one rule-set version (default: every one)")
@click.option("--from", "from_ms", type=TIME, default=None, help="event time from (inclusive): -7d, ISO 8601")
@click.option("--to", "to_ms", type=TIME, default=None, help="event time to (exclusive)")
@click.option("--run-id", default="live", show_default=True, help="the live decisions, or a replay's run id")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
def report(version: str | None, from_ms: int | None, to_ms: int | None, run_id: str, fmt: str) -> None:
    """Rule quality per rule and rule-set version: evaluated, hits, entities flagged, those
    labelled bad (bypass labels import), precision, recall; for shadow rules what they would add."""
    from sinks.clickhouse_schema import check_identifier
    from streams.core.outputs import ClickHouseUnavailableError, clickhouse_client
    from streams.settings import Settings

    settings = Settings()
    db = check_identifier(settings.clickhouse_database)
    client = clickhouse_client(settings)
    try:
        rows = rule_quality(client, db, version=version, from_ms=from_ms, to_ms=to_ms, run_id=run_id)
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"report query failed: {exc}. Did you run `bypass clickhouse migrate`?"
        ) from exc
    click.echo(render(rows, fmt, run_id))
