"""The README walk-through's offline half, run as written (issue 20 items 6, 7, 8).

The backtest's `sed` must change what the rule catches on the walk-through's own data
(it used to give `+0 / -0`), and the output the README shows must be what the commands
give; the walk-through uses no GNU-only `date -d` and its commands print no warning.
The live half (stack, worker, sinks, replay --compare) was run by hand and gave the table
the README shows.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text(encoding="utf-8")
WALK = README.split("## Walk-through", 1)[1].split("\n## ", 1)[0]


def _line(prefix: str) -> str:
    return next(x for x in WALK.splitlines() if x.startswith(prefix))


def _hits(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code
    out, err = capsys.readouterr()
    assert "warning" not in err
    return out.splitlines()


def test_the_backtest_change_changes_hits_as_the_readme_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    rules = re.search(r"```yaml\n# my-rules.yaml\n(.*?)```", WALK, flags=re.S)
    assert rules is not None
    (tmp_path / "my-rules.yaml").write_text(rules.group(1))

    simulate = shlex.split(_line("bypass simulate "))[1:]
    try:
        main(simulate)
    except SystemExit as exc:
        assert not exc.code
    _, err = capsys.readouterr()
    assert "warning" not in err

    sed = _line("sed ").split("  #")[0]
    subprocess.run(sed, shell=True, check=True, cwd=tmp_path)  # noqa: S602 - the README's line
    test = [
        "rules",
        "test",
        "--features",
        "examples/features.yaml",
        "--events",
        "events.jsonl",
        "--hits-only",
    ]
    live = _hits([*test, "--rules", "my-rules.yaml"], capsys)
    changed = _hits([*test, "--rules", "my-rules-v2.yaml"], capsys)
    ids = {line.split('"event_id":"')[1].split('"')[0] for line in live}
    new_ids = {line.split('"event_id":"')[1].split('"')[0] for line in changed}
    added, removed = len(new_ids - ids), len(ids - new_ids)
    assert (added, removed) != (0, 0), "the README's backtest change changes nothing"
    row = re.search(r"│ resale_phone_churn │ +(\d+) │ +(\d+) │ +\+(\d+) │ +-(\d+) │", WALK)
    assert row is not None, "the README shows no --compare output"
    assert tuple(map(int, row.groups())) == (len(ids), len(new_ids), added, removed)


def test_the_walkthrough_needs_no_gnu_date() -> None:
    assert "date -d" not in README and "date -u" not in README
    assert "--from -2d --to now" in WALK
