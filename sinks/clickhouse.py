"""ClickHouse sink: ``bypass.hits`` -> ``risk_hits``, ``bypass.blacklist`` -> ``risk_blacklist``,
``bypass.decisions`` -> ``risk_decisions``, and the raw event topics -> ``risk_events`` (the
event archive: each message decoded by the worker's own decoder, so personal fields are
hashed exactly as at ingest; a message the decoder refuses is skipped, the worker
dead-letters it already).

Pure parts (row conversion, dedup tokens) are plain functions, tested without a
server. :class:`ClickHouseSink` follows the add()/flush() interface of
:mod:`sinks.base`: a batch is inserted table by table, each insert with an
``insert_deduplication_token`` derived from the topic/partition/offset ranges
it holds, so an in-process retry of the same batch is dropped by ClickHouse;
across restarts (a batch re-read with other boundaries) the
ReplacingMergeTree keyed by ``hit_id`` collapses the copies.

The record contracts and their checks are those of :mod:`sinks.records`. Hits (the
volume) are checked in Python (``hit_values``: one flat type check per record, equivalent
to :func:`sinks.records.check_hit`, which names the problem when the flat check fails),
held column by column and inserted in the Native format: no text for the server to
parse (JSONEachRow cost it ~1.5x the CPU per row), ``event_time`` sent as DateTime64(3)
ticks (epoch ms). Archived events and decisions take the same Native path
(:func:`event_values`, :func:`decision_values`). Blacklist entries (a trickle) go as
JSONEachRow lines, checked by :func:`sinks.records.check_blacklist`.

Archived events (the volume of the raw topics) are held in one flat list, a row's values
one after the other, and cut into columns by strided slices when inserted: one ``extend``
per row, and no object per row for the cyclic GC to count and scan (a tuple per row, even
one it stops tracking at its first look, made the GC a tenth of the writer's time).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypedDict
from urllib.parse import urlparse

import orjson

from features.errors import BypassError
from sinks.base import RecordError, SinkBackpressureError, SourceRecord
from sinks.records import (
    HIT_FIELDS,
    MAX_MS,
    MIN_MS,
    check_blacklist,
    check_decision,
    check_hit,
    decode_object,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

#: ``risk_hits`` column -> the ``bypass.hits`` field (:data:`sinks.records.HIT_FIELDS`) it is
#: made from, in the table's column order: ``event_ts`` becomes ``event_time`` and ``features``
#: feeds two columns (numbers, text); :data:`HIT_FIELDS_NOT_STORED` are the others.
HIT_COLUMN_FIELDS: Final[Mapping[str, str]] = {
    "hit_id": "hit_id",
    "event_id": "event_id",
    "event_type": "event_type",
    "event_time": "event_ts",
    "entity": "entity",
    "key": "key",
    "rule_id": "rule_id",
    "label": "label",
    "score": "score",
    "mode": "mode",
    "counted": "counted",
    "suppressed": "suppressed",
    "rollout_excluded": "rollout_excluded",
    "error": "error",
    "features": "features",
    "features_text": "features",
    "decision": "decision",
    "ruleset_version": "ruleset_version",
    "run_id": "run_id",
    "source_topic": "source_topic",
    "source_partition": "source_partition",
    "source_offset": "source_offset",
}
HIT_COLUMNS: Final[tuple[str, ...]] = tuple(HIT_COLUMN_FIELDS)
#: The ``bypass.hits`` fields ``risk_hits`` does not store (and the writer does not check).
HIT_FIELDS_NOT_STORED: Final[frozenset[str]] = frozenset(HIT_FIELDS) - set(HIT_COLUMN_FIELDS.values())

#: ``risk_blacklist`` columns: the ``bypass.blacklist`` fields (``event_ts`` as ``event_time``)
#: and the blacklist record's own Kafka coordinates.
BLACKLIST_COLUMNS: Final[tuple[str, ...]] = (
    "entity",
    "key",
    "label",
    "rule_ids",
    "event_id",
    "event_time",
    "expires_at",
    "ruleset_version",
    "source_topic",
    "source_partition",
    "source_offset",
)


#: ``risk_events`` columns (the archive of valid raw events, as ingest decodes them).
EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "event_type",
    "event_time",
    "user_id",
    "device_id",
    "ip",
    "phone",
    "geo_lat",
    "geo_lon",
    "geo_city",
    "attrs",
    "source_topic",
    "source_partition",
    "source_offset",
)


#: ``risk_decisions`` columns: the ``bypass.decisions`` fields (``event_ts`` as ``event_time``).
DECISION_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "event_type",
    "event_time",
    "entity",
    "key",
    "decision",
    "score",
    "rule_ids",
    "shadow_rule_ids",
    "sample_rate",
    "ruleset_version",
    "run_id",
    "source_topic",
    "source_partition",
    "source_offset",
)


def decision_values(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """A decoded ``bypass.decisions`` record -> the ``risk_decisions`` values in
    ``DECISION_COLUMNS`` order (checked by :func:`sinks.records.check_decision`)."""
    d = check_decision(obj)
    return (
        d["event_id"],
        d["event_type"],
        d["event_ts"],
        d["entity"],
        d["key"],
        d["decision"],
        float(d["score"]),
        d["rule_ids"],
        d["shadow_rule_ids"],
        float(d["sample_rate"]),
        d["ruleset_version"],
        d["run_id"],
        d["source_topic"],
        d["source_partition"],
        d["source_offset"],
    )


class EventDecoder(Protocol):
    """What the archive needs of :class:`streams.core.envelope.EnvelopeDecoder`: raw bytes ->
    a validated event with its personal fields hashed, or a BypassError (invalid: skipped)."""

    def decode(
        self, raw: bytes | None, kafka_ts_ms: int | None = None, *, now_ms: int | None = None
    ) -> dict[str, Any]: ...


def event_values(event: Mapping[str, Any], record: SourceRecord) -> tuple[Any, ...]:
    """A decoded, validated event (:meth:`EventDecoder.decode`) -> the ``risk_events`` values in
    ``EVENT_COLUMNS`` order, as the Native insert takes them (``event_time`` as epoch ms,
    ``attrs`` as JSON text, keys sorted)."""
    get = event.get
    geo, attrs = get("geo"), get("attrs")
    lat = lon = None
    city = ""
    if geo:
        lat, lon, city = geo.get("lat"), geo.get("lon"), geo.get("city") or ""
        if lat is not None:
            lat, lon = float(lat), float(lon)
    return (
        event["event_id"],
        event["type"],
        event["ts"],
        event["user_id"],
        get("device_id") or "",
        get("ip") or "",
        get("phone") or "",
        lat,
        lon,
        city,
        # as text: orjson's bytes keep the whole buffer it wrote into, and 50,000 of them held
        # until the insert fragmented the C heap (~2-4 us per row more for the consumer thread)
        orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS).decode() if attrs else "",
        record[0],  # topic, partition, offset: by index, a NamedTuple's attributes cost more
        record[1],
        record[2],
    )


def split_features(features: Any) -> tuple[dict[str, float | None], dict[str, str]]:
    """The rule's feature values -> (numeric map, text map).

    Numbers and booleans (as 0/1) and nulls go to the numeric map; strings go
    to the text map as they are; anything else (lists, objects) as JSON text.
    Exact types (what JSON decodes to) take a quick branch; subclasses the
    generic one.
    """
    if features is None:
        return {}, {}
    if not isinstance(features, dict):
        raise RecordError("field 'features' must be an object", reason="wrong_type", field="features")
    numbers: dict[str, float | None] = {}
    texts: dict[str, str] = {}
    for name, value in features.items():
        t = type(value)
        if t is float:
            numbers[name] = value if value - value == 0.0 else None  # inf - inf and nan are nan
        elif t is int:
            numbers[name] = float(value)
        elif value is None:
            numbers[name] = None
        elif t is str:
            texts[name] = value
        elif isinstance(value, bool):
            numbers[name] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            f = float(value)
            numbers[name] = f if math.isfinite(f) else None
        elif isinstance(value, str):
            texts[name] = str(value)
        else:
            try:
                texts[name] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            except TypeError as exc:  # nested beyond what JSON encoders recurse, or not JSON at all
                raise RecordError(
                    f"feature {name!r} cannot be stored as JSON text: {exc}",
                    reason="bad_value",
                    field="features",
                ) from None
    return numbers, texts


def ms_text(ms: int) -> str:
    """Epoch ms -> the text ClickHouse parses exactly into DateTime64(3): ``"1763856000.123"``."""
    return f"{ms // 1000:010d}.{ms % 1000:03d}"


def hit_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded ``bypass.hits`` record -> a ``risk_hits`` row (column -> value, JSONEachRow-ready).

    Raises RecordError naming the field when the record does not fit the schema. The
    source coordinates are the record's own fields (the raw event's topic/partition/offset).
    """
    row = dict(zip(HIT_COLUMNS, hit_values(obj), strict=True))
    row["event_time"] = ms_text(row["event_time"])
    return row


