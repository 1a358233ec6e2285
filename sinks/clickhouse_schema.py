"""ClickHouse schema of bypass: versioned, idempotent migrations.

``migrate(client, database, ttl_days=...)`` applies, in order, every migration
not yet recorded in ``<db>.schema_migrations`` and then reconciles the TTL with
the setting ``clickhouse_ttl_days``. Every statement is written so that running
it twice is harmless (``IF NOT EXISTS``), so a migration interrupted half-way
is simply applied again by the next ``bypass clickhouse migrate``.

Tables
------
``risk_hits`` - one row per hit, keyed by ``hit_id``.

* ``ReplacingMergeTree(inserted_at)``: a hit written twice (a retried batch, a
  writer killed between insert and commit, a hit emitted twice by an
  at-least-once pipeline, a replay of the same rule-set version) collapses to
  one row. Exact results read ``FINAL`` (or ``LIMIT 1 BY hit_id``).
* ``ORDER BY (rule_id, event_time, hit_id)``: the primary index serves the
  analysts' "one rule over time" (``WHERE rule_id = ? AND event_time >= ?``) and
  the rollup-less per-rule drill-downs. ``hit_id`` ends the key so that
  ReplacingMergeTree deduplicates by it; ``rule_id`` and ``event_time`` are
  functions of the hit (the id is derived from event id, rule id and rule-set
  version), so two copies of one hit always share the whole sort key.
* "One entity's history" (``WHERE entity = ? AND key = ?``) is served twice:
  the projection ``by_entity`` (sorted by entity, key, event_time) answers
  queries without ``FINAL`` - the analysts' queries de-duplicate there with
  ``LIMIT 1 BY hit_id`` - and reads a couple of granules; with ``FINAL``
  ClickHouse does not use projections, so a bloom-filter skip index on ``key``
  prunes granules (``use_skip_indexes_if_final``). The projection costs a
  second sorted copy of the rows; it is rebuilt on merges
  (``deduplicate_merge_projection_mode = 'rebuild'``), which
  ReplacingMergeTree requires.
  The reverse choice (entity first, projection by rule) would make the
  frequent dashboard scans slower for the rarer point look-ups; trends are
  moreover answered from the rollup below.
* ``PARTITION BY toYYYYMM(event_time)``: monthly parts, cheap TTL drops.
* ``features`` holds the numeric (and boolean, as 0/1) values of the features
  the rule read, ``Map(String, Nullable(Float64))`` so ``features['x'] > 3``
  works directly and a null feature stays visible as NULL; values that are not
  numbers (strings, lists) go to ``features_text`` (strings as such, anything
  else as JSON).
* ``error`` (migration 4): empty, or why the rule failed at run time (``division by
  zero``); such a row never counts (``counted`` is false) and every query that counts
  hits, the rollup included, reads ``WHERE error = ''``.
* ``non_replicated_deduplication_window``: makes ClickHouse honour
  ``insert_deduplication_token`` on this non-replicated table (checked on the
  chdb 26.9 engine: the same token inserted twice adds the rows once).

``risk_hits_hourly`` + ``risk_hits_hourly_mv`` - the dashboard rollup: per rule,
mode, hour, rule-set version and run id, ``uniqExactState(hit_id)``. A plain
``count()`` in a materialized view double-counts: the view sees every insert
block, including a retried insert that the target table de-duplicated by its
token (checked: the MV's count grows on the retry) and any hit delivered twice
in two different batches. ``uniqExact`` of the hit id is exact by construction;
its state costs ~16 bytes per distinct hit per hour row, acceptable for hit
volumes (not for raw events). Read with ``uniqExactMerge(hits)``. Rows with an
``error`` are left out (migration 4 recreated the view with that filter).

``risk_blacklist`` - the blacklist entries from ``bypass.blacklist``, one row per
(entity, key, label, rule-set version, event id); redelivery collapses.

``risk_events`` (migration 6) - the event archive: every valid raw event as ingest sees it
(phone and ``BYPASS_PII_FIELDS`` already hashed), written by ``bypass sink clickhouse`` from
the raw topics. ``ReplacingMergeTree`` ordered by ``event_id`` (a redelivered or re-read
event adds nothing after ``FINAL``), daily partitions (``toDate(event_time)``), bloom-filter
indexes on user, device and IP for one entity's events; ``attrs`` as JSON text
(``JSONExtractFloat(attrs, 'amount')``). TTL: ``BYPASS_ARCHIVE_TTL_DAYS``.

``risk_labels`` (migration 7) - outcome labels (``bypass labels import``): entity, key,
label, time, source; keyed by all of them, so a re-import adds nothing after ``FINAL``.

``risk_decisions`` (migration 8) - the decision log: one row per (event, entity) evaluated
(``pass`` rows without any hit sampled by ``BYPASS_DECISION_SAMPLE``, ``sample_rate`` says
by how much),
with the counted rule ids that hit (``rule_ids``), the shadow ones (``shadow_rule_ids``),
score, rule-set version and run id.

``risk_ruleset_versions`` - the audit trail of rule sets: one row per publish and per
activation (``bypass rules publish`` / ``activate``): version, action, when, by whom,
source file, rule count, the YAML and the rules-topic offset of the record.

TTL (``BYPASS_CLICKHOUSE_TTL_DAYS`` = N, 0 keeps everything): hits and the rollup
expire N days after their event time / hour; a blacklist entry N days after it
*expires* (``expires_at``), never while it is still active - counting from its
event time would delete entries whose rule's ttl is longer than N days.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from features.errors import ConfigError


class QueryResult(Protocol):
    """What bypass reads of a clickhouse-connect ``QueryResult``."""

    @property
    def column_names(self) -> Sequence[str]: ...

    @property
    def result_rows(self) -> Sequence[Sequence[Any]]: ...


class QueryClient(Protocol):
    """What a reader calls on a clickhouse-connect ``Client``: parameterized SELECTs."""

    def query(self, query: str, parameters: dict[str, Any] | None = ...) -> QueryResult: ...


class SchemaClient(QueryClient, Protocol):
    """What :func:`migrate` calls on a clickhouse-connect ``Client``."""

    def command(self, cmd: str, *, settings: dict[str, Any] | None = ...) -> object: ...

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        *,
        column_names: Sequence[str],
        settings: dict[str, Any] | None = ...,
    ) -> object: ...


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str, *, what: str = "database") -> str:
    """A ClickHouse identifier we are willing to splice into DDL, or a ConfigError."""
    if not _IDENT.match(name):
        raise ConfigError(
            f"invalid ClickHouse {what} name {name!r}: use letters, digits and _ (not starting with a digit)",
            setting="BYPASS_CLICKHOUSE_DATABASE",
        )
    return name


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "risk_hits",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_hits
(
    hit_id           String,
    event_id         String,
    event_type       LowCardinality(String),
    event_time       DateTime64(3, 'UTC'),
    entity           LowCardinality(String),
    key              String,
    rule_id          LowCardinality(String),
    label            LowCardinality(String),
    score            Float64,
    mode             LowCardinality(String),
    counted          Bool,
    suppressed       Bool,
    rollout_excluded Bool,
    features         Map(String, Nullable(Float64)),
    features_text    Map(String, String),
    decision         LowCardinality(String),
    ruleset_version  LowCardinality(String),
    run_id           LowCardinality(String),
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_key key TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION by_entity (SELECT * ORDER BY entity, key, event_time)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (rule_id, event_time, hit_id)
SETTINGS non_replicated_deduplication_window = 10000,
         deduplicate_merge_projection_mode = 'rebuild'
""",
        ),
    ),
    Migration(
        2,
        "risk_hits_hourly",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_hits_hourly
(
    hour            DateTime('UTC'),
    rule_id         LowCardinality(String),
    mode            LowCardinality(String),
    ruleset_version LowCardinality(String),
    run_id          LowCardinality(String),
    hits            AggregateFunction(uniqExact, String),
    counted_hits    AggregateFunction(uniqExact, String),
    entities        AggregateFunction(uniqExact, String, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (rule_id, hour, mode, ruleset_version, run_id)
""",
            """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.risk_hits_hourly_mv TO {db}.risk_hits_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    rule_id,
    mode,
    ruleset_version,
    run_id,
    uniqExactState(hit_id) AS hits,
    uniqExactStateIf(hit_id, counted AND NOT suppressed) AS counted_hits,
    uniqExactState(toString(entity), key) AS entities
FROM {db}.risk_hits
GROUP BY hour, rule_id, mode, ruleset_version, run_id
""",
        ),
    ),
    Migration(
        3,
        "risk_blacklist",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_blacklist
(
    entity          LowCardinality(String),
    key             String,
    label           LowCardinality(String),
    rule_ids        Array(LowCardinality(String)),
    event_id        String,
    event_time      DateTime64(3, 'UTC'),
    expires_at      DateTime64(3, 'UTC'),
    ruleset_version LowCardinality(String),
    source_topic    LowCardinality(String),
    source_partition Int32,
    source_offset   Int64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (entity, key, label, ruleset_version, event_id)
SETTINGS non_replicated_deduplication_window = 10000
""",
        ),
    ),
    Migration(
        4,
        "risk_hits_error",
        (
            "ALTER TABLE {db}.risk_hits "
            "ADD COLUMN IF NOT EXISTS error String DEFAULT '' AFTER rollout_excluded",
            # the rollup leaves out rules that failed at run time: recreated with that filter
            # (hits inserted between the two statements miss the rollup, which only matters
            # when a writer runs during the upgrade)
            "DROP VIEW IF EXISTS {db}.risk_hits_hourly_mv",
            """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.risk_hits_hourly_mv TO {db}.risk_hits_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    rule_id,
    mode,
    ruleset_version,
    run_id,
    uniqExactState(hit_id) AS hits,
    uniqExactStateIf(hit_id, counted AND NOT suppressed) AS counted_hits,
    uniqExactState(toString(entity), key) AS entities
FROM {db}.risk_hits
WHERE error = ''
GROUP BY hour, rule_id, mode, ruleset_version, run_id
""",
        ),
    ),
    Migration(
        5,
        "risk_ruleset_versions",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_ruleset_versions
(
    version      String,
    action       LowCardinality(String),
    at           DateTime64(3, 'UTC'),
    by           String,
    source       String,
    rules        UInt32,
    yaml         String,
    topic_offset Int64,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (version, action, at, topic_offset)
""",
        ),
    ),
    Migration(
        6,
        "risk_events",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_events
(
    event_id         String,
    event_type       LowCardinality(String),
    event_time       DateTime64(3, 'UTC'),
    user_id          String,
    device_id        String,
    ip               String,
    phone            String,
    geo_lat          Nullable(Float64),
    geo_lon          Nullable(Float64),
    geo_city         LowCardinality(String),
    attrs            String,
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_user user_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_device device_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_ip ip TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toDate(event_time)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 10000
""",
        ),
    ),
    Migration(
        7,
        "risk_labels",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_labels
(
    entity      LowCardinality(String),
    key         String,
    label       LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    source      LowCardinality(String),
    imported_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY (entity, key, label, source, ts)
""",
        ),
    ),
    Migration(
        8,
        "risk_decisions",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_decisions
(
    event_id         String,
    event_type       LowCardinality(String),
    event_time       DateTime64(3, 'UTC'),
    entity           LowCardinality(String),
    key              String,
    decision         LowCardinality(String),
    score            Float64,
    rule_ids         Array(LowCardinality(String)),
    shadow_rule_ids  Array(LowCardinality(String)),
    sample_rate      Float64,
    ruleset_version  LowCardinality(String),
    run_id           LowCardinality(String),
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_key key TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (ruleset_version, run_id, event_time, event_id, entity, key)
SETTINGS non_replicated_deduplication_window = 10000
""",
        ),
    ),
    Migration(
        9,
        "risk_list_changes",
        (
            """
CREATE TABLE IF NOT EXISTS {db}.risk_list_changes
(
    list        LowCardinality(String),
    key         String,
    action      LowCardinality(String),
    who         String,
    why         String,
    until       Nullable(DateTime64(3, 'UTC')),
    changed_at  DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (list, key, changed_at)
""",
        ),
    ),
)

