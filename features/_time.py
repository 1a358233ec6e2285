"""The one grammar of durations and instants in bypass, defined here and nowhere else.

Whatever reads a duration (feature ``window`` / ``within``, rule ``ttl``, command line
options) or an instant (replay ``--from`` / ``--to`` ...) parses it with this module, so
one spelling means one value everywhere. Pure: stdlib only, no clock reads (a caller
that wants ``now`` passes its own ``now_ms``), no local time zone (UTC unless the text
names an offset, so no daylight saving time ever applies).

Durations, ``parse_duration_ms``: one or more ``<digits><unit>`` parts, units ``w d h m s
ms`` (week, day, hour, minute, second, millisecond; case-insensitive), largest first, each
at most once, optionally separated by spaces (``1h30m``, ``1h 30m``, ``2m30s500ms``,
``2w``); or plain digits meaning milliseconds (``1500``). The value must be more than zero
(``allow_zero=True`` admits zero) and at most ``MAX_DURATION_MS`` (10**15 - 1 ms, about
31,700 years: anything longer is a typo, and far from the engine's ±2**62 time sentinels).
``format_duration`` writes the canonical form, which reads back to the same value:
units ``d h m s ms`` (weeks are read, never written: ``30d`` reads better than ``4w2d``),
zero parts left out, ``0ms`` for zero.

Instants, ``parse_time_ms``: ISO 8601 calendar dates ``YYYY-MM-DD``, optionally with a
time ``[T| ]HH:MM[:SS[.fraction]]`` and a zone ``Z`` / ``±HH[:MM]`` (UTC when no zone is
given; a fraction finer than a millisecond is cut off, as an epoch-ms clock would), or
plain digits meaning epoch milliseconds; and, only when the caller passes ``now_ms``
(the command line always does), times relative to it: ``now``, ``now-<duration>`` and
``now+<duration>``, the short ``-<duration>`` / ``+<duration>``, a bare duration with a
unit meaning that long ago (``1d`` = ``-1d`` = ``now-1d``: what ``--since 1d`` says), and
``today`` / ``yesterday`` (the start of that UTC day). The result is epoch milliseconds
between years 1 and 9999 (``MIN_TIME_MS`` .. ``MAX_TIME_MS``), the range ``format_ms``
can write back (``2026-11-01T10:00:00.000Z``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, NoReturn

from features.errors import DurationError, TimeFormatError

DURATION_HELP: Final = "a duration: 500ms, 30s, 5m, 1h30m, 30d, 2w or milliseconds"
TIME_HELP: Final = (
    "a time: ISO 8601 (2026-11-01T10:00:00Z, 2026-11-01T10:00:00+08:00, "
    "2026-11-01 10:00 or 2026-11-01, UTC when no zone is given), epoch milliseconds, "
    "or relative: now, -1d or 1d (a day ago), now-2h30m, today, yesterday (UTC)"
)

MAX_DURATION_MS: Final = 10**15 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
MIN_TIME_MS: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_MS
MAX_TIME_MS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - _EPOCH) // _ONE_MS

# (unit, milliseconds), largest first: the order parts must come in
_UNITS: Final = (
    ("w", 604_800_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)
# one optional group per unit, in order; `m(?!s)` so that "5ms" is never read as minutes
_DURATION: Final = re.compile(
    r"(?:([0-9]+)w)? *(?:([0-9]+)d)? *(?:([0-9]+)h)? *(?:([0-9]+)m(?!s))? *(?:([0-9]+)s)? *(?:([0-9]+)ms)?"
)
_MAX_TEXT: Final = 64  # longer texts are refused before any digit is converted
_DURATION_GRAMMAR: Final = (
    f"expected {DURATION_HELP}; units w, d, h, m, s, ms, largest first, each at most once, "
    "as in 1d12h or 2m30s500ms"
)

_ISO: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[t ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r" ?(z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?",
    re.IGNORECASE,
)
_NOW: Final = re.compile(r"now(?: *([+-]) *(.*))?", re.IGNORECASE)
_SHORT: Final = re.compile(r"([+-]) *(.+)")
_DAY_MS: Final = 86_400_000
_DAYS: Final = {"today": 0, "yesterday": 1}


def parse_duration_ms(text: str, *, allow_zero: bool = False) -> int:
    """A duration in the grammar of this module -> milliseconds.

    ``"500ms"`` 500, ``"90s"`` 90000, ``"1h30m"`` 5400000, ``"2w"`` 1209600000, ``"1500"``
    1500. Raises ``DurationError`` (fields ``text``, ``reason``) on anything else, on zero
    unless ``allow_zero``, and above ``MAX_DURATION_MS``.
    """
    if not isinstance(text, str):
        _duration_error(text, f"expected text such as 30d, 1h30m or 500ms, got {type(text).__name__}")
    value = text.strip().lower()
    if not value:
        _duration_error(text, f"empty; {_DURATION_GRAMMAR}")
    if len(value) > _MAX_TEXT:
        _duration_error(text, f"too long; {_DURATION_GRAMMAR}")
    if value.isascii() and value.isdigit():
        ms = int(value)
    else:
        m = _DURATION.fullmatch(value)
        if m is None or m.lastindex is None:  # no match, or every part absent
            _duration_error(text, _DURATION_GRAMMAR)
        ms = sum(int(n) * size for n, (_, size) in zip(m.groups(), _UNITS, strict=True) if n is not None)
    if ms == 0 and not allow_zero:
        _duration_error(text, "must be more than zero, e.g. 500ms, 30s or 1h30m")
    if ms > MAX_DURATION_MS:
        _duration_error(text, f"too large: at most {MAX_DURATION_MS} ms, about 31,700 years")
    return ms


def format_duration(ms: int) -> str:
    """Milliseconds -> the canonical duration text: ``90061000`` -> ``"1d1h1m1s"``,
    ``1500`` -> ``"1s500ms"``, ``0`` -> ``"0ms"``. ``parse_duration_ms`` reads it back exactly."""
    if type(ms) is not int or ms < 0:
        raise ValueError(f"a duration is a non-negative integer of milliseconds, got {ms!r}")
    if ms == 0:
        return "0ms"
    parts: list[str] = []
    rest = ms
    for unit, size in _UNITS[1:]:  # weeks are read, never written
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_time_ms(text: str, *, now_ms: int | None = None) -> int:
    """An instant in the grammar of this module -> epoch milliseconds (UTC).

    ``"2026-11-01T10:00:00Z"``, ``"2026-11-01T10:00:00+08:00"``, ``"2026-11-01 10:00"``
    and ``"2026-11-01"`` (UTC when no zone), ``"1793527200000"`` (epoch ms); with
    ``now_ms`` given, also ``"now"``, ``"now-1h"``, ``"now+30m"``, ``"-1d"``, ``"+1h"``,
    ``"1d"`` (a day before ``now_ms``), ``"today"`` and ``"yesterday"`` (00:00 UTC). Raises
    ``TimeFormatError`` (fields ``text``, ``reason``) on anything else, or when the
    instant is outside years 1..9999.
    """
    if not isinstance(text, str):
        _time_error(text, f"expected text, got {type(text).__name__}; use {TIME_HELP}")
    value = text.strip()
    if not value or len(value) > _MAX_TEXT:
        _time_error(text, f"expected {TIME_HELP}")
    if value.isascii() and value.isdigit():
        if int(value) > MAX_TIME_MS:
            _time_error(text, f"epoch milliseconds too large: at most {MAX_TIME_MS} (year 9999)")
        return int(value)
    now = _NOW.fullmatch(value) or _SHORT.fullmatch(value)
    if now is not None:
        return _relative(text, now, now_ms)
    iso = _ISO.fullmatch(value)
    if iso is not None:
        return _iso_ms(text, iso)
    if value.lower() in _DAYS:
        if now_ms is None:
            _time_error(text, f"{value!r} is not accepted here (no current time given); expected {TIME_HELP}")
        return _in_range(text, now_ms - now_ms % _DAY_MS - _DAYS[value.lower()] * _DAY_MS)
    try:
        ago = parse_duration_ms(value)  # a bare duration with a unit (digits were epoch ms)
    except DurationError:
        _time_error(text, f"expected {TIME_HELP}")
    if now_ms is None:
        _time_error(
            text, f"a duration ago is not accepted here (no current time given); expected {TIME_HELP}"
        )
    return _in_range(text, now_ms - ago)


def format_ms(ms: int) -> str:
    """Epoch milliseconds -> ``"2026-11-01T10:00:00.000Z"`` (UTC; ``parse_time_ms`` reads it
    back exactly). A ValueError outside years 1..9999."""
    if type(ms) is not int or not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ValueError(f"epoch milliseconds outside years 1..9999: {ms!r}")
    d = _EPOCH + ms * _ONE_MS
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f".{d.microsecond // 1000:03d}Z"
    )


def _relative(text: str, m: re.Match[str], now_ms: int | None) -> int:
    if now_ms is None:
        what = "'now'" if m.group(0).lower().startswith("now") else "a time relative to now"
        _time_error(text, f"{what} is not accepted here (no current time given); expected {TIME_HELP}")
    ms = now_ms
    if m.group(1) is not None:
        try:
            delta = parse_duration_ms(m.group(2), allow_zero=True)
        except DurationError as exc:
            before = m.group(0)[: m.start(2)].strip()
            _time_error(text, f"bad duration after {before!r}: {exc.fields['reason']}")
        ms = now_ms + delta if m.group(1) == "+" else now_ms - delta
    return _in_range(text, ms)


def _in_range(text: str, ms: int) -> int:
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        _time_error(text, "outside years 1..9999")
    return ms


def _iso_ms(text: str, m: re.Match[str]) -> int:
    year, month, day, hour, minute, second, frac, zone = m.groups()
    tz = UTC
    if zone is not None and zone.lower() != "z":
        digits = zone[1:].replace(":", "")
        oh, om = int(digits[:2]), int(digits[2:] or "0")
        if oh > 23 or om > 59:
            _time_error(text, f"bad zone offset {zone!r} (expected Z or ±HH:MM with HH < 24)")
        offset = timedelta(hours=oh, minutes=om)
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=tz,
        )
    except ValueError as exc:  # month 13, February 30, hour 24 ...
        _time_error(text, f"{exc}; expected {TIME_HELP}")
    ms = (moment - _EPOCH) // _ONE_MS + (int(frac[:3].ljust(3, "0")) if frac else 0)
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:  # a zone can push year 1 or 9999 out of range
        _time_error(text, "outside years 1..9999")
    return ms


def _duration_error(text: Any, reason: str) -> NoReturn:
    raise DurationError(f"bad duration {_shown(text)}: {reason}", text=text, reason=reason)


def _time_error(text: Any, reason: str) -> NoReturn:
    raise TimeFormatError(f"bad time {_shown(text)}: {reason}", text=text, reason=reason)


def _shown(text: Any) -> str:
    """A short rendering of a user value for messages: the repr of a scalar (cut at 80
    characters), else only its type (never the repr of a container: a YAML alias bomb
    expands to billions of items)."""
    if isinstance(text, int) and text.bit_length() > 256:
        return "a very large int"  # its repr may be refused (int max str digits)
    if text is None or isinstance(text, str | int | float | bool):
        shown = repr(text)
        return shown if len(shown) <= 80 else shown[:77] + "..."
    return f"a {type(text).__name__}"
