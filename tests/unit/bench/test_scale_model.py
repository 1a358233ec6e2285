"""bench/scale_model.py: every figure from a named measured input, by the documented model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

SCALE_PY = Path(__file__).resolve().parents[3] / "bench" / "scale_model.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale_model", SCALE_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale_model"] = module
    spec.loader.exec_module(module)
    return module


scale = _load()


def _results() -> list[dict[str, Any]]:
    def row(bench: str, name: str, value: float, **extra: Any) -> dict[str, Any]:
        return {"bench": bench, "name": name, "value": value, "unit": "x", **extra}

    return [
        row("bench_pipeline", "pipeline_vs_bare", 1_000.0),
        row("bench_state", "state_bytes_per_user", 700.0),
        row("bench_state", "state_bytes_per_device", 200.0),
        row("bench_state", "state_bytes_per_ip", 100.0),
        row("bench_state", "changelog_restore_per_s_memory", 5_000.0),
        row("bench_state", "events_per_s_100k_rocksdb", 900.0, baseline_value=1_000.0, users=100_000),
        row("bench_state", "ready_after_kill_s_100k_rocksdb", 6.0, baseline_value=30.0, users=100_000),
        row("bench_state", "rss_after_kill_mb_100k_rocksdb", 100.0, baseline_value=240.0, users=100_000),
        row("bench_state", "disk_mb_100k_rocksdb", 35.0, baseline_value=0.0, users=100_000),
    ]


def test_the_model_follows_its_inputs() -> None:
    rows = scale.model(scale.inputs(_results()))
    assert len(rows) == len(scale.ENTITIES) * len(scale.RATES)
    r = next(x for x in rows if x["entities"] == 10_000_000 and x["events_per_s"] == 10_000)
    assert r["workers_memory"] == 15  # 10,000 / (1,000 x 0.7) = 14.3
    assert r["workers_rocksdb"] == 16  # at 0.9 x the memory store's rate: 15.9
    assert r["state_gb"] == pytest.approx(10.0)  # 10 M x (700 + 200 + 100) B
    # RAM: (240 - 100) MB per 100k user states of 700 B = 2x the state bytes, over 15 workers
    assert r["ram_gb_per_worker_memory"] == pytest.approx(10.0 * 2 / 15)
    # disk: 35 MB per 100k x 700 B = 0.5x, x 2 (one standby), over 16 workers
    assert r["disk_gb_per_worker_rocksdb"] == pytest.approx(10.0 * 0.5 * 2 / 16)
    assert r["changelog_mb_per_s"] == pytest.approx(10.0)  # 10k events x 1,000 B
    # 30 M states / 16 workers / 5,000 per s
    assert r["rebuild_min_per_worker"] == pytest.approx(30e6 / 16 / 5_000 / 60)
    # a power of two, >= 2 per worker, <= 1.5 M states (5,000/s x 300 s) each: 30 M / 1.5 M = 20
    assert r["partitions"] == 32
    assert r["rocksdb_restart_s"] == 6.0


def test_a_missing_input_names_the_benchmark_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(orjson.dumps([r for r in _results() if r["bench"] != "bench_state"]))
    assert scale.main(["--results", str(path)]) == 1
    assert "run bench/run.py --only state" in capsys.readouterr().out


def test_the_printout_names_where_each_input_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(orjson.dumps(_results()))
    assert scale.main(["--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bench_state: disk_mb_100k_rocksdb" in out and "bench_pipeline: pipeline_vs_bare" in out
    assert out.count("\n| ") == 1 + len(scale.ENTITIES) * len(scale.RATES)
