"""bench/run.py: discovery, budgets, failure isolation, results.json and the exit code."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import orjson
import pytest

RUN_PY = Path(__file__).resolve().parents[3] / "bench" / "run.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_runner", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_runner"] = module
    spec.loader.exec_module(module)
    return module


runner = _load()


def write(dir_: Path, name: str, body: str) -> Path:
    path = dir_ / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


OK = """
    BUDGET_S = 30
    def run(quick: bool = False) -> list[dict]:
        n = 10 if quick else 1000
        return [
            {"name": "things_per_s", "value": float(n), "unit": "1/s",
             "baseline_name": "published", "baseline_value": 500.0},
            {"name": "bytes", "value": 7, "unit": "B", "goal": "<= 10"},
        ]
"""
FAIL = """
    def run(quick: bool = False):
        raise RuntimeError("broker went away")
"""
BAD = """
    def run(quick: bool = False):
        return [{"name": "x", "value": "fast", "unit": "1/s"}]
"""


def test_budget_read_from_source_without_import(tmp_path: Path) -> None:
    path = write(
        tmp_path, "bench_x", "import nonexistent_module\nBUDGET_S = 42\nQUICK_BUDGET_S: float = 7.5\n"
    )
    assert runner.budget_of(path, quick=False) == 42
    assert runner.budget_of(path, quick=True) == 7.5
    plain = write(tmp_path, "bench_y", "def run(quick=False): return []\n")
    assert runner.budget_of(plain, quick=False) == runner.DEFAULT_BUDGET_S
    assert runner.budget_of(plain, quick=True) == runner.QUICK_BUDGET_S


def test_normalize_fills_fields_and_computes_ratio() -> None:
    rows = runner.normalize(
        "bench_a",
        [
            {"name": "a", "value": 30, "unit": "1/s", "baseline_name": "b", "baseline_value": 60},
            {"name": "c", "value": 1.5, "unit": "ms", "ratio": 3.0, "goal": "< 2"},
        ],
    )
    assert rows[0] == {
        "name": "a",
        "value": 30.0,
        "unit": "1/s",
        "baseline_name": "b",
        "baseline_value": 60.0,
        "ratio": 0.5,
        "bench": "bench_a",
    }
    assert rows[1]["ratio"] == 3.0 and rows[1]["baseline_value"] is None and rows[1]["goal"] == "< 2"
    for bad in ([], [{"name": "a", "unit": "s"}], [{"name": "a", "value": float("nan"), "unit": "s"}], ["x"]):
        with pytest.raises(ValueError):
            runner.normalize("bench_a", bad)


def test_a_failure_is_isolated_and_the_exit_code_says_so(tmp_path: Path) -> None:
    write(tmp_path, "bench_a_ok", OK)
    write(tmp_path, "bench_b_fail", FAIL)
    write(tmp_path, "bench_c_bad", BAD)
    write(tmp_path, "bench_d_ok", OK)
    out = tmp_path / "results.json"
    code = runner.main(["--dir", str(tmp_path), "--out", str(out), "--quick"])
    assert code == 1
    rows = orjson.loads(out.read_bytes())
    by_bench: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_bench.setdefault(str(row["bench"]), []).append(row)
    assert [r["value"] for r in by_bench["bench_a_ok"]] == [10.0, 7.0]  # quick was passed through
    assert by_bench["bench_a_ok"][0]["ratio"] == pytest.approx(10 / 500)
    assert [r["value"] for r in by_bench["bench_d_ok"]] == [10.0, 7.0]  # ran after the failures
    assert by_bench["bench_b_fail"][0]["value"] is None
    assert "broker went away" in str(by_bench["bench_b_fail"][0]["error"])
    assert "finite number" in str(by_bench["bench_c_bad"][0]["error"])


def test_all_ok_exits_zero_and_only_merges(tmp_path: Path) -> None:
    write(tmp_path, "bench_a", OK)
    write(tmp_path, "bench_b", OK.replace("1000", "2000"))
    out = tmp_path / "results.json"
    assert runner.main(["--dir", str(tmp_path), "--out", str(out)]) == 0
    first = orjson.loads(out.read_bytes())
    assert {(r["bench"], r["value"]) for r in first} == {
        ("bench_a", 1000.0),
        ("bench_a", 7.0),
        ("bench_b", 2000.0),
        ("bench_b", 7.0),
    }
    # --only replaces that benchmark's entries and keeps the others
    write(tmp_path, "bench_b", OK.replace("1000", "3000"))
    assert runner.main(["--dir", str(tmp_path), "--out", str(out), "--only", "b"]) == 0
    second = orjson.loads(out.read_bytes())
    assert {(r["bench"], r["value"]) for r in second} == {
        ("bench_a", 1000.0),
        ("bench_a", 7.0),
        ("bench_b", 3000.0),
        ("bench_b", 7.0),
    }
    assert runner.main(["--dir", str(tmp_path), "--out", str(out), "--only", "nope"]) == 2


def test_over_budget_is_killed_with_its_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    write(
        tmp_path,
        "bench_hang",
        f"""
        import subprocess, sys, time
        BUDGET_S = 2
        def run(quick: bool = False):
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            open({str(marker)!r}, "w").write(str(p.pid))
            time.sleep(60)
            return [{{"name": "never", "value": 1, "unit": "s"}}]
        """,
    )
    t0 = time.monotonic()
    outcome = runner.run_one(tmp_path / "bench_hang.py", quick=False, budget_s=2.0)
    assert time.monotonic() - t0 < 20
    assert not outcome.ok and "timed out after 2 s" in str(outcome.error)
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the benchmark's own child process survived the budget kill")


def test_total_budget_marks_the_rest_not_run(tmp_path: Path) -> None:
    write(tmp_path, "bench_a", OK)
    write(tmp_path, "bench_b", OK)
    outcomes = runner.run_all(runner.discover(tmp_path), quick=True, total_budget_s=1.0)
    assert [o.ok for o in outcomes] == [False, False]
    assert all("total budget" in str(o.error) for o in outcomes)


def test_small_budgets_run_first_results_in_name_order(tmp_path: Path) -> None:
    stamp = tmp_path / "order.txt"
    for name, budget in (("bench_a", 40), ("bench_b", 20), ("bench_c", 30)):
        write(
            tmp_path,
            name,
            f"""
            BUDGET_S = {budget}
            def run(quick: bool = False):
                with open({str(stamp)!r}, "a") as fh:
                    fh.write("{name}\\n")
                return [{{"name": "x", "value": 1, "unit": "s"}}]
            """,
        )
    outcomes = runner.run_all(runner.discover(tmp_path), quick=False)
    assert stamp.read_text().split() == ["bench_b", "bench_c", "bench_a"]
    assert [o.bench for o in outcomes] == ["bench_a", "bench_b", "bench_c"]
