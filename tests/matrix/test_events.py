"""Room version 10 events: spec vectors, IDs, hashes, redaction, format, verify."""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.gateway.matrix.canonical_json import MAX_SAFE_INTEGER, MIN_SAFE_INTEGER, encode_canonical_json
from lowband.gateway.matrix.events import (
    ContentHashError,
    Event,
    EventFormatError,
    _signatures_member,
    add_signature,
    build_event,
    check_event_format,
    compute_content_hash,
    compute_event_id,
    content_hash_matches,
    redact,
    verify_event,
)
from lowband.gateway.matrix.room_versions import V10
from lowband.gateway.matrix.signing import SignatureError, SigningKey, decode_base64, sign_json

SPEC_KEY = SigningKey.from_seed(decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "1")
KEY_A = SigningKey.from_seed(bytes(range(32)), "a_test")
KEY_B = SigningKey.from_seed(bytes(range(1, 33)), "b_test")
KEYS = {("a.test", KEY_A.key_id): KEY_A.verify_key_bytes, ("b.test", KEY_B.key_id): KEY_B.verify_key_bytes}


def lookup(server: str, key_id: str) -> bytes | None:
    return KEYS.get((server, key_id))


def make(**overrides) -> Event:
    args = dict(
        room_id="!room:a.test",
        sender="@alice:a.test",
        type="m.room.message",
        content={"msgtype": "m.text", "body": "hello"},
        prev_events=["$prev"],
        auth_events=["$create", "$pl", "$member"],
        depth=5,
        origin_server_ts=1_700_000_000_000,
        server_name="a.test",
        signing_key=KEY_A,
    )
    args.update(overrides)
    return build_event(**args)


# -- spec vectors (appendices, "Cryptographic Test Vectors" > "Event Signing") -------


def _hash_and_sign(event: dict) -> dict:
    event = copy.deepcopy(event)
    event["hashes"] = {"sha256": compute_content_hash(event)}
    event["signatures"] = sign_json(redact(event, V10), "domain", SPEC_KEY)["signatures"]
    return event


