"""streams.local.stack without starting any part: state files, external parts, port and binary faults."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.local.stack import Stack, StackError, external_from_settings
from streams.settings import Settings


def test_external_parts_are_the_addresses_given_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BYPASS_KAFKA_BOOTSTRAP", "BYPASS_CLICKHOUSE_URL", "BYPASS_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BYPASS_REDIS_URL", "redis://cache:6379/1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert external_from_settings(settings) == {"redis": "redis://cache:6379/1"}
    assert external_from_settings(Settings(_env_file=None, kafka_bootstrap="k:1")) == {  # type: ignore[call-arg]
        "kafka": "k:1",
        "redis": "redis://cache:6379/1",
    }


def _record(state_dir: Path, **addresses: str) -> None:
    parts = {
        name: {"name": name, "ports": {name: 1}, "address": address, "pid": None}
        for name, address in addresses.items()
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "stack.json").write_text(json.dumps({"parts": parts}))


def test_our_own_exported_address_is_not_external(tmp_path: Path) -> None:
    _record(tmp_path, redis="redis://127.0.0.1:5000/0", kafka="127.0.0.1:5001")
    stack = Stack(tmp_path, external={"redis": "redis://127.0.0.1:5000/0", "kafka": "elsewhere:9092"})
    states = {s.name: (s.state, s.address) for s in stack.status()}
    assert states == {
        "kafka": ("external", "elsewhere:9092"),
        "clickhouse": ("not started", ""),
        "redis": ("stopped", "redis://127.0.0.1:5000/0"),
    }
    assert stack.addresses() == {"kafka": "elsewhere:9092", "redis": "redis://127.0.0.1:5000/0"}
    with pytest.raises(StackError, match="kafka is external"):
        stack.stop_part("kafka")


def test_phone_hash_key_is_made_once_and_private(tmp_path: Path) -> None:
    key = Stack(tmp_path).phone_hash_key()
    assert len(key) >= 40
    assert Stack(tmp_path).phone_hash_key() == key
    mode = stat.S_IMODE(os.stat(tmp_path / "phone_hash_key").st_mode)
    assert mode == 0o600
    assert Stack(tmp_path).env()["BYPASS_PHONE_HASH_KEY"] == key


def test_down_and_status_with_nothing_started(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    assert stack.down() == []
    assert [(s.name, s.state) for s in stack.status()] == [
        ("kafka", "not started"),
        ("clickhouse", "not started"),
        ("redis", "not started"),
    ]


def test_cli_down_with_nothing_running_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli.stack import stack

    monkeypatch.setenv("BYPASS_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(stack, ["down"])
    assert result.exit_code == 0
    assert "nothing running" in result.output


def test_unreadable_state_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(StackError, match=r"cannot read .*stack\.json"):
        Stack(tmp_path).up()


def test_unknown_port_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown port name"):
        Stack(tmp_path, ports={"zookeeper": 2181})


def test_pinned_port_taken_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(tmp_path, ports={"clickhouse_tcp": port})
        with pytest.raises(StackError) as caught:
            stack._plan("clickhouse", {}, {})
    assert caught.value.fields == {"part": "clickhouse", "port": port}
    assert "--clickhouse-tcp-port" in caught.value.message


def test_free_ports_never_collide_with_pinned_ones(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports={"kafka": 1})
    kafka = stack._plan("kafka", {}, {})
    ch = stack._plan("clickhouse", {}, {"kafka": kafka})
    assert kafka.ports == {"kafka": 1}
    assert kafka.address == "127.0.0.1:1"
    assert len({*ch.ports.values(), 1}) == 3
    assert ch.address == f"http://127.0.0.1:{ch.ports['clickhouse']}"


def test_missing_binaries_name_the_part_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"kafka: the Tansu broker binary .* is missing") as caught:
        Stack(tmp_path, tansu_bin=str(tmp_path / "nope"))._tansu()
    assert caught.value.fields["part"] == "kafka"
    with pytest.raises(StackError, match="redis: no redis-server binary found") as caught:
        Stack(tmp_path, redis_bin=str(tmp_path / "nope"))._redis_server()
    assert "BYPASS_REDIS_URL" in caught.value.message
