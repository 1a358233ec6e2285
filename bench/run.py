"""Run every benchmark in bench/ and collect the results (``make bench``).

    python bench/run.py [--quick] [--only NAME ...] [--out bench/results.json]

Each ``bench/bench_<name>.py`` defines ``run(quick: bool = False) -> list[dict]`` (see
bench/README.md). Every benchmark runs in its own child process (this same script with
``--child``), one after the other so they do not compete for the two cores, which:

- isolates failures: an exception, a crash or a hang fails that benchmark only; the
  others still run, and the exit code is 1 at the end if any failed;
- enforces a time budget: a module may set ``BUDGET_S = <seconds>`` (read from its
  source, without importing it); the default is 150 s (60 s with ``--quick``). A
  benchmark over its budget is killed with its whole process group (brokers or workers
  it started included) and reported as failed. The whole run is capped at
  ``--total-budget`` (default 570 s) so ``make bench`` ends within 10 minutes.

Results go to ``bench/results.json``: a list of ``{name, value, unit, baseline_name,
baseline_value, ratio, bench}`` (``ratio`` = value / baseline_value when a baseline is
given without one); a failed benchmark appears as one entry with ``value`` null and an
``error``. The entries of benchmarks not run now (the others with ``--only``; ``make chaos``,
which is not a ``bench_*.py``) are kept.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_BUDGET_S = 150.0
QUICK_BUDGET_S = 60.0
TOTAL_BUDGET_S = 570.0
FIELDS = ("name", "value", "unit", "baseline_name", "baseline_value", "ratio", "bench")

console = Console(stderr=True)


@dataclass
class Outcome:
    bench: str
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """``bench_*.py`` files, sorted by name."""
    return sorted(p for p in bench_dir.glob("bench_*.py") if p.is_file())


def budget_of(path: Path, quick: bool) -> float:
    """``BUDGET_S`` (or ``QUICK_BUDGET_S`` with --quick) from the module's source, else the default."""
    wanted = ("QUICK_BUDGET_S", "BUDGET_S") if quick else ("BUDGET_S",)
    found: dict[str, float] = {}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in wanted and node.value is not None:
                    try:
                        value = ast.literal_eval(node.value)
                    except ValueError:
                        continue
                    if isinstance(value, int | float) and value > 0:
                        found[target.id] = float(value)
    for name in wanted:
        if name in found:
            return found[name]
    return QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S


