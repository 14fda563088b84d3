"""Events of every room version: IDs, hashes, redaction, format, signatures, building.

Two independent sources hold our code:

* tests/data/room_version_vectors.json: PDUs of versions 1-12 that a real
  Synapse (1.163.2, its own functions: see tests/data/make_room_version_vectors.py)
  hashed, signed, redacted and gave event IDs to;
* hand computations below: the canonical JSON of a redacted event written
  out by hand from the spec's rules, hashed with hashlib and base64-encoded
  with the standard library, for a v1, a v3, a v4+ and a v11 event.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import pytest
from conftest import DATA, json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.gateway.matrix.canonical_json import encode_canonical_json
from lowband.gateway.matrix.event_format import EventFormatError
from lowband.gateway.matrix.events import (
    ContentHashError,
    Event,
    add_signature,
    build_event,
    check_event_format,
    compute_content_hash,
    compute_event_id,
    content_hash_matches,
    redact,
    reference_hash,
    verify_event,
)
from lowband.gateway.matrix.room_versions import KNOWN, V1, V2, V3, V4, V5, V6, V8, V9, V10, V11, V12, RoomVersion
from lowband.gateway.matrix.signing import ServerKey, SignatureError, SigningKey, decode_base64, encode_base64

VECTORS = json.loads((DATA / "room_version_vectors.json").read_text(encoding="utf-8"))
CASES = VECTORS["cases"]
VERSIONS: dict[str, RoomVersion] = {"1": V1, **KNOWN}
SYNAPSE_KEY = SigningKey.from_seed(decode_base64(VECTORS["signing_key"]["seed_base64"]), "vectors")
KEY_A = SigningKey.from_seed(bytes(range(32)), "a_test")
KEY_B = SigningKey.from_seed(bytes(range(1, 33)), "b_test")


def synapse_key(server: str, key_id: str) -> bytes | None:
    return SYNAPSE_KEY.verify_key_bytes if (server, key_id) == ("a.test", "ed25519:vectors") else None


def lookup(server: str, key_id: str) -> bytes | None:
    return {("a.test", KEY_A.key_id): KEY_A.verify_key_bytes, ("b.test", KEY_B.key_id): KEY_B.verify_key_bytes}.get(
        (server, key_id))


def _id(case: dict) -> str:
    return f"v{case['version']} {case['name']}"


# -- against Synapse ----------------------------------------------------------------


def test_the_vectors_cover_every_version_and_rule():
    assert {c["version"] for c in CASES} == set(VERSIONS)
    assert {c["name"] for c in CASES} >= {"message", "member", "member without signed", "join rules", "power levels",
                                          "aliases", "history visibility", "redaction", "create",
                                          "floats and big integers"}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_event_id_and_reference_hash_as_synapse_computes_them(case):
    version = VERSIONS[case["version"]]
    pdu = case["pdu"]
    assert compute_event_id(pdu, version) == case["event_id"]
    assert encode_base64(reference_hash(pdu, version)) == case["reference_hash"]
    assert Event.from_pdu(copy.deepcopy(pdu), version).event_id == case["event_id"]


def _without_unsigned(pdu: dict) -> dict:
    return {k: v for k, v in pdu.items() if k != "unsigned"}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_redaction_as_synapse_does_it(case):
    version = VERSIONS[case["version"]]
    # Synapse leaves an empty `unsigned` behind (its own bookkeeping); the spec's list drops it,
    # and neither hashes nor signatures cover it.
    assert case["redacted"]["unsigned"] == {}
    assert redact(case["pdu"], version) == _without_unsigned(case["redacted"])
    # the redacted event keeps its ID and its signature, and fails only the content hash
    assert compute_event_id(case["redacted"], version) == case["event_id"]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_synapse_hashes_and_signatures_verify(case):
    version = VERSIONS[case["version"]]
    pdu = case["pdu"]
    assert compute_content_hash(pdu) == pdu["hashes"]["sha256"] and content_hash_matches(pdu)
    check_event_format(pdu, version)
    verify_event(pdu, version, synapse_key)
    redacted = _without_unsigned(case["redacted"])
    if redacted == _without_unsigned(pdu):  # nothing to redact (v11+ create events, v1-v5 aliases)
        verify_event(redacted, version, synapse_key)
    else:
        with pytest.raises(ContentHashError):
            verify_event(redacted, version, synapse_key)


def test_event_ids_follow_each_versions_form():
    for case in CASES:
        version = VERSIONS[case["version"]]
        pattern = {"v1": r"\$[^:]+:a\.test", "v3": r"\$[A-Za-z0-9+/]{43}", "v4": r"\$[A-Za-z0-9_-]{43}"}
        assert re.fullmatch(pattern[version.event_id_format], case["event_id"]), _id(case)


# -- by hand ------------------------------------------------------------------------


def _sha256_b64(text: str, urlsafe: bool) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    encoded = base64.urlsafe_b64encode(digest) if urlsafe else base64.b64encode(digest)
    return encoded.decode().rstrip("=")


def test_reference_hashes_by_hand():
    """Canonical JSON of the redacted event written out from the rules, hashed with hashlib."""
    pdu = {
        "auth_events": ["$a"], "content": {"body": "x", "msgtype": "m.text"}, "depth": 3,
        "hashes": {"sha256": "h"}, "origin": "a.test", "origin_server_ts": 5, "prev_events": ["$p"],
        "room_id": "!r:a.test", "sender": "@u:a.test", "signatures": {"a.test": {"ed25519:1": "s"}},
        "type": "m.room.message", "unsigned": {"age": 1},
    }  # fmt: skip
    # v3-v10: content emptied; origin kept; signatures and unsigned dropped; keys sorted, no spaces.
    v10_text = ('{"auth_events":["$a"],"content":{},"depth":3,"hashes":{"sha256":"h"},"origin":"a.test",'
                '"origin_server_ts":5,"prev_events":["$p"],"room_id":"!r:a.test","sender":"@u:a.test",'
                '"type":"m.room.message"}')  # fmt: skip
    assert compute_event_id(pdu, V10) == "$" + _sha256_b64(v10_text, urlsafe=True)
    assert compute_event_id(pdu, V4) == compute_event_id(pdu, V10)
    assert compute_event_id(pdu, V3) == "$" + _sha256_b64(v10_text, urlsafe=False)
    # v11: origin goes too (MSC3989)
    assert compute_event_id(pdu, V11) == "$" + _sha256_b64(v10_text.replace('"origin":"a.test",', ""), urlsafe=True)
    # v1-v2: the ID is the PDU's own; the reference hash (what [id, hash] pairs carry) covers the event_id
    old = {**pdu, "event_id": "$e:a.test", "auth_events": [["$a:a.test", {"sha256": "x"}]], "prev_events": []}
    v1_text = ('{"auth_events":[["$a:a.test",{"sha256":"x"}]],"content":{},"depth":3,"event_id":"$e:a.test",'
               '"hashes":{"sha256":"h"},"origin":"a.test","origin_server_ts":5,"prev_events":[],'
               '"room_id":"!r:a.test","sender":"@u:a.test","type":"m.room.message"}')  # fmt: skip
    assert compute_event_id(old, V2) == "$e:a.test"
    assert encode_base64(reference_hash(old, V1)) == _sha256_b64(v1_text, urlsafe=False)


def test_redaction_differences_by_hand():
    """The content rules of each version, one difference at a time (module docstring of redaction.py)."""
    member = {"type": "m.room.member", "content": {
        "membership": "join", "join_authorised_via_users_server": "@a:a.test", "displayname": "A",
        "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}}}  # fmt: skip
    assert redact(member, V8)["content"] == {"membership": "join"}
    assert redact(member, V9)["content"] == {"membership": "join", "join_authorised_via_users_server": "@a:a.test"}
    assert redact(member, V11)["content"] == {"membership": "join", "join_authorised_via_users_server": "@a:a.test",
                                              "third_party_invite": {"signed": {"token": "t"}}}  # fmt: skip
    rules = {"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [], "x": 1}}
    assert redact(rules, KNOWN["7"])["content"] == {"join_rule": "restricted"}
    assert redact(rules, V8)["content"] == {"join_rule": "restricted", "allow": []}
    aliases = {"type": "m.room.aliases", "content": {"aliases": ["#a:a.test"]}}
    assert redact(aliases, V5)["content"] == {"aliases": ["#a:a.test"]} and redact(aliases, V6)["content"] == {}
    levels = {"type": "m.room.power_levels", "content": {"invite": 0, "ban": 50, "notifications": {}}}
    assert redact(levels, V10)["content"] == {"ban": 50} and redact(levels, V11)["content"] == {"ban": 50, "invite": 0}
    create = {"type": "m.room.create", "content": {"creator": "@a:a.test", "room_version": "11", "m.federate": False}}
    assert redact(create, V10)["content"] == {"creator": "@a:a.test"}
    assert redact(create, V11)["content"] == create["content"] and redact(create, V12)["content"] == create["content"]
    red = {"type": "m.room.redaction", "redacts": "$t", "content": {"redacts": "$t", "reason": "r"}}
    assert redact(red, V10) == {"type": "m.room.redaction", "content": {}}
    assert redact(red, V11) == {"type": "m.room.redaction", "content": {"redacts": "$t"}}
    top = {"origin": "a", "membership": "join", "prev_state": [], "type": "x", "content": {}}
    assert set(redact(top, V10)) == set(top) and set(redact(top, V11)) == {"type", "content"}


# -- format per version ------------------------------------------------------------


def _vector(version: str, name: str) -> dict:
    return copy.deepcopy(next(c["pdu"] for c in CASES if c["version"] == version and c["name"] == name))


@pytest.mark.parametrize("version, name, edit, needle", [
    ("2", "message", lambda p: p.pop("event_id"), "event_id"),
    ("2", "message", lambda p: p.__setitem__("event_id", "$noserver"), "event_id"),
    ("2", "message", lambda p: p.__setitem__("prev_events", ["$plain:a.test"]), "pairs"),
    ("2", "message", lambda p: p.__setitem__("auth_events", [["$a:a.test"]]), "pairs"),
    ("10", "message", lambda p: p.__setitem__("prev_events", [["$a:a.test", {"sha256": "x"}]]), "strings"),
    ("5", "message", lambda p: p.__setitem__("depth", 2**63), "depth"),
    ("6", "message", lambda p: p.__setitem__("depth", 2**53), "depth"),
    ("6", "message", lambda p: p["content"].__setitem__("f", 1.5), "canonical"),
    ("12", "message", lambda p: p.__setitem__("room_id", "!room:a.test"), "room_id"),
    ("12", "message", lambda p: p.pop("room_id"), "room_id"),
    ("11", "message", lambda p: p.pop("room_id"), "room_id"),
    ("10", "redaction", lambda p: p.__setitem__("redacts", 5), "redacts"),
])  # fmt: skip
def test_format_per_version_refuses(version, name, edit, needle):
    pdu = _vector(version, name)
    check_event_format(pdu, VERSIONS[version])
    edit(pdu)
    with pytest.raises(EventFormatError, match=needle):
        check_event_format(pdu, VERSIONS[version])


def test_format_per_version_accepts():
    check_event_format({**_vector("5", "message"), "depth": 2**63 - 1}, V5)
    check_event_format(_vector("5", "floats and big integers"), V5)
    with pytest.raises(EventFormatError, match="canonical"):  # the same content in a v6 room
        check_event_format({**_vector("5", "floats and big integers"), "room_id": "!room:a.test"}, V6)
    # v11+ gives top-level redacts and origin no meaning: their type is not checked
    check_event_format({**_vector("11", "redaction"), "redacts": 5, "origin": []}, V11)
    # a v12 create event has no room_id (one it carries anyway is for the auth rules to refuse)
    create = _vector("12", "create")
    check_event_format(create, V12)
    check_event_format({**create, "room_id": "!x:a.test"}, V12)


# -- key validity (v5+) -------------------------------------------------------------


def test_key_validity_is_enforced_from_v5():
    key = SYNAPSE_KEY.verify_key_bytes
    for version, enforced in ((V4, False), (V5, True), (V12, True)):
        pdu = _vector(version.identifier, "message")
        made = pdu["origin_server_ts"]
        verify_event(pdu, version, lambda s, k, until=made: ServerKey(key, valid_until_ts=until))  # valid then
        verify_event(pdu, version, lambda s, k: ServerKey(key))  # no known end

        def expired(server: str, key_id: str, until: int = made - 1) -> ServerKey:
            return ServerKey(key, valid_until_ts=until)

        if enforced:
            with pytest.raises(SignatureError, match="no known, valid"):
                verify_event(pdu, version, expired)
        else:
            verify_event(pdu, version, expired)


def test_v1_v2_events_need_the_event_id_servers_signature():
    # made (and named) by b.test for a user of a.test: both servers must sign
    event = _build(V2, server_name="b.test", signing_key=KEY_B)
    assert event.event_id.endswith(":b.test") and event.sender == "@alice:a.test"
    with pytest.raises(SignatureError, match="not signed by a.test"):
        verify_event(event.pdu, V2, lookup)
    both = add_signature(event.pdu, "a.test", KEY_A, V2)
    verify_event(both, V2, lookup)
    only_sender = {**both, "signatures": {"a.test": both["signatures"]["a.test"]}}
    with pytest.raises(SignatureError, match="not signed by b.test"):
        verify_event(only_sender, V2, lookup)
    verify_event(only_sender, V3, lookup)  # (v3+ asks only the sender's server; the PDU is no v3 event otherwise)


def test_restricted_join_cosignature_is_asked_from_v8():
    pdu = _vector("8", "member")
    assert pdu["content"]["join_authorised_via_users_server"] == "@alice:a.test"
    pdu["content"]["join_authorised_via_users_server"] = "@mod:b.test"
    # (the content no longer matches the hash; the signature check comes first)
    with pytest.raises(SignatureError) as info:
        verify_event(pdu, V8, synapse_key)
    assert type(info.value) is SignatureError and "b.test" in str(info.value)
    with pytest.raises(ContentHashError):  # v7: the key means nothing, only a.test must sign
        verify_event(pdu, KNOWN["7"], synapse_key)


# -- building every version -----------------------------------------------------------


def _build(version: RoomVersion, **overrides) -> Event:
    args = {
        "room_id": "!" + "R" * 43 if version.room_id_is_create_hash else "!room:a.test",
        "sender": "@alice:a.test", "type": "m.room.message", "content": {"msgtype": "m.text", "body": "hello"},
        "prev_events": ["$prev:a.test"], "auth_events": ["$create:a.test", "$pl:a.test"], "depth": 5,
        "origin_server_ts": 1_700_000_000_000, "server_name": "a.test", "signing_key": KEY_A, "room_version": version,
        "event_hashes": {"$prev:a.test": "AAAA", "$create:a.test": "BBBB", "$pl:a.test": "CCCC"},
    }  # fmt: skip
    args.update(overrides)
    return build_event(**args)


@pytest.mark.parametrize("version", list(KNOWN.values()), ids=lambda v: f"v{v.identifier}")
def test_built_events_of_every_version_check_out(version):
    for event in (_build(version), _build(version, type="m.room.redaction", content={"reason": "r"}, redacts="$t"),
                  _build(version, type="m.room.topic", state_key="", content={"topic": "t"}, unsigned={"age": 1})):
        check_event_format(event.pdu, version)
        verify_event(event.pdu, version, lookup)
        assert compute_event_id(copy.deepcopy(event.pdu), version) == event.event_id
        assert event.canonical == encode_canonical_json(event.pdu)
        assert event.prev_events == ["$prev:a.test"] and event.auth_events == ["$create:a.test", "$pl:a.test"]
    redaction = _build(version, type="m.room.redaction", content={"reason": "r"}, redacts="$t")
    assert redaction.redacts == "$t"
    assert ("redacts" in redaction.content) is version.redacts_in_content
    assert ("redacts" in redaction.pdu) is not version.redacts_in_content
    assert redaction.to_client()["redacts"] == "$t" and redaction.to_client()["content"]["redacts"] == "$t"
    if version.events_carry_id:
        assert re.fullmatch(r"\$[A-Za-z0-9_-]{16}:a\.test", redaction.event_id)
        assert redaction.pdu["prev_events"] == [["$prev:a.test", {"sha256": "AAAA"}]]


def test_v12_create_event_names_the_room():
    create = _build(V12, room_id=None, type="m.room.create", state_key="", content={"room_version": "12"},
                    prev_events=[], auth_events=[])  # fmt: skip
    assert "room_id" not in create.pdu
    assert create.room_id == "!" + create.event_id[1:]
    assert create.to_client()["room_id"] == create.room_id
    check_event_format(create.pdu, V12)
    verify_event(create.pdu, V12, lookup)
    with pytest.raises(EventFormatError, match="no room_id"):
        _build(V12, type="m.room.create", state_key="", content={"room_version": "12"}, prev_events=[],
               auth_events=[])  # fmt: skip
    with pytest.raises(EventFormatError, match="room_id is required"):
        _build(V11, room_id=None, type="m.room.create", state_key="", content={}, prev_events=[], auth_events=[])
    with pytest.raises(EventFormatError, match="reference hash"):
        _build(V2, event_hashes={})


@settings(max_examples=40, deadline=None)
@given(version=st.sampled_from(list(KNOWN.values())),
       event_type=st.sampled_from(["m.room.message", "m.room.member", "m.room.create", "m.room.power_levels",
                                   "m.room.redaction", "m.room.join_rules"]),
       content=st.dictionaries(st.sampled_from(["membership", "creator", "users", "redacts", "allow", "invite", "x"]),
                               st.text(max_size=5) | st.integers(0, 100), max_size=4),
       redacts=st.none() | st.just("$t"))  # fmt: skip
def test_spliced_encoding_agrees_with_the_plain_one_in_every_version(version, event_type, content, redacts):
    names_room = version.room_id_is_create_hash and event_type == "m.room.create"
    state_key = "" if event_type != "m.room.message" else None
    event = _build(version, type=event_type, content=content, redacts=redacts, state_key=state_key,
                   **({"room_id": None} if names_room else {}))  # fmt: skip
    assert event.canonical == encode_canonical_json(event.pdu)
    assert event.event_id == compute_event_id(copy.deepcopy(event.pdu), version)
    verify_event(event.pdu, version, lookup)


def test_room_ids_of_every_version():
    from lowband.gateway.matrix.identifiers import (
        create_event_id_of_room,
        is_hash_room_id,
        is_room_id,
        room_id_of_create_event,
    )

    v12 = "!" + "a-_B" * 10 + "xyz"
    assert is_room_id("!abc:a.test") and is_room_id("!abc:a.test:8448") and is_room_id(v12)
    assert is_hash_room_id(v12) and not is_hash_room_id("!abc:a.test") and not is_hash_room_id(v12 + "A")
    for bad in ("abc:a.test", "!abc", "!abc:", "!" + "a" * 44, "!" + "a" * 250 + ":a.test", 7, None):
        assert not is_room_id(bad), bad
    assert room_id_of_create_event("$" + v12[1:]) == v12 and create_event_id_of_room(v12) == "$" + v12[1:]


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(list(VERSIONS.values())),
       key=st.sampled_from(["room_id", "sender", "type", "state_key", "content", "prev_events", "auth_events", "depth",
                            "hashes", "signatures", "unsigned", "redacts", "event_id", "origin_server_ts", "origin"]),
       value=json_values(12))  # fmt: skip
def test_malformed_pdus_give_one_documented_error(version, key, value):
    # A peer's PDU with any one field replaced: the format check refuses it with EventFormatError, or
    # everything downstream works on it and refuses only with SignatureError (ContentHashError).
    pdu = _vector(version.identifier, "message")
    pdu[key] = value
    try:
        check_event_format(pdu, version)
    except EventFormatError:
        return
    event = Event.from_pdu(pdu, version)
    assert redact(pdu, version)["type"] == pdu["type"]
    assert isinstance(event.to_client(), dict) and event.room_id.startswith("!")
    assert all(isinstance(i, str) for i in event.prev_events + event.auth_events)
    try:
        verify_event(pdu, version, synapse_key)
    except SignatureError:
        pass
