"""The local stack itself: `bypass stack up | down | status`, faults, part restarts.

Each test runs its own stack in its own state dir (not the session stack). A process
"belongs" to a stack when its working directory is inside the stack's state dir: every
part is started there (Tansu, redis-server) or below it (chdb: <state>/clickhouse).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
import redis

from streams.core import kafka
from streams.local.stack import Stack, StackError
from streams.settings import Settings


def _procs_under(state_dir: Path) -> list[int]:
    """Pids of processes whose working directory is inside ``state_dir``."""
    root = str(state_dir.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    path.mkdir()
    yield path
    Stack(path).down()  # a failed test must not leave parts behind
    for pid in _procs_under(path):  # pragma: no cover - only after a bug
        os.kill(pid, signal.SIGKILL)


def _bypass(state_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BYPASS_")}
    clean.update(BYPASS_STATE_DIR=str(state_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
        check=False,
    )


def _exports(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = value
    return out


def test_up_status_down_leaves_no_process(state_dir: Path) -> None:
    up = _bypass(state_dir, "stack", "up")
    assert up.returncode == 0, up.stderr
    env = _exports(up.stdout)
    assert set(env) == {
        "BYPASS_KAFKA_BOOTSTRAP",
        "BYPASS_CLICKHOUSE_URL",
        "BYPASS_REDIS_URL",
        "BYPASS_PHONE_HASH_KEY",
    }
    assert len(_procs_under(state_dir)) == 3

    # each part answers a client from outside the stack code
    with urllib.request.urlopen(f"{env['BYPASS_CLICKHOUSE_URL']}/?query=select+version()") as resp:  # noqa: S310
        assert resp.read().decode().startswith("26.9")
    assert redis.Redis.from_url(env["BYPASS_REDIS_URL"]).ping()
    client = kafka.admin(Settings(kafka_bootstrap=env["BYPASS_KAFKA_BOOTSTRAP"]))
    assert len(client.list_topics(timeout=10).brokers) == 1

    status = _bypass(state_dir, "stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [
        ["kafka", "healthy"],
        ["clickhouse", "healthy"],
        ["redis", "healthy"],
    ]
    assert all(line.split()[3] != "-" for line in lines)  # resident memory shown

    down = _bypass(state_dir, "stack", "down")
    assert down.returncode == 0
    assert "stopped: kafka, clickhouse, redis" in down.stderr
    assert _procs_under(state_dir) == []
    assert list((state_dir / "run").iterdir()) == []

    status = _bypass(state_dir, "stack", "status")
    assert [line.split()[1] for line in status.stdout.splitlines()[1:]] == ["stopped"] * 3


def test_up_twice_does_not_start_a_second_copy(state_dir: Path) -> None:
    first = _bypass(state_dir, "stack", "up")
    assert first.returncode == 0, first.stderr
    pids = sorted(_procs_under(state_dir))
    second = _bypass(state_dir, "stack", "up")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already running") == 3
    assert _exports(second.stdout) == _exports(first.stdout)
    assert sorted(_procs_under(state_dir)) == pids


def test_up_again_after_down_serves_the_same_addresses_and_key(state_dir: Path) -> None:
    first = _exports(_bypass(state_dir, "stack", "up").stdout)
    assert _bypass(state_dir, "stack", "down").returncode == 0
    # the exported addresses are in the environment now: they are ours, not external
    again = _bypass(state_dir, "stack", "up", **first)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("started") == 3
    assert _exports(again.stdout) == first
    assert len(_procs_under(state_dir)) == 3


def test_down_with_nothing_running_says_so(state_dir: Path) -> None:
    down = _bypass(state_dir, "stack", "down")
    assert down.returncode == 0
    assert "nothing running" in down.stderr


def test_external_part_is_not_started(state_dir: Path) -> None:
    up = _bypass(state_dir, "stack", "up", BYPASS_REDIS_URL="redis://127.0.0.1:1/0")
    assert up.returncode == 0, up.stderr
    assert "external (BYPASS_REDIS_URL is set), not started" in up.stderr
    assert "BYPASS_REDIS_URL" not in _exports(up.stdout)
    assert len(_procs_under(state_dir)) == 2


def test_port_taken_fails_naming_the_part_and_leaves_nothing_running(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = _bypass(state_dir, "stack", "up", "--redis-port", str(port))
    assert up.returncode == 1
    assert f"error: redis: port 127.0.0.1:{port} is already in use" in up.stderr
    assert "--redis-port" in up.stderr
    assert up.stdout == ""
    assert _procs_under(state_dir) == []


def test_missing_tansu_binary_fails_naming_kafka(state_dir: Path, tmp_path: Path) -> None:
    up = _bypass(state_dir, "stack", "up", CALF_TANSU_BIN=str(tmp_path / "no-such-tansu"))
    assert up.returncode == 1
    assert up.stderr.startswith("error: kafka: the Tansu broker binary was not found")
    assert "CALF_TANSU_BIN" in up.stderr
    assert _procs_under(state_dir) == []


def test_missing_redis_binary_stops_the_parts_already_started(state_dir: Path, tmp_path: Path) -> None:
    stack = Stack(state_dir, redis_bin=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(StackError) as caught:
        stack.up()
    assert caught.value.fields["part"] == "redis"
    assert "no redis-server binary found" in caught.value.message
    assert _procs_under(state_dir) == []
    assert [s.state for s in Stack(state_dir).status()] == ["not started"] * 3


def test_part_not_healthy_in_time_fails_and_leaves_nothing_running(state_dir: Path) -> None:
    stack = Stack(state_dir, health_timeout_s=0.0)
    with pytest.raises(StackError, match="did not become healthy within 0 s") as caught:
        stack.up()
    assert caught.value.fields["part"] in ("kafka", "clickhouse", "redis")
    assert _procs_under(state_dir) == []


def test_part_that_exits_while_starting_is_reported_with_its_log(state_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open the data dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(StackError) as caught:
        Stack(state_dir, redis_bin=str(fake)).up()
    message = caught.value.message
    assert message.startswith("redis exited while starting (exit code 3)")
    assert "fatal: cannot open the data dir" in message
    assert _procs_under(state_dir) == []


def test_stop_and_start_part_keep_ports_and_data(state_dir: Path) -> None:
    stack = Stack(state_dir)
    addresses = stack.up().addresses
    rd = redis.Redis.from_url(addresses["redis"])
    rd.set("bl:user:u1", "resale", ex=3600)
    ch = clickhouse_connect.get_client(dsn=addresses["clickhouse"])
    ch.command("CREATE TABLE default.kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    ch.insert("default.kept", [[1], [2], [3]], column_names=["id"])

    assert stack.stop_part("redis") is True
    assert stack.stop_part("clickhouse") is True
    states = {s.name: s.state for s in stack.status()}
    assert states == {"kafka": "healthy", "clickhouse": "stopped", "redis": "stopped"}
    with pytest.raises(redis.ConnectionError):
        rd.ping()

    assert stack.start_part("redis") is True
    assert stack.start_part("clickhouse") is True
    assert stack.start_part("redis") is False  # already running
    assert stack.addresses() == addresses
    assert rd.get("bl:user:u1") == b"resale"
    assert 0 < rd.ttl("bl:user:u1") <= 3600
    ch = clickhouse_connect.get_client(dsn=addresses["clickhouse"])
    assert ch.command("SELECT sum(id) FROM default.kept") == 6
    assert stack.down() == ["kafka", "clickhouse", "redis"]
    assert _procs_under(state_dir) == []


def test_start_part_on_a_taken_port_names_the_part(state_dir: Path) -> None:
    stack = Stack(state_dir)
    stack.up()
    port = stack.status()[2].address.rsplit(":", 1)[1].split("/")[0]
    stack.stop_part("redis")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", int(port)))
        squatter.listen()
        with pytest.raises(StackError, match=f"redis: port 127.0.0.1:{port} is already in use") as caught:
            stack.start_part("redis")
        assert caught.value.fields["part"] == "redis"
    assert stack.start_part("redis") is True
    assert {s.name: s.state for s in stack.status()}["redis"] == "healthy"


def test_down_does_not_kill_a_process_that_reused_the_pid(state_dir: Path) -> None:
    stack = Stack(state_dir)
    stack.up()
    record = (state_dir / "stack.json").read_text()
    stack.down()
    # an unrelated process now runs under the pid recorded for kafka
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import json

        data = json.loads(record)
        data["parts"]["kafka"]["pid"] = stranger.pid  # same pid, other start time
        (state_dir / "stack.json").write_text(json.dumps(data))
        assert "kafka" not in stack.down()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_port_taken_after_the_check_is_reported_from_the_part_log(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another program grabs the port between our check and the part's bind
    monkeypatch.setattr("streams.local.stack._port_free", lambda port: True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(StackError) as caught:
            Stack(state_dir, ports={"clickhouse": port}).up()
    assert caught.value.fields["part"] == "clickhouse"
    assert caught.value.message.startswith("clickhouse exited while starting")
    assert "Address already in use" in caught.value.message
    assert _procs_under(state_dir) == []


def test_a_crashed_part_shows_as_gone_and_up_brings_it_back_on_its_port(state_dir: Path) -> None:
    first = _bypass(state_dir, "stack", "up")
    assert first.returncode == 0, first.stderr
    redis_pid = int((state_dir / "run" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)

    status = _bypass(state_dir, "stack", "status")
    assert status.returncode == 1
    states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:] if line[:1] != " "}
    assert states == {"kafka": "healthy", "clickhouse": "healthy", "redis": "gone"}

    again = _bypass(state_dir, "stack", "up")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already running") == 2
    assert "redis       started" in again.stderr
    assert _exports(again.stdout) == _exports(first.stdout)  # same addresses
    assert int((state_dir / "run" / "redis.pid").read_text()) != redis_pid
    assert redis.Redis.from_url(_exports(again.stdout)["BYPASS_REDIS_URL"]).ping()
