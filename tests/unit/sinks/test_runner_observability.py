"""What a sink tells on-call: metrics of what it wrote, its back-off and lag; logs only on change."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from sinks.runner import SinkMetrics
from tests.unit.sinks.test_runner import _Consumer, _msgs, _Producer, _runner, _Sink


def test_sink_metrics_count_written_dead_letters_and_back_off() -> None:
    metrics = SinkMetrics("sink-test")
    consumer, sink, producer = _Consumer(_msgs(12, bad={3})), _Sink(fail_times=2), _Producer()
    _runner(consumer, sink, producer, metrics=metrics).run(idle_exit_s=0.05)
    text = generate_latest(metrics.registry).decode()
    assert 'bypass_sink_consumed_total{sink="sink-test"} 12.0' in text
    assert 'bypass_sink_written_total{sink="sink-test"} 11.0' in text
    assert 'bypass_sink_dead_letters_total{sink="sink-test"} 1.0' in text
    assert 'bypass_sink_failed_flushes_total{sink="sink-test"} 2.0' in text
    assert 'bypass_sink_backoff_seconds{sink="sink-test"} 0.0' in text  # back to 0 once accepted
    assert 'bypass_sink_lag{sink="sink-test"} 0.0' in text


def test_sink_metrics_exist_at_zero_before_any_record() -> None:
    text = generate_latest(SinkMetrics("sink-x").registry).decode()
    for name in ("consumed_total", "written_total", "dead_letters_total", "failed_flushes_total"):
        assert f'bypass_sink_{name}{{sink="sink-x"}} 0.0' in text


def test_an_idle_sink_logs_progress_only_when_something_changed(caplog: pytest.LogCaptureFixture) -> None:
    consumer, sink, producer = _Consumer(_msgs(5)), _Sink(), _Producer()
    runner = _runner(consumer, sink, producer, progress_every_s=0.0)  # a progress check every loop
    with caplog.at_level(logging.INFO, logger="sinks.runner"):
        runner.run(idle_exit_s=0.5)  # ~500 idle loops on the test clock
    lines = [r.getMessage() for r in caplog.records if "written" in r.getMessage()]
    assert 1 <= len(lines) <= 3, lines  # the change to 5 written, and the final line
    assert lines[-1].startswith("test: written 5")
