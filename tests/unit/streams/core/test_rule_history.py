"""Rule-set history and activation on the rules topic (issue 15, item 2): pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli.rules_history import history_rows
from streams.core.rulestore import Activation, RuleSetRecord, designated, parse_entry

ROOT = Path(__file__).resolve().parents[4]


def _pub(version: str, offset: int, text: str | None = None) -> RuleSetRecord:
    body = (
        text
        or f'version: "{version}"\nrules:\n'
        '  - {id: r1, entity: user, when: "property_views_total > 1", score: 5}\n'
    )
    return RuleSetRecord(
        version, body, 1_000 * offset, source=f"{version}.yaml", offset=offset, publisher="ann@h"
    )


def _act(version: str, offset: int) -> Activation:
    return Activation(version, 1_000 * offset, by="bob@h", offset=offset)


def test_records_round_trip_and_an_activation_key_never_parses_as_a_version() -> None:
    pub = _pub("v1", 3)
    back = parse_entry(b"v1", pub.to_bytes(), 3)
    assert back == pub
    act = _act("v1", 9)
    key = act.key()
    assert key.startswith(b"\x00activate:") and key != act.key()  # one key per activation
    assert parse_entry(key, act.to_bytes(), 9) == act
    with pytest.raises(ValueError, match="tombstone"):
        parse_entry(key, None, 1)
    with pytest.raises(ValueError, match="not an activation"):
        parse_entry(key, b'{"kind": "activate"}', 1)


def test_the_last_record_designates_the_active_version_an_activation_rolls_back() -> None:
    v1, v2, v3 = _pub("v1", 0), _pub("v2", 1), _pub("v3", 2)
    assert [r.version for r in designated([v1, v2, v3])] == ["v1", "v2", "v3"]
    # rollback to v1, then roll forward to v3; an activation of an unknown version is ignored
    entries = [v3, v1, _act("v1", 3), v2, _act("ghost", 4), _act("v3", 5)]
    assert [r.version for r in designated(entries)] == ["v1", "v2", "v3", "v1", "v3"]
    assert designated([v1, v2, _act("v1", 2)])[-1] is v1


def test_history_lists_versions_with_activations_and_the_active_one() -> None:
    from streams.core.assembly import load_spec
    from streams.settings import Settings

    spec = load_spec(Settings(features_spec=ROOT / "examples/features.yaml"))
    broken = _pub(
        "v3",
        2,
        text='version: "v3"\nrules:\n  - {id: r1, entity: user, when: "no_such_feature > 1", score: 5}\n',
    )
    entries = [_pub("v1", 0), _pub("v2", 1), _act("v1", 3), broken]
    rows = history_rows(entries, spec, {"w-a": "v1", "w-b": "v1", "w-c": "v2"})
    by = {r.version: r for r in rows}
    assert [r.version for r in rows] == ["v1", "v2", "v3"]
    assert by["v1"].activations == [(0, "ann@h"), (3_000, "bob@h")]
    assert by["v1"].active and not by["v2"].active  # v3 was published last but does not load
    assert not by["v3"].loads and "no_such_feature" in (by["v3"].problem or "")
    assert by["v1"].workers == ["w-a", "w-b"] and by["v2"].workers == ["w-c"]
    assert by["v1"].rules == 1 and by["v1"].publisher == "ann@h"
