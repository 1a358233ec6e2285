# ruff: noqa: S608  (the database name is checked by check_identifier)
"""``bypass labels import FILE | show ENTITY KEY``: outcome labels for rule quality.

A label says what became of an entity: ``chargeback``, ``manual_review``,
``customer_complaint``, ... (``bypass rules report`` measures precision and recall against
them). ``import`` reads CSV (a header with ``entity,key,label`` and optionally ``ts`` and
``source``) or JSON Lines (one object per line with the same fields), and the truth file of
``bypass simulate`` (``{"entity", "key", "scenario", "variant"}``: the scenario is the
label, the source ``simulator``). ``ts``: epoch ms or ISO 8601 (UTC when no zone); a label
without one is timeless (stored as 0: it counts in every time range). Every row is checked
before anything is written: a bad row is an error naming ``FILE:LINE`` and nothing is
imported. Rows go to ``risk_labels``, a ReplacingMergeTree keyed by every field, so a file
imported twice adds nothing after ``FINAL``.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
import orjson

from features import parse_time_ms
from features.errors import BypassError, ConfigError

#: The fields of a label row (CSV columns / JSON fields); ``ts`` and ``source`` are optional.
LABEL_FIELDS: Final = ("entity", "key", "label", "ts", "source")
REQUIRED: Final = ("entity", "key", "label")
#: Labels that say an entity turned out fine: ``bypass rules report`` counts every other
#: label as bad.
BENIGN_LABELS: Final = frozenset({"good", "legit", "benign", "false_positive", "not_fraud"})
SIMULATOR_SOURCE: Final = "simulator"
MAX_TEXT: Final = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LabelFileError(ConfigError):
    """A label file could not be read; ``fields['line']`` names the offending line."""


@dataclass(frozen=True, slots=True)
class Label:
    entity: str
    key: str
    label: str
    ts: int  # epoch ms; 0 = timeless
    source: str

    def row(self) -> list[Any]:
        return [self.entity, self.key, self.label, self.ts, self.source]


def _fail(path: str, line: int, message: str) -> LabelFileError:
    return LabelFileError(f"{path}:{line}: {message}", file=path, line=line)


def _text(value: Any, name: str, path: str, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _fail(path, line, f"{name!r} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _fail(path, line, f"{name!r} is empty")
    if len(text) > MAX_TEXT or _CONTROL.search(text):
        raise _fail(path, line, f"{name!r} must be at most {MAX_TEXT} characters without control characters")
    return text


def _ts(value: Any, path: str, line: int) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise _fail(path, line, "'ts' must be epoch ms or an ISO 8601 time, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise _fail(path, line, f"'ts' = {value} is negative")
        return value
    if not isinstance(value, str):
        raise _fail(path, line, f"'ts' must be epoch ms or an ISO 8601 time, got {type(value).__name__}")
    try:
        return parse_time_ms(value)
    except ConfigError as exc:
        raise _fail(path, line, f"'ts' {value!r}: {exc.fields.get('reason') or exc.message}") from None


def label_from(obj: Any, path: str, line: int, default_source: str) -> Label:
    """One decoded row (CSV dict or JSON object) -> a Label, or LabelFileError naming the line.

    A row with ``scenario`` and no ``label`` is a ``bypass simulate`` truth line: the scenario
    is the label and the source ``simulator``."""
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected an object with {', '.join(REQUIRED)}, got {type(obj).__name__}")
    fields = dict(obj)
    if "label" not in fields and "scenario" in fields:  # the simulator's truth.jsonl
        fields["label"] = fields.pop("scenario")
        fields.setdefault("source", SIMULATOR_SOURCE)
        fields.pop("variant", None)
    unknown = sorted(set(fields) - set(LABEL_FIELDS))
    if unknown:
        raise _fail(path, line, f"unknown field {unknown[0]!r} (a label has {', '.join(LABEL_FIELDS)})")
    for name in REQUIRED:
        if fields.get(name) is None:
            raise _fail(path, line, f"missing {name!r}")
    source = fields.get("source")
    return Label(
        entity=_text(fields["entity"], "entity", path, line),
        key=_text(fields["key"], "key", path, line),
        label=_text(fields["label"], "label", path, line),
        ts=_ts(fields.get("ts"), path, line),
        source=default_source if source is None or source == "" else _text(source, "source", path, line),
    )


def _jsonl(text: str, path: str) -> Iterator[tuple[int, Any]]:
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield n, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _fail(path, n, f"not valid JSON: {exc}") from None


def _csv(text: str, path: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise _fail(path, 1, f"empty CSV: expected a header with {', '.join(REQUIRED)}")
    reader.fieldnames = header
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise _fail(
            path, 1, f"the CSV header lacks {', '.join(map(repr, missing))} (has {', '.join(header)})"
        )
    for row in reader:
        if None in row:  # more cells than the header
            raise _fail(path, reader.line_num, f"more cells than the {len(header)} columns of the header")
        if not any((v or "").strip() for v in row.values()):
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None}


def parse_labels(text: str, path: str, *, fmt: str = "auto", default_source: str = "import") -> list[Label]:
    """The labels of a file's ``text`` (``fmt``: ``csv``, ``jsonl`` or ``auto``: JSON Lines
    when the first non-blank character is ``{``, else CSV). Raises LabelFileError naming
    ``path:line`` for the first bad row; nothing is returned partially."""
    if fmt == "auto":
        fmt = "jsonl" if text.lstrip().startswith("{") else "csv"
    rows = _jsonl(text, path) if fmt == "jsonl" else _csv(text, path)
    return [label_from(obj, path, n, default_source) for n, obj in rows]


def _client() -> tuple[Any, str]:
    from sinks.clickhouse_schema import check_identifier
    from streams.core.outputs import clickhouse_client
    from streams.settings import Settings

    settings = Settings()
    db = check_identifier(settings.clickhouse_database)
    return clickhouse_client(settings), db


def _run(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from streams.core.outputs import ClickHouseUnavailableError

    try:
        return fn(*args, **kwargs)
    except BypassError:
        raise
    except Exception as exc:
        raise ClickHouseUnavailableError(
            f"{what} failed: {exc}. Did you run `bypass clickhouse migrate`?"
        ) from exc


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def labels() -> None:
    """Outcome labels (chargebacks, reviews, complaints) for `bypass rules report`."""


@labels.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "jsonl"]),
    default="auto",
    show_default=True,
    help="auto: JSON Lines when the file starts with '{', else CSV with a header",
)
@click.option(
    "--source",
    default="import",
    show_default=True,
    help="source of rows that name none (the simulator's truth: 'simulator')",
)
def import_(file: Path, fmt: str, source: str) -> None:
    """Import labels from FILE (CSV or JSON Lines: entity, key, label[, ts, source]; or the
    truth.jsonl of `bypass simulate`) into risk_labels; importing a file twice adds nothing."""
    rows = parse_labels(file.read_text(encoding="utf-8"), str(file), fmt=fmt, default_source=source)
    client, db = _client()
    if rows:
        _run(
            "import",
            client.insert,
            f"{db}.risk_labels",
            [r.row() for r in rows],
            column_names=list(LABEL_FIELDS),
            settings={"async_insert": 0},
        )
    kinds = Counter(r.entity for r in rows)
    per_label = Counter(r.label for r in rows)
    detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"
    labels_text = ", ".join(f"{k} {n}" for k, n in sorted(per_label.items())) or "none"
    click.echo(
        f"imported {len(rows)} labels from {file} into {db}.risk_labels "
        f"(entities: {detail}; labels: {labels_text})"
    )


@labels.command("show")
@click.argument("entity")
@click.argument("key")
def show(entity: str, key: str) -> None:
    """The labels of one entity (exit 1 when it has none)."""
    from streams.cli.params import check_entity_kind

    entity = check_entity_kind(entity)
    client, db = _client()
    result = _run(
        "query",
        client.query,
        "SELECT label, toUnixTimestamp64Milli(ts), source, toUnixTimestamp64Milli(imported_at) "
        f"FROM {db}.risk_labels FINAL "
        "WHERE entity = {e:String} AND key = {k:String} ORDER BY ts, label, source",
        parameters={"e": entity, "k": key},
    )
    rows = result.result_rows
    if not rows:
        click.echo(f"no labels for {entity} {key}", err=True)
        raise SystemExit(1)
    click.echo(f"{'label':<24} {'ts':<24} {'source':<20} imported")
    for label, ts, src, imported in rows:
        when = "-" if int(ts) == 0 else _utc(int(ts))
        click.echo(f"{label:<24} {when:<24} {src:<20} {_utc(int(imported))}")
    bad = sum(1 for r in rows if r[0] not in BENIGN_LABELS)
    click.echo(f"{len(rows)} labels ({bad} bad) for {entity} {key}")
