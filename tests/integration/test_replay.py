"""``bypass replay`` on the real local stack (Kafka-protocol broker, ClickHouse).

The "live" reference hits are computed two ways: by the live worker (``bypass worker``
as a subprocess, reading its ``bypass.hits`` topic) and, for the cheaper tests, by
running the shared :class:`streams.core.processor.Processor` directly over everything on the
topics in the live merge order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, TopicPartition

from streams.core import kafka
from streams.core.envelope import EnvelopeDecoder, decoder_from_settings
from streams.local.simulate import SimConfig, Simulator
from streams.producer import EventProducer
from streams.replay import (
    Replay,
    ReplayError,
    ReplayOptions,
    checkpoint_path,
    iter_hits_jsonl,
    load_checkpoint,
)
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
FEATURES = DATA / "replay_features.yaml"  # frozen copies of examples/
RULES = DATA / "replay_rules.yaml"
DAY_MS = 86_400_000


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    """Test settings + the example spec, small chunks (so several checkpoints happen)."""
    return settings.model_copy(
        update={"features_spec": FEATURES, "replay_batch_size": 500, "replay_checkpoint_s": 0.2}
    )


def scenario(
    seed: int = 7, users: int = 120, rate: float = 100, duration_s: float = 30
) -> list[dict[str, Any]]:
    return list(Simulator(SimConfig(users=users, rate=rate, duration_s=duration_s, seed=seed)).events())


def produce(settings: Settings, topic: str, events: list[dict[str, Any]], partitions: int = 4) -> None:
    kafka.ensure_topics(settings, [topic], partitions=partitions)
    with EventProducer(settings, topic=topic) as producer:
        producer.send_many(events)
        producer.flush().raise_for_errors()


def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every message of ``topic`` (all partitions, from the start to the end)."""
    consumer = kafka.consumer(settings, group_id=f"{settings.app_id}-test-reader", enable_partition_eof=True)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        open_parts, out = set(parts), []
        deadline = time.monotonic() + 60
        while open_parts and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(m.partition())
                    continue
                out.append(m)
        return out
    finally:
        consumer.close()


def direct_hits(
    settings: Settings, topic: str | list[str], rules_text: str, run_id: str = "live"
) -> list[dict[str, Any]]:
    """The shared Processor over the whole topic(s), merged in the live order, one key at a time."""
    from streams.core.assembly import build_engine, load_for_spec, load_spec
    from streams.core.order import SourceEvent, merge_sources
    from streams.core.processor import KeyBatch, Processor

    spec = load_spec(settings)
    processor = Processor(spec, build_engine(spec, settings), load_for_spec(rules_text, spec), run_id=run_id)
    decoder = EnvelopeDecoder(settings.require_phone_hash_key())
    per_partition: dict[tuple[str, int], list[Any]] = {}
    for name in [topic] if isinstance(topic, str) else topic:
        for m in read_topic(settings, name):
            try:
                event = decoder.decode(m.value())
            except Exception:  # noqa: S112 - malformed: not part of the reference
                continue
            per_partition.setdefault((m.topic(), m.partition()), []).append(
                SourceEvent(event, m.topic(), m.partition(), m.offset(), m.timestamp()[1])
            )
    for seq in per_partition.values():
        seq.sort(key=lambda s: s.offset)
    states: dict[tuple[str, str], Any] = {}
    hits: list[dict[str, Any]] = []
    for source in merge_sources(per_partition.values()):
        for entity, key in spec.entity_keys(source.event):
            [result] = processor.process_many(
                entity, [KeyBatch(str(key), states.get((entity, str(key))), [source])]
            )
            states[(entity, str(key))] = result.state
            hits.extend(result.hits)
    return hits


def run_replay(settings: Settings, **kw: Any) -> Any:
    kw.setdefault("progress", False)
    return Replay(settings, ReplayOptions(**kw)).run()


def in_range(hits: list[dict[str, Any]], t1: int, t2: int) -> set[str]:
    return {h["hit_id"] for h in hits if t1 <= h["event_ts"] < t2}


def ch_client(settings: Settings) -> Any:
    from sinks.clickhouse import connect
    from sinks.clickhouse_schema import migrate

    client = connect(settings.clickhouse_url, username=settings.clickhouse_user)
    migrate(client, settings.clickhouse_database)
    return client


