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

from typing import IO, Any

import click
import orjson

from features import LATE_REJECTED, EntityState, EventError, FeatureEngine, load_spec
from streams.settings import Settings


@click.group()
def features() -> None:
    """Evaluate feature specs offline (the same engine as the live path)."""


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
