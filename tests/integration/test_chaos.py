"""A short ``make chaos`` (bench/chaos.py): faults and hostile input lose and duplicate no hit.

The full run (5 minutes, 50,000 events) is ``make chaos``; this one is 30 s of traffic with
every fault and every bad input, on the script's own private stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_chaos_run_loses_and_duplicates_no_hit(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--quick",
            "--minutes",
            "0.5",
            "--events",
            "2000",
            "--out",
            str(out),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    rows = {r["name"]: r for r in orjson.loads(out.read_bytes())}
    assert rows["chaos_hits_lost"]["value"] == 0
    assert rows["chaos_hits_duplicated"]["value"] == 0
    assert rows["chaos_hits_expected"]["value"] > 0
    assert rows["chaos_faults_injected"]["value"] == 7
    assert {r["bench"] for r in rows.values()} == {"chaos"}
