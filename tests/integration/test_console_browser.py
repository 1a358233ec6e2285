"""The web console of ``bypass serve`` in a real headless Chromium, against the live stack.

Chromium is Debian's ``chromium`` package; ``.ci/run`` installs it when missing and sets
``BYPASS_REQUIRE_CHROMIUM=1``, so CI never skips this test (elsewhere it is skipped without it).
Screenshots are saved under the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from sinks_support import bypass, spawn, wait_for
from test_pipeline import Worker, publish, read_topic
from test_serve import RULES, TOKEN, Server, login

from streams.core import kafka
from streams.producer import EventProducer
from streams.settings import Settings

MIN = 60_000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("BYPASS_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required (BYPASS_REQUIRE_CHROMIUM=1): apt-get install -y chromium")
        pytest.skip("no chromium (apt-get install -y chromium)")
    return found


def browse(url: str, tmp_path: Path, shot: str) -> str:
    """The DOM of ``url`` after its scripts ran, and a screenshot ``<tmp_path>/<shot>.png``."""
    browser = _chromium()
    profile = tmp_path / "chromium-profile"
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    png = tmp_path / f"{shot}.png"
    shot_run = subprocess.run(
        [*common, f"--screenshot={png}", url], capture_output=True, text=True, timeout=90, check=False
    )
    assert shot_run.returncode == 0 and png.stat().st_size > 1000, shot_run.stderr[-2000:]
    return dom.stdout


@pytest.fixture
def csettings(settings: Settings) -> Settings:
    from test_serve import FEATURES

    return settings.model_copy(
        update={
            "features_spec": FEATURES,
            "topic_partitions": 2,
            "consumer_session_timeout_ms": 10_000,
            "consumer_rebalance_timeout_ms": 2_000,
            "consumer_heartbeat_interval_ms": 500,
            "worker_batch_within_ms": 20,
            "table_standby_replicas": 0,
            "order_idle_ms": 500,
            "sink_batch_ms": 200,
            "sink_session_timeout_ms": 2000,
            "sink_retry_max_ms": 1000,
        }
    )


@pytest.mark.slow
def test_console_pages_show_the_rule_that_hit_and_its_feature_values(
    csettings: Settings, tmp_path: Path
) -> None:
    _chromium()
    s = csettings
    raw = s.raw_topics[0]
    assert bypass(s, "clickhouse", "migrate").returncode == 0
    kafka.ensure_topics(s, [raw, s.hits_topic, s.blacklist_topic, s.dlq_topic])
    assert publish(s, RULES, tmp_path).returncode == 0
    server = Server(s, tmp_path / "serve.log")
    worker = Worker(s, tmp_path / "worker.log")
    sinks = [spawn(s, "sink", "clickhouse"), spawn(s, "sink", "redis")]
    try:
        now = time.time_ns() // 1_000_000
        with EventProducer(s, topic=raw) as producer:
            producer.send_many([login("u-web", 0, now - 5 * MIN)])
        read_topic(s, s.hits_topic, lambda m: any(orjson.loads(x.value())["key"] == "u-web" for x in m))
        base = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: server.call("GET", "/v1/check/user/u-web")[1].get("listed"), True, timeout=60)

        def entity_page() -> str:
            return browse(f"{base}/entity/user/u-web", tmp_path, "entity")

        wait_for(lambda: "property_views_total=0" in entity_page(), True, timeout=60, every=2)
        dom = entity_page()
        assert "seen_login" in dom and "LISTED" in dom and "serve-1" in dom
        assert "property_views_total=0" in dom  # the feature value the rule read
        assert TOKEN not in dom

        wait_for(lambda: server.call("GET", "/v1/check/user/u-web")[1]["freshness"]["workers"], 1, timeout=40)
        overview = browse(f"{base}/", tmp_path, "overview")
        assert "serve-1" in overview and "seen_login" in overview  # active rule set, hourly rollup
        versions = browse(f"{base}/rules", tmp_path, "versions")
        assert "serve-1" in versions and "ACTIVE" in versions
        rule = browse(f"{base}/rules/seen_login", tmp_path, "rule")
        assert "serve-1" in rule and "active" in rule
        lists = browse(f"{base}/lists", tmp_path, "lists")
        assert "log in" in lists
        assert {p.name for p in tmp_path.glob("*.png")} >= {"entity.png", "overview.png", "rule.png"}
    finally:
        worker.stop()
        for p in sinks:
            p.terminate()
            p.wait(timeout=15)
        server.stop()
    assert TOKEN not in server.text()
