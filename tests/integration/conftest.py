"""The integration test harness: one real stack per test session, unique names per test.

Fixtures:

``stack`` (session)
    Addresses of a real Kafka-protocol broker, ClickHouse and Redis, chosen per part:

    1. external: ``BYPASS_KAFKA_BOOTSTRAP`` / ``BYPASS_CLICKHOUSE_URL`` / ``BYPASS_REDIS_URL``
       set in the environment (``BYPASS_CLICKHOUSE_USER`` / ``_PASSWORD`` too);
    2. else testcontainers, when a Docker engine answers (Apache Kafka KRaft,
       ClickHouse server, Redis);
    3. else the local stack (``streams.local.stack``: Tansu, chdb served on loopback,
       redis-server) under a private tmp state dir, stopped at session end.

    ``BYPASS_TEST_STACK=local`` forces 3 (for example after ``eval "$(bypass stack up)"``
    in the same shell: the tests then get their own stack, whose parts they may stop);
    ``BYPASS_TEST_STACK=docker`` requires 2.

    Attributes: ``kafka_bootstrap``, ``clickhouse_url``, ``clickhouse_user``,
    ``clickhouse_password``, ``redis_url``, ``phone_hash_key``, ``kinds`` (part ->
    "external" | "docker" | "local"), ``state_dir``; methods ``settings(**overrides)``
    -> ``Settings``, ``restartable(name)``, ``stop_part(name)`` / ``start_part(name)``
    (local parts only: same ports, same data).

``names`` (per test)
    Unique names: ``names.topic("x")``, ``raw_topic``, ``hits_topic``,
    ``blacklist_topic``, ``dlq_topic``, ``rules_topic``, ``database`` (ClickHouse),
    ``redis_prefix``, ``app_id`` / ``group``; ``names.overrides()`` gives them as
    ``Settings`` keyword arguments.

``settings`` (per test)
    ``stack.settings(**names.overrides(), state_dir=<tmp_path>/state)``.

Tansu facts to remember (details in ``streams.local.stack``): a consumer-group join waits about
half the SESSION timeout (confluent-kafka and Faust alike; the rebalance timeout does not
matter): use 1-3 s session timeouts in tests; ``offsets_for_times`` always answers
offset 0; the ListOffsets high watermark is too low after multi-record batches (read to
PARTITION_EOF instead); no transactions.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams.local.stack import ENV_NAMES, PARTS, Stack
from streams.settings import Settings

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration is marked ``integration``."""
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


# --- the stack ---------------------------------------------------------------------


