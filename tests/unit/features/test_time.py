"""The one time/duration grammar (features._time): forms, errors, round trips, UTC only."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import features
import rules
from features import (
    DURATION_HELP,
    TIME_HELP,
    ConfigError,
    DurationError,
    FeatureSpec,
    TimeFormatError,
    format_duration,
    format_ms,
    parse_duration_ms,
    parse_time_ms,
)
from features._time import MAX_DURATION_MS, MAX_TIME_MS, MIN_TIME_MS

S, M, H, D, W = 1_000, 60_000, 3_600_000, 86_400_000, 604_800_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def exact_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


# --- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 500),
        ("30s", 30 * S),
        ("5m", 5 * M),
        ("12h", 12 * H),
        ("30d", 30 * D),
        ("2w", 2 * W),
        ("1500", 1500),  # plain digits: milliseconds
        ("1h30m", H + 30 * M),
        ("1d12h", D + 12 * H),
        ("2m30s500ms", 2 * M + 30 * S + 500),
        ("1w1d1h1m1s1ms", W + D + H + M + S + 1),
        ("1h 30m", H + 30 * M),  # spaces between parts
        ("1d  12h 5s", D + 12 * H + 5 * S),
        ("  90s\n", 90 * S),  # surrounding whitespace
        ("1H30M", H + 30 * M),  # units are case-insensitive
        ("500MS", 500),
        ("5Ms", 5),
        ("030d", 30 * D),
        ("1h0m", H),  # a zero part inside a positive duration
        ("90m", 90 * M),  # a part need not be below the next unit
    ],
)
def test_duration_forms(text: str, expected: int) -> None:
    assert parse_duration_ms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "h",
        "ms",
        "30x",
        "1y",
        "1.5h",  # no fractions
        "-1h",  # no signs
        "+1h",
        "1 h",  # no space between a number and its unit
        "1h30",  # a bare number after a part
        "1m1h",  # units largest first
        "1ms1s",
        "1h1h",  # each unit at most once
        "1w1w",
        "3 days",
        "1h,30m",
        "١٢h",  # non-ASCII digits
        "1" + "0" * 70,  # too long
    ],
)
def test_duration_errors_show_the_grammar(text: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration_ms(text)
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.fields["text"] == text
    assert err.message.startswith("bad duration ")
    assert err.fields["reason"] in err.message
    assert "500ms, 30s, 5m, 1h30m, 30d, 2w or milliseconds" in err.message


def test_duration_zero_is_refused_unless_allowed() -> None:
    for text in ("0", "0ms", "0d", "0h0m"):
        with pytest.raises(DurationError, match="must be more than zero"):
            parse_duration_ms(text)
        assert parse_duration_ms(text, allow_zero=True) == 0


def test_duration_upper_bound() -> None:
    assert MAX_DURATION_MS == 10**15 - 1
    assert parse_duration_ms(str(MAX_DURATION_MS)) == MAX_DURATION_MS
    for text in (str(MAX_DURATION_MS + 1), "11574075d", "99999999999999w"):
        with pytest.raises(DurationError, match="too large"):
            parse_duration_ms(text)


def test_duration_needs_text() -> None:
    for value in (30, 1.5, None, True, ["1h"], 10**5000):
        with pytest.raises(DurationError, match="expected text") as info:
            parse_duration_ms(value)  # type: ignore[arg-type]
        assert info.value.fields["text"] is value
        assert len(info.value.message) < 200  # never the repr of a container or a huge int


def test_format_duration() -> None:
    assert format_duration(90_061_000) == "1d1h1m1s"
    assert format_duration(1500) == "1s500ms"
    assert format_duration(0) == "0ms"
    assert format_duration(1) == "1ms"
    assert format_duration(30 * D) == "30d"  # weeks are read, never written
    assert format_duration(H + 30 * M) == "1h30m"
    for bad in (-1, 1.5, "1s"):
        with pytest.raises(ValueError):
            format_duration(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_DURATION_MS))
def test_format_duration_round_trips(ms: int) -> None:
    text = format_duration(ms)
    assert parse_duration_ms(text, allow_zero=True) == ms
    assert format_duration(parse_duration_ms(text.upper(), allow_zero=True)) == text


_UNIT_PARTS = (("w", W), ("d", D), ("h", H), ("m", M), ("s", S), ("ms", 1))


@given(
    st.lists(st.booleans(), min_size=6, max_size=6).filter(any),
    st.lists(st.integers(min_value=0, max_value=999), min_size=6, max_size=6),
    st.sampled_from(["", " "]),
)
def test_compounds_are_the_sum_of_their_parts(use: list[bool], nums: list[int], sep: str) -> None:
    parts = [(n, u, size) for (u, size), n, on in zip(_UNIT_PARTS, nums, use, strict=True) if on]
    text = sep.join(f"{n}{u}" for n, u, _ in parts)
    total = sum(n * size for n, _, size in parts)
    assert parse_duration_ms(text, allow_zero=True) == total
    assert parse_duration_ms(format_duration(total), allow_zero=True) == total


def test_help_texts() -> None:
    assert DURATION_HELP == "a duration: 500ms, 30s, 5m, 1h30m, 30d, 2w or milliseconds"
    for form in ("2026-11-01T10:00:00Z", "2026-11-01 10:00", "epoch milliseconds", "UTC"):
        assert form in TIME_HELP


# --- instants -----------------------------------------------------------------------

T0 = 1_793_527_200_000  # 2026-11-01T10:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T10:00:00Z", T0),
        ("2026-11-01T10:00:00z", T0),
        ("2026-11-01t10:00:00Z", T0),
        ("2026-11-01T10:00:00+00:00", T0),
        ("2026-11-01T10:00:00-00:00", T0),
        ("2026-11-01T18:00:00+08:00", T0),
        ("2026-11-01T18:00:00+0800", T0),
        ("2026-11-01T18:00+08", T0),
        ("2026-11-01T04:30:00-05:30", T0),
        ("2026-11-01T10:00:00 Z", T0),
        ("2026-11-01T10:00:00", T0),  # no zone: UTC
        ("2026-11-01 10:00", T0),
        ("2026-11-01 10:00:00.250", T0 + 250),
        ("2026-11-01T10:00:00,5Z", T0 + 500),
        ("2026-11-01T10:00:00.999999999Z", T0 + 999),  # below a millisecond: cut off
        ("2026-11-01", T0 - 10 * H),
        (" 2026-11-01 ", T0 - 10 * H),
        ("1793527200000", T0),  # epoch milliseconds
        ("0", 0),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.500Z", -500),
        ("2024-02-29", exact_ms(datetime(2024, 2, 29, tzinfo=UTC))),
        ("0001-01-01T00:00:00Z", MIN_TIME_MS),
        ("9999-12-31T23:59:59.999Z", MAX_TIME_MS),
    ],
)
def test_time_forms(text: str, expected: int) -> None:
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "ISO 8601"),
        ("yesterday", "ISO 8601"),
        ("2026-11-01x10:00", "ISO 8601"),
        ("20261101T100000", "ISO 8601"),  # basic format: not accepted
        ("2026-11", "ISO 8601"),
        ("2026-11-01T10", "ISO 8601"),
        ("2026-11-01Z", "ISO 8601"),  # a zone needs a time
        ("2026-13-01", "month must be in 1..12"),
        ("2025-02-29", "day is out of range"),
        ("2026-11-01T24:00", "hour must be in 0..23"),
        ("2026-11-01T23:60", "minute must be in 0..59"),
        ("2026-11-01T10:00+24:00", "bad zone offset"),
        ("2026-11-01T10:00+05:60", "bad zone offset"),
        ("-1000", "ISO 8601"),  # epoch ms are digits only
        (str(MAX_TIME_MS + 1), "too large"),
        ("0001-01-01T00:00:00+01:00", "outside years 1..9999"),
        ("now", "'now' is not accepted here"),
        ("now-1h", "'now' is not accepted here"),
    ],
)
def test_time_errors_are_helpful(text: str, needle: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_time_ms(text)
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.fields["text"] == text
    assert needle in err.message
    assert err.message.startswith("bad time ")


def test_time_needs_text() -> None:
    with pytest.raises(TimeFormatError, match="expected text"):
        parse_time_ms(T0)  # type: ignore[arg-type]


def test_now_forms_only_with_a_given_now() -> None:
    assert parse_time_ms("now", now_ms=T0) == T0
    assert parse_time_ms("NOW", now_ms=T0) == T0
    assert parse_time_ms("now-1h", now_ms=T0) == T0 - H
    assert parse_time_ms("now - 1h30m", now_ms=T0) == T0 - H - 30 * M
    assert parse_time_ms("now+30m", now_ms=T0) == T0 + 30 * M
    assert parse_time_ms("now-0s", now_ms=T0) == T0
    assert parse_time_ms("2026-11-01", now_ms=T0) == T0 - 10 * H  # other forms unchanged
    for bad, needle in (("now-", "bad duration after 'now-'"), ("now*2", "ISO 8601"), ("now-1y", "now-")):
        with pytest.raises(TimeFormatError, match=needle):
            parse_time_ms(bad, now_ms=T0)
    with pytest.raises(TimeFormatError, match="outside years"):
        parse_time_ms("now+1000w", now_ms=MAX_TIME_MS)


def test_format_ms() -> None:
    assert format_ms(T0) == "2026-11-01T10:00:00.000Z"
    assert format_ms(T0 + 5) == "2026-11-01T10:00:00.005Z"
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert format_ms(MIN_TIME_MS) == "0001-01-01T00:00:00.000Z"
    assert format_ms(MAX_TIME_MS) == "9999-12-31T23:59:59.999Z"
    for bad in (MAX_TIME_MS + 1, MIN_TIME_MS - 1):
        with pytest.raises(ValueError, match="outside years"):
            format_ms(bad)


@given(st.integers(min_value=MIN_TIME_MS, max_value=MAX_TIME_MS))
def test_format_ms_round_trips(ms: int) -> None:
    assert parse_time_ms(format_ms(ms)) == ms


@given(
    st.integers(min_value=MIN_TIME_MS + D, max_value=MAX_TIME_MS - D),
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_iso_with_any_offset_is_exact(ms: int, sub_ms: int, offset_min: int) -> None:
    wall = EPOCH + timedelta(milliseconds=ms, minutes=offset_min)  # the local clock reading
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    text = (
        f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}T{wall.hour:02d}:{wall.minute:02d}:"
        f"{wall.second:02d}.{wall.microsecond // 1000:03d}{sub_ms:03d}{sign}{hh:02d}:{mm:02d}"
    )
    assert parse_time_ms(text) == ms  # exact, the digits below a millisecond cut off


@pytest.fixture
def local_zone() -> Iterator[None]:
    """Run with a local time zone that has daylight saving time (restored after)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("local_zone")
