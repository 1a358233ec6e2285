"""The README is part of the contract: its two commands, its order, every setting."""

from __future__ import annotations

import re
from pathlib import Path

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_setting_and_no_unknown_one() -> None:
    documented = set(re.findall(r"`(BYPASS_[A-Z0-9_]+)`", README))
    real = {f"BYPASS_{name.upper()}" for name in Settings.model_fields}
    assert real - documented == set(), "settings missing from README"
    assert documented - real == set(), "README names settings that do not exist"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_sections_come_in_the_promised_order() -> None:
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    wanted = ["The two commands", "Walk-through", "Concepts", "Configuration", "Operations", "Development"]
    assert [h for h in headings if h in wanted] == wanted
