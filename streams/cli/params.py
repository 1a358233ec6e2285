"""What several verbs share: parameter types in the one time grammar, logging, stop signals.

``TIME`` and ``DURATION`` parse with :mod:`features` (``parse_time_ms``,
``parse_duration_ms``), so ``--from``, ``--to``, ``--since``, ``--start``, ``--warmup``,
``--duration`` ... all read ``500ms``, ``30s``, ``1h30m``, ``30d``, ``2w``, ISO 8601
instants and epoch ms the same way, and every time also reads the current clock:
``now``, ``-1d`` (or ``1d``, ``now-1d``: a day ago), ``today``, ``yesterday``; a bad value
is a usage error naming the option.
"""

from __future__ import annotations

import difflib
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from features import DURATION_HELP, TIME_HELP, parse_duration_ms, parse_time_ms
from features.errors import ConfigError
from streams.settings import Settings

__all__ = [
    "DURATION",
    "SINCE",
    "TIME",
    "DurationParam",
    "TimeParam",
    "check_entity_kind",
    "now_ms",
    "setup_logging",
    "stop_on_signals",
    "utc_text",
]


class TimeParam(click.ParamType):
    """An instant -> epoch ms, in the one time grammar of ``features.parse_time_ms`` read
    against the current clock: ISO 8601, epoch ms, ``now``, ``-1d`` / ``1d`` / ``now-1d``
    (a day ago), ``today``, ``yesterday``. Every time option uses it (``--since`` too)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time_ms(str(value), now_ms=now_ms())
        except ConfigError as exc:
            self.fail(f"{exc.message}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "TIME"

    def __repr__(self) -> str:
        return TIME_HELP


class DurationParam(click.ParamType):
    """A duration -> ms (``allow_zero`` admits ``0``)."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration_ms(str(value), allow_zero=self.allow_zero)
        except ConfigError as exc:
            self.fail(f"{exc.message}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def __repr__(self) -> str:
        return DURATION_HELP


TIME = TimeParam()
SINCE = TIME  # the same grammar: `--since 1d` and `--from 1d` mean the same instant
DURATION = DurationParam()


def now_ms() -> int:
    """The current time in epoch ms (the one clock read the time options make)."""
    return time.time_ns() // 1_000_000


def utc_text(moment: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time for a table, in UTC and saying so: ``2026-11-01 10:00:00 UTC`` (a naive
    datetime is taken as UTC, as ClickHouse returns ``DateTime('UTC')``); ``%f`` prints
    milliseconds."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    text = utc.strftime(fmt.replace("%f", "{ms}")).replace("{ms}", f"{utc.microsecond // 1000:03d}")
    return f"{text} UTC"


def check_entity_kind(kind: str, settings: Settings | None = None) -> str:
    """``kind`` if the feature spec (BYPASS_FEATURES_SPEC) declares it, else a usage error
    naming the kinds, with a "did you mean" (an unknown kind would only ever answer
    "nothing"). Without a readable spec the kind is taken as given."""
    from features import load_spec

    path = Path((settings or Settings()).features_spec)
    if not path.is_file():
        return kind
    kinds = list(load_spec(path).entities)
    if kind in kinds:
        return kind
    close = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise click.BadParameter(
        f"unknown entity kind {kind!r}: the feature spec {str(path)!r} has {', '.join(kinds)}{hint}",
        param_hint="ENTITY",
    )


def setup_logging(settings: Settings, tag: str | None = None) -> None:
    """The one log format; ``tag`` (``worker 1``: a supervised child) goes in front of each
    logger name. The first call wins (later ones, as a verb's own, change nothing)."""
    prefix = f"[{tag}] " if tag else ""
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (for the long-running verbs)."""
    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop
