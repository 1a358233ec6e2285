"""The event envelope: decoding, validation reasons, phone normalization and hashing."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.errors import BypassError
from streams.core.envelope import (
    MAX_NESTING,
    EnvelopeDecoder,
    InvalidEvent,
    InvalidEventError,
    check_event_time,
    hash_phone,
    normalize_phone,
    validate,
)

KEY = b"test-key"
#: every reason code the decoder may give (the envelope module's table)
REASONS = {
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_field",
    "too_deep",
    "ts_out_of_bounds",
}


def good(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "e-01",
        "type": "login",
        "ts": 1_763_856_000_000,
        "user_id": "u1",
        "device_id": "d1",
        "ip": "10.0.0.1",
        "phone": "+86 138-0000-0000",
        "geo": {"lat": 39.9, "lon": 116.4, "city": "Beijing"},
        "attrs": {"amount": 12.5},
    }
    event.update(over)
    return event


def reason_of(raw: bytes, max_bytes: int = 65_536) -> str:
    with pytest.raises(InvalidEventError) as info:
        EnvelopeDecoder(KEY, max_bytes=max_bytes).decode(raw)
    return info.value.reason


def test_good_event_decodes_and_phone_is_hashed() -> None:
    event = EnvelopeDecoder(KEY).decode(orjson.dumps(good()))
    expected = "ph_" + hmac.new(KEY, b"+8613800000000", hashlib.sha256).hexdigest()[:32]
    assert event["phone"] == expected
    assert "138" not in orjson.dumps(event).decode()
    assert event["geo"] == {"lat": 39.9, "lon": 116.4, "city": "Beijing"}
    assert event["ts"] == 1_763_856_000_000


def test_invalid_event_is_a_bypass_error_with_the_issue_name() -> None:
    assert InvalidEvent is InvalidEventError
    assert issubclass(InvalidEventError, BypassError)


def test_minimal_event_and_null_optionals_dropped() -> None:
    event = validate({"event_id": "e", "type": "t", "ts": 0, "user_id": "u", "device_id": None, "geo": None})
    assert event == {"event_id": "e", "type": "t", "ts": 0, "user_id": "u"}


@pytest.mark.parametrize(
    ("raw", "reason", "words"),
    [
        (b"{not json", "not_json", "not valid JSON"),
        (b"\xff\xfe", "not_json", "not valid JSON"),
        (b"[1, 2]", "not_object", "JSON object"),
        (b'"x"', "not_object", "JSON object"),
    ],
)
def test_undecodable(raw: bytes, reason: str, words: str) -> None:
    with pytest.raises(InvalidEventError, match=words) as info:
        EnvelopeDecoder(KEY).decode(raw)
    assert info.value.reason == reason


def test_tombstone_is_invalid() -> None:
    with pytest.raises(InvalidEventError, match="tombstone"):
        EnvelopeDecoder(KEY).decode(None)


@pytest.mark.parametrize("name", ["event_id", "type", "ts", "user_id"])
def test_missing_required(name: str) -> None:
    event = good()
    del event[name]
    with pytest.raises(InvalidEventError, match=f"missing required field '{name}'") as info:
        validate(event)
    assert info.value.reason == "missing_field"
    assert info.value.fields["field"] == name


@pytest.mark.parametrize(
    ("over", "field", "reason"),
    [
        ({"event_id": 12}, "event_id", "wrong_type"),
        ({"user_id": ["u"]}, "user_id", "wrong_type"),
        ({"type": ""}, "type", "bad_value"),
        ({"ts": "1763856000000"}, "ts", "wrong_type"),
        ({"ts": 1.5e12}, "ts", "wrong_type"),
        ({"ts": True}, "ts", "wrong_type"),
        ({"ts": -1}, "ts", "bad_value"),
        ({"ts": 10**16}, "ts", "bad_value"),
        ({"device_id": 5}, "device_id", "wrong_type"),
        ({"ip": "x" * 300}, "ip", "bad_value"),
        ({"user_id": "\x00order-progress:1"}, "user_id", "bad_value"),  # never a table key of ours
        ({"device_id": "d\n1"}, "device_id", "bad_value"),
        ({"phone": 8613800000000}, "phone", "wrong_type"),
        ({"phone": "call me"}, "phone", "bad_value"),
        ({"phone": "+12"}, "phone", "bad_value"),
        ({"geo": [1, 2]}, "geo", "wrong_type"),
        ({"geo": {"lat": 91, "lon": 0}}, "geo", "bad_value"),
        ({"geo": {"lat": 1, "lon": "0"}}, "geo", "wrong_type"),
        ({"geo": {"lat": 1}}, "geo", "missing_field"),
        ({"geo": {"lat": 1, "lon": 2, "alt": 3}}, "geo", "unknown_field"),
        ({"geo": {"city": 7}}, "geo", "wrong_type"),
        ({"attrs": "x"}, "attrs", "wrong_type"),
        ({"mobile": "+8613800000000"}, "mobile", "unknown_field"),
    ],
)
def test_wrong_types_and_values(over: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        EnvelopeDecoder(KEY).decode(orjson.dumps(good(**over)))
    assert info.value.reason == reason
    assert info.value.fields["field"] == field
    assert field.split(".")[0] in info.value.message


def test_huge_message_is_rejected_before_parsing() -> None:
    raw = orjson.dumps(good(attrs={"blob": "x" * 100_000}))
    assert reason_of(raw) == "too_large"
    assert reason_of(b"{" * 10, max_bytes=5) == "too_large"


def test_unknown_field_message_points_at_attrs() -> None:
    with pytest.raises(InvalidEventError, match="put app-specific data in 'attrs'"):
        validate(good(extra=1))


def test_validate_does_not_hash() -> None:
    assert validate(good())["phone"] == "+86 138-0000-0000"


@pytest.mark.parametrize(
    "written",
    ["+8613800000000", "+86 138 0000 0000", "+86-138-0000-0000", "+86 (138) 0000.0000", " +8613800000000 "],
)
def test_phone_normalization(written: str) -> None:
    assert normalize_phone(written) == "+8613800000000"
    assert hash_phone(written, KEY) == hash_phone("+8613800000000", KEY)


def test_leading_plus_matters_and_keys_matter() -> None:
    assert normalize_phone("13800000000") == "13800000000"
    assert hash_phone("13800000000", KEY) != hash_phone("+13800000000", KEY)
    assert hash_phone("+8613800000000", KEY) != hash_phone("+8613800000000", b"other")


def test_decoder_repr_hides_key() -> None:
    assert "test-key" not in repr(EnvelopeDecoder(KEY))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        event = EnvelopeDecoder(KEY).decode(raw)
    except InvalidEventError as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(event, dict)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["event_id", "type", "ts", "user_id", "phone", "geo", "attrs", "ip", "zz"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.floats(), st.booleans()),
    )
)
def test_arbitrary_objects_valid_or_clear_reason(obj: dict[str, object]) -> None:
    try:
        event = EnvelopeDecoder(KEY).prepare(obj)
    except InvalidEventError as exc:
        assert exc.message
    else:
        assert isinstance(event["ts"], int)
        assert str(event.get("phone", "ph_")).startswith("ph_")


def test_deeply_nested_attrs_are_refused_before_anything_recurses_on_them() -> None:
    """A 700-byte event with 300 nested arrays passed validation, then orjson.dumps raised in
    the ingest outside any try and the whole batch was lost."""
    raw = (
        b'{"event_id":"deep1","type":"login","ts":1763856060000,"user_id":"u-a","attrs":{"x":'
        + b"[" * 300
        + b"]" * 300
        + b"}}"
    )
    assert len(raw) < 700
    assert reason_of(raw) == "too_deep"
    nested: object = 1
    for _ in range(MAX_NESTING - 1):
        nested = [nested]
    event = EnvelopeDecoder(KEY).decode(orjson.dumps(good(attrs={"x": nested})))
    assert orjson.loads(orjson.dumps(event))["attrs"]["x"] == nested  # at the bound: fine, and it encodes
    assert reason_of(orjson.dumps(good(attrs={"x": [nested]}))) == "too_deep"


def test_event_time_must_lie_near_the_kafka_timestamp() -> None:
    """One far-future time (year 9999) made every later event of its key late for good."""
    decoder = EnvelopeDecoder(KEY, max_future_ms=3_600_000, max_past_ms=86_400_000)
    kafka_ts = 1_763_856_000_000
    raw = orjson.dumps(good(ts=253_402_300_799_999))
    with pytest.raises(InvalidEventError) as info:
        decoder.decode(raw, kafka_ts)
    assert info.value.reason == "ts_out_of_bounds" and "BYPASS_MAX_FUTURE_MS" in info.value.message
    with pytest.raises(InvalidEventError, match="BYPASS_MAX_PAST_MS"):
        decoder.decode(orjson.dumps(good(ts=kafka_ts - 86_400_001)), kafka_ts)
    assert decoder.decode(orjson.dumps(good(ts=kafka_ts + 3_600_000)), kafka_ts)["ts"] == kafka_ts + 3_600_000
    assert decoder.decode(raw)["ts"] == 253_402_300_799_999  # no Kafka timestamp: nothing to compare
    check_event_time(5, None, 1, 1)  # no timestamp: no check
    check_event_time(10**12, 0, 0, 0)  # 0 = no bound


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        json_values.map(orjson.dumps),
        json_values.map(lambda v: orjson.dumps(good(attrs={"v": v}))),
    )
)
def test_fuzz_any_bytes_give_a_valid_event_or_a_reasoned_rejection(raw: bytes) -> None:
    """Whatever the bytes: a validated event that encodes again, or InvalidEventError with a
    documented reason - never another exception."""
    try:
        event = EnvelopeDecoder(KEY, max_future_ms=3_600_000).decode(raw, 1_763_856_000_000)
    except InvalidEventError as exc:
        assert exc.reason in REASONS and exc.message
    else:
        assert isinstance(event, dict) and isinstance(event["ts"], int)
        orjson.dumps(event)  # what the ingest does next


def test_a_far_future_time_stamped_as_its_own_kafka_time_is_caught_by_the_clock() -> None:
    """The SDK stamps messages with the event time: a year-9999 event carries it twice."""
    decoder = EnvelopeDecoder(KEY, max_future_ms=3_600_000)
    raw = orjson.dumps(good(ts=253_402_300_799_999))
    now = 1_763_856_000_000
    with pytest.raises(InvalidEventError, match="ahead of the clock") as info:
        decoder.decode(raw, 253_402_300_799_999, now_ms=now)
    assert info.value.reason == "ts_out_of_bounds"
    assert decoder.decode(orjson.dumps(good(ts=now + 60_000)), now + 60_000, now_ms=now)["ts"] == now + 60_000


def test_configured_personal_fields_are_hashed_at_ingest() -> None:
    """Before: a phone under attrs passed unhashed into the internal topics."""
    decoder = EnvelopeDecoder(KEY, pii_fields=("phone", "attrs.phone", "attrs.email"))
    event = decoder.decode(orjson.dumps(good(attrs={"phone": "+8613800000000", "email": "a@b.c", "n": 1})))
    assert event["attrs"]["phone"].startswith("pii_") and event["attrs"]["email"].startswith("pii_")
    assert event["attrs"]["n"] == 1 and event["phone"].startswith("ph_")
    raw = orjson.dumps(event)
    assert b"8613800000000" not in raw and b"a@b.c" not in raw
    # the same value always hashes the same (features over it stay exact), another key differently
    again = decoder.decode(orjson.dumps(good(attrs={"email": "a@b.c"})))
    assert again["attrs"]["email"] == event["attrs"]["email"]


def test_a_refused_message_keeps_no_personal_data_on_the_dlq_when_it_parses() -> None:
    """Before: the ingest DLQ kept the original bytes, raw phone included."""
    decoder = EnvelopeDecoder(KEY, pii_fields=("attrs.email",))
    refused = orjson.dumps({"type": "login", "phone": "+86 138 0000 0000", "attrs": {"email": "a@b.c"}})
    with pytest.raises(InvalidEventError):
        decoder.decode(refused)  # no event_id
    copy = decoder.redact(refused)
    assert copy is not None and b"138" not in copy and b"a@b.c" not in copy
    assert orjson.loads(copy)["phone"].startswith("ph_")
    bad_phone = orjson.dumps({"event_id": "e", "phone": "call me at 555"})
    assert b"555" not in (decoder.redact(bad_phone) or b"")  # not a number: hashed as text
    assert decoder.redact(b"{not json") == b"{not json"  # nothing to find: the original bytes
    plain = b'{"type": "login"}'
    assert decoder.redact(plain) == plain  # nothing personal: byte for byte


def _reference(event: object, key: bytes) -> object:
    """What the decoder gave before its flat check existed: validate field by field, then hash
    the phone with the standard library's HMAC. An InvalidEventError as (reason, field, message)."""
    try:
        checked = validate(event)
    except InvalidEventError as exc:
        return (exc.reason, exc.fields.get("field"), exc.message)
    if checked.get("phone") is not None:
        checked["phone"] = hash_phone(checked["phone"], key)
    return list(checked.items())  # the order of the fields too


def _outcome(decode: object, event: object) -> object:
    try:
        checked = decode(event)  # type: ignore[operator]
    except InvalidEventError as exc:
        return (exc.reason, exc.fields.get("field"), exc.message)
    return list(checked.items())


_ids = st.one_of(
    st.sampled_from(
        ["e-1", "u", "x" * 256, "x" * 257, "", "a\x00b", "a\x1fb", "a\x7fb", "a\u2028b", "\xa0", "ü"]
    ),
    st.text(max_size=8),
    st.none(),
    st.integers(),
    st.booleans(),
)
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-200, 200),
    st.sampled_from([90, -90.0, 90.0001, 180, -180.5, True]),
    st.none(),
    st.text(max_size=3),
)
_fields = {
    "event_id": _ids,
    "type": _ids,
    "user_id": _ids,
    "ts": st.one_of(
        st.integers(-5, 300_000_000_000_000),
        st.sampled_from([0, 253_402_300_799_999, 253_402_300_800_000, True, 1.5e12]),
        st.none(),
        st.text(max_size=3),
    ),
    "device_id": _ids,
    "ip": _ids,
    "phone": st.one_of(
        st.sampled_from(["+86 138-0000-0000", "+8613800000000", "call me", "+12", "", " (010) 1234.5678 "]),
        _ids,
    ),
    "geo": st.one_of(
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.fixed_dictionaries(
            {}, optional={"lat": _numbers, "lon": _numbers, "city": _ids, "alt": st.integers()}
        ),
    ),
    "attrs": st.one_of(
        st.none(), st.text(max_size=2), st.dictionaries(st.text(max_size=3), json_values, max_size=3)
    ),
    "extra": st.integers(),
}


@st.composite
def _envelopes(draw: st.DrawFn) -> dict[str, object]:
    """A valid event (some optional fields left out), then a few fields dropped or replaced by
    anything: mostly near the common shape, where the flat check decides alone."""
    event = good()
    for name in draw(st.sets(st.sampled_from(["device_id", "ip", "phone", "geo", "attrs"]))):
        del event[name]
    for name in draw(st.lists(st.sampled_from(sorted(_fields)), max_size=2)):
        if draw(st.booleans()) and name in event:
            del event[name]
        else:
            event[name] = draw(_fields[name])
    return event


@settings(max_examples=1_000, deadline=None)
@given(_envelopes())
def test_the_flat_check_accepts_and_refuses_exactly_as_validate(event: dict[str, object]) -> None:
    """The decoder's flat check for the common shape (_quick) must give the same event - fields
    in the same order, nulls dropped, phone hashed - or the same refusal (reason, field,
    message) as validate field by field, whatever the input."""
    decoder = EnvelopeDecoder(KEY)
    expected = _reference(orjson.loads(orjson.dumps(event)) if _encodes(event) else _copy(event), KEY)
    assert _outcome(decoder.prepare, _copy(event)) == expected
    if _encodes(event):  # through the bytes too (what the ingest and the archive do)
        assert _outcome(decoder.decode, orjson.dumps(event)) == expected


def _encodes(event: dict[str, object]) -> bool:
    try:
        return bool(orjson.loads(orjson.dumps(event)) == event)
    except (TypeError, orjson.JSONEncodeError):
        return False


def _copy(event: dict[str, object]) -> dict[str, object]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in event.items()}


def test_a_subclass_of_a_json_type_takes_the_field_by_field_path() -> None:
    class Text(str):
        pass

    event = good(event_id=Text("e-01"), attrs={"x": [[1]]})
    assert EnvelopeDecoder(KEY).prepare(dict(event))["event_id"] == "e-01"
    bad = good(ts=True)
    with pytest.raises(InvalidEventError) as info:
        EnvelopeDecoder(KEY).prepare(bad)
    assert info.value.reason == "wrong_type"


@pytest.mark.parametrize("key", [b"k", b"test-key", b"x" * 64, b"y" * 65, bytes(range(200))])
def test_the_decoders_keyed_hash_is_hmac_sha256(key: bytes) -> None:
    decoder = EnvelopeDecoder(key, pii_fields=("attrs.email",))
    event = decoder.decode(orjson.dumps(good(attrs={"email": "a@b.c", "n": [1, {"m": 2}]})))
    assert event["phone"] == "ph_" + hmac.new(key, b"+8613800000000", hashlib.sha256).hexdigest()[:32]
    assert event["phone"] == hash_phone("+86 138-0000-0000", key)
    assert event["attrs"]["email"] == "pii_" + hmac.new(key, b"a@b.c", hashlib.sha256).hexdigest()[:32]


def test_attrs_nested_to_the_bound_pass_one_deeper_are_refused_through_both_paths() -> None:
    nested: object = 1
    for _ in range(MAX_NESTING - 1):
        nested = {"k": nested}
    decoder = EnvelopeDecoder(KEY)
    assert decoder.prepare(good(attrs={"x": nested}))["attrs"]["x"] == nested
    with pytest.raises(InvalidEventError) as info:
        decoder.prepare(good(attrs={"x": [nested]}))
    assert info.value.reason == "too_deep"
