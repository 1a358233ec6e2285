"""``bypass features``: evaluate a feature spec over events, offline.

``bypass features eval --spec FEATURES.yaml --events EVENTS.jsonl`` prints one JSON
object per line for each (event, entity kind it carries), in input order::

    {"event_id": "e1", "entity": "user", "key": "u1", "features": {"phone_changes_30d": 2, ...}}

``features`` holds every feature of that entity kind (null where undefined). A redelivered
event (same ``event_id`` for the same key) prints the values of its first application; an
event rejected as too late prints null features plus ``"status": "late_rejected"`` and a
``"reason"``. The engine is the one the live path and replay use, with the lateness, dedup
horizon and cap from the settings (BYPASS_ALLOWED_LATENESS_MS, BYPASS_DEDUP_HORIZON_MS,
BYPASS_STATE_CAP).
"""

from __future__ import annotations

import sys
from typing import IO, Any

import click
import orjson

from features import LATE_REJECTED, EntityState, EventError, FeatureEngine, FeatureSpec, load_spec
from streams.settings import Settings


@click.group()
def features() -> None:
    """Feature specs: evaluate offline, publish to running workers (warm start), status."""


@features.command("eval")
@click.option(
    "--spec", "spec_path", metavar="FEATURES.yaml", help="feature spec (YAML; default: BYPASS_FEATURES_SPEC)"
)
@click.option(
    "--events",
    "events_file",
    required=True,
    type=click.File("rb"),
    metavar="EVENTS.jsonl",
    help="'-' for stdin",
)
def eval_(spec_path: str | None, events_file: IO[bytes]) -> None:
    """Print the features of every (event, entity) as JSON lines, in input order."""
    settings = Settings()
    spec = load_spec(spec_path if spec_path is not None else settings.features_spec)
    engine = FeatureEngine(
        spec,
        cap=settings.state_cap,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        dedup_horizon_ms=max(settings.dedup_horizon_ms, settings.allowed_lateness_ms),
    )
    nulls = {e: dict.fromkeys(engine.feature_names(e)) for e in spec.entities}
    states: dict[tuple[str, str], EntityState] = {}
    out = click.get_binary_stream("stdout")
    for lineno, line in enumerate(events_file, start=1):
        if not line.strip():
            continue
        try:
            event: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise EventError(f"events line {lineno}: invalid JSON: {exc}", line=lineno) from None
        if not isinstance(event, dict):
            raise EventError(f"events line {lineno}: expected a JSON object", line=lineno)
        for entity, key in spec.entity_keys(event):
            state = states.get((entity, key))
            if state is None:
                state = states[(entity, key)] = engine.new_state(entity)
            try:
                result = engine.apply(entity, state, event)
            except EventError as exc:
                raise EventError(f"events line {lineno}: {exc.message}", line=lineno) from None
            record: dict[str, Any] = {"event_id": event.get("event_id"), "entity": entity, "key": key}
            if result.status == LATE_REJECTED:
                record["features"] = nulls[entity]
                record["status"] = result.status
                record["reason"] = result.reason
            else:
                record["features"] = result.features
            out.write(orjson.dumps(record) + b"\n")
    out.flush()


@features.command("publish")
@click.argument("spec_file", metavar="SPEC.yaml")
def publish(spec_file: str) -> None:
    """Validate SPEC.yaml and publish it as the active feature spec of the running workers.

    Each worker switches to it within about a second, without a restart. A feature that is
    new, or whose parameters changed, is warm-started: rebuilt from the raw topics (what
    they retain) while the worker runs; rules that read it run in shadow mode (hits
    recorded, not counted) until it is warm. Watch it with `bypass features status`.

    Refused, with nothing published: an invalid spec; other entity kinds than the active
    spec (that needs BYPASS_FEATURES_SPEC changed and a restart); a spec the active rule
    set does not load against; a `version:` already published with another text.
    """
    from pathlib import Path

    import rules
    from features.errors import ConfigError
    from streams.core.featurestore import publish_spec
    from streams.settings import get_settings

    try:
        text = Path(spec_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read feature spec {spec_file}: {exc.strerror or exc}", path=spec_file
        ) from None
    settings = get_settings()
    try:
        record, published = publish_spec(settings, text, source=spec_file)
    except rules.RuleSetError as exc:
        for problem in exc.problems:
            click.echo(problem.format("the active rule set"))
        click.echo(
            f"error: {spec_file}: the active rule set does not load against this spec; nothing published",
            err=True,
        )
        sys.exit(1)
    if published:
        click.echo(
            f"published feature spec version {record.version} from {spec_file} to {settings.features_topic}"
        )
    else:
        click.echo(
            f"feature spec version {record.version} is already published with this text: nothing to do"
        )


