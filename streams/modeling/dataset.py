# ruff: noqa: S608  (the database name is checked by check_identifier)
"""Point-in-time training sets: every feature of an entity kind at each decision, by replay.

One row per (event, entity) decision in ``[from, to)``: the event's id, time and type,
the entity key, every feature of the entity kind as the live path computed it at that
event (replay runs the very batch step of the live worker, in the same order, with the
same warm-up rule: :mod:`streams.replay.run`), and the label. No value comes from a later
event, so there is no leakage from the future. An event redelivered (the same event id
twice on the topics) is one row, with its first application's values, as live.

The label (the horizon rule): a row of entity ``(kind, key)`` at event time ``t`` is
positive (``label`` 1) when that entity has a *bad* label (any label but ``good``,
``legit``, ``benign``, ``false_positive``, ``not_fraud``) whose time ``ts`` satisfies
``t <= ts <= t + horizon`` (default 30 days), or a timeless one (``ts`` 0, as the
simulator's truth file and label files without ``ts`` give). A bad label *before* the
event does not count: the model learns what precedes a bad outcome, not what follows it.
``labels`` lists the names of the labels that made the row positive (sorted, comma
separated), so a model can target one of them. Labels come from ``risk_labels`` in
ClickHouse (``bypass labels import``) or directly from a label file (CSV / JSON Lines /
the simulator's ``truth.jsonl``).

The file: Parquet (``.parquet``, pyarrow) or JSON Lines (``.jsonl``). Columns
``event_id, ts, event_type, entity, key``, the features in spec order (integers as int64,
numbers as float64, anything else as its JSON text; missing values null), ``label`` and
``labels``. Rows are sorted by ``(ts, event_id, key)``; the Parquet file carries the
request in its schema metadata (``bypass.dataset``). Same range, same spec, same labels:
the same bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from features import format_ms
from features.errors import ConfigError
from streams.core.order import SourceEvent
from streams.settings import Settings

__all__ = [
    "DEFAULT_HORIZON_MS",
    "META_COLUMNS",
    "Dataset",
    "DatasetRequest",
    "LabelIndex",
    "build_dataset",
    "build_datasets",
    "labels_from_clickhouse",
    "labels_from_file",
    "read_dataset",
    "write_dataset",
]

DEFAULT_HORIZON_MS: Final = 30 * 86_400_000
#: the columns before the features
META_COLUMNS: Final = ("event_id", "ts", "event_type", "entity", "key")
LABEL_COLUMNS: Final = ("label", "labels")
_META_KEY: Final = b"bypass.dataset"
#: an empty rule set: the dataset replay only computes features (and model scores)
_NO_RULES: Final = 'version: "dataset"\nrules: []\n'


class LabelIndex:
    """Bad labels per entity, with their times, for the horizon rule (module docstring)."""

    def __init__(self, labels: Iterable[tuple[str, str, str, int]], source: str) -> None:
        from streams.cli.labels import BENIGN_LABELS

        self.source = source
        self._bad: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for entity, key, label, ts in labels:
            if label not in BENIGN_LABELS:
                self._bad.setdefault((entity, key), []).append((int(ts), label))

    def __len__(self) -> int:
        return len(self._bad)

    def label(self, entity: str, key: str, ts_ms: int, horizon_ms: int) -> tuple[int, str]:
        """(1 and the label names, or 0 and "") for a decision of ``(entity, key)`` at ``ts_ms``."""
        found = self._bad.get((entity, key))
        if not found:
            return 0, ""
        names = sorted({name for t, name in found if t == 0 or ts_ms <= t <= ts_ms + horizon_ms})
        return (1, ",".join(names)) if names else (0, "")


def labels_from_file(path: Path) -> LabelIndex:
    """The labels of a label file (CSV / JSON Lines) or the simulator's truth file."""
    from streams.cli.labels import parse_labels

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"labels file {str(path)!r}: cannot read: {exc.strerror}", path=str(path)) from None
    rows = parse_labels(text, str(path))
    return LabelIndex(((r.entity, r.key, r.label, r.ts) for r in rows), source=str(path))


