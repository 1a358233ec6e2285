"""``python -m streams.local.demo`` end to end on the session stack (the parts are external to it).

Checks that the demo runs to the end by itself, stops the processes it started, and that
the precision/recall it prints are the ones computed from ClickHouse and the truth file it
wrote (recomputed here independently), not numbers it made up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.outputs import clickhouse_client
from streams.local.evaluate import evaluate, read_truth

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_demo_runs_to_the_end_and_prints_computed_quality(stack: Any, tmp_path: Path) -> None:
    env = {**os.environ, **stack.env(), "BYPASS_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    args = ["--users", "300", "--rate", "500", "--duration", "12s", "--time-scale", "7200", "--seed", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "streams.local.demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=400,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out + done.stderr.decode(errors="replace")
    for heading in (
        "throughput",
        "hits per rule",
        "blacklisted entities",
        "detection quality",
        "analyst query 2",
        "events archived (risk_events FINAL)",
        "bypass rules report",
        "labels from the simulator's truth: imported",
    ):
        assert heading in out, heading
    assert "rule report failed" not in out and "analyst query failed" not in out
    # models trained on the first part of the traffic, scored on the rest (rules / model / both)
    assert "rules vs models on the later traffic" in out and "model step failed" not in out
    assert "stopped the worker, both sinks and no stack parts" in out  # the parts were external

    # the worker and both sinks are gone
    pids = [int(p) for p in re.findall(r"worker \(pid (\d+)\).*?sinks pids (\d+), (\d+)", out, re.S)[0]]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)

    # every event was applied: nothing late, nothing in the DLQ
    assert re.search(r"late / duplicate / DLQ\s*│\s*0 / \d+ / 0", out), out

    # recompute precision/recall from ClickHouse and the truth file; compare with the printout
    (run_dir,) = (tmp_path / "state" / "demo").iterdir()
    database = run_dir.name
    truth = read_truth((run_dir / "truth.jsonl").read_bytes().splitlines())
    assert len(truth) > 0
    client = clickhouse_client(stack.settings())
    flags = client.query(
        f"SELECT DISTINCT entity, key, label FROM {database}.risk_hits FINAL WHERE counted AND NOT suppressed"  # noqa: S608
    ).result_rows
    result = evaluate(truth, [(str(e), str(k), str(label)) for e, k, label in flags])
    # "(any)" counts every flagged entity, whatever its label (mapped to a scenario or not)
    assert result.overall.flagged == len({(str(e), str(k)) for e, k, _ in flags})
    printed = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[0] in {r["scenario"] for r in result.rows()}:
            printed[cells[0]] = cells[1:]
    assert set(printed) == {r["scenario"] for r in result.rows()}
    for row in result.rows():

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        assert printed[row["scenario"]] == [
            str(row["truth"]),
            str(row["flagged"]),
            str(row["true_positives"]),
            fmt(row["precision"]),
            fmt(row["recall"]),
        ], row
    # the easy, plain scenarios are caught by the example rules
    by = result.by_scenario()
    assert by["device_farm"].recall == 1.0
    assert by["impossible_travel"].recall == 1.0
    # the archive holds every event once; the decision log every (event, entity) (sample 1.0)
    archived = client.query(f"SELECT count() FROM {database}.risk_events FINAL").result_rows[0][0]  # noqa: S608
    assert re.search(rf"events archived \(risk_events FINAL\)\s*│\s*{archived:,}", out), out
    assert archived > 0
    labels = client.query(f"SELECT count() FROM {database}.risk_labels FINAL").result_rows[0][0]  # noqa: S608
    assert labels == len(truth)
    assert orjson.loads((run_dir / "truth.jsonl").read_bytes().splitlines()[0])["variant"] in (
        "plain",
        "evasive",
    )
