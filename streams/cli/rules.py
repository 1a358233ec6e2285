"""``bypass rules``: validate, test and diff rule sets.

The group stays light (click + the pure ``rules``/``features`` packages) so
other commands (``publish``) can join it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson

import rules as rules_pkg
from features.errors import ConfigError


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {exc.reason}", path=path) from None


_FEATURES_HELP = "feature spec (default: BYPASS_FEATURES_SPEC, as `bypass rules publish` and the worker)"


def _load_spec(path: str | None) -> Any:
    """The feature spec at ``path``; without one, the one BYPASS_FEATURES_SPEC names (the
    spec `rules publish` and the worker validate against)."""
    from features import load_spec

    if path is None:
        from streams.settings import Settings

        path = str(Settings().features_spec)
        if not Path(path).is_file():
            raise ConfigError(
                f"feature spec {path!r} not found: pass --features FEATURES.yaml or set BYPASS_FEATURES_SPEC",
                setting="BYPASS_FEATURES_SPEC",
            )
    return load_spec(path)


def _load_rules(path: str, schema: Any) -> rules_pkg.RuleSet:
    return rules_pkg.load_ruleset(_read(path, "rule set"), schema, source=path)


@click.group()
def rules() -> None:
    """Validate, test and diff rule sets (see examples/rules.yaml)."""


@rules.command()
@click.argument("rules_file", metavar="RULES.yaml")
@click.option("--features", "features_file", metavar="FEATURES.yaml", help=_FEATURES_HELP)
def validate(rules_file: str, features_file: str | None) -> None:
    """Check a rule set as a whole: exit 0 with a summary, or 1 listing every problem."""
    spec = _load_spec(features_file)
    try:
        rs = _load_rules(rules_file, spec)
    except rules_pkg.RuleSetError as exc:
        for problem in exc.problems:
            click.echo(problem.format(rules_file))
        count = len(exc.problems)
        click.echo(f"error: {rules_file}: {count} problem{'s' * (count != 1)}, rule set rejected", err=True)
        sys.exit(1)
    by_entity: dict[str, int] = {}
    for r in rs.rules:
        by_entity[r.entity] = by_entity.get(r.entity, 0) + 1
    per = ", ".join(f"{e} {n}" for e, n in sorted(by_entity.items()))
    shadow = sum(1 for r in rs.rules if r.mode == "shadow")
    click.echo(
        f"ok: {rules_file} version {rs.version}: {len(rs.rules)} rules ({per}; {shadow} shadow), "
        f"reject >= {rs.reject}, review >= {rs.review}"
    )


def _events(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    stream = sys.stdin if path == "-" else None
    try:
        handle = stream or open(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read events {path}: {exc.strerror or exc}", path=path) from None
    try:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: invalid JSON: {exc}", path=path, line=lineno) from None
            if not isinstance(event, dict):
                raise ConfigError(f"{path}:{lineno}: an event must be a JSON object", path=path, line=lineno)
            yield lineno, event
    finally:
        if stream is None:
            handle.close()


def _lists(path: str | None) -> rules_pkg.StaticLists | None:
    if path is None:
        return None
    try:
        data = orjson.loads(_read(path, "lists"))
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}", path=path) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{path}: lists must be a JSON object of name -> array of values", path=path)
    return rules_pkg.StaticLists(data)


@rules.command()
@click.option("--rules", "rules_file", required=True, metavar="RULES.yaml", help="rule set")
@click.option("--features", "features_file", metavar="FEATURES.yaml", help=_FEATURES_HELP)
@click.option(
    "--events",
    "events_file",
    required=True,
    metavar="EVENTS.jsonl",
    help="events, one JSON per line ('-': stdin)",
)
@click.option("--hits-only", is_flag=True, help="print only (event, entity) lines that have hits")
@click.option(
    "--lists", "lists_file", metavar="LISTS.json", help="named lists for in_list(): {name: [values]}"
)
def test(
    rules_file: str, features_file: str | None, events_file: str, hits_only: bool, lists_file: str | None
) -> None:
    """Run events through features + rules; one JSON line per (event, entity), in input order."""
    import features

    spec = _load_spec(features_file)
    rs = _load_rules(rules_file, spec)
    lists = _lists(lists_file)
    engine_cls = getattr(features, "FeatureEngine", None)
    if engine_cls is None:
        raise ConfigError("features.FeatureEngine is not available in this build")
    engine = engine_cls(spec)
    states: dict[tuple[str, str], Any] = {}
    out = sys.stdout.buffer
    skipped = 0
    failed: dict[str, list[Any]] = {}  # rule id -> [count, first line, first error]
    for lineno, event in _events(events_file):
        for entity, key in spec.entity_keys(event):
            state = states.get((entity, key))
            if state is None:
                state = engine.new_state(entity)
            result = engine.apply(entity, state, event)
            new_state = getattr(result, "state", None)
            states[(entity, key)] = new_state if new_state is not None else state
            if getattr(result, "status", "applied") == "late_rejected":
                skipped += 1
                reason = getattr(result, "reason", "")
                click.echo(f"{events_file}:{lineno}: {entity} {key}: late event skipped ({reason})", err=True)
                continue
            evaluation = rs.evaluate(event, entity, key, result.features, lists)
            for hit in evaluation.hits:
                if hit.error is not None:
                    seen = failed.setdefault(hit.rule_id, [0, lineno, hit.error])
                    seen[0] += 1
            if hits_only and not evaluation.hits:
                continue
            out.write(orjson.dumps(evaluation.as_dict()) + b"\n")
    out.flush()
    if skipped:
        click.echo(f"{skipped} late (event, entity) pairs skipped", err=True)
    for rule_id, (count, lineno, error) in sorted(failed.items()):
        click.echo(
            f"warning: rule {rule_id!r} failed at run time on {count} (event, entity) pair"
            f"{'s' * (count != 1)} (never counted as a hit); first at {events_file}:{lineno}: {error}",
            err=True,
        )


@rules.command(name="diff")
@click.argument("old_file", metavar="OLD.yaml")
@click.argument("new_file", metavar="NEW.yaml")
@click.option(
    "--features", "features_file", metavar="FEATURES.yaml", help="also type-check against a feature spec"
)
@click.option("--json", "as_json", is_flag=True, help="print the diff as one JSON object")
def diff_cmd(old_file: str, new_file: str, features_file: str | None, as_json: bool) -> None:
    """Rules added (+), removed (-) and changed (~) from OLD to NEW."""
    schema = _load_spec(features_file) if features_file else None
    old = _load_rules(old_file, schema)
    new = _load_rules(new_file, schema)
    d = rules_pkg.diff(old, new)
    if as_json:
        click.echo(orjson.dumps(d.as_dict()).decode())
        return
    for line in d.lines():
        click.echo(line)


# `bypass rules publish` needs Kafka: streams/cli/rules_publish.py.
from streams.cli.rules_history import activate, history  # noqa: E402
from streams.cli.rules_publish import publish  # noqa: E402

rules.add_command(publish)
rules.add_command(history)
rules.add_command(activate)

from streams.cli.rules_report import report  # noqa: E402

rules.add_command(report)