def labels_from_clickhouse(settings: Settings, entity: str) -> LabelIndex:
    """The labels of ``entity`` kind in ``risk_labels`` (``bypass labels import``)."""
    from sinks.clickhouse_schema import check_identifier
    from streams.core.outputs import ClickHouseUnavailableError, clickhouse_client

    db = check_identifier(settings.clickhouse_database)
    try:
        result = clickhouse_client(settings).query(
            "SELECT entity, key, label, toUnixTimestamp64Milli(ts) "
            f"FROM {db}.risk_labels FINAL WHERE entity = {{e:String}}",
            parameters={"e": entity},
        )
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"reading risk_labels failed: {exc}. Did you run `bypass clickhouse migrate` and "
            "`bypass labels import`?"
        ) from exc
    rows = [(str(e), str(k), str(lbl), int(ts)) for e, k, lbl, ts in result.result_rows]
    return LabelIndex(rows, source=f"clickhouse:{db}.risk_labels")


@dataclass(frozen=True)
class DatasetRequest:
    """What ``bypass model dataset`` was asked for (times in epoch ms)."""

    from_ms: int
    to_ms: int
    entity: str
    events: tuple[str, ...] = ()  # only decisions on these event types (all when empty)
    horizon_ms: int = DEFAULT_HORIZON_MS
    source: str = "kafka"  # or "archive" (risk_events)
    topics: tuple[str, ...] = ()
    warmup: str = "auto"


@dataclass
class Dataset:
    """A training set in memory: column lists (``META_COLUMNS``, the features, the labels)."""

    entity: str
    features: tuple[str, ...]
    types: tuple[str, ...]  # each feature's rules type name: int, float, number, any, str
    event_id: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    event_type: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    values: list[list[Any]] = field(default_factory=list)  # per feature: its column
    label: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def column(self, name: str) -> list[Any]:
        return self.values[self.features.index(name)]

    def numeric_features(self) -> tuple[str, ...]:
        """The features a model can read: those of integer or number type."""
        return tuple(
            f for f, t in zip(self.features, self.types, strict=True) if t in ("int", "float", "number")
        )

    def target(self, name: str) -> list[int]:
        """0/1 per row: ``label`` (any bad label), or rows whose ``labels`` name ``name``."""
        if name == "label":
            return list(self.label)
        return [1 if name in labels.split(",") else 0 for labels in self.labels]


def build_dataset(
    settings: Settings, request: DatasetRequest, labels: LabelIndex, *, console: Any = None
) -> Dataset:
    """Replay ``[from, to)`` and collect one row per decision of ``request.entity``."""
    return build_datasets(settings, request, labels, (request.entity,), console=console)[request.entity]


def build_datasets(
    settings: Settings,
    request: DatasetRequest,
    labels: LabelIndex,
    entities: Sequence[str],
    *,
    console: Any = None,
) -> dict[str, Dataset]:
    """:func:`build_dataset` for several entity kinds in one replay (``request.entity`` is
    ignored)."""
    from streams.core.assembly import load_spec
    from streams.replay import Replay, ReplayOptions

    spec = load_spec(settings)
    unknown = [e for e in entities if e not in spec.entities]
    if unknown:
        raise ConfigError(
            f"unknown entity kind {unknown[0]!r}: the feature spec has {', '.join(spec.entities)}",
            option="--entity",
        )
    names = {e: tuple(f.name for f in spec.features_of(e)) for e in entities}
    wanted = set(request.events)
    rows: dict[str, dict[tuple[str, str], tuple[int, str, str, str, list[Any]]]] = {e: {} for e in entities}

    def observe(entity: str, key: str, source: SourceEvent, values: dict[str, Any]) -> None:
        found = rows.get(entity)
        if found is None:
            return
        event = source.event
        if wanted and event.get("type") not in wanted:
            return
        eid = str(event["event_id"])
        if (eid, key) not in found:  # a redelivered event: its first row
            row = [values.get(n) for n in names[entity]]
            found[(eid, key)] = (int(event["ts"]), eid, str(event.get("type")), key, row)

    with tempfile.TemporaryDirectory(prefix="bypass-dataset-") as tmp:
        rules_file = Path(tmp) / "no-rules.yaml"
        rules_file.write_text(_NO_RULES, encoding="utf-8")
        options = ReplayOptions(
            from_ms=request.from_ms,
            to_ms=request.to_ms,
            topics=request.topics,
            rules_file=rules_file,
            warmup=request.warmup,
            out="none",
            source=request.source,
            progress=console is not None,
        )
        Replay(settings, options, console=console, on_features=observe).run()

    out: dict[str, Dataset] = {}
    for entity in entities:
        feats = spec.features_of(entity)
        data = Dataset(
            entity=entity,
            features=names[entity],
            types=tuple(f.type_name for f in feats),
            values=[[] for _ in feats],
            meta={
                "entity": entity,
                "from": format_ms(request.from_ms),
                "to": format_ms(request.to_ms),
                "events": list(request.events),
                "horizon_ms": request.horizon_ms,
                "labels": labels.source,
                "features": list(names[entity]),
                "spec_version": spec.version,
            },
        )
        for ts, eid, etype, key, values in sorted(rows[entity].values(), key=lambda r: (r[0], r[1], r[3])):
            data.ts.append(ts)
            data.event_id.append(eid)
            data.event_type.append(etype)
            data.key.append(key)
            for column, value in zip(data.values, values, strict=True):
                column.append(value)
            positive, label_names = labels.label(entity, key, ts, request.horizon_ms)
            data.label.append(positive)
            data.labels.append(label_names)
        out[entity] = data
    return out


