"""``bypass labels import`` file parsing: CSV, JSON Lines, the simulator's truth, bad rows."""

from __future__ import annotations

import orjson
import pytest

from streams.cli.labels import Label, LabelFileError, parse_labels
from streams.cli.simulate import write_truth


def test_csv_with_header_ts_and_source() -> None:
    text = (
        "entity,key,label,ts,source\n"
        "user,u1,chargeback,2026-11-01T10:00:00Z,bank\n"
        "\n"
        "device, d7 ,manual_review,1793527200000,\n"
    )
    assert parse_labels(text, "l.csv", default_source="ops") == [
        Label("user", "u1", "chargeback", 1793527200000, "bank"),
        Label("device", "d7", "manual_review", 1793527200000, "ops"),
    ]


def test_csv_without_optional_columns_gives_timeless_labels() -> None:
    assert parse_labels("key,entity,label\nu2,user,customer_complaint\n", "l.csv") == [
        Label("user", "u2", "customer_complaint", 0, "import")
    ]


def test_jsonl_rows() -> None:
    text = '{"entity": "ip", "key": "10.0.0.1", "label": "chargeback", "ts": 5}\n\n'
    assert parse_labels(text, "l.jsonl") == [Label("ip", "10.0.0.1", "chargeback", 5, "import")]


def test_the_simulator_truth_file_is_accepted(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "truth.jsonl"
    write_truth(
        path,
        [
            {"entity": "user", "key": "u9", "scenario": "account_resale", "variant": "plain"},
            {"entity": "device", "key": "d1", "scenario": "device_farm", "variant": "evasive"},
        ],
    )
    assert parse_labels(path.read_text(), str(path)) == [
        Label("user", "u9", "account_resale", 0, "simulator"),
        Label("device", "d1", "device_farm", 0, "simulator"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entity,key,label\nuser,u1,fraud\nuser,,fraud\n", "l.csv:3: 'key' is empty"),
        ("entity,key\nuser,u1\n", "l.csv:1: the CSV header lacks 'label'"),
        ("entity,key,label\nuser,u1,fraud,extra\n", "l.csv:2: more cells than the 3 columns"),
        ("entity,key,label,ts\nuser,u1,fraud,last tuesday\n", "l.csv:2: 'ts' 'last tuesday'"),
        (
            '{"entity":"user","key":"u1","label":"x"}\n{"entity":"user","key":"u2"}\n',
            "l.csv:2: missing 'label'",
        ),
        ('{"entity":"user","key":"u1","label":"x"}\nnot json\n', "l.csv:2: not valid JSON"),
        ('{"entity":"user","key":"u1","label":"x","phone":"1"}\n', "l.csv:1: unknown field 'phone'"),
        ('{"entity":"user","key":"u1","label":"x","ts":true}\n', "l.csv:1: 'ts' must be epoch ms"),
        ('{"entity":"user","key":["u1"],"label":"x"}\n', "l.csv:1: 'key' must be text, got list"),
    ],
)
def test_a_bad_row_names_its_line(text: str, message: str) -> None:
    with pytest.raises(LabelFileError) as info:
        parse_labels(text, "l.csv")
    assert info.value.message.startswith(message), info.value.message


def test_format_can_be_forced() -> None:
    row = orjson.dumps({"entity": "user", "key": "u1", "label": "x"}).decode()
    with pytest.raises(LabelFileError):
        parse_labels(row, "f", fmt="csv")
    assert len(parse_labels(row, "f", fmt="jsonl")) == 1
