"""Pieces of the live pipeline that need no broker: partitioning, bundles, rule records, the SDK's checks."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.core.envelope import InvalidEventError
from streams.core.rulestore import RuleSetRecord
from streams.live.app import BUNDLE_MAX_BYTES, pack_bundles
from streams.live.setup import bundle_partition, faust_broker_url
from streams.producer import DeliveryError, DeliveryReport, EventProducer
from streams.settings import Settings


@pytest.mark.parametrize("key", [b"u1", b"device-42", "用户".encode(), b"x" * 300])
def test_bundle_partition_is_kafkas_default_partitioner(key: bytes) -> None:
    for n in (1, 4, 12):
        assert bundle_partition(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))


def test_pack_keeps_entries_and_bounds_payloads() -> None:
    parts = [orjson.dumps(["k", "t", 0, i, None, {"blob": "x" * 10_000}]) for i in range(200)]
    payloads = pack_bundles(parts)
    assert len(payloads) > 1
    assert all(len(p) <= BUNDLE_MAX_BYTES for p in payloads)
    entries = [entry for p in payloads for entry in orjson.loads(p)["e"]]
    assert [e[3] for e in entries] == list(range(200))
    assert all("p" not in orjson.loads(p) for p in payloads)


def test_progress_rides_on_the_last_bundle_and_alone_when_there_is_nothing_else() -> None:
    parts = [orjson.dumps(["k", "t", 0, i, None, 1, {"blob": "x" * 10_000}]) for i in range(200)]
    progress = [["t", 0, 5, 200, False]]
    payloads = [orjson.loads(p) for p in pack_bundles(parts, progress)]
    assert [("p" in p) for p in payloads] == [False] * (len(payloads) - 1) + [True]
    assert payloads[-1]["p"] == progress  # after every entry it covers
    [alone] = pack_bundles([], progress)
    assert orjson.loads(alone) == {"p": progress, "e": []}
    assert pack_bundles([]) == []


def test_faust_broker_url() -> None:
    assert faust_broker_url("h1:9092, h2:9093") == "kafka://h1:9092;kafka://h2:9093"


def test_ruleset_record_roundtrip_and_bad_values() -> None:
    record = RuleSetRecord(version="v1", text="version: v1\nrules: []\n", published_ms=5, source="r.yaml")
    back = RuleSetRecord.from_message(b"v1", record.to_bytes(), 7)
    assert (back.version, back.text, back.published_ms, back.source, back.offset) == (
        "v1",
        record.text,
        5,
        "r.yaml",
        7,
    )
    with pytest.raises(ValueError, match="tombstone"):
        RuleSetRecord.from_message(b"v1", None, 0)
    with pytest.raises(ValueError, match="not a rule-set record"):
        RuleSetRecord.from_message(b"v1", b'{"x": 1}', 0)
    with pytest.raises(orjson.JSONDecodeError):
        RuleSetRecord.from_message(b"v1", b"{broken", 0)


def test_producer_validates_before_sending() -> None:
    # nothing is sent (no broker needed): validation fails first
    producer = EventProducer(Settings(kafka_bootstrap="127.0.0.1:1"), topic="t")
    with pytest.raises(InvalidEventError, match="missing required field 'user_id'") as info:
        producer.send({"event_id": "e", "type": "login", "ts": 1})
    assert info.value.reason == "missing_field"
    with pytest.raises(InvalidEventError) as big:
        producer.send({"event_id": "e", "type": "t", "ts": 1, "user_id": "u", "attrs": {"b": "x" * 70_000}})
    assert big.value.reason == "too_large"
    assert producer.in_flight == 0


def test_delivery_report_raises_with_reason() -> None:
    DeliveryReport(delivered=3).raise_for_errors()
    report = DeliveryReport(delivered=1, failed=2, errors=[("e1", "Broker: timed out")])
    with pytest.raises(DeliveryError, match="e1: Broker: timed out") as info:
        report.raise_for_errors()
    assert info.value.fields["failed"] == 2


def test_rule_set_versions_follow_the_topic_order_not_the_publishers_clock() -> None:
    """Before: at start a worker ordered versions by published_ms, a running one by offset;
    a publisher with its clock in 2100 pinned its version on every restart."""
    from streams.core.rulestore import topic_order

    skewed = RuleSetRecord(version="v-2100", text="t", published_ms=4_102_444_800_000, source=None, offset=0)
    later = RuleSetRecord(version="v2", text="t", published_ms=1_763_856_000_000, source=None, offset=1)
    assert sorted([later, skewed], key=topic_order)[-1].version == "v2"
