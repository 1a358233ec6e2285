"""Event-time order: where an event was read from, and the one order events are applied in.

The order.  Every path - the live worker with one or several processes, replay, tests -
applies events in the order of the *merge* of the source partitions: each partition is
read in offset order, and of the partitions' next events the one with the smallest
``(event time, topic, partition, offset)`` goes first (replay's k-way merge, and Kafka
Streams' choice of the partition with the lowest head timestamp).  Where a partition's
event times go backwards (a late event), the late event stays after the events its
partition delivered before it.

That merge equals a sort by a key each event can be given from its own partition alone
(:func:`effective_key`)::

    (running max of event time in the partition up to this event, topic, partition, offset)

(a test checks it against the k-way merge).  Because it is a plain sort key, the order
restricted to any subset of the events - one entity partition, one key - is the same
sort, so any process holding some of the events can put them in order on its own.

Holding back (:class:`OrderBuffer`).  Events are released in key order once no source
can still deliver a smaller key: a source's *bound* is the smallest key it may still
send, ``(running max, topic, partition, next offset)``.  A source known to be at its end
(caught up: nothing unread) bounds nothing, so a caught-up partition holds nothing back
and steady-state latency does not grow; there, events that reach the worker at the same
time may apply in arrival order, as in Kafka Streams.  A lagging source, or one not heard
from yet, holds back every event with a larger key.

- :func:`merge_sources` merges sequences that are complete for a batch.
- :class:`PartitionMerge` merges open-ended streams by heads (replay used it; kept as the
  reference the sort key is tested against).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "BOTTOM",
    "TOP",
    "OrderBuffer",
    "OrderKey",
    "PartitionMerge",
    "RunningMax",
    "SourceEvent",
    "bound_of",
    "effective_key",
    "merge_sources",
    "order_key",
]

#: (event time, topic, partition, offset): the order every path applies events in.
OrderKey = tuple[int, str, int, int]


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A validated (phone-hashed) event and where it was read from.

    ``topic``/``partition``/``offset`` are the raw-topic coordinates (not a repartition
    topic's), ``timestamp_ms`` the raw message's Kafka timestamp (None if unknown).
    """

    event: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def order_key(source: SourceEvent) -> OrderKey:
    """The position of ``source`` in the processing order."""
    return (source.event["ts"], source.topic, source.partition, source.offset)


#: Smaller than any key: the bound of a source not heard from yet.
BOTTOM: tuple[int, ...] = (-(2**62),)
#: Larger than any key: the bound of a caught-up source.
TOP: tuple[int, ...] = (2**62,)


def effective_key(running_max_ts: int, topic: str, partition: int, offset: int) -> OrderKey:
    """The sort key of an event whose partition's event time has reached ``running_max_ts``
    (its own time included): see the module docstring."""
    return (running_max_ts, topic, partition, offset)


def bound_of(
    running_max_ts: int | None, topic: str, partition: int, next_offset: int, caught_up: bool
) -> tuple[int | str, ...]:
    """The smallest key a source may still send (TOP when caught up; BOTTOM when nothing is
    known about its event time yet and it is not caught up)."""
    if caught_up:
        return TOP
    if running_max_ts is None:
        return BOTTOM
    return (running_max_ts, topic, partition, next_offset)


class RunningMax:
    """The running maximum of event time per source partition (the first part of the key)."""

    __slots__ = ("_max",)

    def __init__(self) -> None:
        self._max: dict[tuple[str, int], int] = {}

    def key(self, topic: str, partition: int, offset: int, ts: int) -> OrderKey:
        """The effective key of an event, folding its time into the partition's maximum."""
        tp = (topic, partition)
        top = self._max.get(tp)
        if top is None or ts > top:
            self._max[tp] = top = ts
        return (top, topic, partition, offset)

    def peek(self, topic: str, partition: int) -> int | None:
        return self._max.get((topic, partition))

    def seed(self, topic: str, partition: int, ts: int | None) -> None:
        """Start a partition's maximum at ``ts`` (what an earlier reader had reached)."""
        if ts is None:
            return
        tp = (topic, partition)
        top = self._max.get(tp)
        if top is None or ts > top:
            self._max[tp] = ts

    def forget(self, topic: str, partition: int) -> None:
        self._max.pop((topic, partition), None)


def merge_sources(sequences: Iterable[Sequence[SourceEvent]]) -> Iterator[SourceEvent]:
    """Merge per-source-partition sequences (each in offset order) into the processing order.

    The heads are compared by :func:`order_key`, and each sequence keeps its own order even
    where its event times go backwards.
    """
    return heapq.merge(*sequences, key=order_key)


class Ordered(Protocol):
    """Anything :class:`PartitionMerge` can hold: it knows its place in the order."""

    @property
    def sort_key(self) -> tuple[Any, ...]: ...


T = TypeVar("T", bound=Ordered)
P = TypeVar("P", bound=Hashable)