@dataclass
class StackHandle:
    """Where the real parts of this test session are."""

    kafka_bootstrap: str
    clickhouse_url: str
    redis_url: str
    phone_hash_key: str
    state_dir: Path
    kinds: dict[str, str]
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    local: Stack | None = None
    _stopped: set[str] = field(default_factory=set)

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this stack; keyword arguments override any field."""
        values: dict[str, Any] = {
            "kafka_bootstrap": self.kafka_bootstrap,
            "clickhouse_url": self.clickhouse_url,
            "clickhouse_user": self.clickhouse_user,
            "clickhouse_password": self.clickhouse_password,
            "redis_url": self.redis_url,
            "phone_hash_key": self.phone_hash_key,
            "state_dir": self.state_dir,
            # one process per `bypass worker` / `bypass sink clickhouse` unless a test asks
            "worker_processes": 1,
            "sink_processes": 1,
        }
        values.update(overrides)
        return Settings(**values)

    def env(self) -> dict[str, str]:
        """``BYPASS_*`` variables for a subprocess (a CLI run) pointed at this stack."""
        return {
            "BYPASS_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "BYPASS_CLICKHOUSE_URL": self.clickhouse_url,
            "BYPASS_CLICKHOUSE_USER": self.clickhouse_user,
            "BYPASS_CLICKHOUSE_PASSWORD": self.clickhouse_password,
            "BYPASS_REDIS_URL": self.redis_url,
            "BYPASS_PHONE_HASH_KEY": self.phone_hash_key,
            "BYPASS_WORKER_PROCESSES": "1",
            "BYPASS_SINK_PROCESSES": "1",
        }

    def restartable(self, name: str) -> bool:
        """True when ``stop_part``/``start_part`` work for this part (the local stack)."""
        return self.local is not None and self.kinds.get(name) == "local"

    def stop_part(self, name: str) -> None:
        """Stop a local part (ports and data kept); the harness restarts it after the test."""
        self._require_local(name)
        assert self.local is not None
        self._stopped.add(name)
        self.local.stop_part(name)

    def start_part(self, name: str) -> None:
        """Start a stopped local part again on the same ports with the same data."""
        self._require_local(name)
        assert self.local is not None
        self.local.start_part(name)
        self._stopped.discard(name)

    def restore(self) -> None:
        """Restart whatever a test stopped and did not start again."""
        for name in sorted(self._stopped):
            self.start_part(name)

    def _require_local(self, name: str) -> None:
        if not self.restartable(name):
            raise RuntimeError(
                f"{name} is {self.kinds.get(name)!r} in this session: only local parts can be "
                "stopped and started by tests (set BYPASS_TEST_STACK=local to use a local stack)"
            )


def _stack_choice() -> str:
    """BYPASS_TEST_STACK: auto (default) | local (ignore BYPASS_* addresses and Docker) | docker."""
    choice = os.environ.get("BYPASS_TEST_STACK", "auto").strip().lower() or "auto"
    if choice not in ("auto", "local", "docker"):
        raise pytest.UsageError(f"BYPASS_TEST_STACK={choice!r}: use auto, local or docker")
    return choice


def _docker_answers() -> bool:
    if _stack_choice() == "local":
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _containers(parts: list[str]) -> Iterator[dict[str, tuple[str, dict[str, str]]]]:
    """Start testcontainers for ``parts``: part -> (address, extra settings)."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    with contextlib.ExitStack() as stack:
        if "kafka" in parts:
            from testcontainers.community.kafka import KafkaContainer

            kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft())
            out["kafka"] = (kafka.get_bootstrap_server(), {})
        if "clickhouse" in parts:
            from testcontainers.community.clickhouse import ClickHouseContainer

            ch = stack.enter_context(ClickHouseContainer("clickhouse/clickhouse-server:25.8"))
            url = f"http://{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}"
            out["clickhouse"] = (url, {"user": ch.username, "password": ch.password})
        if "redis" in parts:
            from testcontainers.community.redis import RedisContainer

            rd = stack.enter_context(RedisContainer("redis:7"))
            out["redis"] = (f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0", {})
        yield out


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """The real parts for this session (external, else Docker, else the local stack)."""
    state_dir = tmp_path_factory.mktemp("bypass-state")
    choice = _stack_choice()
    external = {
        part: os.environ[env] for part, env in ENV_NAMES.items() if os.environ.get(env) and choice == "auto"
    }
    missing = [part for part in PARTS if part not in external]
    kinds = dict.fromkeys(external, "external")
    addresses = dict(external)
    ch_user = os.environ.get("BYPASS_CLICKHOUSE_USER", "default")
    ch_password = os.environ.get("BYPASS_CLICKHOUSE_PASSWORD", "")
    local: Stack | None = None
    phone_key = os.environ.get("BYPASS_PHONE_HASH_KEY") or secrets.token_urlsafe(32)
    with contextlib.ExitStack() as cleanup:
        if missing and choice == "docker" and not _docker_answers():
            raise pytest.UsageError("BYPASS_TEST_STACK=docker but no Docker engine answers")
        if missing and _docker_answers():
            started = cleanup.enter_context(_containers(missing))
            for part, (address, extra) in started.items():
                addresses[part] = address
                kinds[part] = "docker"
                if part == "clickhouse":
                    ch_user, ch_password = extra["user"], extra["password"]
        elif missing:
            local = Stack(
                tmp_path_factory.mktemp("bypass-stack"),
                external=external,
                die_with_parent=True,
                health_timeout_s=60.0,
            )
            cleanup.callback(local.down)
            result = local.up()
            for part in missing:
                addresses[part] = result.addresses[part]
                kinds[part] = "local"
            if "BYPASS_PHONE_HASH_KEY" not in os.environ:
                phone_key = local.phone_hash_key()
        yield StackHandle(
            kafka_bootstrap=addresses["kafka"],
            clickhouse_url=addresses["clickhouse"],
            redis_url=addresses["redis"],
            phone_hash_key=phone_key,
            state_dir=state_dir,
            kinds=kinds,
            clickhouse_user=ch_user,
            clickhouse_password=ch_password,
            local=local,
        )


@pytest.fixture(autouse=True)
def _restore_stopped_parts(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stops a part and fails before starting it again must not break the next."""
    yield
    if "stack" in request.fixturenames:
        handle: StackHandle = request.getfixturevalue("stack")
        handle.restore()


# --- unique names per test -------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Unique, valid names for one test (Kafka topics, ClickHouse database, Redis keys)."""

    id: str  # [a-z0-9_], starts with a letter

    def topic(self, base: str = "events") -> str:
        return f"{self.id}.{base}"

    @property
    def raw_topic(self) -> str:
        return self.topic("events")

    @property
    def hits_topic(self) -> str:
        return self.topic("hits")

    @property
    def blacklist_topic(self) -> str:
        return self.topic("blacklist")

    @property
    def dlq_topic(self) -> str:
        return self.topic("dlq")

    @property
    def rules_topic(self) -> str:
        return self.topic("rules")

    @property
    def database(self) -> str:
        return f"db_{self.id}"

    @property
    def redis_prefix(self) -> str:
        return f"{self.id}:"

    @property
    def app_id(self) -> str:
        return f"app_{self.id}"

    @property
    def group(self) -> str:
        return f"group_{self.id}"

    def overrides(self) -> dict[str, Any]:
        """These names as ``Settings`` keyword arguments (fields that exist only)."""
        candidates: dict[str, Any] = {
            "raw_topics": (self.raw_topic,),
            "hits_topic": self.hits_topic,
            "blacklist_topic": self.blacklist_topic,
            "dlq_topic": self.dlq_topic,
            "rules_topic": self.rules_topic,
            # a test's published feature specs stay its own (a worker starts with the active one)
            "features_topic": self.topic("features"),
            "decisions_topic": self.topic("decisions"),
            "clickhouse_database": self.database,
            "app_id": self.app_id,
            "redis_prefix": self.redis_prefix,
            "redis_key_prefix": self.redis_prefix,
        }
        return {k: v for k, v in candidates.items() if k in Settings.model_fields}


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    """Unique names for this test: ``t_<test name>_<random>``."""
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return Names(id=f"t_{base}_{secrets.token_hex(4)}")


@pytest.fixture
def settings(stack: StackHandle, names: Names, tmp_path: Path) -> Settings:
    """Settings pointing at the session stack, with this test's unique names and state dir."""
    return stack.settings(**names.overrides(), state_dir=tmp_path / "state")
