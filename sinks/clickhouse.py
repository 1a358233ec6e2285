"""ClickHouse sink: ``bypass.hits`` -> ``risk_hits``, ``bypass.blacklist`` -> ``risk_blacklist``.

Pure parts (row conversion, dedup tokens) are plain functions, tested without a
server. :class:`ClickHouseSink` follows the add()/flush() interface of
:mod:`sinks.base`: a batch is inserted table by table, each insert with an
``insert_deduplication_token`` derived from the topic/partition/offset ranges
it holds, so an in-process retry of the same batch is dropped by ClickHouse;
across restarts (a batch re-read with other boundaries) the
ReplacingMergeTree keyed by ``hit_id`` collapses the copies.

Hits (the volume) are checked in Python (``hit_values``: one flat type check per
record, the field-by-field path naming the problem otherwise), held column by
column and inserted in the Native format: no text for the server to parse
(JSONEachRow cost it ~1.5x the CPU per row), ``event_time`` sent as DateTime64(3)
ticks (epoch ms). Blacklist entries (a trickle) go as JSONEachRow lines.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson

from sinks.base import RecordError, SinkBackpressureError, SourceRecord

log = logging.getLogger(__name__)

HIT_COLUMNS: tuple[str, ...] = (
    "hit_id",
    "event_id",
    "event_type",
    "event_time",
    "entity",
    "key",
    "rule_id",
    "label",
    "score",
    "mode",
    "counted",
    "suppressed",
    "rollout_excluded",
    "features",
    "features_text",
    "decision",
    "ruleset_version",
    "run_id",
    "source_topic",
    "source_partition",
    "source_offset",
)

BLACKLIST_COLUMNS: tuple[str, ...] = (
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

# 1970..2286 in ms (10-digit seconds: what DateTime64(3) text parsing accepts); anything
# else is a unit mistake (seconds or microseconds)
_MIN_MS = 0
_MAX_MS = 9_999_999_999_999


def decode_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise RecordError("record has no value (tombstone)", reason="empty_value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"value is not JSON: {exc}", reason="not_json") from None
    if not isinstance(obj, dict):
        raise RecordError(f"value is not a JSON object (got {type(obj).__name__})", reason="not_object")
    return obj


def _str(obj: Mapping[str, Any], name: str, *, required: bool = True, nonempty: bool = False) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
        return ""
    if not isinstance(value, str):
        raise RecordError(
            f"field {name!r} must be a string, got {type(value).__name__}",
            reason="wrong_type",
            field=name,
        )
    if nonempty and not value:
        raise RecordError(f"field {name!r} is empty", reason="bad_value", field=name)
    return value


def _int(obj: Mapping[str, Any], name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(
            f"field {name!r} must be an integer, got {type(value).__name__}",
            reason="wrong_type",
            field=name,
        )
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RecordError(f"field {name!r} = {value} is out of range", reason="bad_value", field=name)
    return value


def _ms(obj: Mapping[str, Any], name: str) -> int:
    return _int(obj, name, lo=_MIN_MS, hi=_MAX_MS)


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        if value is None:
            raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
        raise RecordError(f"field {name!r} must be true or false", reason="wrong_type", field=name)
    return value


def _float(obj: Mapping[str, Any], name: str) -> float:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"field {name!r} is missing", reason="missing_field", field=name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"field {name!r} must be a number", reason="wrong_type", field=name)
    result = float(value)
    if not math.isfinite(result):
        raise RecordError(f"field {name!r} is not finite", reason="bad_value", field=name)
    return result


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
            texts[name] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
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
    label, decision, features = o.get("label"), o.get("decision"), o.get("features")
    str_ = str
    if not (
        type(hit_id) is str_ and hit_id and type(event_id) is str_ and event_id
        and type(entity) is str_ and entity and type(rule_id) is str_ and rule_id
        and type(mode) is str_ and mode and type(version) is str_ and version
        and type(run_id) is str_ and run_id and type(event_type) is str_
        and type(key) is str_ and type(source_topic) is str_
        and type(ets) is int and _MIN_MS <= ets <= _MAX_MS
        and type(part) is int and -(2**31) <= part < 2**31
        and type(off) is int and -(2**63) <= off < 2**63
        and (type(score) is float or type(score) is int) and score - score == 0
        and type(counted) is bool and type(suppressed) is bool and type(excluded) is bool
        and (label is None or type(label) is str_) and (decision is None or type(decision) is str_)
        and (features is None or type(features) is dict)
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
    numbers, texts = split_features(obj.get("features"))
    decision = obj.get("decision")
    if decision is not None and not isinstance(decision, str):
        raise RecordError("field 'decision' must be a string", reason="wrong_type", field="decision")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise RecordError("field 'label' must be a string", reason="wrong_type", field="label")
    return {
        "hit_id": _str(obj, "hit_id", nonempty=True),
        "event_id": _str(obj, "event_id", nonempty=True),
        "event_type": _str(obj, "event_type"),
        "event_time": ms_text(_ms(obj, "event_ts")),
        "entity": _str(obj, "entity", nonempty=True),
        "key": _str(obj, "key"),
        "rule_id": _str(obj, "rule_id", nonempty=True),
        "label": label or "",
        "score": _float(obj, "score"),
        "mode": _str(obj, "mode", nonempty=True),
        "counted": _bool(obj, "counted"),
        "suppressed": _bool(obj, "suppressed"),
        "rollout_excluded": _bool(obj, "rollout_excluded"),
        "features": numbers,
        "features_text": texts,
        "decision": decision or "",
        "ruleset_version": _str(obj, "ruleset_version", nonempty=True),
        "run_id": _str(obj, "run_id", nonempty=True),
        "source_topic": _str(obj, "source_topic"),
        "source_partition": _int(obj, "source_partition", lo=-(2**31), hi=2**31 - 1),
        "source_offset": _int(obj, "source_offset", lo=-(2**63), hi=2**63 - 1),
    }


def blacklist_row(obj: Mapping[str, Any], record: SourceRecord) -> dict[str, Any]:
    """A decoded ``bypass.blacklist`` record -> a ``risk_blacklist`` row.

    Its source coordinates are those of the blacklist record itself.
    """
    rule_ids = obj.get("rule_ids")
    if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
        raise RecordError(
            "field 'rule_ids' must be a list of strings",
            reason="wrong_type",
        )
    return {
        "entity": _str(obj, "entity", nonempty=True),
        "key": _str(obj, "key"),
        "label": _str(obj, "label", nonempty=True),
        "rule_ids": sorted(set(rule_ids)),
        "event_id": _str(obj, "event_id", nonempty=True),
        "event_time": ms_text(_ms(obj, "event_ts")),
        "expires_at": ms_text(_ms(obj, "expires_at")),
        "ruleset_version": _str(obj, "ruleset_version", nonempty=True),
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
        self.ranges[k] = (offset, offset) if cur is None else (min(cur[0], offset), max(cur[1], offset))

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


@dataclass
class _TableBatch:
    table: str
    columns: tuple[str, ...]
    # native: the rows are held column by column (``data``, one list per column, appended
    # through ``appends``) and inserted in the Native format; otherwise ``rows`` holds
    # JSONEachRow lines. Column lists of plain values keep the cyclic GC out of the way
    # (a tuple per row would be tracked and scanned again and again).
    native: bool = False
    rows: list[bytes] = field(default_factory=list)
    data: list[list[Any]] = field(default_factory=list)
    appends: list[Any] = field(default_factory=list)
    # the source of each row, as a plain tuple (SourceRecord fields): a tuple of plain values
    # is untracked by the cyclic GC at its first collection, a NamedTuple stays tracked, and
    # 50,000 long-lived tracked objects per batch made full collections the writer's largest cost
    records: list[tuple[Any, ...]] = field(default_factory=list)
    ranges: OffsetRanges = field(default_factory=OffsetRanges)

    def __post_init__(self) -> None:
        if self.native and not self.data:
            self.data = [[] for _ in self.columns]
            self.appends = [column.append for column in self.data]

    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> SourceRecord:
        return SourceRecord(*self.records[i])


def parse_clickhouse_url(url: str) -> dict[str, Any]:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    secure = parsed.scheme == "https"
    out: dict[str, Any] = {
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
) -> Any:
    """A clickhouse-connect client for ``url`` (``http://host:8123``)."""
    import clickhouse_connect

    kwargs = {"username": username, "password": password, **parse_clickhouse_url(url)}
    if database:
        kwargs["database"] = database
    return clickhouse_connect.get_client(
        connect_timeout=connect_timeout,
        send_receive_timeout=send_receive_timeout,
        autogenerate_session_id=False,
        **kwargs,
    )


class ClickHouseSink:
    """Buffers hit and blacklist records; ``flush()`` inserts them, token-deduplicated.

    ``topics`` maps a topic name to ``"hits"`` or ``"blacklist"``.
    """

    def __init__(
        self,
        client: Any,
        database: str,
        topics: Mapping[str, str],
        *,
        retry_after: float = 1.0,
    ) -> None:
        self._client = client
        self._database = database
        self._topics = dict(topics)
        self._retry_after = retry_after
        self._batches: dict[str, _TableBatch] = {}
        self._types: dict[str, Any] = {}
        self.rejected: list[tuple[SourceRecord, RecordError]] = []
        self.inserted_rows = 0
        self.inserts = 0

    def _batch(self, kind: str) -> _TableBatch:
        b = self._batches.get(kind)
        if b is None:
            if kind == "hits":
                b = _TableBatch(f"{self._database}.risk_hits", HIT_COLUMNS, native=True)
            else:
                b = _TableBatch(f"{self._database}.risk_blacklist", BLACKLIST_COLUMNS)
            self._batches[kind] = b
        return b

    def add(self, record: SourceRecord) -> None:
        kind = self._topics.get(record.topic)
        if kind is None:
            raise RecordError(f"no table for topic {record.topic!r}", reason="unknown_topic")
        obj = decode_object(record.value)
        batch = self._batch(kind)
        if kind == "hits":
            for append, value in zip(batch.appends, hit_values(obj)):  # noqa: B905 (same length)
                append(value)
        else:
            batch.rows.append(orjson.dumps(blacklist_row(obj, record)))
        batch.records.append(tuple(record))
        batch.ranges.add(record.topic, record.partition, record.offset)

    def pending(self) -> int:
        return sum(len(b) for b in self._batches.values())

    def clear(self) -> None:
        self._batches.clear()

    def take(self) -> dict[str, _TableBatch]:
        """Hand the buffered batches over (for ``write`` in another thread); the buffer restarts empty."""
        taken, self._batches = self._batches, {}
        return taken

    def _column_types(self, table: str, columns: tuple[str, ...]) -> Any:
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
            whole = lo == 0 and hi == len(batch)
            self._client.insert(
                batch.table,
                batch.data if whole else [column[lo:hi] for column in batch.data],
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
                log.warning("%s: row from %s rejected: %s", batch.table, batch.records[lo][:3], text[:300])
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
