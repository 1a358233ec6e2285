"""Redis mirror of ``bypass.blacklist``, read by inline services in well under a millisecond.

Layout (``prefix`` from the setting ``redis_key_prefix``, default ``bypass:``)::

    <prefix>bl:<entity>:<key>   hash  label -> "<expires_at>|<ruleset_version>|<rule,ids>|<event_id>"
                                      the key expires (PEXPIREAT) at the latest live label's expiry

Writing an entry is one Lua script call, atomic and idempotent: rule ids are
merged, the later expiry wins (with its rule-set version and event id), labels
already expired are pruned, and the key's expiry is set to the latest one left.
Redelivering an entry therefore changes nothing, and re-applying every entry
after a Redis restart rebuilds the same state. Entries already expired when
they arrive are not written at all. Readers filter labels by ``expires_at``
too, so an expired label is never reported even before Redis evicts the key.

A record is checked by :func:`sinks.records.check_blacklist` (the ClickHouse writer's
check too), then for what the hash value can hold (:func:`entry_from_record`); the
mirror's form of it is :class:`MirrorEntry`, with the record's field names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sinks.base import RecordError, SinkBackpressureError, SourceRecord
from sinks.records import blacklist_key, check_blacklist, decode_object

if TYPE_CHECKING:
    import redis

__all__ = [
    "HashReader",
    "MirrorClient",
    "MirrorEntry",
    "MirrorPipeline",
    "RedisBlacklistSink",
    "decode_entry",
    "encode_entry",
    "entry_from_record",
    "lookup",
    "mirror_key",
    "redis_client",
]

log = logging.getLogger(__name__)


class MirrorPipeline(Protocol):
    """What the sink calls on a ``redis.client.Pipeline`` (non-transactional)."""

    def execute(self) -> list[Any]: ...


class MirrorClient(Protocol):
    """What the sink calls on a ``redis.Redis`` (a redis-py ``Script`` is untyped: Any)."""

    def register_script(self, script: str) -> Any: ...

    def pipeline(self, transaction: bool = ...) -> MirrorPipeline: ...


class HashReader(Protocol):
    """What :func:`lookup` calls on a ``redis.Redis``."""

    def hgetall(self, name: str) -> Mapping[bytes | str, bytes | str]: ...


_MERGE_LUA = """
local exp = ARGV[2]
local ver = ARGV[3]
local ev = ARGV[4]
local rules = {}
for r in string.gmatch(ARGV[5], '[^,]+') do rules[r] = true end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local cexp, cver, crules, cev = string.match(cur, '^(%d+)|([^|]*)|([^|]*)|(.*)$')
  if cexp then
    for r in string.gmatch(crules, '[^,]+') do rules[r] = true end
    if tonumber(cexp) >= tonumber(exp) then exp = cexp; ver = cver; ev = cev end
  end
end
local list = {}
for r, _ in pairs(rules) do table.insert(list, r) end
table.sort(list)
redis.call('HSET', KEYS[1], ARGV[1], exp .. '|' .. ver .. '|' .. table.concat(list, ',') .. '|' .. ev)
local now = tonumber(ARGV[6])
local maxexp = nil
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local e = string.match(all[i + 1], '^(%d+)|')
  if e == nil or tonumber(e) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif maxexp == nil or tonumber(e) > tonumber(maxexp) then
    maxexp = e
  end
end
if maxexp then
  redis.call('PEXPIREAT', KEYS[1], maxexp)
  return maxexp
