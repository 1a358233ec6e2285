"""``--processes 2`` on the real local stack (streams/live/supervisor.py).

``bypass worker``: two supervised workers in one consumer group split the partitions; one
killed with SIGKILL is restarted by the supervisor and the hits are exactly those of an
uninterrupted single worker; SIGTERM stops all. ``bypass sink clickhouse``: two writers
split the topics and write every row once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from sinks_support import bypass, sink_settings
from sinks_support import produce as sink_produce
from test_pipeline import (
    ROOT,
    USER_RULES,
    Worker,
    _env,
    _read_as_many,
    _read_reference,
    _reference,
    _sim_events,
    produce,
    psettings,  # noqa: F401 - the fixture
    publish,
    read_topic,
)

from sinks.clickhouse import connect
from sinks.clickhouse_schema import migrate
from streams.core import kafka
from streams.settings import Settings


def _two_free_ports() -> int:
    """A port p with p and p + 1 free (worker i serves on BYPASS_METRICS_PORT + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            body: dict[str, Any] = orjson.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while starting or rebalancing
        body = orjson.loads(exc.read())
    except OSError:
        return None
    return body


def _wait_split(ports: list[int], raw: str, timeout_s: float = 120) -> list[dict[str, Any]]:
    """The /healthz of each worker once all are ready and own disjoint raw partitions that
    cover the topic (each at least one)."""
    deadline = time.monotonic() + timeout_s
    bodies: list[dict[str, Any] | None] = []
    while time.monotonic() < deadline:
        bodies = [_healthz(p) for p in ports]
        if all(b is not None and b["ready"] for b in bodies):
            parts = [set(b["partitions"].get(raw, ())) for b in bodies if b is not None]
            if all(parts) and sum(map(len, parts)) == len(set().union(*parts)) == 4:
                return [b for b in bodies if b is not None]
        time.sleep(0.5)
    raise AssertionError(f"the workers did not split the partitions: {bodies}")


@pytest.mark.slow
def test_two_worker_processes_split_the_group_survive_a_sigkill_and_stop_on_sigterm(
    psettings: Settings,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    s = psettings
    ref = _reference(s)
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic, ref.hits_topic])
    assert publish(s, USER_RULES.format(version="u-1"), tmp_path).returncode == 0
    events = _sim_events(seed=3)
    reference = Worker(ref, tmp_path / "ref.log")  # one process (the fixture's default)
    base = _two_free_ports()
    ports = [base, base + 1]
    log = tmp_path / "supervisor.log"
    with log.open("ab") as out:
        # tiny batches: the backlog takes long enough for a worker to be killed mid-stream
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "--processes", "2"],
            env=_env(s, metrics_port=base, worker_batch_size=5),
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        bodies = _wait_split(ports, raw)
        pids = [b["pid"] for b in bodies]
        assert supervisor.pid not in pids and len(set(pids)) == 2
        # each reports itself on the workers topic: `bypass status --all` lists both
        deadline = time.monotonic() + 40
        listed: set[int] = set()
        while time.monotonic() < deadline and not set(pids) <= listed:
            shown = subprocess.run(
                [sys.executable, "-m", "streams", "status", "--all", "--json"],
                env=_env(s),
                cwd=str(ROOT),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            view = orjson.loads(shown.stdout)
            listed = {p["pid"] for p in view["processes"] if p["kind"] == "worker"}
            time.sleep(1)
        assert set(pids) <= listed, view
        produce(s, events)
        assert read_topic(s, s.hits_topic, lambda m: len(m) >= 1, timeout_s=90, settle_s=0)
        killed = pids[1]
        os.kill(killed, signal.SIGKILL)
        want = _read_reference(ref)
        assert len(want) > 20
        # the supervisor restarts worker 1 on its port; the two split the partitions again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = _healthz(ports[1])
            if body is not None and body["pid"] != killed:
                break
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert f"worker 1 (pid {killed}) was killed by SIGKILL" in text, text[-3000:]
        assert "restarting it in 1.0 s (restart 1)" in text
        got = _read_as_many(s, want)
        missing = [want[h] for h in set(want) - set(got)]
        unexpected = [got[h] for h in set(got) - set(want)]
        assert not missing and not unexpected, (
            f"{len(missing)} hits missing, {len(unexpected)} unexpected; e.g. {(missing + unexpected)[:3]}"
        )
        for hit_id, record in want.items():
            assert got[hit_id] == record
        after = _wait_split(ports, raw)
        assert after[0]["pid"] == pids[0] and after[1]["pid"] not in (killed, supervisor.pid)
        new_pids = [b["pid"] for b in after]

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        for pid in new_pids:  # the children are gone too
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        text = log.read_text(errors="replace")
        assert "[worker 0]" in text and "[worker 1]" in text
        assert "stopping 2 worker process(es) with SIGTERM" in text
        assert text.count("worker stopped") >= 2, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        reference.stop()


@pytest.mark.slow
def test_two_clickhouse_writer_processes_split_the_topics_and_write_every_event_once(
    settings: Settings,
) -> None:
    s = sink_settings(settings, sink_batch_size=100)
    client = connect(
        s.clickhouse_url, username=s.clickhouse_user, password=s.clickhouse_password.get_secret_value()
    )
    migrate(client, s.clickhouse_database)
    now = int(time.time() * 1000)
    events = [
        {"event_id": f"ev-{i:04d}", "type": "login", "ts": now - (300 - i) * 10, "user_id": f"u{i % 40}"}
        for i in range(300)
    ]
    kafka.ensure_topics(s, [s.raw_topics[0], s.hits_topic, s.blacklist_topic, s.decisions_topic])
    sink_produce(s, s.raw_topics[0], events)
    done = bypass(s, "sink", "clickhouse", "--processes", "2", "--idle-exit", "4", timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assigned = [line for line in out.splitlines() if "sink-clickhouse: assigned" in line]
    assert any("[sink-clickhouse 0]" in line for line in assigned), out[-3000:]
    assert any("[sink-clickhouse 1]" in line for line in assigned), out[-3000:]
    assert out.count(") finished after") == 2 and "Traceback" not in out
    db = s.clickhouse_database
    total = int(client.query(f"SELECT count() FROM {db}.risk_events FINAL").result_rows[0][0])  # noqa: S608
    assert total == len(events)
