"""The dataset's label horizon rule and its files (same data, same bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.modeling.dataset import Dataset, LabelIndex, read_dataset, write_dataset

DAY = 86_400_000


def test_horizon_rule() -> None:
    labels = LabelIndex(
        [
            ("user", "u1", "chargeback", 10 * DAY),
            ("user", "u1", "good", 11 * DAY),  # benign: never positive
            ("user", "u2", "account_resale", 0),  # timeless (the simulator's truth)
            ("device", "u3", "device_farm", 5 * DAY),  # another entity kind
        ],
        source="test",
    )
    horizon = 30 * DAY
    assert labels.label("user", "u1", 10 * DAY, horizon) == (1, "chargeback")  # at the event time
    assert labels.label("user", "u1", 10 * DAY - horizon, horizon) == (1, "chargeback")  # at the edge
    assert labels.label("user", "u1", 10 * DAY - horizon - 1, horizon) == (0, "")  # beyond the horizon
    assert labels.label("user", "u1", 10 * DAY + 1, horizon) == (0, "")  # labelled before the event
    assert labels.label("user", "u2", 123, horizon) == (1, "account_resale")
    assert labels.label("user", "u3", 5 * DAY, horizon) == (0, "")


def _data() -> Dataset:
    return Dataset(
        entity="user",
        features=("count_a", "speed", "last_city"),
        types=("int", "float", "any"),
        event_id=["e1", "e2"],
        ts=[1, 2],
        event_type=["login", "order"],
        key=["u1", "u2"],
        values=[[3, None], [None, 2.5], ["Beijing", {"x": 1}]],
        label=[0, 1],
        labels=["", "account_resale"],
        meta={"entity": "user", "features": ["count_a", "speed", "last_city"]},
    )


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_files_round_trip_and_are_byte_identical(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    write_dataset(_data(), a)
    write_dataset(_data(), b)
    assert a.read_bytes() == b.read_bytes()
    back = read_dataset(a)
    assert back.features == ("count_a", "speed", "last_city")
    assert back.column("count_a") == [3, None] and back.column("speed") == [None, 2.5]
    assert back.numeric_features() == ("count_a", "speed")
    assert back.target("label") == [0, 1] and back.target("account_resale") == [0, 1]
    assert back.target("device_farm") == [0, 0]
