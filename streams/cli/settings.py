"""``bypass settings``: print the effective settings, secrets masked."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.command()
@click.option("--env", "as_env", is_flag=True, help="print as BYPASS_*=value lines")
def settings(as_env: bool) -> None:
    """Print the effective settings (secrets masked)."""
    values = Settings().masked()
    width = max((len(name) for name in values), default=0)  # one column, however long the names
    for name, value in values.items():
        shown = "" if value is None else value
        click.echo(f"{name}={shown}" if as_env else f"{name:<{width}}  {shown}".rstrip())
