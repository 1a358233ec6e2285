"""streams.core.processor: the one core shared by the live agents and replay.

These tests use the real rules/ and (when present) the real features/ engine over the
example feature spec; the record formats are the issue-5 contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import features
import rules
from sinks.records import blacklist_key
from streams.core.order import SourceEvent, merge_sources
from streams.core.processor import KeyBatch, Processor

SPEC_PATH = Path(__file__).resolve().parents[4] / "examples" / "features.yaml"

RULES = """
version: "v1"
decisions: {reject: 80, review: 50}
rules:
  - id: resale_phone_churn
    entity: user
    when: phone_changes_30d > 2 and property_views_total < 1
    events: [contract_sign]
    score: 60
    label: account_resale
    action: blacklist
    ttl: 30d
  - id: shadow_any_sign
    entity: user
    when: phone_changes_30d >= 0
    events: [contract_sign]
    score: 10
    label: watch
    mode: shadow
  - id: device_farm
    entity: device
    when: device_users_7d >= 3
    score: 90
    label: device_farm
    action: blacklist
    ttl: 7d
  - id: broken
    entity: user
    when: 1 / (phone_changes_30d - phone_changes_30d) > 0
    events: [contract_sign]
    score: 5
    label: broken
"""

T0 = 1_763_856_000_000
HOUR = 3_600_000


def spec() -> Any:
    return features.load_spec(SPEC_PATH)


def make_processor(text: str = RULES, run_id: str = "live") -> Processor:
    s = spec()
    engine = features.FeatureEngine(s, cap=1000, allowed_lateness_ms=HOUR, dedup_horizon_ms=24 * HOUR)
    ruleset = rules.load_ruleset(text, s.schema())
    return Processor(s, engine, ruleset, run_id=run_id)


def src(event_id: str, etype: str, ts: int, offset: int, **extra: Any) -> SourceEvent:
    event = {"event_id": event_id, "type": etype, "ts": ts, "user_id": "u1", **extra}
    return SourceEvent(event, "bypass.events", 0, offset, ts)


def resale_events() -> list[SourceEvent]:
    # u1: three phone changes within an hour, then a contract sign, no property view
    return [
        src("e1", "phone_change", T0, 10, phone="ph_a"),
        src("e2", "phone_change", T0 + 60_000, 11, phone="ph_b"),
        src("e3", "phone_change", T0 + 120_000, 12, phone="ph_c"),
        src("e4", "contract_sign", T0 + 180_000, 13),
    ]


def test_hits_and_blacklist_records_follow_the_contract() -> None:
    p = make_processor()
    result = p.process("user", "u1", None, resale_events())
    assert result.applied == 4 and result.changed
    by_rule = {h["rule_id"]: h for h in result.hits}
    assert set(by_rule) == {"resale_phone_churn", "shadow_any_sign", "broken"}
    hit = by_rule["resale_phone_churn"]
    contract = {
        "hit_id",
        "event_id",
        "event_type",
        "event_ts",
        "entity",
        "key",
        "rule_id",
        "label",
        "score",
        "mode",
        "counted",
        "suppressed",
        "rollout_excluded",
        "features",
        "decision",
        "ruleset_version",
        "source_topic",
        "source_partition",
        "source_offset",
        "run_id",
    }
    assert contract <= set(hit)
    assert hit["hit_id"] == rules.hit_id("e4", "resale_phone_churn", "v1")
    assert (hit["event_id"], hit["event_type"], hit["event_ts"]) == ("e4", "contract_sign", T0 + 180_000)
    assert (hit["entity"], hit["key"], hit["label"], hit["score"]) == ("user", "u1", "account_resale", 60)
    assert hit["mode"] == "active" and hit["counted"] and not hit["suppressed"]
    assert hit["features"] == {"phone_changes_30d": 3, "property_views_total": 0}
    assert hit["decision"] == "review"  # 60 counted; shadow and broken do not count
    assert (hit["source_topic"], hit["source_partition"], hit["source_offset"]) == ("bypass.events", 0, 13)
    assert hit["run_id"] == "live" and hit["ruleset_version"] == "v1"
    shadow = by_rule["shadow_any_sign"]
    assert shadow["mode"] == "shadow" and not shadow["counted"]
    assert by_rule["broken"]["error"] and not by_rule["broken"]["counted"]
    assert result.rule_errors == 1
    assert result.blacklist == [
        {
            "entity": "user",
            "key": "u1",
            "label": "account_resale",
            "rule_ids": ["resale_phone_churn"],
            "event_id": "e4",
            "event_ts": T0 + 180_000,
            "expires_at": T0 + 180_000 + 30 * 24 * HOUR,
            "ruleset_version": "v1",
        }
    ]
    assert blacklist_key("user", "u1") == "user:u1"


def test_state_roundtrip_through_bytes_equals_one_call() -> None:
    events = resale_events()
    one = make_processor().process("user", "u1", None, events)
    p = make_processor()
    first = p.process("user", "u1", None, events[:2])
    second = p.process("user", "u1", p.dumps(first.state), events[2:])
    assert first.hits + second.hits == one.hits
    assert p.dumps(second.state) == p.dumps(one.state)


def test_redelivery_changes_no_state_and_repeats_identical_hits() -> None:
    p = make_processor()
    events = resale_events()
    first = p.process("user", "u1", None, events)
    snapshot = p.dumps(first.state)
    again = p.process("user", "u1", snapshot, events)
    assert again.duplicates == 4 and again.applied == 0 and not again.changed
    assert p.dumps(again.state) == snapshot
    assert again.hits == first.hits
    assert again.blacklist == first.blacklist


def test_run_id_and_version_swap() -> None:
    p = make_processor(run_id="replay-7")
    before = p.process("user", "u1", None, resale_events())
    assert {h["run_id"] for h in before.hits} == {"replay-7"}
    p.set_ruleset(rules.load_ruleset(RULES.replace('"v1"', '"v2"'), spec().schema()))
    after = p.process(
        "user",
        "u2",
        None,
        [
            src(
                "x" + s.event["event_id"],
                s.event["type"],
                s.event["ts"],
                s.offset,
                **({"phone": s.event["phone"]} if "phone" in s.event else {}),
            )
            for s in resale_events()
        ],
    )
    assert {h["ruleset_version"] for h in after.hits} == {"v2"}
    churn = next(h for h in after.hits if h["rule_id"] == "resale_phone_churn")
    assert churn["hit_id"] == rules.hit_id("xe4", "resale_phone_churn", "v2")


def test_late_event_rejected_and_counted() -> None:
    p = make_processor()
    result = p.process(
        "user",
        "u1",
        None,
        [src("a", "login", T0 + 5 * HOUR, 1), src("b", "contract_sign", T0, 2)],
    )
    assert result.applied == 1
    assert [s.event["event_id"] for s, _ in result.late] == ["b"]
    assert result.late[0][1]
    assert result.hits == []


def test_process_many_device_entity_and_keys_independent() -> None:
    p = make_processor()
    batches = [
        KeyBatch(
            "d1",
            None,
            [
                SourceEvent(
                    {
                        "event_id": f"l{i}",
                        "type": "login",
                        "ts": T0 + i,
                        "user_id": f"u{i}",
                        "device_id": "d1",
                    },
                    "bypass.events",
                    i % 2,
                    i,
                )
                for i in range(4)
            ],
        ),
        KeyBatch(
            "d2",
            None,
            [SourceEvent({"event_id": "m", "type": "login", "ts": T0, "user_id": "u9"}, "t", 0, 0)],
        ),
    ]
    results = p.process_many("device", batches)
    assert [r.key for r in results] == ["d1", "d2"]
    farm = [h for h in results[0].hits if h["rule_id"] == "device_farm"]
    assert [h["event_id"] for h in farm] == ["l2", "l3"]  # 3rd and 4th distinct user
    assert results[1].hits == []
    assert [b["key"] for b in results[0].blacklist] == ["d1", "d1"]


class _Lists:
    def __init__(self) -> None:
        self.prefetched: list[set[tuple[str, Any]]] = []

    def prefetch(self, probes: set[tuple[str, Any]]) -> None:
        self.prefetched.append(set(probes))

    def contains(self, name: str, value: Any) -> bool:
        return name == "bad_ips" and value == "10.0.0.9"


def test_list_provider_prefetched_once_per_call() -> None:
    text = """
version: "l1"
rules:
  - id: bad_ip
    entity: user
    when: in_list("bad_ips", event.ip)
    score: 10
    label: bad_ip
"""
    p = make_processor(text)
    lists = _Lists()
    p.lists = lists
    events = [src(f"e{i}", "login", T0 + i, i, ip=f"10.0.0.{i}") for i in range(10)]
    result = p.process("user", "u1", None, events)
    assert lists.prefetched == [{("bad_ips", f"10.0.0.{i}") for i in range(10)}]
    assert [h["event_id"] for h in result.hits] == ["e9"]


def test_merge_sources_keeps_partition_order_and_breaks_ties() -> None:
    a = [src("a1", "x", 5, 0), src("a2", "x", 1, 1), src("a3", "x", 9, 2)]  # a2 is late in partition 0
    b = [SourceEvent({"event_id": "b1", "type": "x", "ts": 5, "user_id": "u"}, "bypass.events", 1, 0)]
    order = [s.event["event_id"] for s in merge_sources([a, b])]
    assert order == ["a1", "a2", "b1", "a3"]
