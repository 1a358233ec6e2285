"""Unit tests of streams.replay: run ids, the ordering merge of its records, the checkpoint format."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import parse_time_ms
from streams.core.order import PartitionMerge
from streams.replay import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    Record,
    ReplayError,
    ReplayStats,
    at_retention_edge,
    check_run_id,
    checkpoint_path,
    compare_hits,
    load_checkpoint,
    new_run_id,
    retention_gap_ms,
    save_checkpoint,
)
from streams.replay.reader import retention_warning


def test_run_ids_are_unique_and_valid() -> None:
    a, b = new_run_id(1_763_856_000_000), new_run_id(1_763_856_000_000)
    assert a != b and a.startswith("replay-20251123T000000Z-")
    assert check_run_id(a) == a
    with pytest.raises(ReplayError):
        check_run_id("../../etc/passwd")


def test_retention_gap() -> None:
    assert retention_gap_ms(1_000, 5_000) == 4_000
    assert retention_gap_ms(5_000, 1_000) == 0
    assert at_retention_edge(100, 100) and at_retention_edge(0, 100)
    assert not at_retention_edge(0, 0)  # nothing was ever deleted
    assert not at_retention_edge(150, 100)  # starts after the oldest record: history is there


def test_retention_warning_says_how_much_state_is_missing() -> None:
    """Tansu (the local broker) cannot delete records, so the message is checked here."""
    wanted = parse_time_ms("2025-10-01")
    earliest = parse_time_ms("2025-10-03T06:00:00Z")
    warning = retention_warning(("raw", 2), wanted, earliest)
    assert warning is not None
    assert "raw[2]" in warning and "2d6h of state is missing" in warning
    assert "2025-10-03T06:00:00.000Z" in warning and "2025-10-01T00:00:00.000Z" in warning
    assert retention_warning(("raw", 3), earliest, wanted) is None  # nothing missing: silent


# --------------------------------------------------------------------------- merge


def _streams(draw_ts: list[list[int]]) -> dict[tuple[str, int], list[Record]]:
    out = {}
    for i, tss in enumerate(draw_ts):
        tp = (f"t{i % 2}", i // 2)
        out[tp] = [Record(ts, tp[0], tp[1], off, {"ts": ts}) for off, ts in enumerate(tss)]
    return out


def _merge_all(streams: dict[tuple[str, int], list[Record]], rng: random.Random) -> list[Record]:
    """Feed the partitions in random fetch chunks (like consume() does) and drain."""
    merge = PartitionMerge(streams)
    cursors = dict.fromkeys(streams, 0)
    out: list[Record] = []
    while not merge.done:
        tp = rng.choice(list(streams))
        recs = streams[tp]
        n = rng.randint(0, 3)
        for rec in recs[cursors[tp] : cursors[tp] + n]:
            merge.push(tp, rec)
        cursors[tp] = min(cursors[tp] + n, len(recs))
        if cursors[tp] == len(recs) and not merge.is_finished(tp):
            merge.finish(tp)
        out.extend(merge.pop_ready(limit=rng.choice([None, 1, 2])))
    return out


def _reference(streams: dict[tuple[str, int], list[Record]]) -> list[Record]:
    """The definition: repeatedly take the smallest head (ts, topic, partition, offset)."""
    heads = {tp: 0 for tp in streams}
    out = []
    while True:
        live = [(streams[tp][i].sort_key, tp) for tp, i in heads.items() if i < len(streams[tp])]
        if not live:
            return out
        _, tp = min(live)
        out.append(streams[tp][heads[tp]])
        heads[tp] += 1


def test_merge_orders_by_event_time_then_topic_partition_offset() -> None:
    #   t0[0]: ts 5, 1        (offset order kept: 5 before 1)
    #   t1[0]: ts 3, 5
    #   t0[1]: ts 5
    streams = {
        ("t0", 0): [Record(5, "t0", 0, 0, {}), Record(1, "t0", 0, 1, {})],
        ("t1", 0): [Record(3, "t1", 0, 0, {}), Record(5, "t1", 0, 1, {})],
        ("t0", 1): [Record(5, "t0", 1, 0, {})],
    }
    got = [r.sort_key for r in _merge_all(streams, random.Random(1))]
    assert got == [
        (3, "t1", 0, 0),
        (5, "t0", 0, 0),  # tie on ts 5: topic t0 < t1, then partition 0 < 1
        (1, "t0", 0, 1),  # out of time order inside its partition: stays after its predecessor
        (5, "t0", 1, 0),
        (5, "t1", 0, 1),
    ]


def test_merge_waits_for_a_partition_with_nothing_buffered() -> None:
    merge = PartitionMerge([("a", 0), ("b", 0)])
    merge.push(("a", 0), Record(10, "a", 0, 0, {}))
    assert merge.pop_ready() == []  # b[0] might still deliver ts < 10
    assert merge.waiting_for == {("b", 0)}
    merge.push(("b", 0), Record(20, "b", 0, 0, {}))
    assert [r.sort_key for r in merge.pop_ready()] == [(10, "a", 0, 0)]
    merge.finish(("a", 0))
    assert [r.sort_key for r in merge.pop_ready()] == [(20, "b", 0, 0)]
    assert not merge.done
    merge.finish(("b", 0))
    assert merge.done


def test_merge_refuses_records_after_finish() -> None:
    merge = PartitionMerge([("a", 0)])
    merge.finish(("a", 0))
    with pytest.raises(ValueError, match="finished"):
        merge.push(("a", 0), Record(1, "a", 0, 0, {}))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 20), max_size=12), min_size=1, max_size=5),
    st.integers(0, 10_000),
)
def test_merge_is_independent_of_fetch_timing(tss: list[list[int]], seed: int) -> None:
    streams = _streams(tss)
    got = _merge_all(streams, random.Random(seed))
    again = _merge_all(streams, random.Random(seed + 1))
    expected = _reference(streams)
    assert [r.sort_key for r in got] == [r.sort_key for r in expected]
    assert [r.sort_key for r in again] == [r.sort_key for r in expected]
    # per partition, offset order is kept
    for tp in streams:
        offs = [r.offset for r in got if (r.topic, r.partition) == tp]
        assert offs == sorted(offs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), max_size=10), min_size=1, max_size=4), st.integers(0, 50))
def test_merge_resumed_from_positions_continues_identically(tss: list[list[int]], cut: int) -> None:
    """What --resume relies on: restarting the merge at the next offsets of the records
    emitted so far yields exactly the rest of the uninterrupted merge."""
    streams = _streams(tss)
    full = _reference(streams)
    cut = min(cut, len(full))
    positions = {tp: 0 for tp in streams}
    for rec in full[:cut]:
        positions[(rec.topic, rec.partition)] = rec.offset + 1
    rest = {tp: recs[positions[tp] :] for tp, recs in streams.items()}
    resumed = _merge_all(rest, random.Random(cut))
    assert [r.sort_key for r in resumed] == [r.sort_key for r in full[cut:]]


# --------------------------------------------------------------------------- checkpoint


def _checkpoint() -> Checkpoint:
    stats = ReplayStats(
        messages=7, applied=6, hits=2, hits_by_rule={"r1": 2}, malformed_by_reason={"not_json": 1}
    )
    return Checkpoint(
        run_id="replay-x",
        params={"run_id": "replay-x", "from_ms": 1, "to_ms": 2, "topics": ["raw.a", "raw.b"]},
        positions={("raw.a", 0): 10, ("raw.a", 1): 0, ("raw.b", 0): 3},
        states={("user", "u1"): b"\x00\x01binary\xff", ("device", "d:1"): b"{}"},
        stats=stats.to_dict(),
        replayed={"r1": ["e1", "e2"]},
        live={"r1": ["e1"]},
        out_bytes=1234,
        complete=False,
        written_ms=99,
    )


def test_checkpoint_round_trips(tmp_path: Path) -> None:
    ck = _checkpoint()
    path = checkpoint_path(tmp_path, "replay-x")
    assert path == tmp_path / "replay" / "replay-x.json"
    save_checkpoint(path, ck)
    back = load_checkpoint(path)
    assert back == ck
    assert ReplayStats.from_dict(back.stats).hits_by_rule == {"r1": 2}
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file


def test_checkpoint_format_is_documented_json(tmp_path: Path) -> None:
    import orjson

    doc = orjson.loads(_checkpoint().to_bytes())
    assert doc["format"] == CHECKPOINT_FORMAT
    assert doc["positions"] == [["raw.a", 0, 10], ["raw.a", 1, 0], ["raw.b", 0, 3]]
    assert {tuple(s[:2]) for s in doc["states"]} == {("user", "u1"), ("device", "d:1")}
    assert doc["out_bytes"] == 1234 and doc["complete"] is False


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"format": "other/9"}', b'{"format": "bypass-replay-checkpoint/1"}']
)
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ReplayError, match="not a readable replay checkpoint"):
        load_checkpoint(path)


def test_a_missing_checkpoint_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="nothing to resume"):
        load_checkpoint(tmp_path / "nope.json")


# --------------------------------------------------------------------------- compare


def test_compare_counts_added_and_removed_per_rule() -> None:
    live = {"r1": {"e1", "e2"}, "r2": {"e3"}}
    replayed = {"r1": {"e2", "e4"}, "r3": {"e5"}}
    rows = {r.rule_id: r for r in compare_hits(live, replayed)}
    assert (rows["r1"].live, rows["r1"].replayed, rows["r1"].added, rows["r1"].removed) == (2, 2, 1, 1)
    assert (rows["r2"].added, rows["r2"].removed) == (0, 1)
    assert (rows["r3"].added, rows["r3"].removed) == (1, 0)
    assert all(r.changed for r in rows.values())
    assert not compare_hits({"r": {"e"}}, {"r": {"e"}})[0].changed


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), max_size=10), min_size=1, max_size=5), st.integers(0, 1000))
def test_merge_equals_the_live_ingest_merge(tss: list[list[int]], seed: int) -> None:
    """Replay's streaming merge gives the order the live ingest agent uses for a batch
    (``streams.core.order.merge_sources``), so both paths apply a key's events alike."""
    from streams.core.order import SourceEvent, merge_sources

    streams = _streams(tss)
    ours = [r.sort_key for r in _merge_all(streams, random.Random(seed))]
    sequences = [
        [SourceEvent({"ts": r.ts_ms}, r.topic, r.partition, r.offset) for r in recs]
        for recs in streams.values()
    ]
    live = [(s.event["ts"], s.topic, s.partition, s.offset) for s in merge_sources(sequences)]
    assert ours == live


