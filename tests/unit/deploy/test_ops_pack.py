"""The operations pack in deploy/: alert rules tested with promtool, a dashboard whose every
query reads metrics bypass really exports, and a README entry for every alert."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bypass.json"
_METRIC = re.compile(r"\bbypass_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("BYPASS_REQUIRE_PROMTOOL"):  # set by .ci/run, which installs it
            pytest.fail("promtool is required here (BYPASS_REQUIRE_PROMTOOL) but not installed")
        pytest.skip("promtool not installed: `sudo apt-get install prometheus` (Debian) to run this test")
    return path


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def _exported() -> set[str]:
    """Every sample name the worker and the two writers can export."""
    from prometheus_client import CollectorRegistry

    from sinks.runner import SinkMetrics
    from streams.live.metrics import Metrics

    names: set[str] = set()
    registries = [Metrics().registry, SinkMetrics("clickhouse").registry]
    assert all(isinstance(r, CollectorRegistry) for r in registries)
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in _SUFFIXES)
            else:
                names.add(family.name)
    return names


def _alert_rules() -> list[dict[str, object]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_every_alert_reads_metrics_that_exist_and_every_alert_is_tested_firing_and_quiet() -> None:
    exported = _exported()
    rules = _alert_rules()
    alerts = {str(r["alert"]) for r in rules if "alert" in r}
    assert len(alerts) >= 10
    for rule in rules:
        unknown = set(_METRIC.findall(str(rule["expr"]))) - exported
        assert not unknown, (
            f"{rule.get('alert') or rule.get('record')} reads {unknown}, which bypass does not export"
        )
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fired == alerts, f"alerts never tested firing: {alerts - fired}"
    assert alerts - quiet <= {
        "BypassConsumerLagGrowing",
        "BypassEventTimeLagHigh",
        "BypassDeadLettersHigh",
        "BypassRuleErrors",
        "BypassSinkBackingOff",
        "BypassSinkLagGrowing",
    }
    # those are tested quiet by series in the same group that must not fire (w2, w3, missing_field, ...)


def test_every_dashboard_query_reads_metrics_that_exist() -> None:
    exported = _exported()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    assert len(exprs) >= 12
    for expr in exprs:
        unknown = set(_METRIC.findall(expr)) - exported
        assert not unknown, f"dashboard query {expr!r} reads {unknown}, which bypass does not export"
    sql = [t["rawSql"] for p in dash["panels"] for t in p.get("targets", []) if "rawSql" in t]
    assert sql and all("risk_hits_hourly" in q and "uniqExactMerge(hits)" in q for q in sql)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_the_readme_explains_every_alert_with_a_first_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## On call" in readme
    section = readme.split("## On call", 1)[1].split("\n## ", 1)[0]
    for alert in {str(r["alert"]) for r in _alert_rules() if "alert" in r}:
        entry = re.search(rf"\*\*{alert}\*\*(.*)", section)
        assert entry, f"README On call has no entry for {alert}"
        assert re.search(r"First: .*`[a-z]", entry.group(1)), f"{alert}: no first command"


def test_compose_runs_prometheus_with_these_rules_and_grafana_with_this_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    prom = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in prom
    graf = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards" in graf and "./deploy/grafana/provisioning" in graf
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    sink_targets = {
        t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]
    }
    ports = {
        name: int(services[name]["environment"]["BYPASS_SINK_METRICS_PORT"])
        for name in ("sink-clickhouse", "sink-redis")
    }
    assert sink_targets == {
        f"sink-clickhouse:{ports['sink-clickhouse']}",
        f"sink-redis:{ports['sink-redis'] + 1}",
    }
