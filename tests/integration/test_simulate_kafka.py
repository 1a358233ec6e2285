"""``bypass simulate --out kafka`` on the real broker: every event lands, keyed and timed by the SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from streams.local.simulate import SimConfig, Simulator

ROOT = Path(__file__).resolve().parents[2]


def test_simulate_to_kafka_matches_the_jsonl_stream(stack: Any, names: Any, tmp_path: Path) -> None:
    env = {**os.environ, **stack.env(), "BYPASS_STATE_DIR": str(tmp_path / "state")}
    args = ["--users", "200", "--rate", "100", "--duration", "30s", "--seed", "9", "--time-scale", "3600"]
    out = [
        "--out",
        "kafka",
        "--no-pace",
        "--topic",
        names.raw_topic,
        "--truth",
        str(tmp_path / "truth.jsonl"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "streams", "simulate", *args, *out],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    expected = list(Simulator(SimConfig(users=200, rate=100, duration_s=30, seed=9)).events())
    assert len(expected) == 3000
    truth = [orjson.loads(line) for line in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert truth == Simulator(SimConfig(users=200, rate=100, duration_s=30, seed=9)).truth

    consumer = Consumer(
        {**stack.settings().kafka_config(), "group.id": names.group, "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(names.raw_topic, timeout=10).topics[names.raw_topic]
        consumer.assign([TopicPartition(names.raw_topic, p, 0) for p in meta.partitions])
        got: list[tuple[bytes, int, dict[str, Any]]] = []
        empty = 0
        while len(got) < len(expected) and empty < 20:
            batch = consumer.consume(1000, timeout=0.5)
            empty = 0 if batch else empty + 1
            for msg in batch:
                assert msg.error() is None
                got.append((msg.key(), msg.timestamp()[1], orjson.loads(msg.value())))
    finally:
        consumer.close()
    assert len(got) == len(expected)
    by_id = {event["event_id"]: event for event in expected}
    for key, ts, event in got:
        assert event == by_id[event["event_id"]]  # raw phone on the raw topic: ingest hashes it
        assert key == event["user_id"].encode()
        assert ts == event["ts"]
