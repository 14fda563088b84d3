"""Write room_version_vectors.json: PDUs of every room version hashed, signed and redacted by Synapse.

Not a test: run it by hand with the Python of a venv that has matrix-synapse
(the homeserver bench installs one in ~/.cache/lowband/synapse-venv):

    ~/.cache/lowband/synapse-venv/bin/python tests/data/make_room_version_vectors.py

For each room version 1-12 it writes a set of PDUs that touch every rule
the versions disagree on (what redaction keeps, event ID alphabets, v1-v2
event IDs and hash pairs, v12 create events and room IDs, v1-v5 floats and
big integers). Synapse's own functions fill in ``hashes`` and
``signatures`` (add_hashes_and_signatures) and give the expected event ID
(make_event_from_dict(...).event_id), reference hash
(compute_event_reference_hash) and redacted form (redact_event_dict).
tests/matrix/test_event_versions.py holds our code to them. Nothing here is
imported by the suite, which never needs Synapse.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import synapse
from signedjson.key import decode_signing_key_base64
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures, compute_event_reference_hash, redact_event_dict
from synapse.events import make_event_from_dict
from unpaddedbase64 import encode_base64

SEED = encode_base64(bytes(range(32)))  # the key tests/matrix/test_event_versions.py verifies with
KEY = decode_signing_key_base64("ed25519", "vectors", SEED)
ALICE, BOB = "@alice:a.test", "@bob:b.test"
V12_ROOM = "!" + "R" * 42 + "w"  # shaped like a v12 room ID (43 URL-safe base64 characters)


def ids(version: str, *names: str) -> list:
    """prev/auth events: v1-v2 ``[id, {"sha256": ...}]`` pairs, plain IDs after."""
    if version in ("1", "2"):
        return [[f"${n}:a.test", {"sha256": encode_base64(bytes([len(n)]) * 32)}] for n in names]
    return [f"${n}" + "A" * (43 - len(n)) for n in names]


def pdus(version: str) -> list[tuple[str, dict]]:
    v12 = version == "12"
    base = {
        "room_id": V12_ROOM if v12 else "!room:a.test",
        "sender": ALICE,
        "origin_server_ts": 1_700_000_000_000,
        "depth": 7,
        "prev_events": ids(version, "prev"),
        "auth_events": ids(version, "create", "pl", "member"),
        "unsigned": {"age": 5},
    }
    signed = {"mxid": BOB, "token": "tok", "signatures": {"id.test": {"ed25519:0": "c2lnbmF0dXJl"}}}
    redacts = "$target:a.test" if version in ("1", "2") else "$target" + "A" * 37
    out = [
        ("message", {**base, "type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"},
                     "origin": "a.test", "membership": "join", "prev_state": []}),
        ("member", {**base, "type": "m.room.member", "state_key": BOB, "content": {
            "membership": "join", "displayname": "Bob", "join_authorised_via_users_server": ALICE,
            "third_party_invite": {"display_name": "b...@example.org", "signed": signed}}}),
        ("member without signed", {**base, "type": "m.room.member", "state_key": BOB, "content": {
            "membership": "invite", "third_party_invite": {"display_name": "b..."}}}),
        ("join rules", {**base, "type": "m.room.join_rules", "state_key": "", "content": {
            "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!space:a.test"}],
            "extra": 1}}),
        ("power levels", {**base, "type": "m.room.power_levels", "state_key": "", "content": {
            "users": {ALICE: 100}, "users_default": 0, "events": {"m.room.name": 50}, "events_default": 0,
            "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "notifications": {"room": 50}, "extra": True}}),
        ("aliases", {**base, "type": "m.room.aliases", "state_key": "a.test", "content": {
            "aliases": ["#x:a.test"]}}),
        ("history visibility", {**base, "type": "m.room.history_visibility", "state_key": "", "content": {
            "history_visibility": "shared", "extra": "x"}}),
        ("redaction", {**base, "type": "m.room.redaction", "redacts": redacts, "content": {
            "reason": "spam", "redacts": redacts}}),
    ]
    create = {**base, "type": "m.room.create", "state_key": "", "depth": 1, "prev_events": [], "auth_events": [],
              "content": {"creator": ALICE, "room_version": version, "m.federate": True,
                          "predecessor": {"room_id": "!old:a.test"}, "additional_creators": [BOB]}}
    if v12:
        del create["room_id"]
    out.append(("create", create))
    if version in ("1", "2", "3", "4", "5"):
        out.append(("floats and big integers", {**base, "type": "m.room.power_levels", "state_key": "", "content": {
            "users": {ALICE: 100, BOB: 50.5}, "ban": 5.114698e4, "kick": 2**60, "redact": "50", "x": 1e16}}))
    if version in ("1", "2"):
        for index, (name, pdu) in enumerate(out):
            pdu["event_id"] = f"${name.replace(' ', '_')}{index}:a.test"
    return out


def main() -> None:
    cases = []
    for version in [str(n) for n in range(1, 13)]:
        room_version = KNOWN_ROOM_VERSIONS[version]
        for name, pdu in pdus(version):
            pdu = copy.deepcopy(pdu)
            add_hashes_and_signatures(room_version, pdu, "a.test", KEY)
            event = make_event_from_dict(copy.deepcopy(pdu), room_version)
            _, reference = compute_event_reference_hash(event)
            cases.append({
                "version": version, "name": name, "pdu": pdu, "event_id": event.event_id,
                "reference_hash": encode_base64(reference),
                "redacted": redact_event_dict(room_version, copy.deepcopy(pdu)),
            })
    head = {
        "source": f"Synapse {synapse.__version__}: add_hashes_and_signatures, make_event_from_dict(...).event_id, "
                  "compute_event_reference_hash, redact_event_dict (tests/data/make_room_version_vectors.py)",
        "signing_key": {"server": "a.test", "key_id": "ed25519:vectors", "seed_base64": SEED},
    }
    lines = [json.dumps(case, ensure_ascii=False, sort_keys=True) for case in cases]  # one case a line: diffable
    text = json.dumps(head, sort_keys=True)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("room_version_vectors.json")
    target.write_text(text, encoding="utf-8")
    print(f"{len(cases)} cases -> {target}")


if __name__ == "__main__":
    main()
