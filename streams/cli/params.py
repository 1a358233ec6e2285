"""What several verbs share: parameter types in the one time grammar, logging, stop signals.

``TIME`` and ``DURATION`` parse with :mod:`features` (``parse_time_ms``,
``parse_duration_ms``), so ``--from``, ``--since``, ``--warmup``, ``--duration`` ... all
read ``500ms``, ``30s``, ``1h30m``, ``30d``, ``2w``, ISO 8601 instants and epoch ms the
same way; a bad value is a usage error naming the option.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import click

from features import DURATION_HELP, TIME_HELP, parse_duration_ms, parse_time_ms
from features.errors import ConfigError
from streams.settings import Settings

__all__ = ["DURATION", "SINCE", "TIME", "DurationParam", "TimeParam", "setup_logging", "stop_on_signals"]


class TimeParam(click.ParamType):
    """An instant -> epoch ms. ``relative=True`` also reads ``now``, ``now-1h`` and a bare
    duration meaning that long before now (``--since 1d``)."""

    name = "time"

    def __init__(self, *, relative: bool = False) -> None:
        self.relative = relative

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        try:
            if self.relative:
                now_ms = time.time_ns() // 1_000_000
                try:
                    return now_ms - parse_duration_ms(text)
                except ConfigError:
                    return parse_time_ms(text, now_ms=now_ms)
            return parse_time_ms(text)
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
SINCE = TimeParam(relative=True)
DURATION = DurationParam()


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (for the long-running verbs)."""
    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop
