"""Issue 15, item 3 on the real stack: a feature spec published to running workers, with a
new 7-day feature warm-started from the raw topic.

Before, the feature spec was read once at start: a new feature needed a restart and then
started empty (a 7-day feature was wrong for 7 days)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sinks_support import wait_for
from test_pipeline import FEATURES, ROOT, Worker, _env, ev, produce, publish, read_topic, values

import features
from streams.core import kafka
from streams.settings import Settings

HOUR = 3_600_000
DAY = 24 * HOUR

NEW_FEATURE = (
    "  - {name: logins_7d, entity: user, agg: count, where: {type: login}, window: 7d}\n"
    "  - {name: login_devices_7d, entity: user, agg: distinct, field: device_id, where: {type: login}, "
    "window: 7d}\n"
)

RULES_V2 = """
version: "warm-2"
decisions: {reject: 80, review: 50}
rules:
  - id: busy_login
    entity: user
    when: logins_7d >= 1 and login_devices_7d >= 1
    events: [login]
    score: 10
    label: busy
"""


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=_env(settings),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def logins(prefix: str, start_ms: int, users: int, per_user: int, step_ms: int) -> list[dict[str, Any]]:
    out = []
    for i in range(per_user):
        for u in range(users):
            out.append(
                ev(
                    f"{prefix}-{u}-{i}",
                    "login",
                    start_ms + i * step_ms + u,
                    f"u{u}",
                    device_id=f"d{u}-{i % 3}",
                )
            )
    return out


def status(settings: Settings) -> dict[str, Any]:
    done = cli(settings, "features", "status", "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = orjson.loads(done.stdout)
    return parsed


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_publishing_a_spec_with_a_new_feature_warm_starts_it_to_the_values_of_a_worker_that_had_it(
    settings: Settings, tmp_path: Path, workers: int
) -> None:
    """With two workers each warms the user partition it owns."""
    s = settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 6_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "log_level": "INFO",
            "worker_processes": 1,  # `workers` processes in all
        }
    )
    now = time.time_ns() // 1_000_000
    history = logins("h", now - 5 * DAY, users=12, per_user=20, step_ms=HOUR)  # 4 days back
    during = logins("m", now - 20 * HOUR, users=12, per_user=4, step_ms=HOUR)
    after = logins("a", now - 10 * HOUR, users=12, per_user=3, step_ms=HOUR)
    kafka.ensure_topics(s, [*s.raw_topics, s.hits_topic])
    produce(s, history)

    pool = [Worker(s, tmp_path / f"worker{i}.log") for i in range(workers)]
    try:
        wait_for(
            lambda: sum(w.metric("bypass_events_applied_total", 'entity="user"') or 0 for w in pool),
            float(len(history)),
            timeout=120,
        )
        base = FEATURES.read_text(encoding="utf-8")
        spec_v2 = tmp_path / "features-v2.yaml"
        spec_v2.write_text('version: "warm-2"\n' + base.rstrip("\n") + "\n" + NEW_FEATURE, encoding="utf-8")

        # a rule set reading the new features cannot be published before the spec is
        refused = publish(s, RULES_V2, tmp_path)
        assert refused.returncode == 1 and "logins_7d" in refused.stdout + refused.stderr

        done = cli(s, "features", "publish", str(spec_v2))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "published feature spec version warm-2" in done.stdout
        again = cli(s, "features", "publish", str(spec_v2))
        assert again.returncode == 0 and "nothing to do" in again.stdout
        produce(s, during)  # arrives while the new features warm up (or just after)
        published = publish(s, RULES_V2, tmp_path)
        assert published.returncode == 0, published.stdout + published.stderr

        wait_for(
            lambda: (
                "warm start of user features logins_7d, login_devices_7d done"
                in "".join(w.text() for w in pool)
            ),
            True,
            timeout=120,
        )
        wait_for(
            lambda: (
                {
                    (r["worker"], r["state"])
                    for r in status(s)["features"]
                    if r["feature"] in ("logins_7d", "login_devices_7d")
                }
                and {
                    r["state"]
                    for r in status(s)["features"]
                    if r["feature"] in ("logins_7d", "login_devices_7d")
                }
            ),
            {"warm"},
            timeout=60,
        )
        report = status(s)
        assert report["version"] == "warm-2" and report["workers"] == workers
        rows = {(r["entity"], r["feature"]): r for r in report["features"]}
        assert rows[("user", "phone_changes_30d")]["spec_version"] == "warm-2"

        produce(s, after)
        wanted = {e["event_id"] for e in after}
        messages = read_topic(
            s,
            s.hits_topic,
            lambda m: wanted <= {h["event_id"] for h in values(m) if h["rule_id"] == "busy_login"},
            timeout_s=120,
        )
    finally:
        for w in pool:
            w.stop()
    assert not any("Traceback" in w.text() for w in pool)

    # a restart does not warm again: the partitions' markers say the features are warm
    last = logins("z", now - 5 * HOUR, users=2, per_user=1, step_ms=HOUR)
    restarted = Worker(s, tmp_path / "restarted.log")
    try:
        produce(s, last)
        more = read_topic(
            s,
            s.hits_topic,
            lambda m: {e["event_id"] for e in last} <= {h["event_id"] for h in values(m)},
            timeout_s=120,
        )
    finally:
        restarted.stop()
    assert "warm start of" not in restarted.text()
    assert "feature spec version warm-2 active" in restarted.text()
    after = after + last
    wanted |= {e["event_id"] for e in last}
    messages = more

    # the reference: a worker that had the features from the start, i.e. the one engine over
    # every event of the key in order (live equals replay equals this order for one key)
    spec = features.load_spec(spec_v2)
    engine = features.FeatureEngine(spec)
    states: dict[str, features.EntityState] = {}
    expected: dict[str, dict[str, Any]] = {}
    for event in sorted(history + during + after, key=lambda e: e["ts"]):
        key = event["user_id"]
        state = states.setdefault(key, engine.new_state("user"))
        result = engine.apply("user", state, event)
        expected[event["event_id"]] = {n: result.features[n] for n in ("logins_7d", "login_devices_7d")}

    hits = {h["event_id"]: h for h in values(messages) if h["rule_id"] == "busy_login"}
    for eid in sorted(wanted):
        hit = hits[eid]
        assert hit["mode"] == "active", hit  # warm: the rule counts
        assert hit["features"] == expected[eid], (eid, hit["features"], expected[eid])
    # without the warm start the first post-warm login of u0 would count only what came after the switch
    assert expected["a-0-0"]["logins_7d"] > len([e for e in during + after if e["user_id"] == "u0"])


@pytest.mark.slow
def test_a_warm_start_reads_what_the_raw_topics_no_longer_hold_from_the_event_archive(
    settings: Settings, tmp_path: Path
) -> None:
    """The raw topics keep only their retention; the rebuild reads the offsets below what they
    retain from the event archive (risk_events), in the same order, to the same states.
    (Tansu never deletes records: the retention edge is given to the rebuild here.)"""
    from sinks_support import bypass
    from sinks_support import produce as produce_raw

    from sinks.clickhouse import connect
    from sinks.clickhouse_schema import migrate
    from streams.live.warmup import Warmup, raw_end_offsets

    s = settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "sink_batch_ms": 200,
            "sink_session_timeout_ms": 2000,
            "sink_batch_size": 1000,
        }
    )
    migrate(
        connect(
            s.clickhouse_url, username=s.clickhouse_user, password=s.clickhouse_password.get_secret_value()
        ),
        s.clickhouse_database,
    )
    now = time.time_ns() // 1_000_000
    history = logins("h", now - 6 * DAY, users=9, per_user=30, step_ms=4 * HOUR)
    kafka.ensure_topics(s, [*s.raw_topics])
    produce(s, history)
    produce_raw(s, s.hits_topic, [])
    archived = bypass(s, "sink", "clickhouse", "--idle-exit", "3", timeout=180)
    assert archived.returncode == 0, archived.stdout + archived.stderr

    base = FEATURES.read_text(encoding="utf-8")
    spec = features.load_spec(base.rstrip("\n") + "\n" + NEW_FEATURE)
    keys = frozenset(f.state_key for f in spec.features if f.name in ("logins_7d", "login_devices_7d"))
    cut = raw_end_offsets(s)
    assert sum(cut.values()) == len(history)
    edge = {tp: end // 2 for tp, end in cut.items()}  # "retention" deleted the first half

    def rebuild(settings_: Settings, retained: dict[tuple[str, int], int] | None) -> Warmup:
        w = Warmup(settings_, spec, "user", keys, {0, 1}, cut, retained_from=retained)
        w._rebuild()
        return w

    with_archive = rebuild(s, edge)
    assert with_archive.archived == sum(edge.values())
    assert with_archive.read == len(history)
    from_kafka = rebuild(s, None)
    assert from_kafka.archived == 0
    dumps = {k: with_archive.engine.dumps(v) for k, v in with_archive.states.items()}
    assert dumps == {k: from_kafka.engine.dumps(v) for k, v in from_kafka.states.items()}
    assert len(dumps) == 9
    # the reference: the features over every event of each key, in order
    reference: dict[str, features.EntityState] = {}
    for event in sorted(history, key=lambda e: e["ts"]):
        state = reference.setdefault(event["user_id"], from_kafka.engine.new_state("user"))
        from_kafka.engine.apply("user", state, event)
    assert dumps == {k: from_kafka.engine.dumps(v) for k, v in reference.items()}
    # without the archive, the first half is simply missing (and the log says so)
    no_archive = rebuild(s.model_copy(update={"archive_events": False}), edge)
    assert no_archive.read == len(history) - sum(edge.values())
    assert {k: no_archive.engine.dumps(v) for k, v in no_archive.states.items()} != dumps