def test_no_zone_means_utc_whatever_the_local_zone() -> None:
    # 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00), 2026-10-25
    # 02:30 exists twice: in UTC both are ordinary, one hour apart from their neighbours
    spring = [parse_time_ms(f"2026-03-29 0{h}:30") for h in (1, 2, 3)]
    autumn = [parse_time_ms(f"2026-10-25T0{h}:30") for h in (1, 2, 3)]
    assert [b - a for a, b in itertools.pairwise(spring)] == [H, H]
    assert [b - a for a, b in itertools.pairwise(autumn)] == [H, H]
    assert spring[1] == exact_ms(datetime(2026, 3, 29, 2, 30, tzinfo=UTC))
    assert format_ms(spring[1]) == "2026-03-29T02:30:00.000Z"
    assert parse_time_ms("2026-11-01") == T0 - 10 * H


# --- users of the grammar -----------------------------------------------------------


def test_the_spec_reads_windows_in_the_grammar() -> None:
    spec = FeatureSpec.from_dict(
        {
            "entities": {"user": "user_id"},
            "features": [
                {"name": "c", "entity": "user", "agg": "count", "window": "1h30m"},
                {"name": "s", "entity": "user", "agg": "sequence", "steps": ["a", "b"], "within": "2w"},
                {"name": "d", "entity": "user", "agg": "distinct", "field": "x", "window": "500ms"},
            ],
        }
    )
    assert [f.span_ms() for f in spec.features] == [H + 30 * M, 2 * W, 500]
    assert features.parse_duration("1h30m", feature="c") == H + 30 * M


