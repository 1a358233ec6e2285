"""Models on the real stack: training rows equal what the live worker computed, and a rule
reading ``model.<name>`` hits identically live and in replay.

The live reference is ``bypass worker`` as a subprocess over one raw partition; its hit
records carry the values the rules read: a rule reading every user feature (and always
hitting) makes them carry every feature of every user decision, and a rule reading
``model.resale`` carries the score.
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
from test_replay import FEATURES, produce, read_topic, run_replay

from streams.cli.simulate import write_truth
from streams.local.simulate import SimConfig, Simulator
from streams.modeling.dataset import DatasetRequest, build_dataset, labels_from_file, read_dataset
from streams.replay import iter_hits_jsonl
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

USER_FEATURES = (
    "phone_changes_30d",
    "distinct_phones_30d",
    "login_cities_7d",
    "login_spread_km_24h",
    "travel_kmh_24h",
    "property_views_total",
    "ms_since_phone_change",
    "order_amount_1h",
    "change_then_sign_1h",
)

# 0.88 when the user changed phone twice or more in 30 days, else 0.12 (missing: left)
MODEL: dict[str, Any] = {
    "format": "bypass.trees/1",
    "name": "resale",
    "version": "it-1",
    "entity": "user",
    "kind": "gbdt",
    "link": "logistic",
    "base_score": 0.0,
    "features": ["phone_changes_30d", "property_views_total"],
    "trees": [
        {
            "feature": [0, -1, -1],
            "threshold": [1.5, 0.0, 0.0],
            "left": [1, -1, -1],
            "right": [2, -1, -1],
            "missing_left": [True, False, False],
            "value": [0.0, -2.0, 2.0],
        }
    ],
}

EVERY = " and ".join(f"coalesce({f}, 0) > -1000000000000000" for f in USER_FEATURES)
RULES = f"""
version: "models-it-1"
rules:
  - id: every_user_decision
    entity: user
    when: "{EVERY}"
    score: 0
  - id: resale_model
    entity: user
    when: model.resale > 0.8
    score: 90
    label: account_resale
