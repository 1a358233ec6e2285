"""Rules read ``model.<name>``: a number of the rule's entity; an unknown model is refused
at load with the rule id."""

from __future__ import annotations

import pytest

import rules
from rules import RuleSetError

SCHEMA = {
    "user": {"phone_changes_30d": "int", "model.resale": "number"},
    "device": {"device_users_7d": "int", "model.farm": "number"},
}


def _ruleset(when: str, entity: str = "user") -> str:
    return f"""
version: "1"
rules:
  - id: r_model
    entity: {entity}
    when: "{when}"
    score: 90
"""


def test_a_rule_reads_a_model_score_and_the_hit_carries_it() -> None:
    rs = rules.load_ruleset(_ruleset("model.resale > 0.8 and phone_changes_30d > 1"), SCHEMA)
    event = {"event_id": "e1", "type": "login", "ts": 1, "user_id": "u1"}
    ev = rs.evaluate(event, "user", "u1", {"phone_changes_30d": 2, "model.resale": 0.93}, None)
    (hit,) = ev.hits
    assert hit.rule_id == "r_model" and hit.features == {"model.resale": 0.93, "phone_changes_30d": 2}
    assert rs.evaluate(event, "user", "u1", {"phone_changes_30d": 2, "model.resale": 0.5}, None).hits == ()
    # no score (a null) never fires, as for any feature
    assert rs.evaluate(event, "user", "u1", {"phone_changes_30d": 2}, None).hits == ()


def test_an_unknown_model_is_refused_with_the_rule_id() -> None:
    with pytest.raises(RuleSetError) as info:
        rules.load_ruleset(_ruleset("model.resal > 0.8"), SCHEMA)
    text = str(info.value)
    assert "rule r_model" in text and "unknown model 'resal'" in text and "did you mean 'resale'" in text
    assert info.value.problems[0].rule_id == "r_model"


def test_a_model_of_another_entity_is_refused() -> None:
    with pytest.raises(RuleSetError, match="model 'farm' scores entity 'device', not this rule's entity"):
        rules.load_ruleset(_ruleset("model.farm > 0.5"), SCHEMA)


@pytest.mark.parametrize(
    ("when", "message"),
    [("model > 1", "`model` needs a model name"), ("model.a.b > 1", "`model.<name>`")],
)
def test_model_must_name_one_model(when: str, message: str) -> None:
    with pytest.raises(RuleSetError, match=message):
        rules.load_ruleset(_ruleset(when), SCHEMA)


def test_model_score_is_a_number() -> None:
    with pytest.raises(RuleSetError):
        rules.load_ruleset(_ruleset('model.resale == \\"x\\"'), SCHEMA)
