"""Replay and backfill: re-run the raw topics over ``[T1, T2)`` through the shared batch step.

Modules: :mod:`~streams.replay.run` (the run: options -> reader -> batch step -> outputs),
:mod:`~streams.replay.reader` (Kafka reader, processing order), :mod:`~streams.replay.outputs`
(``--out`` sinks), :mod:`~streams.replay.checkpoint` (``--resume``),
:mod:`~streams.replay.compare` (the live side of ``--compare``),
:mod:`~streams.replay.options` (options, counters, summary, run ids).
"""

from streams.replay.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from streams.replay.options import (
    LIVE_RUN_ID,
    CompareRow,
    ReplayError,
    ReplayOptions,
    ReplayStats,
    ReplaySummary,
    at_retention_edge,
    check_run_id,
    compare_hits,
    new_run_id,
    retention_gap_ms,
)
from streams.replay.reader import Record
from streams.replay.run import Replay, iter_hits_jsonl

__all__ = [
    "CHECKPOINT_FORMAT",
    "LIVE_RUN_ID",
    "Checkpoint",
    "CompareRow",
    "Record",
    "Replay",
    "ReplayError",
    "ReplayOptions",
    "ReplayStats",
    "ReplaySummary",
    "at_retention_edge",
    "check_run_id",
    "checkpoint_path",
    "compare_hits",
    "iter_hits_jsonl",
    "load_checkpoint",
    "new_run_id",
    "retention_gap_ms",
    "save_checkpoint",
]
