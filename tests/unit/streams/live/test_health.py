"""Worker health, status line, metric initialisation and the metrics/health server (no broker)."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client import generate_latest

from streams.core import kafka
from streams.live.health import (
    HealthInputs,
    counter_total,
    format_health,
    health_report,
    serve,
    status_line,
)
from streams.live.metrics import DLQ_REASONS, Metrics
from streams.settings import Settings

NOW = 1_800_000_000.0


def _inputs(**kw: object) -> HealthInputs:
    base: dict[str, object] = {
        "now": NOW,
        "started": NOW - 30,
        "ready": True,
        "ready_at": NOW - 25,
        "partitions": {"bypass.events": [0, 1, 2, 3], "bypass-entity-user": [1, 0]},
        "ruleset": "v1",
        "events_in": 1000,
        "hits": 12,
        "dlq": 2,
        "watermark_ms": int((NOW - 4) * 1000),
        "max_wait_s": 60.0,
        "app_id": "bypass",
    }
    base.update(kw)
    return HealthInputs(**base)  # type: ignore[arg-type]


def test_a_ready_worker_is_ok_with_what_on_call_reads() -> None:
    code, body = health_report(_inputs())
    assert code == 200
    assert body["status"] == "ok" and body["ready"] and body["live"]
    assert body["partitions"]["bypass-entity-user"] == [0, 1]
    assert body["partitions_assigned"] == 6
    assert body["ruleset"] == "v1" and body["events_in"] == 1000 and body["hits"] == 12 and body["dlq"] == 2
    assert body["event_time_lag_s"] == pytest.approx(4.0)
    assert body["ready_after_s"] == pytest.approx(5.0)
    assert body["dependency"] == {
        "waiting": False,
        "entity": None,
        "since": None,
        "waiting_s": 0.0,
        "max_wait_s": 60.0,
    }
    orjson.dumps(body)  # JSON as it is


def test_starting_is_503_and_a_short_dependency_wait_is_degraded_but_live() -> None:
    code, body = health_report(_inputs(ready=False, ready_at=None))
    assert (code, body["status"], body["ready_after_s"]) == (503, "starting", None)
    code, body = health_report(_inputs(waiting={"device": NOW - 10}))
    assert (code, body["status"]) == (200, "degraded")
    assert body["dependency"]["waiting"] and body["dependency"]["entity"] == "device"
    assert body["dependency"]["waiting_s"] == pytest.approx(10.0)


def test_a_long_dependency_wait_is_503() -> None:
    code, body = health_report(_inputs(waiting={"device": NOW - 61, "ip": NOW - 5}))
    assert code == 503 and body["status"] == "degraded" and not body["live"]
    assert body["dependency"]["entity"] == "device,ip"
    assert body["dependency"]["since"] == NOW - 61


def test_status_line_says_rate_lag_hits_dlq_and_a_wait() -> None:
    line = status_line(
        events=13_000,
        events_before=1_000,
        seconds=30.0,
        lag=250,
        event_time_lag_s=3.25,
        hits=42,
        dlq=3,
        waiting={},
        now=NOW,
    )
    assert line == "status: events 13,000 (400/s), lag 250, event-time lag 3.2 s, hits 42, DLQ 3"
    line = status_line(
        events=0,
        events_before=0,
        seconds=0,
        lag=None,
        event_time_lag_s=None,
        hits=0,
        dlq=0,
        waiting={"device": NOW - 12},
        now=NOW,
    )
    assert "(0/s)" in line and "lag ?" in line and "event-time lag -" in line
    assert line.endswith("WAITING on a dependency for device since 12 s")


def test_format_health_is_a_short_summary() -> None:
    code, body = health_report(_inputs(waiting={"device": NOW - 3}))
    text = format_health(code, body, ["bypass.events"])
    assert text.splitlines()[0].endswith("degraded, healthy (HTTP 200)")
    assert "bypass.events[0-3] (6 in all)" in text
    assert "WAITING for device for 3.0 s" in text
    assert "NOT healthy" in format_health(*health_report(_inputs(ready=False)))


def test_labelled_counters_exist_at_zero_before_their_first_event() -> None:
    m = Metrics()
    m.init_labels(topics=["bypass.events"], entities=["user", "device"], rules=[("r1", "active")])
    text = generate_latest(m.registry).decode()
    for reason in DLQ_REASONS:
        assert f'bypass_dlq_total{{reason="{reason}"}} 0.0' in text
    assert 'bypass_events_in_total{topic="bypass.events"} 0.0' in text
    assert 'bypass_events_late_total{entity="device"} 0.0' in text
    assert 'bypass_events_duplicate_total{entity="user"} 0.0' in text
    assert 'bypass_hits_total{mode="active",rule_id="r1"} 0.0' in text
    assert 'bypass_rule_errors_total{rule_id="r1"} 0.0' in text
    assert 'bypass_dependency_retries_total{entity="user"} 0.0' in text
    assert "bypass_worker_ready 0.0" in text
    assert 'bypass_processing_latency_seconds_bucket{le="300.0"}' in text


def test_consumer_lag_and_assigned_partitions_follow_the_assignment() -> None:
    m = Metrics()
    m.set_consumer_lag({("t", 0): 5, ("t", 1): 0})
    m.set_assigned({"t": 2})
    m.set_consumer_lag({("t", 1): 7})
    m.set_assigned({"u": 1})
    text = generate_latest(m.registry).decode()
    assert 'bypass_consumer_lag{partition="1",topic="t"} 7.0' in text
    assert 'partition="0"' not in text
    assert 'bypass_partitions_assigned{topic="t"} 0.0' in text
    assert 'bypass_partitions_assigned{topic="u"} 1.0' in text
    assert counter_total(m.consumer_lag) == 7


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_server_serves_metrics_and_health_and_moves_off_a_taken_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    m.events_in.labels(topic="t").inc(3)
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="bypass.worker"):
            server = serve(m.registry, lambda: (503, {"status": "starting"}), port, addr="127.0.0.1")
    try:
        assert server.port != port
        assert (
            f"metrics port {port} is taken" in caplog.text and f"on port {server.port} instead" in caplog.text
        )
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310 - http
            assert 'bypass_events_in_total{topic="t"} 3.0' in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/healthz", timeout=5)  # noqa: S310 - http
        assert info.value.code == 503 and orjson.loads(info.value.read()) == {"status": "starting"}
    finally:
        server.shutdown()
        server.server_close()


def test_rdkafka_lines_go_to_python_logging_once_per_window() -> None:
    logger = kafka.rdkafka_logger()
    seen: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = _Keep()
    logger.addHandler(handler)
    try:
        line = (
            "FAIL [rdkafka#producer-%d] 127.0.0.1:9/bootstrap: Connect failed: Connection refused "
            "(after %dms in state CONNECT)"
        )
        for i in range(50):
            logger.error(line, i, i)
        logger.error("FAIL [rdkafka#producer-1] something else")
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 2, seen


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_kafka_is_one_clear_error_within_seconds() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{_closed_port()}")
    with pytest.raises(kafka.KafkaSetupError) as info:
        kafka.check_reachable(settings, timeout_s=1.0)
    assert info.value.message.startswith(f"cannot reach Kafka at {settings.kafka_bootstrap} (")
    assert "connection refused" in info.value.message and "BYPASS_KAFKA_BOOTSTRAP" in info.value.message
    with pytest.raises(kafka.KafkaSetupError):  # ensure_topics probes first, no 15 s wait
        kafka.ensure_topics(settings, ["t"])