# --- --emit-blacklist (issue 15, item 1)


def test_a_backtest_never_emits_to_the_blacklist_topic(tmp_path: Path) -> None:
    from streams.replay import Replay, ReplayError, ReplayOptions
    from streams.settings import Settings

    s = Settings(state_dir=tmp_path)
    for run_id in ("bt-1", None):  # a named backtest, and a new run id
        options = ReplayOptions(from_ms=1, to_ms=2, run_id=run_id, emit_blacklist=True, progress=False)
        with pytest.raises(ReplayError, match="--emit-blacklist goes with --run-id live"):
            Replay(s, options).run()


class _Producer:
    """Records what the emitter produces; ``fail`` makes deliveries fail."""

    def __init__(self, fail: str | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, bytes]]] = []
        self.fail = fail
        self._callbacks: list[object] = []

    def produce(
        self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]], on_delivery: object
    ) -> None:
        self.sent.append((topic, key, value, dict(headers)))
        self._callbacks.append(on_delivery)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for cb in self._callbacks:
            cb(self.fail, None)  # type: ignore[operator]
        self._callbacks.clear()
        return 0


def _entry(event_id: str, expires_at: int) -> object:
    import orjson

    from streams.core.order import SourceEvent
    from streams.core.step import Emitted

    record = {
        "entity": "user",
        "key": "u1",
        "label": "fraud",
        "rule_ids": ["r1"],
        "event_id": event_id,
        "event_ts": 1,
        "expires_at": expires_at,
        "ruleset_version": "v1",
    }
    source = SourceEvent({"event_id": event_id}, "raw", 0, 7, None)
    return Emitted("user", "u1", record, orjson.dumps(record), source)


