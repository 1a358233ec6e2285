"""docker-compose.yml and the Dockerfile agree with the code (Docker cannot run here).

Every BYPASS_* variable they set or read must be a real ``Settings`` field with a value
``Settings`` accepts; every service the project needs is there and runs a real verb.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from streams.cli import cli
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OWN_SERVICES = {
    "worker": ["bypass", "worker"],
    "sink-clickhouse": ["bypass", "sink", "clickhouse"],
    "sink-redis": ["bypass", "sink", "redis"],
}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} -> default; ${VAR:?message} -> a placeholder value."""
    return _INTERPOLATION.sub(
        lambda m: (m.group(2) or "x") if "?" not in m.group(0) else "set-by-user", value
    )


def _setting_names() -> set[str]:
    return {f"BYPASS_{name.upper()}" for name in Settings.model_fields}


def test_every_bypass_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for service in compose["services"].values():
        for name, value in _env(service).items():
            if name.startswith("BYPASS_"):
                used.add(name)
            used.update(v for v, _ in _INTERPOLATION.findall(value) if v.startswith("BYPASS_"))
    used.update(re.findall(r"\b(BYPASS_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert used, "the compose file configures nothing through BYPASS_* settings"
    unknown = sorted(used - _setting_names())
    assert unknown == [], f"not Settings fields: {unknown}"


def test_needed_services_are_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "redis", *OWN_SERVICES} <= set(services)
    assert not any("zookeeper" in name for name in services)
    kafka_env = _env(services["kafka"])
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, single node
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["redis"]["image"].startswith("redis:")


@pytest.mark.parametrize("name", sorted(OWN_SERVICES))
def test_own_services_build_from_the_dockerfile_and_run_a_real_verb(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    assert service["build"] == "."
    assert DOCKERFILE.is_file()
    assert service["command"] == OWN_SERVICES[name]
    command: click.Command | None = cli
    ctx = click.Context(cli)
    for word in service["command"][1:]:
        assert isinstance(command, click.Group), f"{name}: {word!r} follows a command, not a group"
        command = command.get_command(ctx, word)
        assert command is not None, f"{name}: `{' '.join(service['command'])}` is not a bypass command"


@pytest.mark.parametrize("name", sorted(OWN_SERVICES))
def test_own_services_settings_are_valid_and_point_at_the_compose_parts(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    for var in list(_setting_names()):
        monkeypatch.delenv(var, raising=False)
    env = {k: _interpolate(v) for k, v in _env(services[name]).items() if k.startswith("BYPASS_")}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    host, _, port = settings.kafka_bootstrap.partition(":")
    assert host in services
    advertised = _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{host}:{port}" in advertised

    ch = urlsplit(settings.clickhouse_url)
    assert ch.hostname in services and ch.port == 8123
    ch_env = {k: _interpolate(v) for k, v in _env(services["clickhouse"]).items()}
    assert settings.clickhouse_user == ch_env["CLICKHOUSE_USER"]
    assert settings.clickhouse_password.get_secret_value() == ch_env["CLICKHOUSE_PASSWORD"]

    assert urlsplit(settings.redis_url).hostname in services
    assert settings.phone_hash_key is not None  # ingest needs it: compose refuses to start without


def test_own_services_wait_for_the_parts_they_use(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka"} <= set(services["worker"]["depends_on"])
    assert {"kafka", "clickhouse"} <= set(services["sink-clickhouse"]["depends_on"])
    assert {"kafka", "redis"} <= set(services["sink-redis"]["depends_on"])
    for part in ("kafka", "clickhouse", "redis"):
        assert "healthcheck" in services[part], f"{part} has no healthcheck to wait for"


def test_the_clickhouse_writer_starts_only_after_the_schema_is_migrated(compose: dict[str, Any]) -> None:
    # regression: `bypass sink clickhouse` refuses a database without the schema, and no
    # service ran `bypass clickhouse migrate`, so the writer restarted in a loop
    services = compose["services"]
    assert services["migrate"]["command"] == ["bypass", "clickhouse", "migrate"]
    needs = services["sink-clickhouse"]["depends_on"]
    assert needs["migrate"]["condition"] == "service_completed_successfully"


# -- issue 20 item 9: operator files ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OWN_SERVICES))
def test_own_long_running_services_have_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name].get("healthcheck")
    assert check is not None, f"{name} has no healthcheck"
    test = check["test"]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"]
    compile(test[3], f"{name} healthcheck", "exec")  # the image has Python; the snippet is valid
    assert "$" not in test[3]  # compose would interpolate it
    wanted = {"worker": "/healthz", "sink-clickhouse": "BYPASS_CLICKHOUSE_URL", "sink-redis": "ping()"}
    assert wanted[name] in test[3]


def test_the_worker_healthcheck_asks_the_metrics_port_the_worker_serves(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "BYPASS_METRICS_PORT" in worker["healthcheck"]["test"][3]
    assert _env(worker)["BYPASS_METRICS_PORT"] != "0"


def test_own_services_read_spec_and_rules_from_a_mounted_directory(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in [*OWN_SERVICES, "rules", "migrate"]:
        mounts = services[name].get("volumes") or []
        mount = next((m for m in mounts if m.endswith(":/etc/bypass:ro")), None)
        assert mount is not None, f"{name}: no read-only config mount"
        host = _interpolate(mount.split(":/etc/bypass")[0])
        assert (ROOT / host).resolve() == ROOT / "examples"  # the default: the repo's examples
        assert _env(services[name])["BYPASS_FEATURES_SPEC"] == "/etc/bypass/features.yaml"
    assert services["rules"]["command"] == ["bypass", "rules", "publish", "/etc/bypass/rules.yaml"]
    assert (ROOT / "examples/features.yaml").is_file() and (ROOT / "examples/rules.yaml").is_file()


def test_clickhouse_image_is_the_local_stack_version(compose: dict[str, Any]) -> None:
    pin = re.search(r'"chdb-core==(\d+)\.(\d+)\.', (ROOT / "pyproject.toml").read_text())
    assert pin is not None
    image = compose["services"]["clickhouse"]["image"]
    assert image == f"clickhouse/clickhouse-server:{pin.group(1)}.{pin.group(2)}"


def test_the_license_file_matches_pyproject() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_user_facing_text_points_only_at_files_that_exist() -> None:
    """No ARCHITECTURE.md / STYLE.md / issue references in what users read, and every path
    it names (docs/ screenshots included) exists."""
    texts = [ROOT / "README.md", COMPOSE, DOCKERFILE, *sorted((ROOT / "examples").iterdir())]
    texts += sorted(p for d in ("features", "rules", "sinks", "streams") for p in (ROOT / d).rglob("*.py"))
    bad = re.compile(r"ARCHITECTURE\.md|STYLE\.md|\bissue \d|issue \"")
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in texts for m in bad.finditer(p.read_text())]
    assert found == []
    for p in texts:
        for ref in _PATH_REF.findall(p.read_text()):
            assert (ROOT / ref).exists(), f"{p.relative_to(ROOT)} names {ref}, which does not exist"


_PATH_REF = re.compile(
    r"(?<![\w/.-])((?:examples|features|rules|sinks|streams|bench|docs|deploy)/[\w/-]+"
    r"\.(?:py|yaml|yml|sql|png|json))\b"
)
