"""One typed, frozen settings object for every bypass process.

Every field is read from the environment with the prefix ``BYPASS_`` (for
example ``BYPASS_KAFKA_BOOTSTRAP``), or from a ``.env`` file. Secrets are
``SecretStr`` and are masked whenever settings are printed or logged.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_serializer
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from features.errors import ConfigError

CommaList = Annotated[tuple[str, ...], NoDecode]


_SECRET_PARAMS = re.compile(r"([?&](?:password|passwd|pwd|secret|token|access_token|api_key)=)[^&#]*", re.I)


def mask_url(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:****@host``, and secret query
    parameters (``?password=x``) -> ``?password=****`` (for logs and printing).  The
    password part runs to the *last* ``@`` before the path, so one holding an unencoded
    ``/`` or ``@`` is masked whole."""
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:).*@(?=[^@]*$)", r"\1****@", url)
    return _SECRET_PARAMS.sub(r"\1****", masked)


class Settings(BaseSettings):
    """Settings of bypass. Env prefix ``BYPASS_``; frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="BYPASS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka -----------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for SSL")
    kafka_ssl_certfile: str | None = Field(None, description="client certificate for SSL")
    kafka_ssl_keyfile: str | None = Field(None, description="client key for SSL")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="client key password (secret)")

    # --- Topics ----------------------------------------------------------
    raw_topics: CommaList = Field(("bypass.events",), description="raw event topics, comma-separated")
    hits_topic: str = Field("bypass.hits", description="hit records")
    blacklist_topic: str = Field("bypass.blacklist", description="blacklist entries")
    dlq_topic: str = Field("bypass.dlq", description="dead letters: original bytes + reason headers")
    rules_topic: str = Field("bypass.rules", description="compacted topic holding rule-set versions")
    features_topic: str = Field(
        "bypass.features", description="compacted topic holding published feature spec versions"
    )
    warm_start: bool = Field(
        True,
        description="rebuild a new or changed feature from the raw topics before rules count it "
        "(false: it starts empty, and its rules count at once)",
    )
    workers_topic: str = Field(
        "bypass.workers", description="compacted topic where each running worker reports its rule set"
    )
    operator: str = Field(
        "", description="who publishes or activates rule sets, in their history (default: login@host)"
    )
    topic_partitions: int = Field(4, ge=1, description="partitions for topics bypass creates")
    topic_replication: int = Field(1, ge=1, description="replication factor for topics bypass creates")

    # --- ClickHouse ------------------------------------------------------
    clickhouse_url: str = Field("http://127.0.0.1:8123", description="ClickHouse HTTP URL")
    clickhouse_user: str = Field("default", description="ClickHouse user")
    clickhouse_password: SecretStr = Field(SecretStr(""), description="ClickHouse password (secret)")
    clickhouse_database: str = Field("bypass", description="ClickHouse database")
    clickhouse_ttl_days: int = Field(0, ge=0, description="days to keep hits in ClickHouse (0 = forever)")

    # --- Analysts (event archive, decision log) ----------------------------
    archive_events: bool = Field(
        True,
        description="`bypass sink clickhouse` also archives every valid raw event (personal fields "
        "hashed) into risk_events",
    )
    archive_ttl_days: int = Field(
        0, ge=0, description="days to keep archived events in risk_events (0 = forever)"
    )
    decisions_topic: str = Field("bypass.decisions", description="decision records, one per (event, entity)")
    decision_sample: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="share of pass decisions without any hit logged (by event id hash: live and replay "
        "sample the same); every other decision is always logged",
    )

    # --- Sinks (bypass sink clickhouse | redis) ---------------------------
    sink_batch_size: int = Field(50_000, ge=1, description="records per ClickHouse insert at most")
    sink_batch_ms: int = Field(1_000, ge=1, description="flush a partial batch after this many ms")
    sink_retry_max_ms: int = Field(30_000, ge=100, description="longest back-off between sink retries")
    sink_session_timeout_ms: int = Field(
        10_000, ge=500, description="consumer-group session timeout of the sinks (1 s on Tansu in tests)"
    )
    sink_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Prometheus port of `bypass sink clickhouse` (/metrics); `bypass sink redis` uses "
        "the next one; 0 = off; a taken port: a free one, logged",
    )
    sink_processes: int = Field(
        0,
        ge=0,
        description="processes `bypass sink clickhouse` runs in its consumer group, under a supervisor "
        "(process i > 0 on BYPASS_SINK_METRICS_PORT + 1 + i); 0 = one per usable core; 1 = the one process",
    )
    redis_key_prefix: str = Field("bypass:", description="prefix of every Redis key bypass writes")

    # --- Redis -----------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL (a password in it is masked when printed)"
    )

    # --- Check API and console (bypass serve) -------------------------------
    serve_host: str = Field("127.0.0.1", description="address `bypass serve` listens on")
    serve_port: int = Field(8300, ge=0, le=65535, description="port `bypass serve` listens on")
    serve_token: SecretStr | None = Field(
        None,
        description="bearer token for the write endpoints and console actions of `bypass serve` "
        "(secret; unset: writes are refused)",
    )
    serve_read_token: SecretStr | None = Field(
        None,
        description="bearer token the check endpoints then require (secret; the write token is "
        "accepted too; unset: reads are open)",
    )
    serve_freshness_s: float = Field(
        5.0, gt=0, description="seconds between the check API's reads of the worker reports (freshness)"
    )

    # --- Pipeline --------------------------------------------------------
    app_id: str = Field("bypass", description="Faust app id = consumer group of the workers")
    features_spec: Path = Field(Path("examples/features.yaml"), description="feature spec YAML")
    phone_hash_key: SecretStr | None = Field(
        None, description="HMAC key for phone numbers (secret; required by ingest)"
    )
    allowed_lateness_ms: int = Field(3_600_000, ge=0, description="how late an event may be")
    dedup_horizon_ms: int = Field(86_400_000, ge=0, description="how long event ids are remembered")
    state_cap: int = Field(10_000, ge=16, description="entries per (entity, feature) before degrading")
    state_dir: Path = Field(Path(".bypass"), description="local state: stack data, pid files, tables")
    replay_skew_ms: int = Field(
        3_600_000,
        ge=0,
        description="replay: margin around [T1 - warm-up, T2) when finding offsets by Kafka timestamp",
    )
    replay_batch_size: int = Field(5_000, ge=1, description="replay: messages read per consume() call")
    replay_checkpoint_s: float = Field(30.0, gt=0, description="replay: seconds between checkpoints")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG | INFO | WARNING | ERROR"
    )

    # --- Live worker (streams/) -------------------------------------------
    event_max_bytes: int = Field(65_536, ge=256, description="size limit of one raw event message")
    pii_fields: CommaList = Field(
        ("phone",),
        description="personal fields hashed at ingest, dotted paths, comma-separated "
        "(the top-level phone always)",
    )
    dlq_retention_ms: int = Field(
        604_800_000,
        ge=0,
        description="retention of the DLQ topic when bypass creates it (0 = the broker's default)",
    )
    repartition_retention_ms: int = Field(
        604_800_000,
        ge=0,
        description="retention of the entity topics a worker creates (each event on its way from "
        "ingest to its entity kinds' agents; 0 = the broker's default)",
    )
    changelog_segment_ms: int = Field(
        21_600_000,
        ge=0,
        description="segment.ms of the state changelog topics a worker creates (compacted: only "
        "closed segments are compacted, so this bounds the superseded states a restore reads; "
        "0 = the broker's default)",
    )
    max_future_ms: int = Field(
        3_600_000,
        ge=0,
        description="how far an event's time may be ahead of its message's Kafka timestamp "
        "(further: dead-lettered as ts_out_of_bounds); 0 = no bound",
    )
    max_past_ms: int = Field(
        604_800_000,
        ge=0,
        description="how far an event's time may be behind its message's Kafka timestamp; 0 = no bound "
        "(raise it for producers that stamp the wall clock on old events)",
    )
    worker_batch_size: int = Field(1_000, ge=1, description="events an entity agent takes per batch")
    worker_batch_within_ms: int = Field(50, ge=1, description="longest wait to fill an agent batch")
    table_standby_replicas: int = Field(1, ge=0, description="standby replicas of the state tables")
    state_cache_keys: int = Field(
        50_000, ge=0, description="decoded entity states kept in memory per entity kind (0 = off)"
    )
    evict_every_batches: int = Field(
        100,
        ge=0,
        description="entity-agent batches between sweeps dropping evictable keys (0 = never)",
    )
    table_store: Literal["memory://", "rocksdb://"] = Field(
        "memory://",
        description="Faust table store: memory:// (RAM, rebuilt from the changelog at start) or rocksdb:// "
        "(local disk, only the changelog tail replayed at restart)",
    )
    consumer_session_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        description="consumer-group session timeout of the workers (a first join on Tansu waits half of it)",
    )
    consumer_rebalance_timeout_ms: int = Field(
        30_000, ge=1_000, description="consumer-group rebalance timeout (1-3 s on Tansu in tests)"
    )
    consumer_heartbeat_interval_ms: int = Field(
        3_000, ge=100, description="consumer-group heartbeat interval"
    )
    consumer_fetch_max_wait_ms: int = Field(
        100, ge=1, description="longest time the broker may hold a worker's fetch (latency bound)"
    )
    worker_processes: int = Field(
        0,
        ge=0,
        description="processes `bypass worker` runs in the one consumer group, under a supervisor that "
        "restarts a dead one (each on BYPASS_METRICS_PORT + i); 0 = one per usable core; 1 = the one "
        "process, no supervisor",
    )
    metrics_port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="worker port for Prometheus /metrics and /healthz; 0 = off; a taken port: a free "
        "one, logged",
    )
    health_max_wait_ms: int = Field(
        60_000,
        ge=0,
        description="/healthz answers 503 when a batch has waited this long for a dependency (Redis)",
    )
    worker_status_s: float = Field(
        30.0, ge=0, description="seconds between the worker's one-line status logs (0 = none)"
    )
    event_time_order: bool = Field(
        True,
        description="apply each entity's events in event-time order across source partitions "
        "(false: in arrival order, the behaviour before; for comparison only)",
    )
    order_max_held: int = Field(
        200_000,
        ge=100,
        description="events a worker may hold back for event-time order before it pauses its "
        "source partitions that run ahead",
    )
    order_idle_ms: int = Field(
        5_000,
        ge=0,
        description="how long a source partition that has delivered nothing since the worker took "
        "it over holds the others back (data produced to it just after a start is then in order)",
    )
    order_heartbeat_ms: int = Field(
        200,
        ge=10,
        description="how often an idle worker tells the entity agents how far its source partitions are",
    )

    @field_validator("raw_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if not value:
            raise ValueError("at least one raw topic is required")
        return tuple(value)

    @field_validator("pii_fields", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        return tuple(value or ())

    def _as_text(self, mask: bool) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            text: str | None
            if value is None:
                text = None
            elif isinstance(value, SecretStr):
                secret = value.get_secret_value()
                text = ("**********" if secret else "") if mask else secret
            elif isinstance(value, tuple):
                text = ",".join(value)
            elif mask and name.endswith("_url") and isinstance(value, str):
                text = mask_url(value)
            else:
                text = str(value)
            out[f"BYPASS_{name.upper()}"] = text
        return out

    def masked(self) -> dict[str, Any]:
        """All settings as ``BYPASS_*`` names -> printable values, secrets masked."""
        return dict(self._as_text(mask=True))

    def to_env(self) -> dict[str, str]:
        """``BYPASS_*`` environment for a child process that must see these exact settings.

        Secrets are in clear here, by necessity: pass the result to ``subprocess`` only,
        never to a log.
        """
        return {name: text for name, text in self._as_text(mask=False).items() if text is not None}

    @model_serializer(mode="wrap")
    def _serialize_masked(self, handler: Any) -> Any:
        """``model_dump()`` / ``model_dump_json()`` mask passwords inside URLs too."""
        data = handler(self)
        for name in ("clickhouse_url", "redis_url"):
            if isinstance(data.get(name), str):
                data[name] = mask_url(data[name])
        return data

    def __repr_args__(self) -> Any:  # keep repr() secret-safe too
        return list(self.masked().items())

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) client configuration for these settings."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = self.kafka_ssl_certfile
        if self.kafka_ssl_keyfile:
            conf["ssl.key.location"] = self.kafka_ssl_keyfile
        if self.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return conf

    def require_phone_hash_key(self) -> bytes:
        """The phone HMAC key, or a ConfigError saying how to set it."""
        if self.phone_hash_key is None or not self.phone_hash_key.get_secret_value():
            raise ConfigError(
                "BYPASS_PHONE_HASH_KEY is not set: ingest hashes phone numbers with it. "
                "Set it to a long random secret (`bypass stack up` prints one for local runs).",
                setting="BYPASS_PHONE_HASH_KEY",
            )
        return self.phone_hash_key.get_secret_value().encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