class PartitionMerge(Generic[P, T]):
    """k-way merge of per-partition streams, in ``sort_key`` order.

    Each partition's items are pushed in offset order.  :meth:`pop_ready` yields the
    smallest head while every unfinished partition has a buffered item (a partition with
    nothing buffered might still deliver a smaller one), so the output depends only on
    the partitions' contents, not on how they were fetched.
    """

    def __init__(self, partitions: Iterable[P]) -> None:
        self._buf: dict[P, deque[T]] = {tp: deque() for tp in partitions}
        self._open: set[P] = set(self._buf)  # not finished
        self._empty_open: set[P] = set(self._buf)  # open and nothing buffered
        self._heap: list[tuple[tuple[Any, ...], int, P]] = []
        self._index = {tp: i for i, tp in enumerate(self._buf)}  # ties never compare partitions

    def push(self, tp: P, item: T) -> None:
        buf = self._buf[tp]
        if tp not in self._open:
            raise ValueError(f"partition {tp} is finished")
        if not buf:
            heapq.heappush(self._heap, (item.sort_key, self._index[tp], tp))
            self._empty_open.discard(tp)
        buf.append(item)

    def finish(self, tp: P) -> None:
        """No more items will come from ``tp``."""
        self._open.discard(tp)
        self._empty_open.discard(tp)

    def is_finished(self, tp: P) -> bool:
        return tp not in self._open

    def buffered(self, tp: P) -> int:
        return len(self._buf[tp])

    @property
    def waiting_for(self) -> set[P]:
        """Open partitions with nothing buffered: the merge waits for them."""
        return set(self._empty_open)

    @property
    def done(self) -> bool:
        return not self._open and not self._heap

    def pop_ready(self, limit: int | None = None) -> list[T]:
        out: list[T] = []
        heap = self._heap
        bufs = self._buf
        while heap and not self._empty_open and (limit is None or len(out) < limit):
            _, index, tp = heapq.heappop(heap)
            buf = bufs[tp]
            out.append(buf.popleft())
            if buf:
                heapq.heappush(heap, (buf[0].sort_key, index, tp))
            elif tp in self._open:
                self._empty_open.add(tp)
        return out


S = TypeVar("S", bound=Hashable)
I = TypeVar("I")  # noqa: E741


class OrderBuffer(Generic[S, I]):
    """Items from several sources, released in key order once no source can still send a
    smaller key (module docstring).

    ``expect(sources)`` names the sources that must be heard from before anything is
    released (their bound starts at BOTTOM); ``add(source, key, item)`` holds an item;
    ``advance(source, bound)`` says the smallest key ``source`` may still send (TOP: caught
    up); ``release()`` returns the held items below every bound, in key order.  A bound of
    a lagging source only grows (a redelivery cannot take back what was sent); a caught-up
    source that starts to lag again gets its new, finite bound.
    """

    def __init__(self, sources: Iterable[S] = ()) -> None:
        self._bounds: dict[S, tuple[Any, ...]] = {}
        self._heap: list[tuple[tuple[Any, ...], int, S, I]] = []
        self._held: dict[S, int] = {}
        self._seq = 0
        self.expect(sources)

    def expect(self, sources: Iterable[S]) -> None:
        for source in sources:
            self._bounds.setdefault(source, BOTTOM)

    def forget(self, source: S) -> None:
        """Stop waiting for ``source`` (it left the topics); its held items stay."""
        self._bounds.pop(source, None)

    def add(self, source: S, key: tuple[Any, ...], item: I) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (key, self._seq, source, item))
        self._held[source] = self._held.get(source, 0) + 1
        self._bounds.setdefault(source, BOTTOM)

    def advance(self, source: S, bound: tuple[Any, ...]) -> None:
        old = self._bounds.get(source)
        if old is None or bound is TOP or old is TOP or bound > old:
            self._bounds[source] = bound

    def bound(self, source: S) -> tuple[Any, ...] | None:
        return self._bounds.get(source)

    @property
    def watermark(self) -> tuple[Any, ...]:
        """The smallest bound: everything held below it can go."""
        return min(self._bounds.values(), default=TOP)

    def release(self, limit: int | None = None) -> list[I]:
        out: list[I] = []
        heap = self._heap
        held = self._held
        mark = self.watermark
        while heap and heap[0][0] < mark and (limit is None or len(out) < limit):
            _, _, source, item = heapq.heappop(heap)
            held[source] -= 1
            out.append(item)
        return out

    def held(self, source: S | None = None) -> int:
        """Items held (of one source, or of all)."""
        return len(self._heap) if source is None else self._held.get(source, 0)

    def holds_before(self, source: S, offset: int) -> bool:
        """True when an item of ``source`` whose key ends in an offset below ``offset`` is
        held (keys ``(time, topic, partition, offset)``)."""
        return self._held.get(source, 0) > 0 and any(
            src == source and key[-1] < offset for key, _, src, _ in self._heap
        )

    def lagging(self) -> list[S]:
        """The sources whose bound is the watermark (the ones everything waits for)."""
        mark = self.watermark
        return [source for source, bound in self._bounds.items() if bound == mark and bound is not TOP]

    def __len__(self) -> int:
        return len(self._heap)