def insert_live(settings: Settings, client: Any, hits: list[dict[str, Any]]) -> None:
    """Live hits into risk_hits through the writer's sink (as ``bypass sink clickhouse`` does)."""
    from sinks.base import SourceRecord
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(client, settings.clickhouse_database, {settings.hits_topic: "hits"})
    for i, hit in enumerate(hits):
        sink.add(SourceRecord(settings.hits_topic, 0, i, None, orjson.dumps(hit)))
    sink.flush()


def changed_rules(rules_text: str) -> str:
    """The test rule set with one rule changed (device_farm from >= 8 to >= 3) and a new version."""
    assert "device_users_7d >= 8" in rules_text
    text = rules_text.replace("device_users_7d >= 8", "device_users_7d >= 3")
    return text.replace('version: "2026-11-23.1"', 'version: "2026-11-23.2-test"')


def cli(stack: Any, settings: Settings, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), **_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "streams", "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


# --------------------------------------------------------------------------- determinism


def test_replay_gives_the_live_hit_ids_and_a_warm_sub_range_too(
    rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    events = scenario()
    produce(rsettings, names.raw_topic, events)
    rules_text = RULES.read_text()
    live = direct_hits(rsettings, names.raw_topic, rules_text)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    assert len(in_range(live, t1, t2)) > 10  # the scenario does fire rules

    out = tmp_path / "hits.jsonl"
    summary = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="jsonl", out_file=out)
    replayed = list(iter_hits_jsonl(out))
    assert {h["hit_id"] for h in replayed} == in_range(live, t1, t2)
    assert summary.stats.hits == len(replayed) and summary.stats.in_range_events == len(events)
    # nothing older than the warm-up on the topic: no warning about all-time features
    assert not any("without a window" in w for w in summary.warnings), summary.warnings
    assert {h["run_id"] for h in replayed} == {summary.run_id}
    # the records are the live records but for run_id
    by_id = {h["hit_id"]: h for h in live}
    for h in replayed[:50]:
        assert {**h, "run_id": "live"} == by_id[h["hit_id"]]

    # the second half only, warm-up auto (30 d covers the whole scenario): same hits there
    mid = (t1 + t2) // 2
    sub = tmp_path / "sub.jsonl"
    run_replay(rsettings, from_ms=mid, to_ms=t2, rules_file=RULES, out="jsonl", out_file=sub)
    assert {h["hit_id"] for h in iter_hits_jsonl(sub)} == in_range(live, mid, t2)


def test_all_time_features_are_warned_about_only_when_older_events_exist(
    rsettings: Settings, names: Any
) -> None:
    """The walk-through's replays warned about all-time features on every run; the warning
    matters only when the warm-up skips events that the topic still holds."""
    t = 1_763_856_000_000
    old = {"event_id": "old-1", "type": "property_view", "ts": t - 40 * DAY_MS, "user_id": "u1"}
    new = {"event_id": "new-1", "type": "property_view", "ts": t, "user_id": "u1"}
    produce(rsettings, names.raw_topic, [old], partitions=1)
    produce(rsettings, names.raw_topic, [new], partitions=1)  # two batches: found by time apart
    recent = run_replay(rsettings, from_ms=t, to_ms=t + 1, rules_file=RULES)
    assert any("without a window (all-time): property_views_total" in w for w in recent.warnings), (
        recent.warnings
    )
    whole = run_replay(rsettings, from_ms=t - 40 * DAY_MS, to_ms=t + 1, rules_file=RULES)
    assert not any("without a window" in w for w in whole.warnings), whole.warnings