def test_spec_vector_minimal_event():
    event = {
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": {"age_ts": 1000000},
    }
    signed = _hash_and_sign(event)
    assert signed["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert signed["signatures"] == {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    }
    assert signed["unsigned"] == {"age_ts": 1000000}
    verify_event(signed, V10, lambda s, k: SPEC_KEY.verify_key_bytes if (s, k) == ("domain", "ed25519:1") else None)


def test_spec_vector_event_with_redactable_content():
    event = {
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {},
        "unsigned": {"age_ts": 1000000},
    }
    signed = _hash_and_sign(event)
    assert signed["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
    )


# -- IDs and hashes -------------------------------------------------------------


def test_event_id_is_deterministic_and_well_formed():
    a, b = make(), make()
    assert a.event_id == b.event_id == compute_event_id(a.pdu, V10)
    assert re.fullmatch(r"\$[A-Za-z0-9_-]{43}", a.event_id)
    assert "event_id" not in a.pdu and "origin" not in a.pdu
    assert Event.from_pdu(copy.deepcopy(a.pdu)) == a


def test_event_id_ignores_signatures_unsigned_and_redaction():
    event = make()
    pdu = copy.deepcopy(event.pdu)
    pdu["unsigned"] = {"age": 12, "age_ts": 5}
    pdu["signatures"]["b.test"] = {"ed25519:x": "c2ln"}
    assert compute_event_id(pdu, V10) == event.event_id
    # The reference hash is taken over the redacted event, so redacting an
    # event keeps its ID.
    assert compute_event_id(redact(event.pdu, V10), V10) == event.event_id
    assert make(unsigned={"age": 1}).event_id == event.event_id


def test_event_id_changes_with_covered_fields():
    base = make().event_id
    assert make(content={"msgtype": "m.text", "body": "hellO"}).event_id != base  # via the content hash
    assert make(depth=6).event_id != base
    assert make(origin_server_ts=1).event_id != base
    assert make(prev_events=["$other"]).event_id != base


def test_content_hash_covers_content_but_not_signatures_or_unsigned():
    event = make()
    pdu = copy.deepcopy(event.pdu)
    assert content_hash_matches(pdu)
    assert compute_content_hash(pdu) == pdu["hashes"]["sha256"]
    pdu["unsigned"] = {"x": 1}
    pdu["signatures"] = {}
    pdu["hashes"]["other"] = "ignored"
    assert content_hash_matches(pdu)
    pdu["content"]["body"] = "changed"
    assert not content_hash_matches(pdu)
    assert make(content={"body": "a"}).pdu["hashes"] != make(content={"body": "b"}).pdu["hashes"]


@pytest.mark.parametrize("hashes", [{}, {"sha256": 5}, {"sha256": "***"}, "nope"])
def test_content_hash_matches_is_false_for_junk(hashes):
    pdu = copy.deepcopy(make().pdu)
    pdu["hashes"] = hashes
    assert content_hash_matches(pdu) is False


# -- redaction ----------------------------------------------------------------

_EVERY_CONTENT_KEY = {
    "membership": "join",
    "join_authorised_via_users_server": "@x:a.test",
    "displayname": "X",
    "avatar_url": "mxc://a/b",
    "creator": "@alice:a.test",
    "room_version": "10",
    "m.federate": True,
    "predecessor": {"room_id": "!old:a.test"},
    "join_rule": "restricted",
    "allow": [{"type": "m.room_membership", "room_id": "!s:a.test"}],
    "ban": 50,
    "events": {"m.room.name": 50},
    "events_default": 0,
    "kick": 50,
    "redact": 50,
    "state_default": 50,
    "users": {"@alice:a.test": 100},
    "users_default": 0,
    "invite": 0,
    "notifications": {"room": 50},
    "history_visibility": "shared",
    "name": "Room",
    "topic": "Topic",
    "body": "text",
    "msgtype": "m.text",
    "redacts": "$x",
    "alias": "#a:a.test",
    "aliases": ["#a:a.test"],
}

REDACTION_TABLE = [
    ("m.room.member", {"membership", "join_authorised_via_users_server"}),
    ("m.room.create", {"creator"}),
    ("m.room.join_rules", {"join_rule", "allow"}),
    (
        "m.room.power_levels",
        {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"},
    ),
    ("m.room.history_visibility", {"history_visibility"}),
    ("m.room.aliases", set()),  # v6+ no longer keeps aliases
    ("m.room.redaction", set()),  # v11 keeps content.redacts; v10 does not
    ("m.room.name", set()),
    ("m.room.topic", set()),
    ("m.room.message", set()),
    ("org.example.custom", set()),
]


@pytest.mark.parametrize("event_type, kept", REDACTION_TABLE, ids=[row[0] for row in REDACTION_TABLE])
def test_redaction_keeps_exactly_the_listed_content_keys(event_type, kept):
    pdu = {"type": event_type, "content": copy.deepcopy(_EVERY_CONTENT_KEY), "state_key": ""}
    redacted = redact(pdu, V10)
    assert set(redacted["content"]) == kept
    assert all(redacted["content"][k] == _EVERY_CONTENT_KEY[k] for k in kept)


def test_redaction_top_level_keys():
    pdu = copy.deepcopy(make(type="m.room.redaction", content={"reason": "spam"}, redacts="$target").pdu)
    pdu.update(
        {
            "unsigned": {"age": 1},
            "origin": "a.test",
            "membership": "join",
            "prev_state": [],
            "event_id": "$legacy",
            "age_ts": 5,
            "custom": "x",
            "state_key": "",
        }
    )
    redacted = redact(pdu, V10)
    assert set(redacted) == {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
        "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts", "membership",
    }  # fmt: skip
    assert redacted["content"] == {}
    assert "redacts" in pdu and "unsigned" in pdu  # input untouched


def test_redaction_is_a_deep_copy_and_idempotent():
    pdu = copy.deepcopy(make(type="m.room.power_levels", state_key="", content={"users": {"@a:a.test": 1}}).pdu)
    redacted = redact(pdu, V10)
    redacted["content"]["users"]["@a:a.test"] = 99
    assert pdu["content"]["users"]["@a:a.test"] == 1
    assert redact(redact(pdu, V10), V10) == redact(pdu, V10)
    assert redact({"type": "m.room.member", "content": "junk"}, V10)["content"] == {}


# -- build and verify ---------------------------------------------------------


def test_build_and_verify_round_trip():
    event = make(type="m.room.topic", state_key="", content={"topic": "t"}, unsigned={"age": 3})
    check_event_format(event.pdu, V10)
    verify_event(event.pdu, V10, lookup)
    assert event.is_state and event.state_key == "" and event.type == "m.room.topic"
    assert event.sender == "@alice:a.test" and event.room_id == "!room:a.test"
    assert event.depth == 5 and event.prev_events == ["$prev"] and event.auth_events == ["$create", "$pl", "$member"]
    assert event.content == {"topic": "t"} and event.redacts is None
    assert set(event.pdu["signatures"]) == {"a.test"}


def test_build_copies_content():
    content = {"body": {"nested": [1]}}
    event = make(content=content)
    content["body"]["nested"].append(2)
    assert event.content == {"body": {"nested": [1]}}
    verify_event(event.pdu, V10, lookup)


def test_to_client():
    msg = make()
    assert msg.to_client() == {
        "event_id": msg.event_id,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "hello"},
        "sender": "@alice:a.test",
        "origin_server_ts": 1_700_000_000_000,
        "room_id": "!room:a.test",
    }
    assert "unsigned" not in msg.to_client({})
    state = make(type="m.room.name", state_key="", content={"name": "n"})
    assert state.to_client({"age": 4})["state_key"] == "" and state.to_client({"age": 4})["unsigned"] == {"age": 4}
    red = make(type="m.room.redaction", content={}, redacts="$x")
    assert red.to_client()["redacts"] == "$x" and "state_key" not in red.to_client()


def test_verify_rejects_unknown_and_wrong_keys():
    event = make()
    with pytest.raises(SignatureError, match="no known"):
        verify_event(event.pdu, V10, lambda s, k: None)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_event(event.pdu, V10, lambda s, k: KEY_B.verify_key_bytes)
    unsigned_copy = copy.deepcopy(event.pdu)
    unsigned_copy["signatures"] = {"b.test": unsigned_copy["signatures"]["a.test"]}
    with pytest.raises(SignatureError, match="not signed by a.test"):
        verify_event(unsigned_copy, V10, lookup)


@pytest.mark.parametrize("field, value", [("type", "m.room.other"), ("depth", 6), ("prev_events", []),
                                          ("origin_server_ts", 2), ("hashes", {"sha256": "AAAA"})])
def test_verify_rejects_changes_to_signed_fields(field, value):
    pdu = copy.deepcopy(make().pdu)
    pdu[field] = value
    with pytest.raises(SignatureError) as info:
        verify_event(pdu, V10, lookup)
    assert type(info.value) is SignatureError  # not merely a hash mismatch


def test_content_change_or_redaction_is_a_content_hash_error():
    event = make()
    changed = copy.deepcopy(event.pdu)
    changed["content"]["body"] = "forged"
    with pytest.raises(ContentHashError):
        verify_event(changed, V10, lookup)
    # a redacted copy: signatures still good, hash does not match -> use redacted
    with pytest.raises(ContentHashError):
        verify_event(redact(event.pdu, V10), V10, lookup)
    # unsigned is covered by nothing
    extra = copy.deepcopy(event.pdu)
    extra["unsigned"] = {"anything": True}
    verify_event(extra, V10, lookup)


def test_restricted_join_needs_the_authorising_servers_signature():
    join = make(
        sender="@bob:b.test",
        server_name="b.test",
        signing_key=KEY_B,
        type="m.room.member",
        state_key="@bob:b.test",
        content={"membership": "join", "join_authorised_via_users_server": "@alice:a.test"},
    )
    with pytest.raises(SignatureError, match="a.test"):
        verify_event(join.pdu, V10, lookup)
    cosigned = add_signature(join.pdu, "a.test", KEY_A, V10)
    verify_event(cosigned, V10, lookup)
    assert compute_event_id(cosigned, V10) == join.event_id
    assert set(join.pdu["signatures"]) == {"b.test"}  # add_signature copies


def test_verify_ignores_unknown_algorithms_and_keys():
    pdu = copy.deepcopy(make().pdu)
    pdu["signatures"]["a.test"]["curve25519:x"] = "junk"
    pdu["signatures"]["a.test"]["ed25519:unknown"] = "junk"
    verify_event(pdu, V10, lookup)


# -- format -------------------------------------------------------------------


def _valid_pdu() -> dict:
    return copy.deepcopy(make(type="m.room.name", state_key="", content={"name": "n"}).pdu)


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


def _drop(key):
    return lambda p: p.pop(key)


MALFORMED = [
    ("missing room_id", _drop("room_id")),
    ("missing sender", _drop("sender")),
    ("missing origin_server_ts", _drop("origin_server_ts")),
    ("missing type", _drop("type")),
    ("missing content", _drop("content")),
    ("missing prev_events", _drop("prev_events")),
    ("missing auth_events", _drop("auth_events")),
    ("missing depth", _drop("depth")),
    ("missing hashes", _drop("hashes")),
    ("missing signatures", _drop("signatures")),
    ("room_id not str", _set("room_id", 5)),
    ("room_id no sigil", _set("room_id", "room:a.test")),
    ("room_id no server", _set("room_id", "!room")),
    ("room_id too long", _set("room_id", "!" + "r" * 250 + ":a.test")),
    ("sender no sigil", _set("sender", "alice:a.test")),
    ("sender too long", _set("sender", "@" + "é" * 127 + ":a.test")),  # 254 chars, 381 bytes
    ("type not str", _set("type", ["m.room.name"])),
    ("type too long", _set("type", "t" * 256)),
    ("state_key not str", _set("state_key", None)),
    ("state_key too long", _set("state_key", "s" * 256)),
    ("content not object", _set("content", "text")),
    ("content list", _set("content", [])),
    ("float in content", _set("content", {"name": "n", "size": 1.5})),
    ("integral float in content", _set("content", {"n": 2.0})),
    ("huge int in content", _set("content", {"n": 2**53})),
    ("depth float", _set("depth", 5.0)),
    ("depth bool", _set("depth", True)),
    ("depth negative", _set("depth", -1)),
    ("depth too big", _set("depth", 2**53)),
    ("origin_server_ts str", _set("origin_server_ts", "1")),
    ("origin_server_ts too big", _set("origin_server_ts", 2**63)),
    ("prev_events not list", _set("prev_events", "$a")),
    ("prev_events v1 pairs", _set("prev_events", [["$a:x", {"sha256": "x"}]])),
    ("prev_events no sigil", _set("prev_events", ["a"])),
    ("too many prev_events", _set("prev_events", [f"$e{i}" for i in range(21)])),
    ("too many auth_events", _set("auth_events", [f"$e{i}" for i in range(11)])),
    ("auth_events not strings", _set("auth_events", [1])),
    ("event id too long", _set("auth_events", ["$" + "e" * 255])),
    ("hashes without sha256", _set("hashes", {})),
    ("hashes sha256 not str", _set("hashes", {"sha256": 1})),
    ("signatures not maps", _set("signatures", {"a.test": "sig"})),
    ("signature not str", _set("signatures", {"a.test": {"ed25519:a": 1}})),
    ("unsigned not object", _set("unsigned", [])),
    ("redacts not str", _set("redacts", 7)),
    ("redacts no sigil", _set("redacts", "event")),
    ("origin not str", _set("origin", 1)),
    ("over 65536 bytes", lambda p: p["content"].__setitem__("name", "x" * 65536)),
    ("lone surrogate", _set("state_key", "\ud800")),
]


@pytest.mark.parametrize("mutate", [m for _, m in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_check_event_format_rejects(mutate):
    pdu = _valid_pdu()
    check_event_format(pdu, V10)
    mutate(pdu)
    with pytest.raises(EventFormatError):
        check_event_format(pdu, V10)


@pytest.mark.parametrize("pdu", [None, [], "pdu", 1])
def test_check_event_format_rejects_non_objects(pdu):
    with pytest.raises(EventFormatError):
        check_event_format(pdu, V10)


def test_check_event_format_limits_are_inclusive():
    pdu = _valid_pdu()
    pdu.update(
        {
            "prev_events": [f"$e{i}" for i in range(20)],
            "auth_events": [f"$a{i}" for i in range(10)],
            "state_key": "s" * 255,
            "type": "t" * 255,
            "depth": MAX_SAFE_INTEGER,
            "origin_server_ts": MIN_SAFE_INTEGER,
            "origin": "a.test",
        }
    )
    check_event_format(pdu, V10)
    pdu["content"] = {"name": ""}
    pdu["content"]["name"] = "x" * (65536 - len(encode_canonical_json(pdu)))
    assert len(encode_canonical_json(pdu)) == 65536
    check_event_format(pdu, V10)


@settings(max_examples=60, deadline=None)
@given(content=st.dictionaries(st.text(max_size=8), st.text(max_size=20) | st.integers(0, 10**6), max_size=5),
       redacts=st.none() | st.just("$target"))  # fmt: skip
def test_signing_later_gives_the_same_event_as_signing_at_once(content, redacts):
    now = make(content=content, redacts=redacts)
    later = make(content=content, redacts=redacts, sign_later=True)
    assert later.event_id == now.event_id and later.sign is not None  # the ID is final before the signature
    text = later.sign()
    assert later.pdu == now.pdu and text == now.canonical == encode_canonical_json(later.pdu)  # Ed25519 is deterministic
    verify_event(later.pdu, V10, lookup)


def test_signing_later_still_refuses_an_event_that_would_be_too_large_with_its_signature():
    limit = 65536 - len(make(content={"b": ""}).canonical)  # room left for the string
    event = make(content={"b": "x" * limit}, sign_later=True)
    assert event.sign is not None and len(event.sign()) == 65536
    with pytest.raises(EventFormatError, match="65536"):
        make(content={"b": "x" * (limit + 1)}, sign_later=True)


def test_build_event_refuses_to_make_a_malformed_event():
    with pytest.raises(EventFormatError):
        make(content={"f": 0.5})
    with pytest.raises(EventFormatError):
        make(prev_events=[f"$e{i}" for i in range(21)])
    with pytest.raises(EventFormatError):
        make(content={"big": "x" * 70000})
    for bad in ({"content": [1, 2]}, {"content": "text"}, {"type": ["m.room.message"]}, {"depth": 2**60},
                {"origin_server_ts": 1.5}, {"sender": "@\ud800:a.test"}, {"room_id": 7}):  # fmt: skip
        with pytest.raises(EventFormatError):
            make(**bad)


# -- property -------------------------------------------------------------------

_SAFE_INT = st.integers(min_value=MIN_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
_CONTENT = st.dictionaries(
    _TEXT,
    st.recursive(
        st.none() | st.booleans() | _SAFE_INT | _TEXT,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(_TEXT, c, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(content=_CONTENT, state_key=st.none() | _TEXT, event_type=st.sampled_from(
    ["m.room.message", "m.room.member", "m.room.power_levels", "m.room.create", "org.example"]))
def test_random_content_builds_a_valid_verifiable_event(content, state_key, event_type):
    event = make(content=content, state_key=state_key, type=event_type)
    check_event_format(event.pdu, V10)
    verify_event(event.pdu, V10, lookup)
    assert compute_event_id(copy.deepcopy(event.pdu), V10) == event.event_id
    assert compute_event_id(redact(event.pdu, V10), V10) == event.event_id
    assert make(content=content, state_key=state_key, type=event_type).event_id == event.event_id
    assert event.canonical == encode_canonical_json(event.pdu)  # what the store writes


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(st.characters(blacklist_categories=["Cs"])), min_size=3, max_size=3))
def test_the_signatures_member_is_written_as_the_canonical_encoder_would(names):
    server, key_id, signature = names  # any text: quotes, backslashes, control characters, non-ASCII
    expected = b'"signatures":' + encode_canonical_json({server: {key_id: signature}})
    assert _signatures_member(server, key_id, signature) == expected


_TRAPS = st.sampled_from(['origin_server_ts', 'type', 'state_key', ',"type":', ',"state_key":"x"',
                          ',"origin_server_ts":1', '"', '\\', 'hashes', 'signatures'])


@settings(max_examples=100, deadline=None)
@given(content=st.dictionaries(_TRAPS, _TRAPS | st.dictionaries(_TRAPS, _TRAPS, max_size=3), max_size=4),
       state_key=st.none() | _TRAPS, event_type=_TRAPS, redacts=st.none() | st.just("$target"))  # fmt: skip
def test_the_kept_canonical_json_is_exact_whatever_the_keys_and_strings(content, state_key, event_type, redacts):
    # build_event splices hashes and signatures into the hashed body's JSON: keys and strings that
    # look like the top-level members it looks for must not fool it.
    event = make(content=content, state_key=state_key, type=event_type, redacts=redacts)
    assert event.canonical == encode_canonical_json(event.pdu)
    assert event.event_id == compute_event_id(copy.deepcopy(event.pdu), V10)  # the redacted form was right
    verify_event(event.pdu, V10, lookup)


@settings(max_examples=100, deadline=None)
@given(content=_CONTENT, state_key=st.none() | _TEXT, event_type=st.sampled_from(
    ["m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility", "m.room.create",
     "m.room.aliases"]))  # fmt: skip
def test_redacted_forms_of_types_that_keep_content_keys_are_exact(content, state_key, event_type):
    keys = {"membership": "join", "users": {"@a:b": 1}, "join_rule": "public", "history_visibility": "shared",
            "creator": "@a:b", "aliases": ["#a:b"], "ban": 50}  # fmt: skip
    event = make(content={**content, **keys}, state_key=state_key, type=event_type)
    assert event.event_id == compute_event_id(copy.deepcopy(event.pdu), V10)
    verify_event(event.pdu, V10, lookup)
