"""The command line's small contracts (issue 20 items 7 and 8): one time grammar for every
time option, unknown verbs and entity kinds refused with a "did you mean", help in the order
of the work, aligned settings, no stray files, warnings printed once, table times in UTC."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from features import format_ms
from streams.cli import _HELP_ORDER, _VERBS, cli, main
from streams.cli.params import SINCE, TIME, TimeParam, now_ms, utc_text

ROOT = Path(__file__).resolve().parents[4]
DAY = 86_400_000


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- item 7: relative times everywhere a time is taken ------------------------------------


@pytest.mark.parametrize(
    ("text", "ago_ms"),
    [("now", 0), ("-1d", DAY), ("1d", DAY), ("now-1d", DAY), ("-2h30m", 9_000_000), ("now - 6h", 21_600_000)],
)
def test_time_options_read_relative_times(text: str, ago_ms: int) -> None:
    before = now_ms()
    got = TIME.convert(text, None, None)
    assert before - ago_ms <= got <= now_ms() - ago_ms


def test_today_and_yesterday_are_utc_midnights() -> None:
    today = TIME.convert("today", None, None)
    assert today % DAY == 0 and 0 <= now_ms() - today < DAY
    assert TIME.convert("yesterday", None, None) == today - DAY


def test_absolute_times_still_read() -> None:
    assert TIME.convert("2026-11-01T10:00:00Z", None, None) == 1_793_527_200_000
    assert TIME.convert("1793527200000", None, None) == 1_793_527_200_000
    assert SINCE is TIME  # --since and --from: one grammar


def _type_of(command: click.Command, name: str) -> click.ParamType:
    return next(p.type for p in command.params if p.name == name)


def test_every_time_option_uses_the_one_time_type() -> None:
    from streams.cli.hits import hits
    from streams.cli.replay import replay

    assert isinstance(hits, click.Group)
    assert isinstance(_type_of(replay, "from_ms"), TimeParam)
    assert isinstance(_type_of(replay, "to_ms"), TimeParam)
    assert isinstance(_type_of(hits.commands["top"], "since_ms"), TimeParam)


def test_replay_accepts_yesterday_and_names_a_bad_time(capsys: pytest.CaptureFixture[str]) -> None:
    # --from yesterday parses; the bad --to is the one clear line
    code, _, err = run(["replay", "--from", "yesterday", "--to", "tomorow"], capsys)
    assert code == 2
    assert "Invalid value for '--to': bad time 'tomorow'" in err
    assert "--from" not in err


def test_simulate_start_reads_relative_times(tmp_path: Path) -> None:
    from streams.cli.simulate import simulate

    out = tmp_path / "events.jsonl"
    args = ["--users", "200", "--rate", "10/s", "--duration", "24s", "--seed", "1", "--start", "-2d"]
    before = now_ms()
    result = CliRunner().invoke(simulate, [*args, "--out-file", str(out)])
    assert result.exit_code == 0, result.output
    first = int(out.read_text().splitlines()[0].split('"ts":')[1].split(",")[0])
    assert before - 2 * DAY - 60_000 <= first <= now_ms() - 2 * DAY + DAY
    shown = re.search(r"24\.0 h from (\S+Z)", result.output)  # the summary's time says UTC (Z)
    assert shown is not None and 0 <= first - TIME.convert(shown.group(1), None, None) < DAY


# -- item 8 ----------------------------------------------------------------------------------


def test_a_mistyped_verb_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["wroker"], capsys)
    assert code == 2
    assert "No such command 'wroker'. Did you mean 'worker'?" in err
    code, _, err = run(["zzz"], capsys)
    assert code == 2 and "No such command 'zzz'." in err and "Did you mean" not in err
    code, _, err = run(["hits", "entty"], capsys)  # and in every group
    assert code == 2 and "No such command 'entty'. Did you mean 'entity'?" in err


def test_help_lists_the_verbs_in_the_order_of_the_work() -> None:
    ctx = click.Context(cli)
    listed = cli.list_commands(ctx)
    assert sorted(listed) == sorted(_VERBS)
    known = [v for v in _HELP_ORDER if v in _VERBS]
    assert listed[: len(known)] == known
    assert listed[:4] == ["stack", "simulate", "produce", "rules"]


@pytest.mark.parametrize("argv", [["hits", "entity", "usr", "u1"], ["lists", "check", "usr", "u1"]])
def test_an_unknown_entity_kind_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BYPASS_FEATURES_SPEC", str(ROOT / "examples/features.yaml"))
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "unknown entity kind 'usr'" in err and "has user, device, ip (did you mean 'user'?)" in err


def test_settings_columns_line_up_whatever_the_name_length(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["settings"], capsys)
    assert code == 0
    starts = {len(line) - len(line.split(maxsplit=1)[1]) for line in out.splitlines() if " " in line.strip()}
    assert len(starts) == 1


def test_simulate_to_kafka_or_stdout_leaves_no_truth_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.cli.simulate import simulate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BYPASS_STATE_DIR", str(tmp_path / "state"))
    args = ["--users", "200", "--rate", "10/s", "--duration", "24s", "--out-file", "-"]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "truth.jsonl").exists()
    assert (tmp_path / "state" / "truth.jsonl").is_file()
    assert "truth.jsonl" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_readme_simulate_command_prints_no_warning(tmp_path: Path) -> None:
    from streams.cli.simulate import simulate

    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("bypass simulate "))
    args = line.split()[2:]
    args[args.index("--out-file") + 1] = str(tmp_path / "events.jsonl")
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_replay_summary_does_not_repeat_the_warnings() -> None:
    """They are printed as they arise (Replay._warn); the summary used to print them again."""
    from streams.cli.replay import print_summary
    from streams.replay.options import CompareRow, ReplayStats, ReplaySummary

    summary = ReplaySummary(
        run_id="r",
        from_ms=0,
        to_ms=DAY,
        warmup_ms=0,
        topics=("t",),
        partitions=1,
        ruleset_version="v",
        out="none",
        out_target="nowhere",
        stats=ReplayStats(),
        warnings=["features without a window (all-time): x"],
        compare=[CompareRow("r1", 1, 2, 1, 0)],
    )
    buf = io.StringIO()
    print_summary(Console(file=buf, width=200), summary)
    assert "features without a window" not in buf.getvalue()


def test_table_times_say_utc() -> None:
    moment = datetime(2026, 11, 1, 10, 0, 0, 123_000, tzinfo=UTC).replace(tzinfo=None)  # as ClickHouse gives
    assert utc_text(moment, "%Y-%m-%d %H:%M:%S.%f") == "2026-11-01 10:00:00.123 UTC"
    assert utc_text(moment.replace(tzinfo=UTC), "%Y-%m-%d %H:00") == "2026-11-01 10:00 UTC"
    plus8 = datetime(2026, 11, 1, 18, 0, tzinfo=timezone(timedelta(hours=8)))
    assert utc_text(plus8) == "2026-11-01 10:00:00 UTC"
    assert format_ms(0).endswith("Z")