def test_a_rule_reads_its_ttl_in_the_grammar() -> None:
    text = (
        'version: "v1"\nrules:\n'
        "  - {id: two_weeks, entity: user, when: n > 0, score: 10, action: blacklist, ttl: 2w}\n"
        "  - {id: mixed, entity: user, when: n > 1, score: 10, action: blacklist, ttl: 1d12h}\n"
    )
    rs = rules.load_ruleset(text, {"user": {"n": "int"}}, source="t.yaml")
    assert {r.id: r.ttl_ms for r in rs.rules} == {"two_weeks": 2 * W, "mixed": D + 12 * H}


def test_rules_parse_duration_keeps_its_contract() -> None:
    assert rules.parse_duration("30d") == 30 * D
    assert rules.parse_duration("2w") == 2 * W
    assert rules.parse_duration("0s") == 0  # zero is the caller's to refuse
    for bad in ("30x", "", "1.5h", None):
        with pytest.raises(ValueError, match="bad duration"):
            rules.parse_duration(bad)  # type: ignore[arg-type]


def test_a_bad_ttl_names_the_rule_and_shows_the_grammar() -> None:
    text = 'version: "v1"\nrules:\n  - {id: r1, entity: user, when: n > 0, score: 1, ttl: 0d}\n'
    with pytest.raises(rules.RuleSetError) as info:
        rules.load_ruleset(text, {"user": {"n": "int"}}, source="t.yaml")
    (problem,) = info.value.problems
    assert problem.rule_id == "r1"
    assert problem.message == "bad ttl '0d'"
    assert DURATION_HELP in problem.suggestion
    assert (problem.line, problem.col) == (3, text.splitlines()[2].index("0d") + 1)


