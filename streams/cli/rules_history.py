"""``bypass rules history`` and ``bypass rules activate VERSION``: rollback and roll-forward.

Both read the rules topic, the source of truth the workers follow (see
:mod:`streams.core.rulestore`); ``activate`` writes an activation record there, and each
action is also recorded in ClickHouse (``risk_ruleset_versions``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from streams.settings import Settings


@dataclass
class VersionRow:
    """One published version in the history."""

    version: str
    source: str | None
    publisher: str | None
    published_ms: int
    rules: int
    activations: list[tuple[int, str | None]] = field(default_factory=list)  # (when, by)
    active: bool = False
    loads: bool = True
    problem: str | None = None
    workers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "publisher": self.publisher,
            "published_ms": self.published_ms,
            "rules": self.rules,
            "activated": [{"at_ms": at, "by": by} for at, by in self.activations],
            "active": self.active,
            "loads": self.loads,
            "problem": self.problem,
            "workers": self.workers,
        }


def history_rows(entries: list[Any], spec: Any, workers: dict[str, str] | None = None) -> list[VersionRow]:
    """The rules-topic entries -> one row per published version, in publish order.

    ``activations`` holds every time the version became the designated one (its publish,
    then each ``activate``); ``active`` marks the version the workers run: the last
    designated one that loads against ``spec`` (None: no check). ``workers`` maps a worker
    id to the version it reports active."""
    from streams.core.assembly import load_for_spec
    from streams.core.ruleaudit import rule_count
    from streams.core.rulestore import Activation, RuleSetRecord, designated, topic_order

    rows: dict[str, VersionRow] = {}
    for entry in sorted(entries, key=topic_order):
        if isinstance(entry, RuleSetRecord):
            rows[entry.version] = VersionRow(
                entry.version,
                entry.source,
                entry.publisher,
                entry.published_ms,
                rule_count(entry.text),
                [(entry.published_ms, entry.publisher)],
            )
        elif isinstance(entry, Activation) and entry.version in rows:
            rows[entry.version].activations.append((entry.activated_ms, entry.by))
    texts = {e.version: e for e in entries if isinstance(e, RuleSetRecord)}
    if spec is not None:
        for row in rows.values():
            try:
                load_for_spec(texts[row.version].text, spec, source=row.source)
            except Exception as exc:
                row.loads = False
                problems = getattr(exc, "problems", None)
                text = problems[0].message if problems else str(getattr(exc, "message", exc))
                row.problem = text.splitlines()[0][:200]
    for record in reversed(designated(entries)):
        if rows[record.version].loads:
            rows[record.version].active = True
            break
    for worker, version in sorted((workers or {}).items()):
        if version in rows:
            rows[version].workers.append(worker)
    return list(rows.values())


def _when(ms: int) -> str:
    if ms <= 0:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per version, one per line")
def history(as_json: bool) -> None:
    """Every published rule-set version: source, publisher, published and activated times,
    rule count, which one is active, and which running workers run it.

    The active version is the last one published or activated (`bypass rules activate`)
    that loads against BYPASS_FEATURES_SPEC, the same rule the workers follow."""
    from rich.console import Console
    from rich.table import Table

    from streams.core.assembly import load_spec
    from streams.core.rulestore import read_entries
    from streams.core.workers import read_workers

    settings = Settings()
    entries = read_entries(settings)
    if not entries:
        click.echo(f"no rule set published on {settings.rules_topic} yet: `bypass rules publish RULES.yaml`")
        return
    running = read_workers(settings)
    rows = history_rows(entries, load_spec(settings), {w.worker_id: w.ruleset_version or "" for w in running})
    if as_json:
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(row.as_dict()) + b"\n")
        return
    table = Table(title=f"rule-set versions on {settings.rules_topic}", title_justify="left")
    for col in ("version", "rules", "source", "published", "by", "activated", "active", "workers"):
        table.add_column(col, no_wrap=col in ("version", "published"))
    for row in rows:
        again = row.activations[1:]
        activated = ", ".join(f"{_when(at)}{f' by {by}' if by else ''}" for at, by in again) or "-"
        state = "ACTIVE" if row.active else ("refused: " + (row.problem or "") if not row.loads else "")
        table.add_row(
            row.version,
            str(row.rules),
            row.source or "-",
            _when(row.published_ms),
            row.publisher or "-",
            activated,
            state,
            ", ".join(row.workers) or "-",
        )
    Console(width=200).print(table)
    if not running:
        click.echo("no running worker reported its rule set in the last minute", err=True)


@click.command()
@click.argument("version")
def activate(version: str) -> None:
    """Make the published rule-set VERSION the active one: a rollback or a roll-forward.

    The version is checked against BYPASS_FEATURES_SPEC first (a set the workers would refuse
    is never activated); every running worker switches to it within about a second, and a
    worker started later starts with it. `bypass rules history` lists the versions."""
    import rules
    from streams.core.ruleaudit import record_action
    from streams.core.rulestore import activate_ruleset

    settings = Settings()
    try:
        record, before, activation = activate_ruleset(settings, version)
    except rules.RuleSetError as exc:
        for problem in exc.problems:
            click.echo(problem.format(record_source(exc)))
        click.echo(
            f"error: rule-set version {version} does not load against the feature spec: not activated",
            err=True,
        )
        sys.exit(1)
    if activation is None:
        click.echo(f"rule-set version {version} is already active: nothing to do")
        return
    was = f" (was {before.version})" if before is not None else ""
    click.echo(f"activated rule-set version {version}{was}; running workers switch within about a second")
    audit = record_action(
        settings,
        version=version,
        action="activate",
        at_ms=activation.activated_ms,
        by=activation.by or "",
        source=record.source,
        text=record.text,
        topic_offset=activation.offset,
    )
    if audit:
        click.echo(f"warning: the activation is done but {audit}", err=True)


def record_source(exc: Any) -> str:
    return str(getattr(exc, "source", None) or "rules")