def normalize(bench: str, raw: Any) -> list[dict[str, Any]]:
    """Check a run() result and give every entry the full set of fields; ValueError if malformed."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"run() must return a non-empty list of dicts, got {type(raw).__name__}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"result {i} is a {type(item).__name__}, not a dict")
        name, value, unit = item.get("name"), item.get("value"), item.get("unit")
        if not isinstance(name, str) or not name:
            raise ValueError(f"result {i} has no string 'name'")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"result {name!r} has no finite number 'value' (got {value!r})")
        if not isinstance(unit, str):
            raise ValueError(f"result {name!r} has no string 'unit'")
        baseline = item.get("baseline_value")
        ratio = item.get("ratio")
        if ratio is None and isinstance(baseline, int | float) and baseline:
            ratio = value / baseline
        entry = {
            "name": name,
            "value": float(value),
            "unit": unit,
            "baseline_name": item.get("baseline_name"),
            "baseline_value": None if baseline is None else float(baseline),
            "ratio": None if ratio is None else float(ratio),
            "bench": bench,
        }
        entry.update({k: v for k, v in item.items() if k not in entry})  # extra fields (goal, notes ...)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- child


def child(path: Path, quick: bool, out: Path) -> int:
    """Import one benchmark module, call run(quick=...), write its raw results as JSON."""
    sys.path[:0] = [str(ROOT), str(path.parent)]
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"can not import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"{path.name} defines no run(quick: bool = False) function")
        results = normalize(path.stem, run(quick=quick))
        out.write_bytes(orjson.dumps({"results": results}))
        return 0
    except BaseException as exc:  # report anything, KeyboardInterrupt included
        out.write_bytes(
            orjson.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        )
        return 1


# --------------------------------------------------------------------------- parent


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def run_one(path: Path, quick: bool, budget_s: float) -> Outcome:
    """Run one benchmark in a child process within ``budget_s`` seconds."""
    bench = path.stem
    with tempfile.TemporaryDirectory(prefix=f"{bench}-") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "output.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--child-out", str(out)]
        if quick:
            cmd.append("--quick")
        t0 = time.monotonic()
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(
                cmd, stdout=log_fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
            with console.status(f"[bold]{bench}[/] (budget {budget_s:.0f} s)"):
                try:
                    code = proc.wait(timeout=budget_s)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    timed_out = True
                    code = -1
                # whatever the benchmark left behind in its process group goes too
                _kill_group(proc)
        seconds = time.monotonic() - t0
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        if timed_out:
            return Outcome(
                bench, error=f"timed out after {budget_s:.0f} s (its budget)", seconds=seconds, log_tail=tail
            )
        try:
            data = orjson.loads(out.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return Outcome(
                bench, error=f"crashed (exit code {code}) before reporting", seconds=seconds, log_tail=tail
            )
        if "error" in data:
            tail = (tail + "\n" + data.get("traceback", "")).strip()
            return Outcome(bench, error=data["error"], seconds=seconds, log_tail=tail)
        return Outcome(bench, results=data["results"], seconds=seconds, log_tail=tail)


def run_all(
    paths: list[Path], quick: bool, total_budget_s: float = TOTAL_BUDGET_S, show_logs: bool = True
) -> list[Outcome]:
    """Run benchmarks one by one; each within its budget and what is left of the total.

    The smallest budgets run first, so one slow benchmark can not starve the quick ones;
    the outcomes come back in the order of ``paths``.
    """
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    for path in sorted(paths, key=lambda p: (budget_of(p, quick), p.name)):
        left = total_budget_s - (time.monotonic() - t0)
        if left < 5:
            outcomes.append(
                Outcome(path.stem, error=f"not run: the total budget of {total_budget_s:.0f} s is spent")
            )
            continue
        budget = min(budget_of(path, quick), left)
        outcome = run_one(path, quick, budget)
        outcomes.append(outcome)
        status = "[green]ok[/]" if outcome.ok else f"[red]FAILED[/] {outcome.error}"
        console.print(f"{path.stem}: {status} ({outcome.seconds:.1f} s)")
        if not outcome.ok and show_logs and outcome.log_tail:
            console.print(outcome.log_tail, style="dim", markup=False, highlight=False)
    order = {p.stem: i for i, p in enumerate(paths)}
    return sorted(outcomes, key=lambda o: order[o.bench])


def entries(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The results.json entries of these outcomes (a failure is one entry with an error)."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        if o.ok:
            rows.extend(o.results)
        else:
            rows.append(
                {**dict.fromkeys(FIELDS), "name": o.bench, "unit": "", "bench": o.bench, "error": o.error}
            )
    return rows


def write_results(path: Path, outcomes: list[Outcome], keep_others: bool) -> list[dict[str, Any]]:
    """Write results.json; with ``keep_others`` entries of benchmarks not run now are kept."""
    rows = entries(outcomes)
    if keep_others and path.exists():
        ran = {o.bench for o in outcomes}
        try:
            old = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            old = []
        kept = [r for r in old if isinstance(r, dict) and r.get("bench") not in ran]
        rows = sorted(kept + rows, key=lambda r: str(r.get("bench")))
    path.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def table(outcomes: list[Outcome]) -> Table:
    """One row per result: value, and beside it the baseline and the ratio when there is one."""
    goals = any("goal" in r for o in outcomes for r in o.results)
    t = Table(title="bypass benchmarks", header_style="bold")
    t.add_column("bench")
    t.add_column("name")
    t.add_column("value", justify="right")
    t.add_column("unit")
    t.add_column("ratio", justify="right")
    t.add_column("baseline", justify="right")
    t.add_column("baseline name", max_width=48)
    if goals:
        t.add_column("goal")
    for o in outcomes:
        bench = o.bench.removeprefix("bench_")
        if not o.ok:
            error = str(o.error)
            short = error if len(error) <= 60 else error[:57] + "..."
            t.add_row(bench, "[red]FAILED[/]", "", "", "", "", short, *([""] if goals else []))
            continue
        for r in o.results:
            ratio = r.get("ratio")
            row = [
                bench,
                r["name"],
                _fmt(r["value"]),
                r["unit"],
                f"{ratio:.2f}x" if isinstance(ratio, int | float) else "",
                _fmt(r.get("baseline_value")),
                r.get("baseline_name") or "",
            ]
            if goals:
                row.append(str(r.get("goal", "")))
            t.add_row(*row)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks in bench/ (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.json", help="results file")
    parser.add_argument("--dir", type=Path, default=BENCH_DIR, help="where the bench_*.py files are")
    parser.add_argument(
        "--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole run"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their budgets")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        return child(args.child, args.quick, args.child_out)

    paths = discover(args.dir)
    if args.only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in args.only}
        unknown = wanted - {p.stem.removeprefix("bench_") for p in paths}
        if unknown:
            known = ", ".join(p.stem.removeprefix("bench_") for p in paths) or "none"
            console.print(f"error: no benchmark named {', '.join(sorted(unknown))} (known: {known})")
            return 2
        paths = [p for p in paths if p.stem.removeprefix("bench_") in wanted]
    ceilings = sum(budget_of(p, args.quick) for p in paths)
    if args.list:
        for p in paths:
            console.print(f"{p.stem.removeprefix('bench_'):24} budget {budget_of(p, args.quick):.0f} s")
        console.print(
            f"{'(sum of budgets)':24} {ceilings:.0f} s; the whole run is capped at {args.total_budget:.0f} s"
        )
        return 0
    if not paths:
        console.print(f"error: no bench_*.py in {args.dir}")
        return 2

    if ceilings > args.total_budget:
        console.print(
            f"note: the budgets add up to {ceilings:.0f} s, above the {args.total_budget:.0f} s cap of the "
            "whole run: if the first benchmarks use all of theirs, the last ones are cut"
        )
    t0 = time.monotonic()
    outcomes = run_all(paths, args.quick, args.total_budget)
    # entries of benchmarks not run now are kept: with --only, and those `make bench` does not
    # run at all (bench/chaos.py, `make chaos`)
    write_results(args.out, outcomes, keep_others=True)
    Console(width=None if sys.stdout.isatty() else 160).print(table(outcomes))
    failed = [o.bench for o in outcomes if not o.ok]
    mode = "quick" if args.quick else "full"
    console.print(
        f"{len(outcomes) - len(failed)}/{len(outcomes)} benchmarks ok ({mode}) in "
        f"{time.monotonic() - t0:.0f} s; results in {args.out}"
    )
    if failed:
        for o in outcomes:
            if not o.ok:
                console.print(f"[red]failed:[/] {o.bench}: {o.error}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