end
return 0
"""


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for ``url`` (``redis://host:6379/0``); short timeouts, health checks."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10)


def mirror_key(prefix: str, entity: str, key: str) -> str:
    """The Redis hash of ``entity:key``: ``<prefix>bl:<entity>:<key>``."""
    return f"{prefix}bl:{blacklist_key(entity, key)}"


@dataclass(frozen=True, slots=True)
class MirrorEntry:
    """One label of an entity as the mirror holds it: a ``bypass.blacklist`` record
    (:class:`sinks.records.BlacklistRecord`: same field names) without ``event_ts``, which
    Redis does not keep, with the rule ids merged (sorted, distinct)."""

    entity: str
    key: str
    label: str
    rule_ids: tuple[str, ...]
    expires_at: int
    ruleset_version: str
    event_id: str


def encode_entry(entry: MirrorEntry) -> str:
    """The hash value of ``entry``: ``"<expires_at>|<ruleset_version>|<rule,ids>|<event_id>"``."""
    rules = ",".join(sorted(set(entry.rule_ids)))
    return f"{entry.expires_at}|{entry.ruleset_version}|{rules}|{entry.event_id}"


def decode_entry(entity: str, key: str, label: str, value: str) -> MirrorEntry | None:
    """A hash value (:func:`encode_entry`) -> MirrorEntry, None when it is not one."""
    parts = value.split("|", 3)
    if len(parts) != 4 or not parts[0].isdigit():
        return None
    exp, version, rules, event_id = parts
    return MirrorEntry(
        entity, key, label, tuple(r for r in rules.split(",") if r), int(exp), version, event_id
    )


def entry_from_record(obj: Mapping[str, Any]) -> MirrorEntry:
    """A decoded ``bypass.blacklist`` record -> MirrorEntry, or RecordError.

    The record is checked by :func:`sinks.records.check_blacklist`; on top, what the hash
    value's encoding needs: no '|' in ``entity``, ``label`` or ``ruleset_version`` (the
    ``event_id`` comes last and may hold one) and rule ids non-empty without ','."""
    record = check_blacklist(obj)
    for name in ("entity", "label", "ruleset_version"):
        if "|" in record[name]:
            raise RecordError(f"field {name!r} must not contain '|'", reason="bad_value", field=name)
    rule_ids = record["rule_ids"]
    if not all(r and "," not in r for r in rule_ids):
        raise RecordError("field 'rule_ids' must be a list of rule ids", reason="bad_value", field="rule_ids")
    return MirrorEntry(
        entity=record["entity"],
        key=record["key"],
        label=record["label"],
        rule_ids=tuple(sorted(set(rule_ids))),
        expires_at=record["expires_at"],
        ruleset_version=record["ruleset_version"],
        event_id=record["event_id"],
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisBlacklistSink:
    """add()/flush() sink writing blacklist entries to Redis with the merge script."""

    def __init__(
        self, client: MirrorClient, *, prefix: str = "bypass:", clock_ms: Callable[[], int] = _now_ms
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock_ms = clock_ms
        self._script = client.register_script(_MERGE_LUA)
        self._pending: list[MirrorEntry] = []
        self.skipped_expired = 0
        self.written = 0

    def add(self, record: SourceRecord) -> None:
        entry = entry_from_record(decode_object(record.value))
        self._pending.append(entry)

    def pending(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def flush(self) -> int:
        if not self._pending:
            return 0
        import redis

        now = self._clock_ms()
        live = [e for e in self._pending if e.expires_at > now]
        try:
            if live:
                pipe = self._client.pipeline(transaction=False)
                for e in live:
                    self._script(
                        keys=[mirror_key(self._prefix, e.entity, e.key)],
                        args=[
                            e.label,
                            str(e.expires_at),
                            e.ruleset_version,
                            e.event_id,
                            ",".join(e.rule_ids),
                            str(now),
                        ],
                        client=pipe,
                    )
                pipe.execute()
        except redis.RedisError as exc:
            raise SinkBackpressureError(
                f"Redis write failed ({type(exc).__name__}: {exc}); the batch is kept and retried",
                retry_after=1.0,
            ) from exc
        self.skipped_expired += len(self._pending) - len(live)
        self.written += len(live)
        self._pending.clear()
        return len(live)


def lookup(
    client: HashReader, prefix: str, entity: str, key: str, *, now_ms: int | None = None
) -> list[MirrorEntry]:
    """The live (not yet expired) blacklist labels of ``entity:key``."""
    now = _now_ms() if now_ms is None else now_ms
    raw = client.hgetall(mirror_key(prefix, entity, key))
    out: list[MirrorEntry] = []
    for label, value in raw.items():
        label_s = label.decode() if isinstance(label, bytes) else str(label)
        value_s = value.decode() if isinstance(value, bytes) else str(value)
        entry = decode_entry(entity, key, label_s, value_s)
        if entry is not None and entry.expires_at > now:
            out.append(entry)
    return sorted(out, key=lambda e: e.label)
