"""What a replay is asked to do and what it reports: options, run ids, counters, summary.

Errors::

    BypassError
    └── ReplayError     a replay cannot start or go on; the message says why and what to do
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from features.errors import BypassError

__all__ = [
    "LIVE_RUN_ID",
    "OUT_KINDS",
    "SOURCES",
    "CompareRow",
    "ReplayError",
    "ReplayOptions",
    "ReplayStats",
    "ReplaySummary",
    "at_retention_edge",
    "check_run_id",
    "compare_hits",
    "new_run_id",
    "retention_gap_ms",
]

OUT_KINDS: Final = ("clickhouse", "jsonl", "none")
#: where a replay reads events: the raw topics, or the ClickHouse event archive (risk_events)
SOURCES: Final = ("kafka", "archive")
LIVE_RUN_ID: Final = "live"
_RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class ReplayError(BypassError):
    """A replay can not start or go on; the message says why and what to do."""


def new_run_id(now_ms: int | None = None) -> str:
    """``replay-20261123T154000Z-3fa9c2``: sortable, unique enough, safe in file names."""
    now = time.time() * 1000 if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(now / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"replay-{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id):
        raise ReplayError(
            f"--run-id {run_id!r} is not usable: 1-128 characters of letters, digits, '.', '_', ':', '-'",
            option="--run-id",
        )
    return run_id


def at_retention_edge(start_offset: int, low_watermark: int) -> bool:
    """True when the replay starts at the oldest offset the broker still holds and older
    ones were deleted (low watermark > 0): the warm-up may be missing history."""
    return low_watermark > 0 and start_offset <= low_watermark


def retention_gap_ms(wanted_from_ms: int, earliest_available_ms: int) -> int:
    """How much history the warm-up misses: ``earliest - wanted`` when positive, else 0."""
    return max(0, earliest_available_ms - wanted_from_ms)


@dataclass(frozen=True)
class ReplayOptions:
    """What ``bypass replay`` was asked to do (times in epoch ms)."""

    from_ms: int | None
    to_ms: int | None
    topics: tuple[str, ...] = ()
    rules_file: Path | None = None
    rules_version: str | None = None
    warmup: str = "auto"  # "auto" or a duration text
    out: str = "none"
    out_file: Path | None = None
    run_id: str | None = None
    compare: bool = False
    resume: bool = False
    dlq: bool = False
    emit_blacklist: bool = False
    source: str = "kafka"  # SOURCES
    progress: bool = True


@dataclass
class ReplayStats:
    messages: int = 0
    applied: int = 0
    warmup_events: int = 0
    in_range_events: int = 0
    outside_range: int = 0
    before_warmup: int = 0  # of those, older than the warm-up (history the replay does not use)
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    processing_errors: int = 0  # (event, entity) pairs whose processing raised: dead letters
    dlq_sent: int = 0
    duplicates: int = 0
    late_rejected: int = 0
    rule_errors: int = 0
    values_skipped: dict[str, int] = field(default_factory=dict)  # feature -> unusable values
    hits: int = 0
    hits_by_rule: dict[str, int] = field(default_factory=dict)
    blacklist: int = 0
    blacklist_emitted: int = 0  # --emit-blacklist: produced to the blacklist topic
    blacklist_expired: int = 0  # --emit-blacklist: not produced, already expired
    min_ts_ms: int | None = None
    max_ts_ms: int | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class CompareRow:
    rule_id: str
    live: int
    replayed: int
    added: int
    removed: int
    #: with outcome labels (``bypass labels import``): precision and recall of the entities
    #: each side flagged, against the entities labelled bad (None without labels)
    live_precision: float | None = None
    live_recall: float | None = None
    replayed_precision: float | None = None
    replayed_recall: float | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


#: a compared hit: "<event id>\x1f<entity>\x1f<key>" (the entity and key ride along; matching
#: by (rule, element) is matching by (rule, event), as an event has one key per entity kind)
SEP: Final = "\x1f"


def hit_element(event_id: str, entity: str, key: str) -> str:
    return f"{event_id}{SEP}{entity}{SEP}{key}"


def _entities(elements: set[str]) -> set[tuple[str, str]]:
    out = set()
    for e in elements:
        parts = e.split(SEP)
        if len(parts) == 3:  # a checkpoint written before the elements carried the entity
            out.add((parts[1], parts[2]))
    return out


def _quality(
    flagged: set[tuple[str, str]], bad: set[tuple[str, str]], entity: str | None
) -> tuple[float | None, float | None]:
    """(precision, recall) of ``flagged`` entities against ``bad`` ones (of ``entity`` kind)."""
    relevant = {b for b in bad if entity is None or b[0] == entity}
    precision = len(flagged & bad) / len(flagged) if flagged else None
    recall = len(flagged & relevant) / len(relevant) if relevant else None
    return precision, recall


def compare_hits(
    live: dict[str, set[str]],
    replayed: dict[str, set[str]],
    bad: set[tuple[str, str]] | None = None,
) -> list[CompareRow]:
    """Per rule: live hits, replayed hits, added (replay only), removed (live only); with
    ``bad`` (the (entity, key) pairs labelled bad), precision and recall per side."""
    rows = []
    for rule_id in sorted(set(live) | set(replayed)):
        a = live.get(rule_id, set())
        b = replayed.get(rule_id, set())
        quality: tuple[float | None, ...] = (None, None, None, None)
        if bad:
            fa, fb = _entities(a), _entities(b)
            kinds = {e for e, _ in fa | fb}
            entity = next(iter(kinds)) if len(kinds) == 1 else None
            quality = (*_quality(fa, bad, entity), *_quality(fb, bad, entity))
        rows.append(CompareRow(rule_id, len(a), len(b), len(b - a), len(a - b), *quality))
    return rows


@dataclass
class ReplaySummary:
    run_id: str
    from_ms: int
    to_ms: int
    warmup_ms: int
    topics: tuple[str, ...]
    partitions: int
    ruleset_version: str
    out: str
    out_target: str
    stats: ReplayStats
    interrupted: bool = False
    checkpoint: Path | None = None
    warnings: list[str] = field(default_factory=list)
    compare: list[CompareRow] | None = None
    blacklist_written: bool = False