def test_a_replay_from_the_event_archive_gives_the_kafka_replays_hit_ids(
    rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    """Issue 16, item 2: --source archive reads risk_events (beyond Kafka's retention) in
    the same order as a Kafka replay: the same hit ids, a warm sub-range included."""
    from sinks_support import bypass, sink_settings

    events = scenario(seed=13)
    produce(rsettings, names.raw_topic, events)
    client = ch_client(rsettings)
    db = rsettings.clickhouse_database
    archived = bypass(sink_settings(rsettings), "sink", "clickhouse", "--idle-exit", "3", timeout=180)
    assert archived.returncode == 0, archived.stdout + archived.stderr
    count = client.query(f"SELECT count() FROM {db}.risk_events FINAL").result_rows[0][0]  # noqa: S608
    assert count == len(events)

    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    mid = (t1 + t2) // 2

    def hit_ids(source: str, start: int) -> list[str]:
        out = tmp_path / f"{source}-{start}.jsonl"
        run_replay(
            rsettings, from_ms=start, to_ms=t2, rules_file=RULES, out="jsonl", out_file=out, source=source
        )
        return [h["hit_id"] for h in iter_hits_jsonl(out)]

    whole = hit_ids("kafka", t1)
    assert len(whole) > 10
    assert hit_ids("archive", t1) == whole  # same ids, in the same order
    assert hit_ids("archive", mid) == hit_ids("kafka", mid)  # the warm-up reads the archive too


def test_several_topics_are_merged_by_event_time(rsettings: Settings, names: Any, tmp_path: Path) -> None:
    """Logins on one topic (3 partitions), everything else on another (2): one user's events
    now sit in different topics, and replay must merge them by event time."""
    events = scenario(seed=41)
    logins, others = names.topic("logins"), names.topic("others")
    produce(rsettings, logins, [e for e in events if e["type"].startswith("login")], partitions=3)
    produce(rsettings, others, [e for e in events if not e["type"].startswith("login")], partitions=2)
    reference = direct_hits(rsettings, [logins, others], RULES.read_text())
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    assert len(in_range(reference, t1, t2)) > 10
    out = tmp_path / "hits.jsonl"
    summary = run_replay(
        rsettings, from_ms=t1, to_ms=t2, topics=(logins, others), rules_file=RULES, out="jsonl", out_file=out
    )
    assert summary.partitions == 5 and summary.stats.in_range_events == len(events)
    replayed = list(iter_hits_jsonl(out))
    assert {h["hit_id"] for h in replayed} == in_range(reference, t1, t2)
    assert {h["source_topic"] for h in replayed} == {logins, others}


def _poison(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Three orders of one user whose 1 h order sum outgrows what a state snapshot can hold
    (an integer above 2**64): the third cannot be processed, and only it."""
    t = events[len(events) // 2]["ts"]
    big = 9_000_000_000_000_000_000
    rich = [
        {"event_id": f"big{j}", "type": "order", "ts": t + j, "user_id": "u-rich", "attrs": {"amount": big}}
        for j in range(3)
    ]
    return sorted([*events, *rich], key=lambda e: e["ts"])


@pytest.mark.slow
def test_live_replay_and_the_batch_step_agree_and_dead_letter_the_same_poison(
    stack: Any, rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    """The real live pipeline (``bypass worker``), ``bypass replay`` and the shared batch step
    driven from a list give the same hits over one stream, and dead-letter the same poison
    event; replay goes on after it."""
    from streams.core.assembly import build_processor, load_for_spec, load_spec
    from streams.core.envelope import EnvelopeDecoder
    from streams.core.order import SourceEvent
    from streams.core.rulestore import publish_ruleset
    from streams.core.step import BatchStep, MemoryStore

    events = _poison(scenario(seed=11, users=80, rate=60, duration_s=30))
    for topic in (names.hits_topic, names.blacklist_topic, names.dlq_topic):
        kafka.ensure_topics(rsettings, [topic], partitions=1)
    kafka.ensure_topics(rsettings, [names.rules_topic], partitions=1, compacted=True)
    publish_ruleset(rsettings, RULES.read_text(), source=str(RULES))
    # one raw partition: live then applies every entity's events in event-time order, as
    # replay does (the order across partitions is another test's subject)
    produce(rsettings, names.raw_topic, events, partitions=1)
    env = {
        **os.environ,
        **stack.env(),
        "BYPASS_RAW_TOPICS": names.raw_topic,
        "BYPASS_RULES_TOPIC": names.rules_topic,
        "BYPASS_DLQ_TOPIC": names.dlq_topic,
        "BYPASS_HITS_TOPIC": names.hits_topic,
        "BYPASS_BLACKLIST_TOPIC": names.blacklist_topic,
        "BYPASS_APP_ID": names.app_id,
        "BYPASS_FEATURES_SPEC": str(FEATURES),
        "BYPASS_STATE_DIR": str(tmp_path / "worker"),
        "BYPASS_CONSUMER_SESSION_TIMEOUT_MS": "3000",
        "BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS": "3000",
        "BYPASS_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
        "BYPASS_METRICS_PORT": "0",
    }

    # the batch step, driven from a list of the very messages on the topic
    spec = load_spec(rsettings)
    step = BatchStep(build_processor(rsettings, spec, load_for_spec(RULES.read_text(), spec), run_id="live"))
    decoder = EnvelopeDecoder(rsettings.require_phone_hash_key())
    sources = [
        SourceEvent(decoder.decode(m.value()), m.topic(), m.partition(), m.offset(), m.timestamp()[1])
        for m in read_topic(rsettings, names.raw_topic)
    ]
    listed = step.run(sources, MemoryStore())
    want = {h.record["hit_id"] for h in listed.hits}
    [listed_letter] = listed.dead_letters
    assert orjson.loads(listed_letter.value or b"")["event_id"] == "big2"

    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        seen: set[str] = set()
        while time.monotonic() < deadline and not want <= seen and worker.poll() is None:
            time.sleep(3)
            seen = {orjson.loads(m.value())["hit_id"] for m in read_topic(rsettings, names.hits_topic)}
        time.sleep(3)  # anything beyond the reference would show up now
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    live_hits = [orjson.loads(m.value()) for m in read_topic(rsettings, names.hits_topic)]
    live_ids = {h["hit_id"] for h in live_hits}
    assert live_ids, (tmp_path / "worker.log").read_text()[-3000:]
    assert {h["run_id"] for h in live_hits} == {"live"}
    assert live_ids == want
    [live_letter] = read_topic(rsettings, names.dlq_topic)
    assert live_letter.value() == listed_letter.value
    assert dict(live_letter.headers()) == dict(listed_letter.headers)
    assert dict(live_letter.headers())["bypass.reason"] == b"processing_error"

    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    out = tmp_path / "replay.jsonl"
    summary = run_replay(
        rsettings, from_ms=t1, to_ms=t2, out="jsonl", out_file=out, dlq=True
    )  # latest published rule set
    assert {h["hit_id"] for h in iter_hits_jsonl(out)} == live_ids
    assert summary.stats.processing_errors == 1 and summary.stats.dlq_sent == 1
    assert not summary.interrupted
    replay_letters = [m for m in read_topic(rsettings, names.dlq_topic) if m.offset() != live_letter.offset()]
    [replay_letter] = replay_letters
    headers = dict(replay_letter.headers())
    assert headers.pop("bypass.run_id") == summary.run_id.encode()
    assert headers == dict(live_letter.headers()) and replay_letter.value() == live_letter.value()


# --------------------------------------------------------------------------- compare


def test_compare_reports_exactly_the_changed_rules(
    stack: Any, rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    events = scenario(seed=3)
    produce(rsettings, names.raw_topic, events)
    rules_text = RULES.read_text()
    client = ch_client(rsettings)
    live = direct_hits(rsettings, names.raw_topic, rules_text)
    insert_live(rsettings, client, live)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1

    same = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, compare=True)
    assert same.compare and not [r for r in same.compare if r.changed]
    assert sum(r.live for r in same.compare) == len(live)

    new_rules = tmp_path / "new.yaml"
    new_rules.write_text(changed_rules(rules_text))
    new_hits = direct_hits(rsettings, names.raw_topic, new_rules.read_text())
    key = lambda hs: {(h["rule_id"], h["event_id"]) for h in hs}  # noqa: E731
    truly_changed = {r for r, _ in key(live) ^ key(new_hits)}
    assert truly_changed == {"device_farm"}  # the test's premise: the change does change hits

    backtest = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=new_rules, compare=True, out="none")
    rows = {r.rule_id: r for r in backtest.compare}
    assert {r.rule_id for r in backtest.compare if r.changed} == {"device_farm"}
    farm_live = {e for r, e in key(live) if r == "device_farm"}
    farm_new = {e for r, e in key(new_hits) if r == "device_farm"}
    assert (rows["device_farm"].added, rows["device_farm"].removed) == (
        len(farm_new - farm_live),
        len(farm_live - farm_new),
    )

    # the CLI prints the table
    done = cli(
        stack,
        rsettings,
        "--from", str(t1), "--to", str(t2), "--rules", str(new_rules), "--compare", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "live vs replay" in done.stderr and "device_farm" in done.stderr

    # with outcome labels, each side gets precision and recall (issue 16, item 4)
    from sinks_support import bypass

    farm_keys = sorted({h["key"] for h in new_hits if h["rule_id"] == "device_farm"})
    labels = tmp_path / "labels.csv"
    labels.write_text("entity,key,label\n" + "".join(f"device,{k},fraud\n" for k in farm_keys[:1]))
    imported = bypass(rsettings, "labels", "import", str(labels))
    assert imported.returncode == 0, imported.stderr
    judged = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=new_rules, compare=True, out="none")
    farm = {r.rule_id: r for r in judged.compare}["device_farm"]
    new_farm_keys = {h["key"] for h in new_hits if h["rule_id"] == "device_farm"}
    assert farm.replayed_precision == 1 / len(new_farm_keys) and farm.replayed_recall == 1.0
    shown = cli(
        stack,
        rsettings,
        "--from", str(t1), "--to", str(t2), "--rules", str(new_rules), "--compare", "--no-progress",
    )  # fmt: skip
    assert "P precision, R recall" in " ".join(shown.stderr.split())


# --------------------------------------------------------------------------- warm-up


def _month_scenario(start_ms: int) -> list[dict[str, Any]]:
    """Phone changes spread over 30 days, contract signs on the last day (day 30.5).

    day:   0 ... 1 ....... 10 ....... 20 ....... 29 | 30 .. 30.5 (sign)
    u1:          pc        pc         pc            |        sign -> 3 changes in (0.5, 30.5]: hit
    u2:                                         pc  |        sign -> 1 change: no hit
    u3:      pc(0.5)                  pc            |        sign -> day 0.5 is exactly 30 d old,
                                                                    outside (t - 30d, t]: 1: no hit
    u4:                    pc         pc        pc  |        sign -> 3 changes: hit
    u5:   pc(0.25)         pc         pc            |        sign -> 2 in the window: no hit
    """
    ev: list[dict[str, Any]] = []

    def add(user: str, day: float, kind: str) -> None:
        ev.append(
            {
                "event_id": f"{user}-{kind}-{day}",
                "type": kind,
                "ts": start_ms + int(day * DAY_MS),
                "user_id": user,
            }
        )

    plan = {"u1": [1, 10, 20], "u2": [29], "u3": [0.5, 20], "u4": [10, 20, 29], "u5": [0.25, 10, 20]}
    for user, days in plan.items():
        for d in days:
            add(user, d, "phone_change")
        add(user, 30.5, "contract_sign")
    # background noise so every day has events
    for d in range(31):
        add(f"n{d % 5}", d + 0.75, "login")
    return sorted(ev, key=lambda e: e["ts"])


WARMUP_RULES = """
version: "warmup-1"
rules:
  - id: churn_then_sign
    entity: user
    when: phone_changes_30d >= 3
    events: [contract_sign]
    score: 50
    label: churn
"""


def test_auto_warm_up_gives_the_same_hits_as_the_whole_month(
    rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    start = 1_761_955_200_000  # 2025-11-01T00:00:00Z
    produce(rsettings, names.raw_topic, _month_scenario(start), partitions=2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(WARMUP_RULES)
    last_day, end = start + 30 * DAY_MS, start + 31 * DAY_MS

    def hits(**kw: Any) -> set[tuple[str, str]]:
        out = tmp_path / f"h{len(list(tmp_path.iterdir()))}.jsonl"
        run_replay(rsettings, to_ms=end, rules_file=rules, out="jsonl", out_file=out, **kw)
        return {(h["rule_id"], h["key"]) for h in iter_hits_jsonl(out) if h["event_ts"] >= last_day}

    month = hits(from_ms=start, warmup="0")
    day_auto = hits(from_ms=last_day)  # --warmup auto = 30 d (the spec's longest window)
    day_cold = hits(from_ms=last_day, warmup="0")
    assert month == {("churn_then_sign", "u1"), ("churn_then_sign", "u4")}
    assert day_auto == month
    assert day_cold == set()  # without the warm-up the 30-day feature starts empty


# --------------------------------------------------------------------------- ClickHouse


@pytest.mark.slow
def test_replaying_twice_into_clickhouse_adds_no_rows(rsettings: Settings, names: Any) -> None:
    events = scenario(seed=5)
    produce(rsettings, names.raw_topic, events)
    client = ch_client(rsettings)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    db = rsettings.clickhouse_database

    first = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="clickhouse", run_id="bf-1")
    sql = "SELECT count(), uniqExact(hit_id) FROM {db}.risk_hits FINAL"
    rows = client.query(sql.format(db=db)).result_rows[0]
    assert rows[0] == rows[1] == first.stats.hits > 0
    again = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="clickhouse", run_id="bf-1")
    assert again.stats.hits == first.stats.hits
    assert client.query(sql.format(db=db)).result_rows[0] == rows
    runs = client.query(
        sql.replace("count(), uniqExact(hit_id)", "DISTINCT run_id").format(db=db)
    ).result_rows
    assert runs == [("bf-1",)]

    blacklisted = "SELECT count() FROM {db}.risk_blacklist FINAL"
    assert client.query(blacklisted.format(db=db)).result_rows[0][0] == 0  # a replay run id writes none

    # a backfill as live (--run-id live) takes the rows over, still without new rows, and
    # fills risk_blacklist too (idempotently)
    for _ in range(2):
        live = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="clickhouse", run_id="live")
        assert client.query(sql.format(db=db)).result_rows[0] == rows
        assert live.blacklist_written and live.stats.blacklist > 0
        assert client.query(blacklisted.format(db=db)).result_rows[0][0] == live.stats.blacklist
    # ... and a later replay of the same version says that it would relabel the live rows
    relabel = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="clickhouse", run_id="bf-2")
    assert any(f"{first.stats.hits:,} live hits" in w and "--run-id live" in w for w in relabel.warnings)


# --------------------------------------------------------------------------- the live group


def test_the_live_consumer_group_is_never_touched(rsettings: Settings, names: Any, tmp_path: Path) -> None:
    events = scenario(seed=9, users=60, rate=40, duration_s=30)
    produce(rsettings, names.raw_topic, events, partitions=2)
    live_group = rsettings.app_id
    tps = [TopicPartition(names.raw_topic, p) for p in (0, 1)]
    committer = kafka.consumer(rsettings, group_id=live_group)
    committer.commit(
        offsets=[TopicPartition(names.raw_topic, 0, 7), TopicPartition(names.raw_topic, 1, 3)],
        asynchronous=False,
    )
    before = [(tp.partition, tp.offset) for tp in committer.committed(tps, timeout=10)]
    committer.close()
    assert before == [(0, 7), (1, 3)]

    summary = run_replay(rsettings, from_ms=events[0]["ts"], to_ms=events[-1]["ts"] + 1, rules_file=RULES)
    assert summary.stats.messages == len(events)

    checker = kafka.consumer(rsettings, group_id=live_group)
    after = [(tp.partition, tp.offset) for tp in checker.committed(tps, timeout=10)]
    checker.close()
    assert after == before
    replay_group = kafka.consumer(rsettings, group_id=f"{live_group}-replay-{summary.run_id}")
    assert all(tp.offset < 0 for tp in replay_group.committed(tps, timeout=10))  # never committed
    replay_group.close()


# --------------------------------------------------------------------------- resume


def test_resume_after_a_stop_gives_the_uninterrupted_result(
    rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    events = scenario(seed=13)
    produce(rsettings, names.raw_topic, events)
    t1, t2 = events[0]["ts"] + DAY_MS // 4, events[-1]["ts"] + 1
    full = tmp_path / "full.jsonl"
    run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, out="jsonl", out_file=full, run_id="full")

    part = tmp_path / "part.jsonl"
    opts = ReplayOptions(
        from_ms=t1, to_ms=t2, rules_file=RULES, out="jsonl", out_file=part, run_id="cut", progress=False
    )
    runner = Replay(
        rsettings, opts, on_chunk=lambda st: runner.request_stop() if st.messages >= 1000 else None
    )
    stopped = runner.run()
    assert stopped.interrupted and 1000 <= stopped.stats.messages < len(events)
    ck = load_checkpoint(checkpoint_path(rsettings.state_dir, "cut"))
    assert not ck.complete and ck.states and sum(ck.positions.values()) == stopped.stats.messages
    # a crash after the checkpoint may leave extra lines: resume cuts them off
    with open(part, "ab") as fh:
        fh.write(b'{"half": "written"}\n')

    resumed = Replay(
        rsettings, ReplayOptions(from_ms=None, to_ms=None, run_id="cut", resume=True, progress=False)
    ).run()
    assert not resumed.interrupted
    # line for line the same hits, in the same order (only the run id differs)
    assert part.read_bytes().replace(b'"run_id":"cut"', b'"run_id":"full"') == full.read_bytes()
    assert len(full.read_bytes().splitlines()) == resumed.stats.hits > 0
    assert resumed.stats.messages == len(events)
    with pytest.raises(ReplayError, match="already finished"):
        Replay(
            rsettings, ReplayOptions(from_ms=None, to_ms=None, run_id="cut", resume=True, progress=False)
        ).run()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    stack: Any, rsettings: Settings, names: Any, tmp_path: Path
) -> None:
    events = scenario(seed=17, users=150, rate=400, duration_s=30)  # 12,000 events
    produce(rsettings, names.raw_topic, events)
    settings = rsettings.model_copy(update={"replay_batch_size": 100})
    env_cli = [
        "--from", str(events[0]["ts"]), "--to", str(events[-1]["ts"] + 1),
        "--rules", str(RULES), "--run-id", "sigint", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "replay", *env_cli],
        env={**os.environ, **stack.env(), **_env(settings)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = checkpoint_path(settings.state_dir, "sigint")
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume --run-id sigint" in err and "Traceback" not in err
    assert not load_checkpoint(path).complete
    done = cli(stack, settings, "--resume", "--run-id", "sigint", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(path).complete


def _env(settings: Settings) -> dict[str, str]:
    return {
        "BYPASS_RAW_TOPICS": ",".join(settings.raw_topics),
        "BYPASS_APP_ID": settings.app_id,
        "BYPASS_FEATURES_SPEC": str(settings.features_spec),
        "BYPASS_STATE_DIR": str(settings.state_dir),
        "BYPASS_REPLAY_BATCH_SIZE": str(settings.replay_batch_size),
        "BYPASS_REPLAY_CHECKPOINT_S": "0.1",
        "BYPASS_RULES_TOPIC": settings.rules_topic,
        "BYPASS_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "BYPASS_DLQ_TOPIC": settings.dlq_topic,
        "BYPASS_HITS_TOPIC": settings.hits_topic,
    }


# --------------------------------------------------------------------------- bad input


def test_rules_version_from_the_rules_topic(rsettings: Settings, names: Any, tmp_path: Path) -> None:
    from streams.core.rulestore import publish_ruleset

    events = scenario(seed=21, users=60, rate=40, duration_s=30)
    produce(rsettings, names.raw_topic, events, partitions=2)
    kafka.ensure_topics(rsettings, [names.rules_topic], partitions=1, compacted=True)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    with pytest.raises(ReplayError, match="no rule set is published"):
        run_replay(rsettings, from_ms=t1, to_ms=t2)
    publish_ruleset(rsettings, RULES.read_text(), source="rules.yaml")
    publish_ruleset(rsettings, changed_rules(RULES.read_text()), source="new.yaml")
    assert run_replay(rsettings, from_ms=t1, to_ms=t2).ruleset_version == "2026-11-23.2-test"  # the latest
    old = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_version="2026-11-23.1")
    assert old.ruleset_version == "2026-11-23.1"
    with pytest.raises(ReplayError, match="not on"):
        run_replay(rsettings, from_ms=t1, to_ms=t2, rules_version="nope")


def test_malformed_messages_are_counted_and_sent_to_the_dlq_only_with_dlq(
    rsettings: Settings, names: Any, stack: Any
) -> None:
    events = scenario(seed=23, users=60, rate=40, duration_s=30)
    produce(rsettings, names.raw_topic, events, partitions=2)
    kafka.ensure_topics(rsettings, [names.dlq_topic], partitions=1)
    producer = kafka.producer(rsettings)
    ts = events[len(events) // 2]["ts"]
    bad = [b"{not json", b'{"type": "login"}', b"[1, 2]", orjson.dumps({**events[0], "ts": "soon"})]
    for value in bad:
        producer.produce(names.raw_topic, value, key=b"u1", partition=0, timestamp=ts)
    producer.flush(10)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1

    quiet = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES)
    assert quiet.stats.malformed == len(bad) and quiet.stats.dlq_sent == 0
    assert quiet.stats.malformed_by_reason == {
        "not_json": 1,
        "missing_field": 1,
        "not_object": 1,
        "wrong_type": 1,
    }
    assert read_topic(rsettings, names.dlq_topic) == []

    loud = run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES, dlq=True)
    assert loud.stats.dlq_sent == len(bad)
    dead = read_topic(rsettings, names.dlq_topic)
    # byte for byte, but for personal fields: the one holding a phone has it hashed
    redact = decoder_from_settings(rsettings).redact
    assert sorted(m.value() for m in dead) == sorted(redact(b) or b"" for b in bad)
    assert not any(str(events[0]["phone"]).encode() in m.value() for m in dead)
    headers = dict(dead[0].headers())
    assert headers["bypass.source.topic"] == names.raw_topic.encode()
    assert headers["bypass.reason"] in {b"not_json", b"missing_field", b"not_object", b"wrong_type"}
    assert loud.stats.hits == quiet.stats.hits  # bad messages change nothing else


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("t2_before_t1", "must be after --from"),
        ("unknown_topic", "does not exist"),
        ("no_data_in_range", "no data: no event with event time in"),
        ("empty_topic", "no data: the topics"),
        ("bad_time", "Invalid value for '--from': bad time"),
        ("bad_rules", "error: "),
        ("resume_unknown", "nothing to resume"),
    ],
)
def test_bad_input_gets_a_clear_message_not_a_stack_trace(
    stack: Any, rsettings: Settings, names: Any, tmp_path: Path, case: str, expected: str
) -> None:
    events = scenario(seed=29, users=80, rate=40, duration_s=30)[:200]
    if case != "empty_topic":
        produce(rsettings, names.raw_topic, events, partitions=2)
    else:
        kafka.ensure_topics(rsettings, [names.raw_topic], partitions=2)
    t1, t2 = str(events[0]["ts"]), str(events[-1]["ts"] + 1)
    bad_rules = tmp_path / "bad.yaml"
    bad_rules.write_text(
        'version: "x"\nrules:\n  - id: r\n    entity: user\n    when: no_such_feature > 1\n    score: 1\n'
    )
    args = {
        "t2_before_t1": ["--from", t2, "--to", t1],
        "unknown_topic": ["--from", t1, "--to", t2, "--topics", names.topic("missing")],
        "no_data_in_range": ["--from", "2030-01-01", "--to", "2030-01-02", "--warmup", "0"],
        "empty_topic": ["--from", t1, "--to", t2],
        "bad_time": ["--from", "last tuesday", "--to", t2],
        "bad_rules": ["--from", t1, "--to", t2, "--rules", str(bad_rules)],
        "resume_unknown": ["--resume", "--run-id", "never-ran"],
    }[case]
    if "--rules" not in args and case not in ("resume_unknown",):
        args += ["--rules", str(RULES)]
    done = cli(stack, rsettings, *args, "--no-progress")
    assert done.returncode in (1, 2), done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if case == "bad_rules":
        assert "no_such_feature" in done.stderr


def test_a_producer_without_event_time_stamps_is_detected(rsettings: Settings, names: Any) -> None:
    """Another client produced history with wall-clock Kafka timestamps: replay stops at the
    first message stamped after T2 + skew and says why instead of silently missing events."""
    events = scenario(seed=37, users=60, rate=40, duration_s=30)
    kafka.ensure_topics(rsettings, [names.raw_topic], partitions=1)
    producer = kafka.producer(rsettings)
    for event in events:  # no timestamp= : the client stamps the wall clock
        producer.produce(names.raw_topic, orjson.dumps(event), key=event["user_id"].encode())
    producer.flush(30)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1
    with pytest.raises(ReplayError, match="does not stamp messages with the event time"):
        run_replay(rsettings, from_ms=t1, to_ms=t2, rules_file=RULES)
    wide = rsettings.model_copy(update={"replay_skew_ms": 3650 * DAY_MS})
    # such times are also far behind their Kafka timestamps: refused unless the bound allows
    with pytest.raises(ReplayError, match="no event with event time in"):  # all ts_out_of_bounds
        run_replay(wide, from_ms=t1, to_ms=t2, rules_file=RULES)
    wide = wide.model_copy(update={"max_past_ms": 0})
    full = run_replay(wide, from_ms=t1, to_ms=t2, rules_file=RULES)
    assert full.stats.in_range_events == len(events)
    assert not [w for w in full.warnings if "does not stamp" in w]


HIT_FIELDS = {
    "hit_id", "event_id", "event_type", "event_ts", "entity", "key", "rule_id", "label", "score", "mode",
    "counted", "suppressed", "rollout_excluded", "features", "decision", "ruleset_version", "source_topic",
    "source_partition", "source_offset", "run_id",
}  # fmt: skip


def test_jsonl_to_stdout_is_one_hits_record_per_line(stack: Any, rsettings: Settings, names: Any) -> None:
    events = scenario(seed=31, users=80, rate=40, duration_s=30)
    produce(rsettings, names.raw_topic, events, partitions=2)
    t1, t2 = str(events[0]["ts"]), str(events[-1]["ts"] + 1)
    done = cli(
        stack, rsettings, "--from", t1, "--to", t2, "--rules", str(RULES), "--out", "jsonl", "--run-id", "j1"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and "hits per rule" in done.stderr  # the summary goes to stderr, only hits to stdout
    records = [orjson.loads(line) for line in lines]
    assert all(HIT_FIELDS <= set(r) and r["run_id"] == "j1" for r in records)
    assert len({r["hit_id"] for r in records}) == len(records)


def test_help_explains_the_options(stack: Any, rsettings: Settings) -> None:
    done = cli(stack, rsettings, "--help")
    assert done.returncode == 0
    for word in (
        "--from",
        "--warmup",
        "--rules-version",
        "--compare",
        "--resume",
        "--dlq",
        "backtest",
        "checkpoint",
        "can still differ",
        "BYPASS_ORDER_IDLE_MS",
    ):
        assert word in done.stdout
