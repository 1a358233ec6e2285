"""The ``bypass`` command line.

Each verb lives in its own module and is imported only when used, so
``bypass --help`` stays fast and a verb's heavy imports (faust, chdb) never
slow down another verb. To add a verb, add one line to ``_VERBS``.
"""

from __future__ import annotations

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
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_VERBS)

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


def _explain_validation_error(exc: ValidationError) -> None:
    """A settings error names the BYPASS_* variable and what it accepts; no stack trace."""
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        name = f"BYPASS_{field.upper()}" if exc.title == "Settings" else field
        click.echo(f"error: invalid setting {name}: {err['msg']}", err=True)