def hit_values(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """A decoded ``bypass.hits`` record -> the ``risk_hits`` values in ``HIT_COLUMNS`` order,
    as the Native insert takes them (``event_time`` as integer epoch ms: DateTime64(3) ticks).

    A well-formed record takes one fast, flat check; anything else goes through the
    field-by-field path that names the problem (RecordError)."""
    values = _hit_values_fast(obj)
    if values is not None:
        return values
    row = _hit_row_checked(obj)
    row["event_time"] = obj["event_ts"]  # checked by _hit_row_checked: an int in range
    return tuple(row.values())


def _hit_row_fast(o: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fast path as a JSONEachRow row (None when the record needs the checked path)."""
    values = _hit_values_fast(o)
    if values is None:
        return None
    row = dict(zip(HIT_COLUMNS, values, strict=True))
    row["event_time"] = ms_text(row["event_time"])
    return row


def _hit_values_fast(o: Mapping[str, Any]) -> tuple[Any, ...] | None:
    try:
        hit_id, event_id, entity, rule_id = o["hit_id"], o["event_id"], o["entity"], o["rule_id"]
        mode, version, run_id = o["mode"], o["ruleset_version"], o["run_id"]
        event_type, key, source_topic = o["event_type"], o["key"], o["source_topic"]
        ets, score, part, off = o["event_ts"], o["score"], o["source_partition"], o["source_offset"]
        counted, suppressed, excluded = o["counted"], o["suppressed"], o["rollout_excluded"]
    except KeyError:
        return None
    label, decision, features, error = o.get("label"), o.get("decision"), o.get("features"), o.get("error")
    str_ = str
    if not (
        type(hit_id) is str_ and hit_id and type(event_id) is str_ and event_id
        and type(entity) is str_ and entity and type(rule_id) is str_ and rule_id
        and type(mode) is str_ and mode and type(version) is str_ and version
        and type(run_id) is str_ and run_id and type(event_type) is str_
        and type(key) is str_ and type(source_topic) is str_
        and type(ets) is int and MIN_MS <= ets <= MAX_MS
        and type(part) is int and -(2**31) <= part < 2**31
        and type(off) is int and -(2**63) <= off < 2**63
        and (type(score) is float or type(score) is int) and score - score == 0
        and type(counted) is bool and type(suppressed) is bool and type(excluded) is bool
        and (label is None or type(label) is str_) and (decision is None or type(decision) is str_)
        and (features is None or type(features) is dict)
        and (error is None or type(error) is str_)
    ):  # fmt: skip
        return None
    numbers, texts = split_features(features)
    return (
        hit_id,
        event_id,
        event_type,
        ets,
        entity,
        key,
        rule_id,
        label or "",
        float(score),
        mode,
        counted,
        suppressed,
        excluded,
        error or "",
        numbers,
        texts,
        decision or "",
        version,
        run_id,
        source_topic,
        part,
        off,
    )


def _hit_row_checked(obj: Mapping[str, Any]) -> dict[str, Any]:
    check_hit(obj)
    numbers, texts = split_features(obj.get("features"))
    return {
        "hit_id": obj["hit_id"],
        "event_id": obj["event_id"],
        "event_type": obj["event_type"],
        "event_time": ms_text(obj["event_ts"]),
        "entity": obj["entity"],
        "key": obj["key"],
        "rule_id": obj["rule_id"],
        "label": obj.get("label") or "",
        "score": float(obj["score"]),
        "mode": obj["mode"],
        "counted": obj["counted"],
        "suppressed": obj["suppressed"],
        "rollout_excluded": obj["rollout_excluded"],
        "error": obj.get("error") or "",
        "features": numbers,
        "features_text": texts,
        "decision": obj.get("decision") or "",
        "ruleset_version": obj["ruleset_version"],
        "run_id": obj["run_id"],
        "source_topic": obj["source_topic"],
        "source_partition": obj["source_partition"],
        "source_offset": obj["source_offset"],
    }


def blacklist_row(obj: Mapping[str, Any], record: SourceRecord) -> dict[str, Any]:
    """A decoded ``bypass.blacklist`` record -> a ``risk_blacklist`` row (checked by
    :func:`sinks.records.check_blacklist`; RecordError when it does not fit).

    Its source coordinates are those of the blacklist record itself.
    """
    entry = check_blacklist(obj)
    return {
        "entity": entry["entity"],
        "key": entry["key"],
        "label": entry["label"],
        "rule_ids": sorted(set(entry["rule_ids"])),
        "event_id": entry["event_id"],
        "event_time": ms_text(entry["event_ts"]),
        "expires_at": ms_text(entry["expires_at"]),
        "ruleset_version": entry["ruleset_version"],
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }


@dataclass
class OffsetRanges:
    """First and last offset seen per (topic, partition)."""

    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def add(self, topic: str, partition: int, offset: int) -> None:
        k = (topic, partition)
        cur = self.ranges.get(k)
        if cur is None:
            self.ranges[k] = (offset, offset)
        elif offset > cur[1]:
            self.ranges[k] = (cur[0], offset)
        elif offset < cur[0]:
            self.ranges[k] = (offset, cur[1])

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def describe(self) -> str:
        return ",".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))


def dedup_token(table: str, ranges: OffsetRanges) -> str:
    """``insert_deduplication_token`` of an insert: the target table plus the sorted
    topic/partition/offset ranges it holds. The same batch retried gives the same
    token; any other batch another one."""
    text = f"{table}|{ranges.describe()}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"bypass-{table}-{digest}"


# ClickHouse error codes that are a property of the inserted data, not of the server's state:
# CANNOT_PARSE_TEXT 6, CANNOT_PARSE_QUOTED_STRING 26, CANNOT_PARSE_INPUT_ASSERTION_FAILED 27,
# CANNOT_PARSE_DATE 38, CANNOT_PARSE_DATETIME 41, TYPE_MISMATCH 53, ARGUMENT_OUT_OF_BOUND 69,
# CANNOT_CONVERT_TYPE 70, CANNOT_PARSE_NUMBER 72, INCORRECT_DATA 117, TOO_LARGE_STRING_SIZE 131,
# VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE 321, VIOLATED_CONSTRAINT 469
DATA_ERROR_CODES = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 469})

_CODE = re.compile(r"Code: (\d+)\.")


def clickhouse_error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a failed call (None for network errors and the like)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"DB::Exception: (.*?)(?: \(version |$)", text, re.S)
    return (match.group(1) if match else text).strip().splitlines()[0] if text else type(exc).__name__


#: values a flat batch keeps after a row's columns: its record's key, value and timestamp
FLAT_TAIL: Final = 3


@dataclass
class _TableBatch:
    table: str
    columns: tuple[str, ...]
    # native: the rows are held column by column (``data``, one list per column, appended
    # through ``appends``) and inserted in the Native format; otherwise ``rows`` holds
    # JSONEachRow lines. Column lists of plain values keep the cyclic GC out of the way
    # (a tuple per row would be tracked and scanned again and again).
    native: bool = False
    # flat (archived events): a native batch held as ONE list, each row its column values
    # followed by its record's key, value and timestamp (``FLAT_TAIL``) - one ``extend`` per
    # row, no object per row for the GC to count or scan; its columns are strided slices,
    # and its record is the tail of the row (the columns end with the source coordinates)
    flat: bool = False
    rows: list[bytes] = field(default_factory=list)
    data: list[list[Any]] = field(default_factory=list)
    appends: list[Callable[[Any], None]] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    # the source of each row, as a plain tuple (SourceRecord fields): a tuple of plain values
    # is untracked by the cyclic GC at its first collection, a NamedTuple stays tracked, and
    # 50,000 long-lived tracked objects per batch made full collections the writer's largest cost
    records: list[tuple[Any, ...]] = field(default_factory=list)
    ranges: OffsetRanges = field(default_factory=OffsetRanges)

    def __post_init__(self) -> None:
        if self.flat:
            if self.columns[-3:] != ("source_topic", "source_partition", "source_offset"):
                raise ValueError("a flat batch's columns end with the source coordinates")
        elif self.native and not self.data:
            self.data = [[] for _ in self.columns]
            self.appends = [column.append for column in self.data]

    @property
    def width(self) -> int:
        """Values per row of a flat batch."""
        return len(self.columns) + FLAT_TAIL

    def column_values(self, lo: int, hi: int) -> Sequence[Sequence[Any]]:
        """The values of rows [lo, hi), column by column (a native batch)."""
        if self.flat:
            w = self.width
            return [self.values[lo * w + j : hi * w : w] for j in range(len(self.columns))]
        if lo == 0 and hi == len(self):
            return self.data
        return [column[lo:hi] for column in self.data]

    def __len__(self) -> int:
        return len(self.values) // self.width if self.flat else len(self.records)

    def record(self, i: int) -> SourceRecord:
        if self.flat:
            end = (i + 1) * self.width
            return SourceRecord(*self.values[end - 3 - FLAT_TAIL : end])
        return SourceRecord(*self.records[i])


class ConnectArgs(TypedDict, total=False):
    """Keyword arguments of ``clickhouse_connect.get_client`` taken from a URL and the settings."""

    host: str
    port: int
    secure: bool
    username: str
    password: str
    database: str


def parse_clickhouse_url(url: str) -> ConnectArgs:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    secure = parsed.scheme == "https"
    out: ConnectArgs = {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or (8443 if secure else 8123),
        "secure": secure,
    }
    if parsed.username:
        out["username"] = parsed.username
    if parsed.password:
        out["password"] = parsed.password
    return out


def connect(
    url: str,
    *,
    username: str = "default",
    password: str = "",
    database: str | None = None,
    connect_timeout: float = 5,
    send_receive_timeout: float = 60,
) -> Client:
    """A clickhouse-connect client for ``url`` (``http://host:8123``); a user and password in
    the URL win over ``username`` / ``password``."""
    import clickhouse_connect

    kwargs: ConnectArgs = {"username": username, "password": password}
    kwargs.update(parse_clickhouse_url(url))
    if database:
        kwargs["database"] = database
    return clickhouse_connect.get_client(
        connect_timeout=connect_timeout,
        send_receive_timeout=send_receive_timeout,
        autogenerate_session_id=False,
        **kwargs,
    )


class InsertContext(Protocol):
    """What the sink reads of a clickhouse-connect ``InsertContext``."""

    @property
    def column_types(self) -> Sequence[Any]: ...


class InsertClient(Protocol):
    """What :class:`ClickHouseSink` calls on a clickhouse-connect ``Client``."""

    def create_insert_context(self, table: str, column_names: Sequence[str]) -> InsertContext: ...

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        *,
        column_names: Sequence[str],
        column_types: Sequence[Any],
        column_oriented: bool,
        settings: dict[str, Any],
    ) -> object: ...

    def raw_insert(
        self,
        table: str,
        column_names: Sequence[str],
        *,
        insert_block: bytes,
        fmt: str,
        settings: dict[str, Any],
    ) -> object: ...


class ClickHouseSink:
    """Buffers hit, blacklist, event and decision records; ``flush()`` inserts them,
    token-deduplicated.

    ``topics`` maps a topic name to ``"hits"``, ``"blacklist"``, ``"events"`` (a raw event
    topic: each message decoded by ``decoder``, the worker's own, and archived into
    ``risk_events``; a message the decoder refuses is skipped - the worker dead-letters it
    already - and counted in ``skipped_events``) or ``"decisions"`` (``risk_decisions``).
    """

    def __init__(
        self,
        client: InsertClient,
        database: str,
        topics: Mapping[str, str],
        *,
        retry_after: float = 1.0,
        decoder: EventDecoder | None = None,
    ) -> None:
        self._client = client
        self._database = database
        self._topics = dict(topics)
        if "events" in self._topics.values() and decoder is None:
            raise ValueError("an 'events' topic needs the decoder")
        self._decoder = decoder
        self.skipped_events = 0
        self._retry_after = retry_after
        self._batches: dict[str, _TableBatch] = {}
        self._types: dict[str, Sequence[Any]] = {}
        self.rejected: list[tuple[SourceRecord, RecordError]] = []
        self.inserted_rows = 0
        self.inserts = 0

    def _batch(self, kind: str) -> _TableBatch:
        b = self._batches.get(kind)
        if b is None:
            if kind == "hits":
                b = _TableBatch(f"{self._database}.risk_hits", HIT_COLUMNS, native=True)
            elif kind == "events":
                b = _TableBatch(f"{self._database}.risk_events", EVENT_COLUMNS, native=True, flat=True)
            elif kind == "decisions":
                b = _TableBatch(f"{self._database}.risk_decisions", DECISION_COLUMNS, native=True)
            else:
                b = _TableBatch(f"{self._database}.risk_blacklist", BLACKLIST_COLUMNS)
            self._batches[kind] = b
        return b

    def add(self, record: SourceRecord) -> None:
        kind = self._topics.get(record.topic)
        if kind is None:
            raise RecordError(f"no table for topic {record.topic!r}", reason="unknown_topic")
        if kind == "events":
            self._add_event(record)
            return
        obj = decode_object(record.value)
        batch = self._batch(kind)
        if kind == "hits":
            values = hit_values(obj)
        elif kind == "decisions":
            values = decision_values(obj)
        if batch.native:
            for append, value in zip(batch.appends, values):  # noqa: B905 (same length)
                append(value)
        else:
            batch.rows.append(orjson.dumps(blacklist_row(obj, record)))
        batch.records.append(tuple(record))
        batch.ranges.add(record.topic, record.partition, record.offset)

    def _add_event(self, record: SourceRecord) -> None:
        try:  # the worker's decoder: validated, personal fields hashed exactly as at ingest
            event = self._decoder.decode(  # type: ignore[union-attr]  # checked in __init__
                record[4], record[5], now_ms=time.time_ns() // 1_000_000
            )
        except BypassError:
            self.skipped_events += 1  # the worker dead-letters it; nothing to archive
            return
        batch = self._batches.get("events") or self._batch("events")
        values = batch.values
        values += event_values(event, record)
        values += record[3:]  # key, value, timestamp: FLAT_TAIL
        batch.ranges.add(record[0], record[1], record[2])

    def pending(self) -> int:
        return sum(len(b) for b in self._batches.values())

    def clear(self) -> None:
        self._batches.clear()

    def take(self) -> dict[str, _TableBatch]:
        """Hand the buffered batches over (for ``write`` in another thread); the buffer restarts empty."""
        taken, self._batches = self._batches, {}
        return taken

    def _column_types(self, table: str, columns: tuple[str, ...]) -> Sequence[Any]:
        """The ClickHouse types of ``columns`` (asked once per table, again after a failed insert)."""
        types = self._types.get(table)
        if types is None:
            types = self._client.create_insert_context(table, list(columns)).column_types
            self._types[table] = types
        return types

    def _insert(self, batch: _TableBatch, lo: int, hi: int, token: str) -> None:
        if batch.native:
            # Native: typed columns, no text to parse on either side (about half the server's
            # CPU of JSONEachRow); the values were checked against the schema by hit_values
            self._client.insert(
                batch.table,
                batch.column_values(lo, hi),
                column_names=list(batch.columns),
                column_types=self._column_types(batch.table, batch.columns),
                column_oriented=True,
                settings={"insert_deduplication_token": token, "async_insert": 0},
            )
            return
        self._client.raw_insert(
            batch.table,
            list(batch.columns),
            insert_block=b"\n".join(batch.rows[lo:hi]),
            fmt="JSONEachRow",
            settings={
                "insert_deduplication_token": token,
                "async_insert": 0,
                "input_format_skip_unknown_fields": 0,
            },
        )

    def _insert_isolating(self, batch: _TableBatch, lo: int, hi: int, token: str) -> int:
        """Insert rows [lo, hi); when ClickHouse rejects their data, split in halves (sub-tokens
        derived from ``token``, so a retry splits the same way) until each rejected row stands
        alone, and hand those to ``rejected`` for the DLQ. Returns the rows written."""
        try:
            self._insert(batch, lo, hi, token)
            self.inserts += 1
            return hi - lo
        except Exception as exc:
            code = clickhouse_error_code(exc)
            if code not in DATA_ERROR_CODES:
                self._types.pop(batch.table, None)  # the table may have changed: ask again
                raise
            if hi - lo == 1:
                text = f"rejected by ClickHouse (code {code}): {_first_line(exc)}"[:500]
                error = RecordError(text, reason="rejected_by_clickhouse", code=code, table=batch.table)
                self.rejected.append((batch.record(lo), error))
                log.warning("%s: row from %s rejected: %s", batch.table, batch.record(lo)[:3], text[:300])
                return 0
        mid = (lo + hi) // 2
        return self._insert_isolating(batch, lo, mid, f"{token}/a") + self._insert_isolating(
            batch, mid, hi, f"{token}/b"
        )

    def write(self, batches: dict[str, _TableBatch]) -> int:
        """Insert ``batches`` (from ``take``), removing each table batch once ClickHouse accepted
        it; raise SinkBackpressureError keeping the rest. Returns the rows written.

        Rows ClickHouse refuses for their data (a constraint, a value it cannot parse) are
        isolated by bisection and listed in ``rejected`` (record, RecordError) for the DLQ, so one
        bad row never blocks the writer; any other failure is backpressure."""
        written = 0
        for kind in list(batches):
            batch = batches[kind]
            if len(batch):
                token = dedup_token(batch.table, batch.ranges)
                try:
                    written += self._insert_isolating(batch, 0, len(batch), token)
                except Exception as exc:
                    raise SinkBackpressureError(
                        f"ClickHouse insert into {batch.table} failed ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); the batch is kept and retried",
                        retry_after=self._retry_after,
                        table=batch.table,
                        rows=len(batch),
                    ) from exc
            del batches[kind]
        self.inserted_rows += written
        return written

    def take_rejected(self) -> list[tuple[SourceRecord, RecordError]]:
        """The rows ClickHouse refused since the last call: (record, error with reason
        ``rejected_by_clickhouse`` and the ClickHouse message)."""
        out, self.rejected = self.rejected, []
        return out

    def flush(self) -> int:
        """Insert every buffered table batch; raise SinkBackpressureError (keeping what
        was not written) when ClickHouse fails. Returns the number of rows written."""
        return self.write(self._batches)
