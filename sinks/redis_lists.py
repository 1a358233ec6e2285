"""Named lists for ``in_list()`` rules, kept in Redis sets.

    <prefix>list:<name>   set of values (strings)

``bypass lists add|remove|show NAME VALUE...`` edit them. The live agents read
them through :class:`PrefetchingListProvider`: before evaluating a batch, the
agent asks the rule set which (list, value) pairs the batch may probe
(``RuleSet.list_probes``), fetches them all in one pipelined round trip, and the
rules' ``contains(name, value)`` calls are then answered from memory. A probe
that was not prefetched is looked up on its own (and counted in ``misses``), so
a forgotten probe costs a round trip, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from sinks.base import SinkBackpressureError


class ListPipeline(Protocol):
    """What the provider calls on a ``redis.client.Pipeline`` (non-transactional)."""

    def sismember(self, name: str, value: str) -> object: ...

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


class PrefetchingListProvider:
    """A ``rules.ListProvider`` answering ``contains(name, value)`` from one prefetched round trip."""

    def __init__(self, client: ListClient, prefix: str = "bypass:") -> None:
        self._client = client
        self._prefix = prefix
        self._known: dict[tuple[str, str], bool] = {}
        self.round_trips = 0
        self.misses = 0

    def prefetch(self, probes: Iterable[tuple[str, Any]]) -> None:
        """Replace the cache with the answers for ``probes``, fetched in one pipeline."""
        wanted = sorted({(name, _member(value)) for name, value in probes})
        self._known = {}
        if not wanted:
            return
        import redis

        pipe = self._client.pipeline(transaction=False)
        for name, member in wanted:
            pipe.sismember(list_key(self._prefix, name), member)
        try:
            answers = pipe.execute()
        except redis.RedisError as exc:
            raise ListUnavailableError(f"Redis list look-up failed: {exc}", retry_after=1.0) from exc
        self.round_trips += 1
        self._known = {probe: bool(answer) for probe, answer in zip(wanted, answers, strict=True)}

    def contains(self, name: str, value: Any) -> bool:
        probe = (name, _member(value))
        known = self._known.get(probe)
        if known is None:
            self.misses += 1
            self.round_trips += 1
            import redis

            try:
                known = bool(self._client.sismember(list_key(self._prefix, name), probe[1]))
            except redis.RedisError as exc:
                raise ListUnavailableError(f"Redis list look-up failed: {exc}", retry_after=1.0) from exc
            self._known[probe] = known
        return known


def provider_from_settings(settings: RedisSettings) -> PrefetchingListProvider:
    """The live agents' ``in_list`` provider for these settings (``redis_url``, ``redis_key_prefix``)."""
    from sinks.redis_mirror import redis_client

    return PrefetchingListProvider(redis_client(settings.redis_url), settings.redis_key_prefix)
