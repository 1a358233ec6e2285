"""Named lists for ``in_list()`` rules, kept in Redis sets.

    <prefix>list:<name>   set of values (strings)

``bypass lists add|remove|show NAME VALUE...`` edit them. The live agents read
them through :class:`PrefetchingListProvider`: before evaluating a batch, the
agent asks the rule set which (list, value) pairs the batch may probe
(``RuleSet.list_probes``), fetches them all in one pipelined round trip, and the
rules' ``contains(name, value)`` calls are then answered from memory. A probe
that was not prefetched is looked up on its own (and counted in ``misses``), so
a forgotten probe costs a round trip, never a wrong answer.

Reserved names ``unblock.<entity>`` are not sets but the unblock overrides of an entity kind
(:mod:`sinks.list_admin`): the provider reads them with HGET in the same pipeline, answers
``contains`` with "an active override exists" and :meth:`PrefetchingListProvider.unblock`
with the override itself (the processor consults it before emitting blacklist entries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from sinks.base import SinkBackpressureError
from sinks.list_admin import UNBLOCK_LIST_PREFIX, Unblock, decode_unblock, unblock_key, unblock_list_name


class ListPipeline(Protocol):
    """What the provider calls on a ``redis.client.Pipeline`` (non-transactional)."""

    def sismember(self, name: str, value: str) -> object: ...

    def hget(self, name: str, key: str) -> object: ...

    def execute(self) -> list[Any]: ...


class RedisSettings(Protocol):
    """The settings :func:`provider_from_settings` reads (``streams.settings.Settings``)."""

    @property
    def redis_url(self) -> str: ...

    @property
    def redis_key_prefix(self) -> str: ...


class ListClient(Protocol):
    """What the named lists call on a ``redis.Redis``."""

    def sadd(self, name: str, *values: str) -> int: ...

    def srem(self, name: str, *values: str) -> int: ...

    def smembers(self, name: str) -> Iterable[bytes | str]: ...

    def scan_iter(self, match: str | None = ..., count: int | None = ...) -> Iterator[Any]: ...

    def sismember(self, name: str, value: str) -> int: ...

    def hget(self, name: str, key: str) -> bytes | str | None: ...

    def pipeline(self, transaction: bool = ...) -> ListPipeline: ...


class ListUnavailableError(SinkBackpressureError):
    """Redis could not answer list look-ups; ``retry_after`` says when to try again."""


def list_key(prefix: str, name: str) -> str:
    return f"{prefix}list:{name}"


def _member(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add(client: ListClient, prefix: str, name: str, values: Iterable[Any]) -> int:
    members = [_member(v) for v in values]
    return int(client.sadd(list_key(prefix, name), *members)) if members else 0


def remove(client: ListClient, prefix: str, name: str, values: Iterable[Any]) -> int:
    members = [_member(v) for v in values]
    return int(client.srem(list_key(prefix, name), *members)) if members else 0


def show(client: ListClient, prefix: str, name: str) -> list[str]:
    members = client.smembers(list_key(prefix, name))
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)


def names(client: ListClient, prefix: str) -> list[str]:
    start = len(list_key(prefix, ""))
    found = {
        (k.decode() if isinstance(k, bytes) else str(k))[start:]
        for k in client.scan_iter(match=list_key(prefix, "*"), count=1000)
    }
    return sorted(found)


def _unblock_entity(name: str) -> str | None:
    return name[len(UNBLOCK_LIST_PREFIX) :] if name.startswith(UNBLOCK_LIST_PREFIX) else None


class PrefetchingListProvider:
    """A ``rules.ListProvider`` answering ``contains(name, value)`` from one prefetched round trip."""

    def __init__(
        self, client: ListClient, prefix: str = "bypass:", *, clock_ms: Callable[[], int] | None = None
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._known: dict[tuple[str, str], bool] = {}
        self._unblocks: dict[tuple[str, str], Unblock | None] = {}
        self.round_trips = 0
        self.misses = 0

    def _queue(self, pipe: ListPipeline, name: str, member: str) -> None:
        entity = _unblock_entity(name)
        if entity is None:
            pipe.sismember(list_key(self._prefix, name), member)
        else:
            pipe.hget(unblock_key(self._prefix, entity), member)

    def _store(self, name: str, member: str, answer: Any) -> bool:
        entity = _unblock_entity(name)
        if entity is None:
            known = bool(answer)
        else:
            found = decode_unblock(entity, member, answer)
            found = found if found is not None and found.active(self._clock_ms()) else None
            self._unblocks[(entity, member)] = found
            known = found is not None
        self._known[(name, member)] = known
        return known

    def prefetch(self, probes: Iterable[tuple[str, Any]]) -> None:
        """Replace the cache with the answers for ``probes``, fetched in one pipeline."""
        wanted = sorted({(name, _member(value)) for name, value in probes})
        self._known = {}
        self._unblocks = {}
        if not wanted:
            return
        import redis

        pipe = self._client.pipeline(transaction=False)
        for name, member in wanted:
            self._queue(pipe, name, member)
        try:
            answers = pipe.execute()
        except redis.RedisError as exc:
            raise ListUnavailableError(f"Redis list look-up failed: {exc}", retry_after=1.0) from exc
        self.round_trips += 1
        for (name, member), answer in zip(wanted, answers, strict=True):
            self._store(name, member, answer)

    def contains(self, name: str, value: Any) -> bool:
        probe = (name, _member(value))
        known = self._known.get(probe)
        if known is None:
            self.misses += 1
            self.round_trips += 1
            import redis

            entity = _unblock_entity(name)
            try:
                if entity is None:
                    answer: Any = self._client.sismember(list_key(self._prefix, name), probe[1])
                else:
                    answer = self._client.hget(unblock_key(self._prefix, entity), probe[1])
            except redis.RedisError as exc:
                raise ListUnavailableError(f"Redis list look-up failed: {exc}", retry_after=1.0) from exc
            known = self._store(name, probe[1], answer)
        return known

    def prefetch_unblocks(self, entity: str, keys: Iterable[str]) -> None:
        """Fetch the unblock overrides of ``keys`` in one pipeline, always afresh (the processor
        calls it once per batch that would emit blacklist entries: an override set a second
        ago must count)."""
        name = unblock_list_name(entity)
        wanted = sorted({_member(k) for k in keys})
        if not wanted:
            return
        import redis

        pipe = self._client.pipeline(transaction=False)
        for member in wanted:
            self._queue(pipe, name, member)
        try:
            answers = pipe.execute()
        except redis.RedisError as exc:
            raise ListUnavailableError(f"Redis unblock look-up failed: {exc}", retry_after=1.0) from exc
        self.round_trips += 1
        for member, answer in zip(wanted, answers, strict=True):
            self._store(name, member, answer)

    def unblock(self, entity: str, key: str) -> Unblock | None:
        """The active unblock override of ``entity:key`` (prefetched as the probe
        ``("unblock.<entity>", key)``; looked up on its own when it was not)."""
        member = _member(key)
        if (entity, member) not in self._unblocks:
            self.contains(unblock_list_name(entity), member)
        return self._unblocks.get((entity, member))


def provider_from_settings(settings: RedisSettings) -> PrefetchingListProvider:
    """The live agents' ``in_list`` provider for these settings (``redis_url``, ``redis_key_prefix``)."""
    from sinks.redis_mirror import redis_client

    return PrefetchingListProvider(redis_client(settings.redis_url), settings.redis_key_prefix)
