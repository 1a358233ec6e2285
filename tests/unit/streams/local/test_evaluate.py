"""Precision and recall per scenario, computed from truth and flags."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.errors import ConfigError
from streams.local.evaluate import DEFAULT_LABELS, evaluate, read_truth

TRUTH = [
    {"entity": "user", "key": "u1", "scenario": "account_resale"},
    {"entity": "user", "key": "u2", "scenario": "account_resale"},
    {"entity": "user", "key": "u3", "scenario": "account_resale"},
    {"entity": "user", "key": "u4", "scenario": "account_resale"},
    {"entity": "device", "key": "d1", "scenario": "device_farm"},
    {"entity": "ip", "key": "1.2.3.4", "scenario": "credential_stuffing"},
    {"entity": "user", "key": "u9", "scenario": "impossible_travel"},
]


def test_precision_and_recall_per_scenario() -> None:
    flags = [
        ("user", "u1", "account_resale"),
        ("user", "u1", "account_resale"),  # the same entity twice counts once
        ("user", "u2", "account_resale"),
        ("user", "u3", "account_resale"),
        ("user", "u50", "account_resale"),  # a normal user: false positive
        ("device", "d1", "device_farm"),
        ("user", "u9", "account_resale"),  # wrong label: false positive of resale, travel missed
        ("ip", "1.2.3.4", "credential_stuffing"),
        ("user", "u7", "vip_whitelist_probe"),  # a label that detects nothing
    ]
    result = evaluate(TRUTH, flags)
    by = result.by_scenario()
    resale = by["account_resale"]
    assert (resale.truth, resale.flagged, resale.true_positives) == (4, 5, 3)
    assert resale.precision == pytest.approx(3 / 5)
    assert resale.recall == pytest.approx(3 / 4)
    assert resale.false_positives == (("user", "u50"), ("user", "u9"))
    assert resale.missed == (("user", "u4"),)
    assert resale.detected == (("user", "u1"), ("user", "u2"), ("user", "u3"))
    assert (by["device_farm"].precision, by["device_farm"].recall) == (1.0, 1.0)
    assert (by["credential_stuffing"].precision, by["credential_stuffing"].recall) == (1.0, 1.0)
    travel = by["impossible_travel"]
    assert travel.flagged == 0 and travel.precision is None and travel.recall == 0.0
    assert result.unmapped_labels == {"vip_whitelist_probe": 1}
    # overall: 7 bad entities, flagged 8 distinct (u1 u2 u3 u50 d1 u9 ip, and u7 by the
    # label that maps to no scenario), 6 of them bad
    assert (result.overall.truth, result.overall.flagged, result.overall.true_positives) == (7, 8, 6)
    assert result.overall.false_positives == (("user", "u50"), ("user", "u7"))
    assert [r["scenario"] for r in result.rows()] == [
        "account_resale",
        "credential_stuffing",
        "device_farm",
        "impossible_travel",
        "(any)",
    ]


def test_overall_counts_entities_flagged_by_unmapped_labels() -> None:
    # regression: entities flagged only by labels of no scenario (login_spread,
    # takeover_cashout) were left out of "(any)", inflating its precision
    flags = [
        ("user", "u1", "account_resale"),
        ("user", "u60", "login_spread"),  # normal: a false positive overall
        ("user", "u61", "takeover_cashout"),  # normal: a false positive overall
        ("user", "u9", "takeover_cashout"),  # bad (impossible_travel): a true positive overall
    ]
    result = evaluate(TRUTH, flags)
    overall = result.overall
    assert (overall.flagged, overall.true_positives) == (4, 2)
    assert overall.precision == pytest.approx(2 / 4)
    assert overall.false_positives == (("user", "u60"), ("user", "u61"))
    assert result.unmapped_labels == {"login_spread": 1, "takeover_cashout": 2}
    # the per-scenario rows are unchanged by those labels
    by = result.by_scenario()
    assert (by["account_resale"].flagged, by["account_resale"].precision) == (1, 1.0)
    assert by["impossible_travel"].flagged == 0 and by["impossible_travel"].recall == 0.0


def test_entity_kind_matters() -> None:
    # a user whose id happens to equal the farm device id is not the farm device
    result = evaluate(TRUTH, [("user", "d1", "device_farm")])
    farm = result.by_scenario()["device_farm"]
    assert farm.true_positives == 0 and farm.precision == 0.0 and farm.recall == 0.0


def test_rule_ids_can_map_to_scenarios() -> None:
    labels = {
        **DEFAULT_LABELS,
        "account_resale": frozenset({"resale_phone_churn", "resale_change_then_sign"}),
    }
    flags = [("user", "u1", "resale_phone_churn"), ("user", "u2", "resale_change_then_sign")]
    resale = evaluate(TRUTH, flags, labels).by_scenario()["account_resale"]
    assert (resale.true_positives, resale.precision, resale.recall) == (2, 1.0, 0.5)


def test_scenario_in_truth_without_labels_still_scored() -> None:
    truth = [*TRUTH, {"entity": "user", "key": "u5", "scenario": "promo_abuse"}]
    promo = evaluate(truth, []).by_scenario()["promo_abuse"]
    assert (promo.truth, promo.recall, promo.precision) == (1, 0.0, None)


def test_read_truth() -> None:
    lines = [b'{"entity":"user","key":"u1","scenario":"account_resale"}', b"", "  "]
    assert read_truth(lines) == [{"entity": "user", "key": "u1", "scenario": "account_resale"}]
    with pytest.raises(ConfigError, match="line 2"):
        read_truth(['{"entity":"user","key":"u1","scenario":"x"}', "{nope"])
    with pytest.raises(ConfigError, match="line 1"):
        read_truth(['{"entity":"user","key":1,"scenario":"x"}'])


entities = st.tuples(st.sampled_from(["user", "device", "ip"]), st.sampled_from([f"k{i}" for i in range(8)]))


@settings(max_examples=60, deadline=None)
@given(
    truth=st.sets(st.tuples(entities, st.sampled_from(sorted(DEFAULT_LABELS)))),
    flags=st.lists(st.tuples(entities, st.sampled_from([*sorted(DEFAULT_LABELS), "other"]))),
)
def test_matches_a_brute_force_count(
    truth: set[tuple[tuple[str, str], str]], flags: list[tuple[tuple[str, str], str]]
) -> None:
    truth_rows = [{"entity": e, "key": k, "scenario": s} for (e, k), s in truth]
    result = evaluate(truth_rows, [(e, k, label) for (e, k), label in flags])
    for scenario in DEFAULT_LABELS:
        t = {ek for ek, s in truth if s == scenario}
        f = {ek for ek, label in flags if label == scenario}
        score = result.by_scenario()[scenario]
        tp = len(t & f)
        assert score.precision == (tp / len(f) if f else None)
        assert score.recall == (tp / len(t) if t else None)
        assert score.true_positives + len(score.false_positives) == score.flagged
        assert score.true_positives + len(score.missed) == score.truth
    all_truth = {ek for ek, _ in truth}
    all_flagged = {ek for ek, _ in flags}  # "other" maps to no scenario and still counts here
    overall = result.overall
    assert (overall.truth, overall.flagged) == (len(all_truth), len(all_flagged))
    assert overall.true_positives == len(all_truth & all_flagged)
