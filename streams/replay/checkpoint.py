"""Replay checkpoints: what ``--resume`` needs to continue exactly where a replay stopped.

Every ``BYPASS_REPLAY_CHECKPOINT_S`` seconds, and on Ctrl-C, the replay writes
``<state_dir>/replay/<run id>.json``: the run's parameters (with the rule-set text itself
and the spec's hash, so a resumed run uses exactly the same rules), the per-partition next
offsets, the entity state snapshots, the counters, the live and replayed hit keys (for
``--compare``) and the size of the ``--out-file``.  Offsets are only those of processed
chunks, outputs are flushed before the file is (atomically) replaced, and the merge order
does not depend on where it was stopped, so ``--resume`` gives the same result as an
uninterrupted run (a jsonl file is cut back to its checkpointed size first).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from streams.replay.options import ReplayError, check_run_id

__all__ = ["CHECKPOINT_FORMAT", "TP", "Checkpoint", "checkpoint_path", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT: Final = "bypass-replay-checkpoint/1"

#: (topic, partition)
TP = tuple[str, int]


@dataclass
class Checkpoint:
    """What ``--resume`` needs to continue exactly where a replay stopped."""

    run_id: str
    params: dict[str, Any]
    positions: dict[TP, int]
    states: dict[tuple[str, str], bytes] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, list[str]] | None = None
    live: dict[str, list[str]] | None = None
    out_bytes: int | None = None
    complete: bool = False
    written_ms: int = 0

    def to_bytes(self) -> bytes:
        doc = {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "complete": self.complete,
            "written_ms": self.written_ms,
            "params": self.params,
            "positions": [[t, p, o] for (t, p), o in sorted(self.positions.items())],
            "out_bytes": self.out_bytes,
            "stats": self.stats,
            "replayed": self.replayed,
            "live": self.live,
            "states": [
                [entity, key, base64.b64encode(data).decode("ascii")]
                for (entity, key), data in self.states.items()
            ],
        }
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "checkpoint") -> Checkpoint:
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
            positions = {(str(t), int(p)): int(o) for t, p, o in doc["positions"]}
            states = {(str(e), str(k)): base64.b64decode(b) for e, k, b in doc["states"]}
            return cls(
                run_id=str(doc["run_id"]),
                params=dict(doc["params"]),
                positions=positions,
                states=states,
                stats=dict(doc.get("stats") or {}),
                replayed=doc.get("replayed"),
                live=doc.get("live"),
                out_bytes=doc.get("out_bytes"),
                complete=bool(doc.get("complete")),
                written_ms=int(doc.get("written_ms") or 0),
            )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ReplayError(
                f"{source} is not a readable replay checkpoint ({exc}); start the replay again "
                "without --resume (or with another --run-id)",
                path=source,
            ) from None


def checkpoint_path(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "replay" / f"{check_run_id(run_id)}.json"


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash leaves the previous checkpoint or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(checkpoint.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReplayError(
            f"no replay checkpoint at {path}: nothing to resume. Check --run-id (the id printed "
            "when the replay stopped) and BYPASS_STATE_DIR",
            path=str(path),
        ) from None
    return Checkpoint.from_bytes(data, source=str(path))
