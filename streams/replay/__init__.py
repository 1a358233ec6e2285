"""Replay and backfill: re-run the raw topics over ``[T1, T2)`` through the shared batch step."""

from streams.replay.run import *  # noqa: F403  (temporary: split into modules below)
from streams.replay.run import __all__ as _run_all
from streams.replay.run import check_run_id as check_run_id
from streams.replay.run import iter_hits_jsonl as iter_hits_jsonl

__all__ = sorted([*_run_all, "check_run_id", "iter_hits_jsonl"])
