"""What a user and on-call see (issue 20): no broker, a taken metrics port, the worker's
start-up and status lines, ``bypass status`` and ``/healthz``, the metrics on-call needs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_pipeline import FEATURES, ROOT, USER_RULES, _env, publish

from streams.core import kafka
from streams.producer import EventProducer
from streams.settings import Settings

MIN = 60_000


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bypass(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    return proc, time.monotonic() - started


def test_no_broker_is_one_clear_line_within_seconds(tmp_path: Path) -> None:
    """Before: ~15 s and ~290 ``%3|...|FAIL|...`` lines before the good one; produce showed
    10000/10000, then said 10000 were unconfirmed 31 s later."""
    bootstrap = f"127.0.0.1:{_closed_port()}"
    settings = Settings(
        kafka_bootstrap=bootstrap,
        features_spec=FEATURES,
        phone_hash_key="k" * 32,
        state_dir=tmp_path / "state",
        metrics_port=0,
    )
    env = _env(settings)
    rules = tmp_path / "rules.yaml"
    rules.write_text(USER_RULES.format(version="v1"), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"event_id": f"e{i}", "type": "login", "ts": 1_763_856_000_000 + i, "user_id": "u1"})
            + "\n"
            for i in range(100)
        ),
        encoding="utf-8",
    )
    commands = [
        ["worker"],
        ["rules", "publish", str(rules)],
        ["replay", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z", "--out", "none"],
        ["sink", "redis"],
        ["produce", "--file", str(events)],
    ]
    for args in commands:
        proc, seconds = _bypass(args, env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, (args, out)
        assert f"cannot reach Kafka at {bootstrap}" in proc.stderr, (args, out)
        assert "%3|" not in out and "FAIL" not in out, (args, out)
        assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, (args, out)
        assert seconds < 10, (args, seconds)
        assert "100/100" not in out  # produce never shows what the broker did not confirm


def _wait_for(pattern: str, log: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if pattern in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the log:\n{log.read_text(errors='replace')}")


def _health(port: int) -> dict[str, Any]:
    """The /healthz body, whatever the status (200 or 503)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.slow
def test_a_taken_port_is_a_warning_and_the_worker_is_visible(settings: Settings, tmp_path: Path) -> None:
    """Before: with port 9108 taken the worker exited (`cannot serve metrics`), produce went
    on and hits stayed empty with no hint.  Also: the start-up says a few lines, no Faust
    banner, a status line comes, `bypass status` reads the health, metrics on-call needs are
    there from the start, and the publish-to-active delay is not set by a (re)start."""
    s = settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 4_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "order_idle_ms": 500,
            "log_level": "INFO",
        }
    )
    raw = s.raw_topics[0]
    kafka.ensure_topics(s, [raw, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, USER_RULES.format(version="obs-1"), tmp_path).returncode == 0
    time.sleep(1.5)  # the publish lies in the past: a start must not report it as a delay
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))  # like another process on the port
    taken.listen()
    port = taken.getsockname()[1]
    log = tmp_path / "worker.log"
    env = _env(s, metrics_port=port, worker_status_s=1)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        text = _wait_for("instead", log)
        assert f"metrics port {port} is taken" in text
        chosen = int(text.split("serving /metrics and /healthz on port ")[1].split()[0])
        assert chosen != port
        assert proc.poll() is None, text  # still running
        text = _wait_for("ready in", log)
        assert f"http://127.0.0.1:{chosen}/healthz" in text
        assert "rule set obs-1 (4 rules, published" in text
        status_env = {**env, "BYPASS_METRICS_PORT": str(chosen)}
        proc_status, _ = _bypass(["status", "--wait", "30"], status_env, timeout=60)
        assert proc_status.returncode == 0, proc_status.stdout + proc_status.stderr
        assert "ok, healthy (HTTP 200)" in proc_status.stdout
        assert f"{raw}[0-1]" in proc_status.stdout and "obs-1" in proc_status.stdout
        as_json, _ = _bypass(["status", "--json", "--port", str(chosen)], env, timeout=30)
        assert as_json.returncode == 0 and json.loads(as_json.stdout)["ruleset"] == "obs-1"
        down, _ = _bypass(["status", "--port", str(_closed_port())], env, timeout=30)
        assert down.returncode == 1 and "no worker answers" in down.stderr

        metrics = _metrics(chosen)
        for series in (
            'bypass_dlq_total{reason="not_json"} 0.0',
            'bypass_hits_total{mode="active",rule_id="churn"} 0.0',
            'bypass_events_late_total{entity="user"} 0.0',
            "bypass_worker_ready 1.0",
            f'bypass_partitions_assigned{{topic="{raw}"}} 2.0',
            "bypass_ruleset_publish_to_active_seconds 0.0",
        ):
            assert series in metrics, series
        assert "bypass_ruleset_published_timestamp_seconds 0.0" not in metrics

        now = time.time_ns() // 1_000_000
        with EventProducer(s, topic=raw) as producer:
            producer.send_many(
                {"event_id": f"e{i}", "type": "login", "ts": now - 2 * MIN + i, "user_id": f"u{i % 4}"}
                for i in range(20)
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _health(chosen)["events_in"] < 20:
            time.sleep(0.3)
        body = _health(chosen)
        assert body["events_in"] == 20 and body["status"] == "ok"
        assert body["event_time_lag_s"] is not None and body["event_time_lag_s"] >= 100
        text = _wait_for("status: events 20 ", log, timeout_s=15)
        deadline = time.monotonic() + 15
        metrics = _metrics(chosen)
        while (
            time.monotonic() < deadline
            and f'bypass_consumer_lag{{partition="0",topic="{raw}"}} 0.0' not in metrics
        ):
            time.sleep(0.5)
            metrics = _metrics(chosen)
        assert f'bypass_consumer_lag{{partition="0",topic="{raw}"}} 0.0' in metrics
        assert (
            'bypass_state_keys{entity="user"} 4.0' in metrics
            or 'bypass_state_keys{entity="user"} 5.0' in metrics
        )
        assert "bypass_worker_heartbeat_timestamp_seconds" in metrics
        # no Faust banner tables or service chatter without --verbose
        assert "Subscription" not in text and "Starting..." not in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        taken.close()