# Tables whose TTL follows the setting ``clickhouse_ttl_days`` -> the time column it counts
# from (a blacklist entry: from the end of its validity, so no active entry is deleted).
TTL_TABLES: dict[str, str] = {
    "risk_hits": "event_time",
    "risk_hits_hourly": "hour",
    "risk_blacklist": "expires_at",
    "risk_decisions": "event_time",
}
#: The event archive's TTL follows its own setting, ``archive_ttl_days``.
ARCHIVE_TTL_TABLES: dict[str, str] = {"risk_events": "event_time"}

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


@dataclass(frozen=True)
class MigrateResult:
    database: str
    applied: tuple[int, ...]
    current_version: int
    ttl_changed: tuple[str, ...]


def applied_versions(client: QueryClient, database: str) -> set[int]:
    check_identifier(database)
    rows = client.query(f"SELECT version FROM {database}.schema_migrations FINAL").result_rows  # noqa: S608
    return {int(r[0]) for r in rows}


def ttl_expression(column: str, ttl_days: int) -> str:
    """The TTL expression, written as ClickHouse prints it back in ``create_table_query``."""
    if column == "hour":
        return f"hour + toIntervalDay({ttl_days})"
    return f"toDateTime({column}) + toIntervalDay({ttl_days})"


def _current_ttl(client: QueryClient, database: str, table: str) -> str | None:
    rows = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    if not rows:
        return None
    match = re.search(r"\bTTL\s+(.*?)\s+SETTINGS\b|\bTTL\s+(.*)$", str(rows[0][0]), re.S)
    if not match:
        return ""
    return (match.group(1) or match.group(2) or "").strip()


