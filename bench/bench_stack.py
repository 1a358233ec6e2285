"""bench_stack: how fast the local stack starts and stops, and how much memory each part holds.

Workload: a fresh ``streams.local.stack.Stack`` in a private tmp state dir (nothing shared with a
running stack), ``up()`` from cold (first run creates the ClickHouse data dir), then the
resident memory (RSS) of each part right after ``up``, then ``down()``; repeated. Also
times the CLI end to end (``bypass stack up`` in a fresh process, the way a developer
calls it: Python start-up and imports included).

Goal: ``up`` well under 5 s so the integration test session and ``make demo`` start fast.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.local.stack import PARTS, Stack  # noqa: E402

BUDGET_S = 90
QUICK_BUDGET_S = 40


def _clean_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    env["BYPASS_STATE_DIR"] = str(state_dir)
    return env


def run(quick: bool = False) -> list[dict[str, Any]]:
    rounds = 2 if quick else 5
    ups: list[float] = []
    downs: list[float] = []
    rss: dict[str, list[float]] = {name: [] for name in PARTS}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("BYPASS_")}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
            for i in range(rounds):
                stack = Stack(Path(tmp) / f"s{i}")
                began = time.perf_counter()
                stack.up()
                ups.append(time.perf_counter() - began)
                for status in stack.status():
                    if status.rss_bytes is not None:
                        rss[status.name].append(status.rss_bytes / 1_048_576)
                began = time.perf_counter()
                stack.down()
                downs.append(time.perf_counter() - began)

            cli_state = Path(tmp) / "cli"
            bypass = [sys.executable, "-m", "streams"]
            began = time.perf_counter()
            subprocess.run(
                [*bypass, "stack", "up"], env=_clean_env(cli_state), capture_output=True, check=True
            )
            cli_up = time.perf_counter() - began
            subprocess.run(
                [*bypass, "stack", "down"], env=_clean_env(cli_state), capture_output=True, check=True
            )
    finally:
        os.environ.update(saved)

    results: list[dict[str, Any]] = [
        {"name": "stack_up_median", "value": round(statistics.median(ups), 3), "unit": "s"},
        {"name": "stack_up_max", "value": round(max(ups), 3), "unit": "s"},
        {"name": "stack_down_median", "value": round(statistics.median(downs), 3), "unit": "s"},
        {"name": "cli_stack_up_wall", "value": round(cli_up, 3), "unit": "s"},
    ]
    for name in PARTS:
        if rss[name]:
            results.append({"name": f"rss_{name}", "value": round(max(rss[name]), 1), "unit": "MB"})
    return results


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']:<22} {row['value']:>10} {row['unit']}")
