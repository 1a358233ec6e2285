"""streams.core.order: the one event-time order of live and replay.

The claim everything rests on: the k-way merge of partitions by heads (replay's order,
Kafka Streams' choice of the lowest head) is a plain sort by the key each event gets from
its own partition - (running max of event time, topic, partition, offset) - so any subset
(one entity partition, one key) can be put in order by whoever holds it, and an
OrderBuffer fed in any interleaving releases that very order.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.order import (
    BOTTOM,
    TOP,
    OrderBuffer,
    PartitionMerge,
    RunningMax,
    bound_of,
)

TP = tuple[str, int]

# partitions of event times; times may go backwards inside a partition (late events)
partitions_st = st.lists(st.lists(st.integers(0, 30), max_size=12), min_size=1, max_size=5)


class Item:
    def __init__(self, ts: int, tp: TP, offset: int) -> None:
        self.sort_key = (ts, tp[0], tp[1], offset)
        self.tp = tp
        self.offset = offset

    def __repr__(self) -> str:
        return f"Item{self.sort_key}"


def make(parts: list[list[int]]) -> dict[TP, list[Item]]:
    return {("raw", p): [Item(ts, ("raw", p), o) for o, ts in enumerate(tss)] for p, tss in enumerate(parts)}


def heads_merge(streams: dict[TP, list[Item]]) -> list[Item]:
    merge: PartitionMerge[TP, Item] = PartitionMerge(list(streams))
    for tp, items in streams.items():
        for item in items:
            merge.push(tp, item)
        merge.finish(tp)
    return merge.pop_ready()


@settings(max_examples=400, deadline=None)
@given(partitions_st)
def test_the_heads_merge_is_a_sort_by_the_running_max_key(parts: list[list[int]]) -> None:
    streams = make(parts)
    clock = RunningMax()
    keyed = [
        (clock.key(*tp, item.offset, item.sort_key[0]), item)
        for tp, items in streams.items()
        for item in items
    ]
    assert [i for _, i in sorted(keyed, key=lambda x: x[0])] == heads_merge(streams)


@settings(max_examples=300, deadline=None)
@given(partitions_st, st.integers(0, 10_000))
def test_order_buffer_releases_the_merge_order_whatever_the_interleaving(
    parts: list[list[int]], seed: int
) -> None:
    """Sources deliver at random speeds, progress reports follow their events; the
    released sequence is the heads merge, and nothing is released before it is safe."""
    streams = make(parts)
    rnd = random.Random(seed)
    buffer: OrderBuffer[TP, Item] = OrderBuffer(list(streams))
    clock = RunningMax()
    cursor = dict.fromkeys(streams, 0)
    out: list[Item] = []
    open_tps = [tp for tp in streams]
    while open_tps:
        tp = rnd.choice(open_tps)
        items = streams[tp]
        for _ in range(rnd.randint(1, 3)):
            if cursor[tp] < len(items):
                item = items[cursor[tp]]
                buffer.add(tp, clock.key(*tp, item.offset, item.sort_key[0]), item)
                cursor[tp] += 1
        done = cursor[tp] == len(items)
        buffer.advance(tp, bound_of(clock.peek(*tp), tp[0], tp[1], cursor[tp], done))
        if done:
            open_tps.remove(tp)
        out += buffer.release()
    assert len(buffer) == 0
    assert out == heads_merge(streams)


def test_a_source_not_heard_from_holds_everything_back() -> None:
    buffer: OrderBuffer[str, str] = OrderBuffer(["a", "b"])
    buffer.add("a", (5, "t", 0, 0), "a0")
    buffer.advance("a", (5, "t", 0, 1))
    assert buffer.release() == [] and buffer.lagging() == ["b"]
    buffer.advance("b", (3, "t", 1, 7))  # b may still send time 3: a0 (time 5) waits
    assert buffer.release() == []
    buffer.advance("b", (6, "t", 1, 9))
    assert buffer.release() == ["a0"]


def test_a_caught_up_source_holds_nothing_back_and_may_lag_again() -> None:
    buffer: OrderBuffer[str, str] = OrderBuffer(["a", "b"])
    buffer.advance("b", TOP)
    buffer.add("a", (9, "t", 0, 0), "a0")
    buffer.advance("a", (9, "t", 0, 1))
    assert buffer.release() == ["a0"]
    buffer.advance("b", (4, "t", 1, 3))  # data arrived on b: it lags now
    buffer.add("a", (10, "t", 0, 1), "a1")
    buffer.advance("a", (10, "t", 0, 2))
    assert buffer.release() == []
    assert buffer.bound("b") == (4, "t", 1, 3)


def test_a_lagging_bound_never_goes_back() -> None:
    buffer: OrderBuffer[str, str] = OrderBuffer(["a"])
    buffer.advance("a", (9, "t", 0, 5))
    buffer.advance("a", (3, "t", 0, 2))  # a redelivery: what was said stays said
    assert buffer.bound("a") == (9, "t", 0, 5)


def test_bound_of() -> None:
    assert bound_of(None, "t", 0, 0, False) == BOTTOM
    assert bound_of(None, "t", 0, 0, True) is TOP
    assert bound_of(7, "t", 2, 11, False) == (7, "t", 2, 11)
    clock = RunningMax()
    assert clock.key("t", 0, 0, 10) == (10, "t", 0, 0)
    assert clock.key("t", 0, 1, 4) == (10, "t", 0, 1)  # a late event keeps its place
    clock.seed("t", 1, 8)
    assert clock.key("t", 1, 0, 5) == (8, "t", 1, 0)


def test_held_counts_per_source() -> None:
    buffer: OrderBuffer[str, Any] = OrderBuffer(["a", "b"])
    for i in range(3):
        buffer.add("a", (i, "t", 0, i), i)
    assert buffer.held("a") == 3 and buffer.held("b") == 0 and len(buffer) == 3
    buffer.advance("a", TOP)
    buffer.advance("b", TOP)
    assert buffer.release(limit=2) == [0, 1] and buffer.held("a") == 1