# -- relative times (issue 20 item 7): read against the caller's now_ms ----------------------

NOW = 1_793_527_200_000 + 3_723_000  # 2026-11-01T11:02:03Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-1d", NOW - 86_400_000),
        ("1d", NOW - 86_400_000),  # a bare duration: that long ago (what `--since 1d` says)
        ("now-1d", NOW - 86_400_000),
        ("- 2h30m", NOW - 9_000_000),
        ("+1h", NOW + 3_600_000),
        ("today", 1_793_491_200_000),  # 2026-11-01T00:00:00Z
        ("Yesterday", 1_793_491_200_000 - 86_400_000),
        ("2026-11-01T10:00:00Z", 1_793_527_200_000),  # absolute forms unchanged
        ("1793527200000", 1_793_527_200_000),  # digits are epoch ms, never a duration
    ],
)
def test_relative_time_forms(text: str, expected: int) -> None:
    assert parse_time_ms(text, now_ms=NOW) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("-1d", "a time relative to now is not accepted here"),
        ("1d", "a duration ago is not accepted here"),
        ("today", "'today' is not accepted here"),
    ],
)
def test_relative_times_need_a_clock(text: str, needle: str) -> None:
    with pytest.raises(TimeFormatError, match=needle):
        parse_time_ms(text)


@pytest.mark.parametrize(("text", "needle"), [("-1x", "bad duration after '-'"), ("tomorow", "ISO 8601")])
def test_bad_relative_times_say_why(text: str, needle: str) -> None:
    with pytest.raises(TimeFormatError, match=needle):
        parse_time_ms(text, now_ms=NOW)
