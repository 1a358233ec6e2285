"""``bypass settings``: print the effective settings, secrets masked."""

from __future__ import annotations

import click

from streams.settings import Settings


@click.command()
@click.option("--env", "as_env", is_flag=True, help="print as BYPASS_*=value lines")
def settings(as_env: bool) -> None:
    """Print the effective settings (secrets masked)."""
    values = Settings().masked()
    for name, value in values.items():
        shown = "" if value is None else value
        click.echo(f"{name}={shown}" if as_env else f"{name:32} {shown}")
