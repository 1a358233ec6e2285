"""The ``bypass`` command line.

Each verb lives in its own module and is imported only when used, so
``bypass --help`` stays fast and a verb's heavy imports (faust, chdb) never
slow down another verb. To add a verb, add one line to ``_VERBS``.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Any

import click
from pydantic import ValidationError

from features.errors import BypassError

# verb -> "module:attribute" of a click command or group
_VERBS: dict[str, str] = {
    "worker": "streams.cli.worker:worker",
    "produce": "streams.cli.produce:produce",
    "settings": "streams.cli.settings:settings",
    "features": "streams.cli.features:features",
    "rules": "streams.cli.rules:rules",
    "replay": "streams.cli.replay:replay",
    "stack": "streams.cli.stack:stack",
    "simulate": "streams.cli.simulate:simulate",
    "hits": "streams.cli.hits:hits",
    "lists": "streams.cli.lists:lists",
    "sink": "streams.cli.sink:sink",
    "clickhouse": "streams.cli.clickhouse:clickhouse",
    "status": "streams.cli.status:status",
    "labels": "streams.cli.labels:labels",
    "model": "streams.cli.model:model",
    "serve": "streams.cli.serve:serve",
}


# the order `bypass --help` lists the verbs in: the order of the work (a verb not named
# here comes after these, alphabetically)
_HELP_ORDER: tuple[str, ...] = (
    "stack",
    "simulate",
    "produce",
    "rules",
    "worker",
    "sink",
    "replay",
    "model",
    "hits",
    "lists",
    "serve",
    "status",
    "features",
    "clickhouse",
    "settings",
)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [v for v in _HELP_ORDER if v in _VERBS]
        return known + sorted(set(_VERBS) - set(known))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown verb is a usage error with a "did you mean" (``bypass wroker``)."""
        name = click.utils.make_str(args[0]) if args else ""
        if args and name not in _VERBS and not name.startswith("-"):
            close = difflib.get_close_matches(name, list(_VERBS), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _VERBS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bypass-analyzer")
def cli() -> None:
    """bypass: a Kafka stream-processing bypass risk analyzer.

    Settings come from BYPASS_* environment variables (see `bypass settings`).
    """


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: BypassError becomes a clear message and exit code 1."""
    try:
        return cli.main(args=argv, prog_name="bypass", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError):
            _suggest_subcommand(exc)
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except BypassError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except ValidationError as exc:
        _explain_validation_error(exc)
        sys.exit(1)


def _suggest_subcommand(exc: click.UsageError) -> None:
    """``bypass hits entty`` -> "... Did you mean 'entity'?" (the verbs: ``_LazyGroup``)."""
    group = exc.ctx.command if exc.ctx is not None else None
    if not isinstance(group, click.Group) or not exc.message.startswith("No such command "):
        return
    name = exc.message.removeprefix("No such command ").rstrip(".").strip("'\"")
    close = difflib.get_close_matches(name, group.list_commands(exc.ctx), n=1, cutoff=0.6)  # type: ignore[arg-type]
    if close and exc.message.endswith("."):
        exc.message += f" Did you mean {close[0]!r}?"


def _explain_validation_error(exc: ValidationError) -> None:
    """A settings error names the BYPASS_* variable and what it accepts; no stack trace."""
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        name = f"BYPASS_{field.upper()}" if exc.title == "Settings" else field
        click.echo(f"error: invalid setting {name}: {err['msg']}", err=True)
