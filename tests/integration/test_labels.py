# ruff: noqa: S608  (database names come from the test fixtures)
"""``bypass labels import`` / ``show`` on the real ClickHouse: re-import adds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sinks_support import bypass

from sinks.clickhouse import connect
from sinks.clickhouse_schema import migrate
from streams.cli.simulate import write_truth
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _client(settings: Settings) -> Any:
    return connect(
        settings.clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )


def test_import_twice_adds_nothing_and_show_lists_an_entity(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"features_spec": ROOT / "examples/features.yaml"})
    client = _client(s)
    db = s.clickhouse_database
    migrate(client, db)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "entity,key,label,ts,source\n"
        "user,u1,chargeback,2026-11-01T10:00:00Z,bank\n"
        "user,u1,manual_review,2026-11-02T08:00:00Z,ops\n"
        "device,d1,customer_complaint,,\n"
    )
    truth = tmp_path / "truth.jsonl"
    write_truth(truth, [{"entity": "user", "key": "u2", "scenario": "account_resale", "variant": "plain"}])
    for _ in range(2):
        first = bypass(s, "labels", "import", str(csv_file))
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith(f"imported 3 labels from {csv_file} into {db}.risk_labels")
        assert "entities: device 1, user 2" in first.stdout
        sim = bypass(s, "labels", "import", str(truth))
        assert sim.returncode == 0, sim.stderr
    count = client.query(f"SELECT count() FROM {db}.risk_labels FINAL").result_rows[0][0]
    assert count == 4
    rows = client.query(f"SELECT source, label FROM {db}.risk_labels FINAL WHERE key = 'u2'").result_rows
    assert rows == [("simulator", "account_resale")]

    shown = bypass(s, "labels", "show", "user", "u1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:4] == ["chargeback", "2026-11-01", "10:00:00", "bank"]
    assert lines[2].split()[:4] == ["manual_review", "2026-11-02", "08:00:00", "ops"]
    assert lines[-1] == "2 labels (2 bad) for user u1"
    none = bypass(s, "labels", "show", "user", "nobody")
    assert none.returncode == 1 and "no labels for user nobody" in none.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("entity,key,label\nuser,u3,fraud\nuser,u4,\n")
    refused = bypass(s, "labels", "import", str(bad))
    assert refused.returncode == 1
    assert f"{bad}:3: 'label' is empty" in refused.stderr
    assert client.query(f"SELECT count() FROM {db}.risk_labels FINAL").result_rows[0][0] == 4  # nothing