def _cell(value: Any, type_name: str) -> Any:
    """A feature value as its column stores it (module docstring)."""
    if value is None:
        return None
    if type_name == "int":
        return value if type(value) is int else None
    if type_name in ("float", "number"):
        return float(value) if type(value) in (int, float) else None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def write_dataset(data: Dataset, path: Path) -> None:
    """Write ``data`` as Parquet (``.parquet``) or JSON Lines (``.jsonl``)."""
    suffix = path.suffix.lower()
    columns: dict[str, list[Any]] = {
        "event_id": data.event_id,
        "ts": data.ts,
        "event_type": data.event_type,
        "entity": [data.entity] * len(data),
        "key": data.key,
    }
    for name, type_name, values in zip(data.features, data.types, data.values, strict=True):
        columns[name] = [_cell(v, type_name) for v in values]
    columns["label"] = data.label
    columns["labels"] = data.labels
    if suffix == ".jsonl":
        names = list(columns)
        with path.open("wb") as fh:
            for i in range(len(data)):
                fh.write(orjson.dumps({n: columns[n][i] for n in names}) + b"\n")
        return
    if suffix != ".parquet":
        raise ConfigError(f"--out {str(path)!r}: write a .parquet or a .jsonl file", option="--out")
    import pyarrow as pa
    import pyarrow.parquet as pq

    def arrow_type(type_name: str) -> Any:
        return {"int": pa.int64(), "float": pa.float64(), "number": pa.float64()}.get(type_name, pa.string())

    fields = [
        pa.field("event_id", pa.string()),
        pa.field("ts", pa.int64()),
        pa.field("event_type", pa.string()),
        pa.field("entity", pa.string()),
        pa.field("key", pa.string()),
        *(pa.field(n, arrow_type(t)) for n, t in zip(data.features, data.types, strict=True)),
        pa.field("label", pa.int8()),
        pa.field("labels", pa.string()),
    ]
    meta = {**data.meta, "types": list(data.types)}
    schema = pa.schema(fields, metadata={_META_KEY: orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)})
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, compression="zstd")


def read_dataset(path: Path) -> Dataset:
    """Read a file :func:`write_dataset` wrote."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"dataset {str(path)!r} not found", path=str(path))
    columns: dict[str, list[Any]]
    meta: dict[str, Any] = {}
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        meta = orjson.loads(raw) if raw else {}
        columns = table.to_pydict()
    elif suffix == ".jsonl":
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        columns = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
    else:
        raise ConfigError(f"dataset {str(path)!r}: expected a .parquet or .jsonl file", path=str(path))
    missing = [c for c in (*META_COLUMNS, *LABEL_COLUMNS) if c not in columns]
    if missing:
        raise ConfigError(f"dataset {str(path)!r} lacks the column(s) {', '.join(missing)}", path=str(path))
    names = tuple(meta.get("features") or [c for c in columns if c not in (*META_COLUMNS, *LABEL_COLUMNS)])
    types = tuple(meta.get("types") or [_infer_type(columns[n]) for n in names])
    entities = columns["entity"]
    return Dataset(
        entity=str(meta.get("entity") or (entities[0] if entities else "")),
        features=names,
        types=types,
        event_id=list(columns["event_id"]),
        ts=[int(t) for t in columns["ts"]],
        event_type=list(columns["event_type"]),
        key=list(columns["key"]),
        values=[list(columns[n]) for n in names],
        label=[int(x) for x in columns["label"]],
        labels=[str(x or "") for x in columns["labels"]],
        meta=meta,
    )


def _infer_type(values: Sequence[Any]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int}:
        return "int"
    if kinds <= {int, float}:
        return "number"
    return "any"


def describe(data: Dataset) -> Mapping[str, Any]:
    """Counts for the command's summary line."""
    return {
        "rows": len(data),
        "positives": sum(data.label),
        "entities": len(set(data.key)),
        "features": len(data.features),
    }
