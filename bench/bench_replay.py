"""bench_replay: ``bypass replay`` throughput end to end, on one core.

Workload: simulated traffic (``streams.local.simulate``: normal users plus the four abuse
scenarios; ~2,000 users) already on a 4-partition raw topic of a real Kafka-protocol broker
(Tansu), replayed over its whole range (auto warm-up) with the example feature spec
(11 features over user, device and ip) and the example rule set (``examples/rules.yaml``).
The replay process is pinned to one CPU (``sched_setaffinity``; the broker and ClickHouse
are other processes); it is single-threaded Python (librdkafka's fetch threads aside):

- ``replay_clickhouse_events_per_s``: Kafka -> decode -> merge -> features -> rules ->
  hits inserted into ``risk_hits`` (chdb-served ClickHouse 26.9) through the live writer's
  ``ClickHouseSink``; events/s over the wall time of the whole run (setup included).
  Goal >= 30,000 events/s.
- ``replay_jsonl_events_per_s`` / ``replay_none_events_per_s``: the same run writing the
  hit records as JSON lines to a file / writing nothing (a backtest), for comparison.
- ``replay_last_tenth_events_per_s``: the usual backfill shape - only the last 10% of the
  span in range, the rest read as warm-up (state only, no rule evaluation); events/s over
  all events read.
- ``replay_hits``: hits per run (the same in all three; a sanity figure).

Starts its own local stack (Tansu + chdb) unless BYPASS_KAFKA_BOOTSTRAP and
BYPASS_CLICKHOUSE_URL are set.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import stack_parts

BUDGET_S = 240
QUICK_BUDGET_S = 120

ROOT = Path(__file__).resolve().parents[1]


def _settings(bootstrap: str, ch_url: str, tmp: Path, tag: str) -> Any:
    from streams.settings import Settings

    return Settings(
        kafka_bootstrap=bootstrap,
        clickhouse_url=ch_url,
        clickhouse_database=f"bench_{tag}",
        raw_topics=(f"bench.{tag}.events",),
        rules_topic=f"bench.{tag}.rules",
        dlq_topic=f"bench.{tag}.dlq",
        app_id=f"bench_{tag}",
        features_spec=ROOT / "examples" / "features.yaml",
        phone_hash_key=secrets.token_hex(16),
        state_dir=tmp / "state",
        replay_checkpoint_s=30.0,
    )


def _produce(settings: Any, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    from streams.core import kafka

    topic = settings.raw_topics[0]
    kafka.ensure_topics(settings, [topic], partitions=4)
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "batch.num.messages": 10000})
    for event in events:
        while True:
            try:
                producer.produce(
                    topic, orjson.dumps(event), key=event["user_id"].encode(), timestamp=event["ts"]
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _replay(settings: Any, t1: int, t2: int, out: str, tmp: Path) -> tuple[float, Any]:
    from streams.replay import Replay, ReplayOptions

    options = ReplayOptions(
        from_ms=t1,
        to_ms=t2,
        rules_file=ROOT / "examples" / "rules.yaml",
        out=out,
        out_file=tmp / f"hits-{out}.jsonl" if out == "jsonl" else None,
        progress=False,
    )
    # one core: pin this process (the broker and ClickHouse are other processes)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        started = time.perf_counter()
        summary = Replay(settings, options).run()
        return time.perf_counter() - started, summary
    finally:
        os.sched_setaffinity(0, before)


def _measure(bootstrap: str, ch_url: str, n_events: int) -> list[dict[str, Any]]:
    from sinks.clickhouse import connect
    from sinks.clickhouse_schema import migrate
    from streams.local.simulate import SimConfig, Simulator

    tag = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmpdir:
        tmp = Path(tmpdir)
        settings = _settings(bootstrap, ch_url, tmp, tag)
        users = max(500, n_events // 100)
        events = list(Simulator(SimConfig(users=users, rate=n_events / 60, duration_s=60, seed=42)).events())
        _produce(settings, events)
        client = connect(ch_url)
        migrate(client, settings.clickhouse_database)
        t1, t2 = events[0]["ts"], events[-1]["ts"] + 1

        results: list[dict[str, Any]] = []
        rates: dict[str, float] = {}
        hits = 0
        for out in ("none", "jsonl", "clickhouse"):
            elapsed, summary = _replay(settings, t1, t2, out, tmp)
            assert summary.stats.messages == len(events), (summary.stats.messages, len(events))
            rates[out] = summary.stats.messages / elapsed
            hits = summary.stats.hits
        # the usual shape of a backfill: a short range after a long warm-up (last 10% of the span)
        t1_late = t2 - (t2 - t1) // 10
        elapsed_late, late = _replay(settings, t1_late, t2, "none", tmp)
        rates["late"] = late.stats.messages / elapsed_late
        rows = client.query(
            f"SELECT count() FROM {settings.clickhouse_database}.risk_hits FINAL"  # noqa: S608
        ).result_rows[0][0]
        assert rows == hits, (rows, hits)
        results.append(
            {
                "name": "replay_clickhouse_events_per_s",
                "value": round(rates["clickhouse"], 1),
                "unit": "events/s",
                "goal": ">= 30000",
                "events": len(events),
                "hits": hits,
                "baseline_name": "the same replay writing nothing (--out none)",
                "baseline_value": round(rates["none"], 1),
            }
        )
        results.append(
            {"name": "replay_jsonl_events_per_s", "value": round(rates["jsonl"], 1), "unit": "events/s"}
        )
        results.append(
            {"name": "replay_none_events_per_s", "value": round(rates["none"], 1), "unit": "events/s"}
        )
        results.append(
            {
                "name": "replay_last_tenth_events_per_s",
                "value": round(rates["late"], 1),
                "unit": "events/s",
                "note": "last 10% of the span in range, auto warm-up over the rest (no rule evaluation)",
                "baseline_name": "the whole span (--out none)",
                "baseline_value": round(rates["none"], 1),
            }
        )
        results.append({"name": "replay_hits", "value": float(hits), "unit": "hits", "events": len(events)})
        return results


def run(quick: bool = False) -> list[dict[str, Any]]:
    with stack_parts("kafka", "clickhouse") as parts:
        return _measure(parts.addresses["kafka"], parts.addresses["clickhouse"], 30_000 if quick else 100_000)


if __name__ == "__main__":
    for row in run(quick=bool(os.environ.get("QUICK"))):
        print(row)
