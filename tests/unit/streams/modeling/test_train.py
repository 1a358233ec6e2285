"""``bypass model train``: a time-based split, metrics, and a model file the stream scores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from features import load_model
from streams.modeling.dataset import Dataset, read_dataset, write_dataset

pytest.importorskip("sklearn")
pytest.importorskip("pyarrow")


def _dataset(n: int = 600) -> Dataset:
    rng = random.Random(3)
    data = Dataset(entity="user", features=("churn", "views", "city"), types=("int", "float", "any"))
    data.values = [[], [], []]
    for i in range(n):
        bad = rng.random() < 0.2
        churn = rng.randint(2, 6) if bad else rng.randint(0, 2)
        views = None if rng.random() < 0.1 else float(rng.randint(0, 1) if bad else rng.randint(0, 9))
        data.event_id.append(f"e{i:04d}")
        data.ts.append(1_000 * i)
        data.event_type.append("login")
        data.key.append(f"u{i % 97}")
        for column, value in zip(data.values, (churn, views, "Beijing"), strict=True):
            column.append(value)
        data.label.append(int(bad))
        data.labels.append("account_resale" if bad else "")
    data.meta = {"entity": "user", "features": list(data.features)}
    return data


@pytest.mark.parametrize("kind", ["gbdt", "random_forest"])
def test_train_splits_by_time_and_writes_a_scorable_model(tmp_path: Path, kind: str) -> None:
    from streams.cli.model import model

    path = tmp_path / "d.parquet"
    write_dataset(_dataset(), path)
    out = tmp_path / "m.json"
    args = ["train", "--dataset", str(path), "--target", "account_resale", "--kind", kind, "--trees", "20"]
    result = CliRunner().invoke(model, [*args, "--name", "resale", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "on 420 rows before" in result.output and "tested on 180 later rows" in result.output
    assert "AUC on the test rows: " in result.output and "precision" in result.output
    m = load_model(out)
    assert (m.name, m.entity, m.kind, m.features) == ("resale", "user", kind, ("churn", "views"))
    assert m.version.startswith("resale-")
    # scored by the stream's runtime: the bad-looking rows score higher
    assert m.score({"churn": 6, "views": 0.0}) > m.score({"churn": 0, "views": 8.0})
    # the same dataset trains the same model (same version, same bytes)
    again = tmp_path / "m2.json"
    CliRunner().invoke(model, [*args, "--name", "resale", "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()


def test_train_refuses_a_target_no_row_carries(tmp_path: Path) -> None:
    from streams.cli.model import model

    path = tmp_path / "d.jsonl"
    write_dataset(_dataset(), path)
    assert read_dataset(path).numeric_features() == ("churn", "views")
    result = CliRunner().invoke(
        model, ["train", "--dataset", str(path), "--target", "device_farm", "--out", str(tmp_path / "m.json")]
    )
    assert result.exit_code != 0
    assert "no row carries that label" in str(result.exception or result.output)