"""


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resale.json").write_bytes(orjson.dumps(MODEL))
    spec = tmp_path / "features.yaml"
    spec.write_text(
        FEATURES.read_text() + "models:\n  - {name: resale, file: models/resale.json, entity: user}\n"
    )
    return spec


def _live_hits(
    stack: Any, settings: Settings, names: Any, tmp_path: Path, want: set[str]
) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        **stack.env(),
        "BYPASS_RAW_TOPICS": names.raw_topic,
        "BYPASS_RULES_TOPIC": names.rules_topic,
        "BYPASS_DLQ_TOPIC": names.dlq_topic,
        "BYPASS_HITS_TOPIC": names.hits_topic,
        "BYPASS_BLACKLIST_TOPIC": names.blacklist_topic,
        "BYPASS_APP_ID": names.app_id,
        "BYPASS_FEATURES_SPEC": str(settings.features_spec),
        "BYPASS_STATE_DIR": str(tmp_path / "worker"),
        "BYPASS_CONSUMER_SESSION_TIMEOUT_MS": "3000",
        "BYPASS_CONSUMER_REBALANCE_TIMEOUT_MS": "3000",
        "BYPASS_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
        "BYPASS_METRICS_PORT": "0",
    }
    if "features_topic" in Settings.model_fields:  # published feature specs: none in this test
        env["BYPASS_FEATURES_TOPIC"] = str(settings.features_topic)
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        seen: set[str] = set()
        while time.monotonic() < deadline and not want <= seen and worker.poll() is None:
            time.sleep(3)
            seen = {orjson.loads(m.value())["hit_id"] for m in read_topic(settings, names.hits_topic)}
        time.sleep(2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    hits = [orjson.loads(m.value()) for m in read_topic(settings, names.hits_topic)]
    assert hits, (tmp_path / "worker.log").read_text()[-3000:]
    return hits


def test_dataset_rows_and_model_hits_equal_the_live_workers(
    stack: Any, settings: Settings, names: Any, tmp_path: Path
) -> None:
    from streams.core import kafka
    from streams.core.rulestore import publish_ruleset

    update: dict[str, Any] = {"features_spec": _spec(tmp_path), "replay_batch_size": 500}
    if "features_topic" in Settings.model_fields:  # published feature specs: none in this test
        update["features_topic"] = names.topic("features")
    s = settings.model_copy(update=update)
    sim = Simulator(SimConfig(users=60, rate=60, duration_s=20, seed=5))
    events = list(sim.events())
    truth = tmp_path / "truth.jsonl"
    write_truth(truth, sim.truth)
    for topic in (names.hits_topic, names.blacklist_topic, names.dlq_topic):
        kafka.ensure_topics(s, [topic], partitions=1)
    kafka.ensure_topics(s, [names.rules_topic], partitions=1, compacted=True)
    publish_ruleset(s, RULES, source="test_models")
    produce(s, names.raw_topic, events, partitions=1)
    t1, t2 = events[0]["ts"], events[-1]["ts"] + 1

    # replay first: it is the reference the live worker must reach
    out = tmp_path / "replay.jsonl"
    run_replay(s, from_ms=t1, to_ms=t2, out="jsonl", out_file=out)
    replayed = {h["hit_id"]: h for h in iter_hits_jsonl(out)}
    model_hits = {i for i, h in replayed.items() if h["rule_id"] == "resale_model"}
    assert model_hits, "the scenario has users with two phone changes"

    live = {h["hit_id"]: h for h in _live_hits(stack, s, names, tmp_path, set(replayed))}
    assert set(live) == set(replayed)
    for hit_id, hit in live.items():  # the same values read, model scores included
        assert hit["features"] == replayed[hit_id]["features"], hit_id
    assert all(live[i]["features"]["model.resale"] > 0.8 for i in model_hits)

    # the dataset: one row per user decision, with the values the live worker read
    request = DatasetRequest(from_ms=t1, to_ms=t2, entity="user")
    data = build_dataset(s, request, labels_from_file(truth))
    every = [h for h in live.values() if h["rule_id"] == "every_user_decision"]
    assert len(data) == len(every) > 100
    rows = {
        (eid, key): {f: data.column(f)[i] for f in data.features}
        for i, (eid, key) in enumerate(zip(data.event_id, data.key, strict=True))
    }
    for hit in every:
        row = rows[(hit["event_id"], hit["key"])]
        assert row == hit["features"], hit["event_id"]
    bad_users = {t["key"] for t in sim.truth if t["entity"] == "user"}
    assert {k for k, y in zip(data.key, data.label, strict=True) if y} == bad_users & set(data.key)

    # the CLI writes the same rows, and the same bytes twice
    env = {
        **os.environ,
        **stack.env(),
        "BYPASS_RAW_TOPICS": names.raw_topic,
        "BYPASS_FEATURES_SPEC": str(s.features_spec),
        "BYPASS_STATE_DIR": str(tmp_path / "cli"),
        **(
            {"BYPASS_FEATURES_TOPIC": str(s.features_topic)}
            if "features_topic" in Settings.model_fields
            else {}
        ),
    }
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    args = [
        "model",
        "dataset",
        "--from",
        str(t1),
        "--to",
        str(t2),
        "--entity",
        "user",
        "--labels",
        str(truth),
    ]
    for f in files:
        done = subprocess.run(
            [sys.executable, "-m", "streams", *args, "--out", str(f)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert files[0].read_bytes() == files[1].read_bytes()
    from_file = read_dataset(files[0])
    assert from_file.event_id == data.event_id and from_file.label == data.label
    for name in data.features:
        assert from_file.column(name) == pytest.approx(data.column(name), nan_ok=True), name
