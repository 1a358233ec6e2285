"""bench_sinks: the ClickHouse writer - throughput into ClickHouse and hit-to-queryable lag.

Workload: contract-format hit records (``sinks._sample.sample_hit``: 21 fields, 4
feature values, plus the 4 fields the live processor also sends and the writer skips:
``user_id``, ``action``, ``error``, ``total_score`` - 25 fields as in production) on a
4-partition topic of a real Kafka-protocol broker (Tansu), written
by the real writer (``SinkRunner`` + ``ClickHouseSink``: Native-format inserts with
deduplication tokens) into ``risk_hits`` (ReplacingMergeTree + projection + bloom index,
hourly uniqExact rollup MV) on the chdb-served ClickHouse 26.9 engine.

- ``writer_rows_per_s``: N hits already on the topic, rows/s from the first record
  consumed to the last row accepted by ClickHouse (offsets committed). Goal >= 100,000.
- ``sink_only_rows_per_s``: the same rows through ``ClickHouseSink.add/flush`` alone
  (no Kafka): decode + validate + insert; shows where the time goes.
- ``archive_rows_per_s``: N raw events (the simulator's mix of envelopes, a third with a phone
  number and geo) already on a raw topic, archived by the same writer (``"events"`` kind: each
  message decoded, validated and hashed by the worker's decoder, Native insert into
  ``risk_events``), rows/s from the first record consumed to the last row accepted; side by
  side with ``writer_rows_per_s`` (``ratio_to_hits_writer``). Goal >= 100,000.
  ``archive_bytes_per_million_events``: ``sum(bytes_on_disk)`` of the active ``risk_events``
  parts after the run, per million events. ``archive_decode_us_per_event``: the decoder alone
  (``EnvelopeDecoder.decode`` with the Kafka timestamp and clock checks, as the writer calls it)
  on the same events, in-process CPU per event: the share of ``archive_rows_per_cpu_s`` that
  is decoding.
- ``archive_rows_per_s_2_processes``: the same archive run by two writer processes in one
  consumer group (what ``bypass sink clickhouse --processes N`` starts; its default is one per
  core), from the first record either consumed to the last row accepted; side by side with
  the one-process ``archive_rows_per_s`` (``ratio``).
- ``lag_hit_to_queryable_p50/p99``: hits produced at a steady rate while the writer runs
  (default batching settings: ``sink_batch_ms`` = 1000; the full run adds 200 ms); a
  poller queries ClickHouse every 50 ms; lag = first time a hit is visible in a SELECT -
  its produce time.

Starts its own local stack (Tansu + chdb) unless BYPASS_KAFKA_BOOTSTRAP and
BYPASS_CLICKHOUSE_URL are set.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from _common import stack_parts

BUDGET_S = 170
QUICK_BUDGET_S = 90


def _settings(bootstrap: str, ch_url: str, tag: str, **overrides: Any) -> Any:
    from streams.settings import Settings

    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "clickhouse_url": ch_url,
        "clickhouse_database": f"bench_{tag}",
        "hits_topic": f"bench.{tag}.hits",
        "blacklist_topic": f"bench.{tag}.blacklist",
        "dlq_topic": f"bench.{tag}.dlq",
        "app_id": f"bench_{tag}",
        "sink_session_timeout_ms": 2000,
    }
    values.update(overrides)
    return Settings(**values)


def _writer(settings: Any) -> Any:
    from sinks.clickhouse import ClickHouseSink, connect
    from sinks.clickhouse_schema import migrate
    from streams.core.outputs import build_runner

    client = connect(settings.clickhouse_url)
    migrate(client, settings.clickhouse_database)
    sink = ClickHouseSink(
        client,
        settings.clickhouse_database,
        {settings.hits_topic: "hits", settings.blacklist_topic: "blacklist"},
    )
    runner = build_runner(settings, sink, [settings.hits_topic, settings.blacklist_topic], "clickhouse")
    runner.progress_every_s = 3600.0
    return runner


def _produce(settings: Any, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    from streams.core import kafka

    kafka.ensure_topics(settings, [settings.hits_topic, settings.blacklist_topic, settings.dlq_topic])
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "batch.num.messages": 10000})
    for i, v in enumerate(values):
        while True:
            try:
                producer.produce(settings.hits_topic, v, key=str(i % 997).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def _hit(i: int, **kwargs: Any) -> dict[str, Any]:
    """``sample_hit`` with the extra fields ``streams.core.processor.hit_record`` also writes."""
    from sinks._sample import sample_hit

    hit = sample_hit(i, **kwargs)
    hit.update(user_id=hit["key"], action="review", error=None, total_score=hit["score"] + 5.0)
    return hit


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _throughput(bootstrap: str, ch_url: str, n: int, ch_pid: int | None = None) -> list[dict[str, Any]]:

    tag = "tp" + secrets.token_hex(3)
    settings = _settings(bootstrap, ch_url, tag, sink_batch_size=50_000)
    values = [orjson.dumps(_hit(i, rules=50, users=20_000)) for i in range(n)]
    _produce(settings, values)
    runner = _writer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    t0 = None
    cpu0 = ch0 = 0.0
    deadline = time.monotonic() + 120
    while runner.stats.written < n and time.monotonic() < deadline:
        if t0 is None and runner.stats.consumed:
            t0, cpu0, ch0 = time.monotonic(), time.process_time(), _cpu_s(ch_pid)
        time.sleep(0.005)
    t1, cpu1, ch1 = time.monotonic(), time.process_time(), _cpu_s(ch_pid)
    stop.set()
    thread.join(30)
    if runner.stats.written < n or t0 is None:
        raise RuntimeError(f"writer wrote {runner.stats.written} of {n} rows in time")
    writer_rate = n / (t1 - t0)

    # the sink alone (same rows, fresh database)
    from sinks.base import SourceRecord
    from sinks.clickhouse import ClickHouseSink, connect
    from sinks.clickhouse_schema import migrate

    client = connect(ch_url)
    db = f"bench_{tag}_sink"
    migrate(client, db)
    sink = ClickHouseSink(client, db, {"h": "hits"})
    t0 = time.monotonic()
    add_s = 0.0
    for start in range(0, n, 50_000):
        a = time.monotonic()
        for i in range(start, min(n, start + 50_000)):
            sink.add(SourceRecord("h", 0, i, None, values[i]))
        add_s += time.monotonic() - a
        sink.flush()
    sink_s = time.monotonic() - t0
    load = os.getloadavg()[0]
    extra: list[dict[str, Any]] = []
    if ch_pid is not None and ch1 > ch0:
        total_cpu_us = ((cpu1 - cpu0) + (ch1 - ch0)) / n * 1e6
        extra = [
            {"name": "writer_plus_clickhouse_cpu_us_per_row", "value": round(total_cpu_us, 2),
             "unit": "us/row",
             "clickhouse_us_per_row": round((ch1 - ch0) / n * 1e6, 2),
             "note": "CPU of the writer and of the ClickHouse server per row: 2 idle cores give at most "
                     "2e6 / value rows/s"},
        ]  # fmt: skip
    return [
        *extra,
        {"name": "writer_rows_per_s", "value": round(writer_rate), "unit": "rows/s", "goal": ">= 100000",
         "rows": n, "batch_size": 50_000, "loadavg_1m": round(load, 1)},
        {"name": "writer_rows_per_cpu_s", "value": round(n / max(1e-9, cpu1 - cpu0)), "unit": "rows/cpu-s",
         "note": "writer process CPU only (consume, decode, insert client); server not counted"},
        {"name": "sink_only_rows_per_s", "value": round(n / sink_s), "unit": "rows/s", "rows": n,
         "decode_validate_share": round(add_s / sink_s, 2)},
    ]  # fmt: skip


def _event(i: int, now_ms: int) -> dict[str, Any]:
    """A raw event as apps send it (about the simulator's shape)."""
    event: dict[str, Any] = {
        "event_id": f"ev-{i:09d}",
        "type": ("login", "property_view", "order", "phone_change")[i % 4],
        "ts": now_ms - 3_600_000 + i,
        "user_id": f"u{i % 20_000}",
        "device_id": f"d{i % 30_000}",
        "ip": f"10.{i % 7}.{i % 251}.{i % 199}",
        "attrs": {"amount": (i % 997) / 10, "channel": ("app", "web")[i % 2]},
    }
    if i % 3 == 0:
        event["phone"] = f"+86 138-{i % 10_000:04d}-{i % 9_973:04d}"
        event["geo"] = {"lat": 31.2 + (i % 100) / 1000, "lon": 121.4, "city": "Shanghai"}
    return event


def _produce_events(settings: Any, raw: str, n: int, now_ms: int) -> list[bytes]:
    """``n`` simulator-mix events onto ``raw``; returns the first 50,000 as sent."""
    from confluent_kafka import Producer

    from streams.core import kafka

    kafka.ensure_topics(settings, [raw, settings.dlq_topic])
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "batch.num.messages": 10000})
    sample: list[bytes] = []
    for i in range(n):
        value = orjson.dumps(_event(i, now_ms))
        if i < 50_000:
            sample.append(value)
        while True:
            try:
                producer.produce(raw, value, key=f"u{i % 20_000}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return sample


def _archive_settings(bootstrap: str, ch_url: str, tag: str) -> Any:
    return _settings(
        bootstrap, ch_url, tag, sink_batch_size=50_000, raw_topics=(f"bench.{tag}.events",),
        phone_hash_key="bench-key",
    )  # fmt: skip


def _archive_child(bootstrap: str, ch_url: str, tag: str, index: int, shared: dict[str, Any]) -> None:
    """One writer process of ``bypass sink clickhouse --processes N`` (the same runner in
    the same consumer group), reporting its first-consumed time, rows written and CPU."""
    from sinks.clickhouse import ClickHouseSink, connect
    from streams.core.envelope import decoder_from_settings
    from streams.core.outputs import build_runner

    settings = _archive_settings(bootstrap, ch_url, tag)
    raw = settings.raw_topics[0]
    sink = ClickHouseSink(
        connect(settings.clickhouse_url), settings.clickhouse_database, {raw: "events"},
        decoder=decoder_from_settings(settings),
    )  # fmt: skip
    runner = build_runner(settings, sink, [raw], "clickhouse")
    runner.progress_every_s = 3600.0
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    first, written, cpu = shared["first"], shared["written"], shared["cpu"]
    seen = False
    while not shared["stop"].is_set():
        if not seen and runner.stats.consumed:
            seen = True
            now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process (Linux)
            with first.get_lock():
                if first.value == 0.0 or now < first.value:
                    first.value = now
        written[index] = runner.stats.written
        cpu[index] = time.process_time()
        time.sleep(0.005)
    stop.set()
    thread.join(30)


def _archive_processes(
    bootstrap: str, ch_url: str, n: int, processes: int, single_rate: float | None
) -> list[dict[str, Any]]:
    """``archive_rows_per_s`` with ``processes`` writer processes in one consumer group (as
    ``bypass sink clickhouse --processes N`` runs them: by default one per core)."""
    import multiprocessing

    from sinks.clickhouse import connect
    from sinks.clickhouse_schema import migrate

    tag = "ap" + secrets.token_hex(3)
    settings = _archive_settings(bootstrap, ch_url, tag)
    raw = settings.raw_topics[0]
    _produce_events(settings, raw, n, int(time.time() * 1000))
    migrate(connect(settings.clickhouse_url), settings.clickhouse_database)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with librdkafka threads
    shared = {
        "first": ctx.Value("d", 0.0), "written": ctx.Array("q", processes), "cpu": ctx.Array("d", processes),
        "stop": ctx.Event(),
    }  # fmt: skip
    children = [
        ctx.Process(target=_archive_child, args=(bootstrap, ch_url, tag, i, shared), daemon=True)
        for i in range(processes)
    ]
    for child in children:
        child.start()
    deadline = time.monotonic() + 180
    while sum(shared["written"][:]) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    t1 = time.monotonic()
    written = sum(shared["written"][:])
    shared["stop"].set()
    for child in children:
        child.join(40)
        if child.is_alive():
            child.kill()
    t0 = shared["first"].value
    if written < n or not t0:
        raise RuntimeError(f"{processes} archive writers wrote {written} of {n} rows in time")
    rate = n / (t1 - t0)
    row: dict[str, Any] = {
        "name": f"archive_rows_per_s_{processes}_processes", "value": round(rate), "unit": "rows/s",
        "goal": ">= 100000", "rows": n, "processes": processes, "partitions": settings.topic_partitions,
        "rows_per_process": list(shared["written"][:]), "loadavg_1m": round(os.getloadavg()[0], 1),
    }  # fmt: skip
    if single_rate:
        row["baseline_name"] = "archive_rows_per_s (one writer process, same run)"
        row["baseline_value"] = round(single_rate)
        row["ratio"] = round(rate / single_rate, 2)
    return [row]


def _archive(
    bootstrap: str, ch_url: str, n: int, hits_rate: float | None, ch_pid: int | None = None
) -> list[dict[str, Any]]:

    from sinks.clickhouse import ClickHouseSink, connect
    from sinks.clickhouse_schema import migrate
    from streams.core.envelope import decoder_from_settings
    from streams.core.outputs import build_runner

    tag = "ar" + secrets.token_hex(3)
    settings = _archive_settings(bootstrap, ch_url, tag)
    raw = settings.raw_topics[0]
    now_ms = int(time.time() * 1000)
    sample = _produce_events(settings, raw, n, now_ms)
    decoder = decoder_from_settings(settings)
    decode = decoder.decode
    decode_cpu = time.process_time()
    for value in sample:
        decode(value, now_ms, now_ms=now_ms)
    decode_us = (time.process_time() - decode_cpu) / len(sample) * 1e6
    del sample
    client = connect(settings.clickhouse_url)
    migrate(client, settings.clickhouse_database)
    sink = ClickHouseSink(client, settings.clickhouse_database, {raw: "events"}, decoder=decoder)
    runner = build_runner(settings, sink, [raw], "clickhouse")
    runner.progress_every_s = 3600.0
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    t0 = None
    cpu0 = ch0 = 0.0
    deadline = time.monotonic() + 120
    while runner.stats.written < n and time.monotonic() < deadline:
        if t0 is None and runner.stats.consumed:
            t0, cpu0, ch0 = time.monotonic(), time.process_time(), _cpu_s(ch_pid)
        time.sleep(0.005)
    t1, cpu1, ch1 = time.monotonic(), time.process_time(), _cpu_s(ch_pid)
    stop.set()
    thread.join(30)
    if runner.stats.written < n or t0 is None:
        raise RuntimeError(f"archive wrote {runner.stats.written} of {n} rows in time")
    rate = n / (t1 - t0)
    disk = client.query(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = {db:String} "
        "AND table = 'risk_events'",
        parameters={"db": settings.clickhouse_database},
    ).result_rows[0][0]
    row: dict[str, Any] = {
        "name": "archive_rows_per_s", "value": round(rate), "unit": "rows/s", "goal": ">= 100000",
        "rows": n, "batch_size": 50_000, "skipped": sink.skipped_events,
    }  # fmt: skip
    if hits_rate:  # side by side with the hits writer (run.py shows the ratio)
        row["baseline_name"] = "writer_rows_per_s (hits writer, same run)"
        row["baseline_value"] = round(hits_rate)
        row["ratio_to_hits_writer"] = round(rate / hits_rate, 2)
    row["loadavg_1m"] = round(os.getloadavg()[0], 1)
    extra: list[dict[str, Any]] = [
        {"name": "archive_rows_per_cpu_s", "value": round(n / max(1e-9, cpu1 - cpu0)), "unit": "rows/cpu-s",
         "note": "writer process CPU only (consume, decode + validate + hash, insert client)"},
        {"name": "archive_decode_us_per_event", "value": round(decode_us, 2), "unit": "us/event",
         "rows": min(n, 50_000), "note": "EnvelopeDecoder.decode alone on the same events (process CPU)"},
    ]  # fmt: skip
    if ch_pid is not None and ch1 > ch0:
        extra.append(
            {"name": "archive_plus_clickhouse_cpu_us_per_row",
             "value": round(((cpu1 - cpu0) + (ch1 - ch0)) / n * 1e6, 2), "unit": "us/row",
             "clickhouse_us_per_row": round((ch1 - ch0) / n * 1e6, 2),
             "note": "2 idle cores give at most 2e6 / value rows/s"}
        )  # fmt: skip
    return [
        row,
        *extra,
        {"name": "archive_bytes_per_million_events", "value": round(int(disk) * 1_000_000 / n),
         "unit": "bytes", "rows": n, "note": "sum(bytes_on_disk) of the active risk_events parts"},
    ]  # fmt: skip


def _lag(
    bootstrap: str, ch_url: str, rate: int, seconds: float, batch_ms: int = 1000
) -> list[dict[str, Any]]:
    from confluent_kafka import Producer

    from sinks._sample import sample_hit
    from sinks.clickhouse import connect

    tag = "lag" + secrets.token_hex(3)
    settings = _settings(bootstrap, ch_url, tag, sink_batch_ms=batch_ms)  # 1000 ms is the default
    runner = _writer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    from streams.core import kafka

    kafka.ensure_topics(settings, [settings.hits_topic])
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    # warm-up: wait for the group join (one record written)
    producer.produce(settings.hits_topic, orjson.dumps(sample_hit(10**9)), key=b"w")
    producer.flush(10)
    deadline = time.monotonic() + 60
    while runner.stats.written < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    client = connect(ch_url)
    total = int(rate * seconds)
    sent_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        # rows become visible out of offset order (4 partitions, one insert per batch): look at
        # every row inserted in the last seconds instead of a high-water mark
        while not done.is_set() or len(seen_at) < len(sent_at):
            rows = client.query(
                f"SELECT source_offset FROM {settings.clickhouse_database}.risk_hits "  # noqa: S608
                "WHERE run_id = 'bench' AND inserted_at >= now64(3) - toIntervalSecond(15)"
            ).result_rows
            now = time.monotonic()
            for (off,) in rows:
                if off not in seen_at:
                    seen_at[off] = now
            if done.is_set() and time.monotonic() > t_end + 30:
                break
            time.sleep(0.05)

    t_end = time.monotonic() + seconds + 60
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.monotonic()
    for i in range(total):
        target = start + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        hit = _hit(i, run_id="bench")
        sent_at[i] = time.monotonic()
        producer.produce(settings.hits_topic, orjson.dumps(hit), key=str(i % 97).encode())
        producer.poll(0)
    producer.flush(10)
    done.set()
    poller.join(120)
    stop.set()
    thread.join(30)
    lags = sorted((seen_at[i] - sent_at[i]) * 1000 for i in sent_at if i in seen_at)
    if not lags:
        raise RuntimeError("no hit became queryable")

    def pct(q: float) -> float:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1)

    suffix = "" if batch_ms == 1000 else f"_batch_{batch_ms}ms"
    return [
        {"name": f"lag_hit_to_queryable_p50{suffix}", "value": pct(0.5), "unit": "ms", "rate": rate,
         "sink_batch_ms": settings.sink_batch_ms},
        {"name": f"lag_hit_to_queryable_p99{suffix}", "value": pct(0.99), "unit": "ms", "rate": rate,
         "seen": len(lags), "sent": len(sent_at)},
    ]  # fmt: skip


def run(quick: bool = False) -> list[dict[str, Any]]:
    with stack_parts("kafka", "clickhouse") as parts:
        bootstrap, ch_url = parts.addresses["kafka"], parts.addresses["clickhouse"]
        results = _throughput(bootstrap, ch_url, 100_000 if quick else 300_000, parts.pid("clickhouse"))
        hits_rate = next((r["value"] for r in results if r["name"] == "writer_rows_per_s"), None)
        n_archive = 100_000 if quick else 300_000
        results += _archive(bootstrap, ch_url, n_archive, hits_rate, parts.pid("clickhouse"))
        single = next((r["value"] for r in results if r["name"] == "archive_rows_per_s"), None)
        results += _archive_processes(bootstrap, ch_url, n_archive, 2, single)
        results += _lag(bootstrap, ch_url, rate=1000 if quick else 2000, seconds=5 if quick else 10)
        if not quick:
            results += _lag(bootstrap, ch_url, rate=2000, seconds=8, batch_ms=200)
    return results


if __name__ == "__main__":
    for row in run(quick=bool(os.environ.get("QUICK"))):
        print(row)
