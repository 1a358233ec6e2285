"""The scale model: what a deployment needs for E entities at R events/s, from measured inputs.

    python bench/scale_model.py [--results bench/results.json]

Every input is a figure of ``bench/results.json`` (printed with its name and benchmark, so
each output traces back to a measurement); the assumptions are constants below, printed
too.  ``make bench`` prints this after the benchmarks; the README's table is its output.

Model (per row: E entities, R events/s):

- **workers** (one core each) = R x CPU per event / ``CPU_TARGET``; CPU per event = 1 /
  the live pipeline's events/s on one worker (``bench_pipeline``), scaled by the
  RocksDB/memory throughput ratio of ``bench_state`` for RocksDB;
- **state** = E x (bytes per user + device + IP state: an entity is a user with one
  device and one IP); RAM of a memory:// worker = its share x RSS per state held
  (``bench_state``: RSS growth per state); disk of a rocksdb:// worker = its share x disk
  per state (``bench_state``) x (1 + ``STANDBYS``);
- **partitions**: a power of two, at least 2 per worker and few enough states each that a
  moved partition is rebuilt from its changelog within ``PARTITION_REBUILD_S`` at the
  measured restore rate;
- **changelog** = R x (user + device + IP state bytes): each event rewrites its three
  states (no coalescing of a key's events within a batch: an upper bound);
- **rebuild**: a worker's whole state replayed from the changelogs at the measured restore
  rate (memory:// at every start; rocksdb:// only when its disk is lost and no standby
  exists); **rocksdb restart**: the measured time to ready after a SIGKILL with local
  databases (the changelog tail only: independent of E).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent

ENTITIES = (10_000_000, 100_000_000, 1_000_000_000)
RATES = (10_000, 50_000, 200_000)
CPU_TARGET = 0.7  # share of a core a worker may use at the planned rate
STANDBYS = 1  # standby replicas (disk)
PARTITION_REBUILD_S = 300.0  # longest rebuild of one moved partition


class MissingInputError(Exception):
    """A measured input is not in results.json: run its benchmark first."""


def _find(results: list[dict[str, Any]], bench: str, prefix: str) -> dict[str, Any]:
    rows = [
        r
        for r in results
        if r.get("bench") == bench
        and str(r.get("name", "")).startswith(prefix)
        and r.get("value") is not None
    ]
    if not rows:
        raise MissingInputError(
            f"no {prefix}* from {bench} in results.json: run bench/run.py --only "
            f"{bench.removeprefix('bench_')}"
        )
    return rows[-1]


def inputs(results: list[dict[str, Any]]) -> dict[str, tuple[float, str]]:
    """name -> (value, where it was measured)."""
    out: dict[str, tuple[float, str]] = {}

    def take(key: str, bench: str, prefix: str, field: str = "value") -> dict[str, Any]:
        row = _find(results, bench, prefix)
        out[key] = (
            float(row[field]),
            f"{bench}: {row['name']}" + (f" ({field})" if field != "value" else ""),
        )
        return row

    take("pipeline_events_per_s", "bench_pipeline", "pipeline_vs_bare")
    for entity in ("user", "device", "ip"):
        take(f"state_bytes_{entity}", "bench_state", f"state_bytes_per_{entity}")
    take("restore_states_per_s", "bench_state", "changelog_restore_per_s_memory")
    thr = take("rocks_events_per_s", "bench_state", "events_per_s_")
    take("memory_events_per_s", "bench_state", "events_per_s_", "baseline_value")
    users = float(thr.get("users") or 0)
    take("rocks_ready_after_kill_s", "bench_state", "ready_after_kill_s_")
    rss = take("rocks_rss_mb", "bench_state", "rss_after_kill_mb_")
    take("memory_rss_mb", "bench_state", "rss_after_kill_mb_", "baseline_value")
    take("rocks_disk_mb", "bench_state", "disk_mb_")
    out["bench_states"] = (users or float(rss.get("users") or 0), "bench_state: users")
    return out


def model(inp: dict[str, tuple[float, str]]) -> list[dict[str, Any]]:
    v = {k: val for k, (val, _) in inp.items()}
    n = v["bench_states"]
    bytes_per_entity = v["state_bytes_user"] + v["state_bytes_device"] + v["state_bytes_ip"]
    states_per_entity = 3
    ram_per_state = max(v["memory_rss_mb"] - v["rocks_rss_mb"], 0.0) * 1e6 / n  # user states held
    ram_per_byte = ram_per_state / v["state_bytes_user"]
    disk_per_byte = v["rocks_disk_mb"] * 1e6 / n / v["state_bytes_user"]
    rocks_ratio = v["rocks_events_per_s"] / v["memory_events_per_s"]
    rows = []
    for entities in ENTITIES:
        states = entities * states_per_entity
        state_bytes = entities * bytes_per_entity
        per_partition = v["restore_states_per_s"] * PARTITION_REBUILD_S
        for rate in RATES:
            workers = math.ceil(rate / (v["pipeline_events_per_s"] * CPU_TARGET))
            workers_rocks = math.ceil(
                rate / (v["pipeline_events_per_s"] * min(rocks_ratio, 1.0) * CPU_TARGET)
            )
            partitions = 2 ** math.ceil(math.log2(max(2 * workers_rocks, states / per_partition, 1)))
            rows.append(
                {
                    "entities": entities,
                    "events_per_s": rate,
                    "workers_memory": workers,
                    "workers_rocksdb": workers_rocks,
                    "partitions": partitions,
                    "state_gb": state_bytes / 1e9,
                    "ram_gb_per_worker_memory": state_bytes * ram_per_byte / workers / 1e9,
                    "disk_gb_per_worker_rocksdb": state_bytes
                    * disk_per_byte
                    * (1 + STANDBYS)
                    / workers_rocks
                    / 1e9,
                    "changelog_mb_per_s": rate * bytes_per_entity / 1e6,
                    "rebuild_min_per_worker": states / workers_rocks / v["restore_states_per_s"] / 60,
                    "rocksdb_restart_s": v["rocks_ready_after_kill_s"],
                }
            )
    return rows


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| entities | events/s | workers memory / rocksdb | partitions | state | RAM per worker, memory:// "
        "| disk per worker, rocksdb:// (1 standby) | changelog | rebuild of one worker's state | "
        "rocksdb:// restart |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['entities'] / 1e6:,.0f} M | {r['events_per_s'] / 1e3:,.0f}k | {r['workers_memory']} / "
            f"{r['workers_rocksdb']} | {r['partitions']:,} | {_num(r['state_gb'])} GB | "
            f"{_num(r['ram_gb_per_worker_memory'])} GB | {_num(r['disk_gb_per_worker_rocksdb'])} GB | "
            f"{_num(r['changelog_mb_per_s'])} MB/s | {_num(r['rebuild_min_per_worker'])} min | "
            f"{_num(r['rocksdb_restart_s'])} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results.json")
    args = parser.parse_args(argv)
    results = orjson.loads(args.results.read_bytes())
    try:
        inp = inputs(results)
    except MissingInputError as exc:
        print(f"scale model: {exc}")
        return 1
    print("Measured inputs (bench/results.json):")
    for key, (value, where) in inp.items():
        print(f"  {key:28s} {value:>14,.2f}   {where}")
    print(
        f"Assumptions: an entity = a user with one device and one IP; CPU target {CPU_TARGET:.0%} of a core "
        f"per worker; {STANDBYS} standby; a moved partition rebuilt within {PARTITION_REBUILD_S:.0f} s.\n"
    )
    print(markdown(model(inp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