@features.command("activate")
@click.argument("version")
def activate(version: str) -> None:
    """Make the published feature spec VERSION active again (rollback, roll-forward)."""
    from streams.core.featurestore import activate_spec
    from streams.settings import get_settings

    settings = get_settings()
    record, activation = activate_spec(settings, version)
    if activation is None:
        click.echo(f"feature spec version {record.version} is active already: nothing to do")
    else:
        click.echo(f"feature spec version {record.version} activated on {settings.features_topic}")


def _status_rows(reports: list[Any], spec: FeatureSpec, version: str) -> list[dict[str, Any]]:
    """One row per (worker, feature): warm, warming (progress, estimate) or cold."""
    rows: list[dict[str, Any]] = []
    for report in reports:
        body = (report.health or {}).get("features") or {}
        warming = {(w["entity"], name): w for w in body.get("warming", ()) for name in w.get("features", ())}
        cold = {(e, name) for e, names in (body.get("cold") or {}).items() for name in names}
        for f in spec.features:
            w = warming.get((f.entity, f.name))
            row: dict[str, Any] = {
                "worker": report.worker_id,
                "spec_version": body.get("version"),
                "entity": f.entity,
                "feature": f.name,
                "state": "warm",
            }
            if body.get("version") != version:
                row["state"] = "other version"
            elif w is not None:
                row.update(
                    state="warming" if w.get("state") != "failed" else "cold",
                    progress=w.get("progress"),
                    eta_s=w.get("eta_s"),
                    events_read=w.get("events_read"),
                    events_total=w.get("events_total"),
                    error=w.get("error"),
                )
                if w.get("state") == "rebuilt":
                    row["state"] = "warming"
                    row["progress"] = 1.0
                    row["eta_s"] = 0
                    row["note"] = "history rebuilt; hand-over once the worker has processed the cut"
            elif (f.entity, f.name) in cold:
                row["state"] = "cold"
            rows.append(row)
    return rows


@features.command("status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="one JSON object: the spec version and a row per (worker, feature)",
)
def status(as_json: bool) -> None:
    """Each feature's state on each running worker: warm, warming (with progress and an
    estimate) or cold (a warm start that failed, or BYPASS_WARM_START=false)."""
    from rich.console import Console
    from rich.table import Table

    from streams.core.featurestore import active_spec
    from streams.core.workers import read_workers
    from streams.settings import get_settings

    settings = get_settings()
    active = active_spec(settings)
    reports = read_workers(settings)
    rows = _status_rows(reports, active.spec, active.version)
    if as_json:
        click.echo(
            orjson.dumps({"version": active.version, "workers": len(reports), "features": rows}).decode()
        )
        return
    source = "published" if active.record is not None else f"file {settings.features_spec}"
    click.echo(f"feature spec {active.version} ({source}); {len(reports)} worker(s) reporting")
    if not reports:
        click.echo("no running worker has reported in the last minute: `bypass worker` runs one")
        return
    table = Table(title_justify="left")
    for column in ("worker", "entity", "feature", "state", "progress", "estimate"):
        table.add_column(column)
    for row in rows:
        progress = row.get("progress")
        eta = row.get("eta_s")
        table.add_row(
            row["worker"],
            row["entity"],
            row["feature"],
            row["state"] + (f" ({row['error']})" if row.get("error") else ""),
            "" if progress is None else f"{progress:.0%}",
            "" if eta is None else f"{eta:.0f} s",
        )
    Console().print(table)
