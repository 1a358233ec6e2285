"""Event-time order: where an event was read from, and the one order events are applied in.

Every path applies one entity's events in the order of

    (event time, topic, partition, offset)

with each source partition kept in offset order (a late event stays after the events its
partition delivered before it).  A user's events share one raw partition (key = user
id), so for users that is the offset order; a device's or an IP's events come from many
partitions and are interleaved by event time.

- :func:`merge_sources` merges sequences that are complete for a batch (each one source
  partition's events of the batch, in offset order).
- :class:`PartitionMerge` merges open-ended streams: it releases the smallest head only
  while every unfinished partition has something buffered, so its output depends only on
  the partitions' contents, never on how or when they were fetched.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["OrderKey", "PartitionMerge", "SourceEvent", "merge_sources", "order_key"]

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
