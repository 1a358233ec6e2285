"""``bypass rules publish RULES.yaml``: validate a rule set and publish it for hot reload.

Joined to the ``bypass rules`` group in :mod:`streams.cli.rules` (kept apart: it is the one
``rules`` command that needs Kafka).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from features.errors import ConfigError


@click.command()
@click.argument("rules_file", metavar="RULES.yaml")
def publish(rules_file: str) -> None:
    """Validate RULES.yaml against BYPASS_FEATURES_SPEC and publish it to the rules topic.

    Every running worker activates the new version within about a second (each follows
    the compacted rules topic with its own reader); a worker started later picks up the
    latest version. An invalid rule set is never published: every problem is listed and
    the command exits 1. Versions are immutable: an edited rule set needs a new `version:`.
    """
    import rules
    from streams.core.rulestore import publish_ruleset
    from streams.settings import get_settings

    path = Path(rules_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read rule set {rules_file}: {exc.strerror or exc}", path=rules_file
        ) from None
    settings = get_settings()
    try:
        record, published = publish_ruleset(settings, text, source=rules_file)
    except rules.RuleSetError as exc:
        for problem in exc.problems:
            click.echo(problem.format(rules_file))
        count = len(exc.problems)
        click.echo(
            f"error: {rules_file}: {count} problem{'s' * (count != 1)}, rule set rejected, nothing published",
            err=True,
        )
        sys.exit(1)
    if published:
        click.echo(f"published rule set version {record.version} from {rules_file} to {settings.rules_topic}")
        from streams.core.ruleaudit import record_action

        audit = record_action(
            settings,
            version=record.version,
            action="publish",
            at_ms=record.published_ms,
            by=record.publisher or "",
            source=rules_file,
            text=text,
            topic_offset=record.offset,
        )
        if audit:
            click.echo(f"warning: the rule set is published but {audit}", err=True)
    else:
        click.echo(f"rule set version {record.version} is already published with this text: nothing to do")
