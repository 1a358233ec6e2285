"""Smoke tests: each real part answers through the clients the project uses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import clickhouse_connect
import redis
from confluent_kafka import TopicPartition

from streams.core import kafka
from streams.settings import Settings


def _poll_values(consumer, want: int, timeout_s: float) -> list[bytes]:  # type: ignore[no-untyped-def]
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        values.append(msg.value())
    return values


def test_kafka_round_trip_with_a_consumer_group(settings: Settings, names) -> None:  # type: ignore[no-untyped-def]
    created = kafka.ensure_topics(settings, [names.raw_topic], partitions=2)
    assert created == [names.raw_topic]
    assert kafka.ensure_topics(settings, [names.raw_topic], partitions=2) == []  # idempotent
    partitions = kafka.admin(settings).list_topics(names.raw_topic, timeout=10).topics[names.raw_topic]
    assert len(partitions.partitions) == 2

    producer = kafka.producer(settings)
    sent = [f"v{i}".encode() for i in range(20)]
    for i, value in enumerate(sent):
        producer.produce(names.raw_topic, value, key=f"user-{i % 5}".encode())
    assert producer.flush(10) == 0

    consumer = kafka.consumer(
        settings, group_id=names.group, session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    try:
        consumer.subscribe([names.raw_topic])
        got = _poll_values(consumer, len(sent), timeout_s=30)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(names.raw_topic, p) for p in (0, 1)], timeout=10)
    finally:
        consumer.close()
    assert sorted(got) == sorted(sent)
    assert sum(tp.offset for tp in committed) == len(sent)


def test_end_offsets_are_the_true_ends_after_batched_produces(settings: Settings, names) -> None:  # type: ignore[no-untyped-def]
    """Faust restores tables up to these ends (streams.live.app.tune_faust_consumer): they must be
    last offset + 1 even when the last record batch holds many records (Tansu's ListOffsets
    answers that batch's base offset + 1)."""
    kafka.ensure_topics(settings, [names.raw_topic], partitions=3)
    producer = kafka.producer(settings, linger_ms=50)
    sizes = {0: 1, 1: 37, 2: 0}
    for rounds in range(2):
        for partition, n in sizes.items():
            for i in range(n):
                producer.produce(names.raw_topic, f"{rounds}-{i}".encode(), partition=partition)
        assert producer.flush(10) == 0
    tps = [(names.raw_topic, p) for p in sizes]
    client = kafka.consumer(settings)
    try:
        reported = {tp: client.get_watermark_offsets(TopicPartition(*tp), timeout=10)[1] for tp in tps}
    finally:
        client.close()
    ends = kafka.end_offsets(settings, reported)
    assert ends == {(names.raw_topic, p): 2 * n for p, n in sizes.items()}


def test_compacted_topic_is_accepted(settings: Settings, names) -> None:  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import ConfigResource

    assert kafka.ensure_topics(settings, [names.rules_topic], partitions=1, compacted=True)
    resource = ConfigResource("topic", names.rules_topic)
    client = kafka.admin(settings)  # keep a reference: the future dies with its client
    configs = client.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


_FAUST_APP = textwrap.dedent(
    """
    import sys
    import faust

    bootstrap, topic, out_path, app_id, datadir = sys.argv[1:6]
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=datadir,
        broker_session_timeout=2.0,
        broker_rebalance_timeout=2.0,
        broker_heartbeat_interval=0.5,
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, value_serializer="raw")

    @app.agent(source)
    async def copy(stream):
        async for value in stream:
            with open(out_path, "ab") as out:
                out.write(value + b"\\n")

    if __name__ == "__main__":
        sys.argv = [sys.argv[0], "worker", "-l", "warn"]
        app.main()
    """
)


def test_faust_agent_joins_the_group_and_consumes(settings: Settings, names, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kafka.ensure_topics(settings, [names.raw_topic], partitions=1)
    producer = kafka.producer(settings)
    producer.produce(names.raw_topic, b"hello-faust", key=b"u1")
    assert producer.flush(10) == 0

    app_file = tmp_path / "tiny_app.py"
    app_file.write_text(_FAUST_APP)
    out_path = tmp_path / "seen.txt"
    args = [settings.kafka_bootstrap, names.raw_topic, str(out_path), names.app_id, str(tmp_path / "faust")]
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, str(app_file), *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            if out_path.exists() and out_path.read_bytes():
                break
            time.sleep(0.2)
        seen = out_path.read_bytes() if out_path.exists() else b""
        assert seen == b"hello-faust\n", (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def test_clickhouse_create_insert_select_and_materialized_view(stack, names) -> None:  # type: ignore[no-untyped-def]
    client = clickhouse_connect.get_client(
        dsn=stack.clickhouse_url, username=stack.clickhouse_user, password=stack.clickhouse_password
    )
    db = names.database
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"CREATE TABLE {db}.hits (hit_id String, score Float64, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY hit_id"
    )
    client.command(
        f"CREATE TABLE {db}.hit_counts (hit_id String, n UInt64) ENGINE = SummingMergeTree ORDER BY hit_id"
    )
    select = f"SELECT hit_id, count() AS n FROM {db}.hits GROUP BY hit_id"  # noqa: S608
    client.command(f"CREATE MATERIALIZED VIEW {db}.hit_counts_mv TO {db}.hit_counts AS {select}")
    rows = [["h1", 10.0, 1], ["h2", 20.0, 1], ["h1", 15.0, 2]]
    client.insert(f"{db}.hits", rows, column_names=["hit_id", "score", "version"])
    counts = client.query(f"SELECT hit_id, sum(n) FROM {db}.hit_counts GROUP BY hit_id ORDER BY hit_id")  # noqa: S608
    assert counts.result_rows == [("h1", 2), ("h2", 1)]
    result = client.query(f"SELECT hit_id, score FROM {db}.hits FINAL ORDER BY hit_id").result_rows  # noqa: S608
    assert result == [("h1", 15.0), ("h2", 20.0)]
    assert client.command("SELECT 1") == 1


def test_redis_set_with_ttl(stack, names) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(stack.redis_url)
    key = f"{names.redis_prefix}blacklist:user:u1"
    client.set(key, b"account_resale", ex=600)
    assert client.get(key) == b"account_resale"
    assert 590 <= client.ttl(key) <= 600
    short = f"{names.redis_prefix}short"
    client.set(short, b"1", px=150)
    assert client.exists(short) == 1
    time.sleep(0.4)
    assert client.exists(short) == 0