def test_the_emitter_produces_live_records_with_deterministic_ids_and_skips_expired_ones() -> None:
    import time

    from streams.replay.outputs import BlacklistEmitter, entry_id

    producer = _Producer()
    emitter = BlacklistEmitter(producer, "bl", "live")
    future = time.time_ns() // 1_000_000 + 3_600_000
    for emitted in (_entry("e1", future), _entry("e2", 1_000), _entry("e1", future)):
        emitter.add(emitted)  # type: ignore[arg-type]
    emitter.flush()
    assert (emitter.produced, emitter.expired) == (2, 1)
    (t1, k1, v1, h1), (_, _, v2, h2) = producer.sent
    assert (t1, k1) == ("bl", b"user:u1") and v1 == v2  # the live worker's key and value
    assert h1 == h2 == {"bypass.entry_id": h1["bypass.entry_id"], "bypass.run_id": b"live"}
    assert h1["bypass.entry_id"].decode() == entry_id(_entry("e1", 0).record)  # type: ignore[attr-defined]
    assert entry_id(_entry("e1", 0).record) != entry_id(_entry("e2", 0).record)  # type: ignore[attr-defined]


def test_the_emitter_stops_the_replay_when_kafka_does_not_take_the_entries() -> None:
    import time

    from streams.replay import ReplayError
    from streams.replay.outputs import BlacklistEmitter

    emitter = BlacklistEmitter(_Producer(fail="broker down"), "bl", "live")
    emitter.add(_entry("e1", time.time_ns() // 1_000_000 + 60_000))  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match=r"did not take 1 entries \(broker down\).*--resume"):
        emitter.flush()


def test_compare_adds_precision_and_recall_per_side_when_labels_exist() -> None:
    """Issue 16, item 4: a rule change is judged on outcomes, not hit counts."""
    from streams.replay.options import hit_element

    def hits(*pairs: tuple[str, str]) -> set[str]:
        return {hit_element(event, "device", key) for event, key in pairs}

    live = {"farm": hits(("e1", "d1"), ("e2", "d2"), ("e3", "d3"), ("e4", "d3"))}
    replayed = {"farm": hits(("e1", "d1"), ("e5", "d4"))}
    bad = {("device", "d1"), ("device", "d4"), ("device", "d9"), ("user", "d2")}  # a user d2: not a device
    [row] = compare_hits(live, replayed, bad)
    assert (row.live, row.replayed, row.added, row.removed) == (4, 2, 1, 3)
    assert row.live_precision == 1 / 3  # d1 of d1, d2, d3
    assert row.live_recall == 1 / 3  # d1 of the bad devices d1, d4, d9
    assert (row.replayed_precision, row.replayed_recall) == (1.0, 2 / 3)
    assert compare_hits(live, replayed)[0].live_precision is None  # no labels: no outcome columns