def _squeeze(expression: str) -> str:
    return re.sub(r"\s+", "", expression)


def reconcile_ttl(
    client: SchemaClient, database: str, ttl_days: int, tables: dict[str, str] | None = None
) -> list[str]:
    """Make each table's TTL (``tables``, default :data:`TTL_TABLES`) match ``ttl_days``
    (0 = keep forever). Returns changed tables."""
    changed: list[str] = []
    for table, column in (TTL_TABLES if tables is None else tables).items():
        current = _current_ttl(client, database, table)
        if current is None:
            continue
        if ttl_days <= 0:
            if current:
                client.command(f"ALTER TABLE {database}.{table} REMOVE TTL")
                changed.append(table)
            continue
        wanted = ttl_expression(column, ttl_days)
        if _squeeze(current) != _squeeze(wanted):  # other days or another column: replace it
            client.command(
                f"ALTER TABLE {database}.{table} MODIFY TTL {wanted}",
                settings={"materialize_ttl_after_modify": 0},
            )
            changed.append(table)
    return changed


def migrate(
    client: SchemaClient, database: str, *, ttl_days: int = 0, archive_ttl_days: int | None = None
) -> MigrateResult:
    """Create the database and apply pending migrations; idempotent. ``archive_ttl_days``
    sets the TTL of ``risk_events`` (None: left as it is)."""
    check_identifier(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(_MIGRATIONS_TABLE.format(db=database))
    done = applied_versions(client, database)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.format(db=database))
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
            settings={"async_insert": 0},
        )
        applied.append(migration.version)
    changed = reconcile_ttl(client, database, ttl_days)
    if archive_ttl_days is not None:
        changed += reconcile_ttl(client, database, archive_ttl_days, ARCHIVE_TTL_TABLES)
    return MigrateResult(
        database=database,
        applied=tuple(applied),
        current_version=max(m.version for m in MIGRATIONS),
        ttl_changed=tuple(changed),
    )
