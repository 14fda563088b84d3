"""Room version flags against the spec, version by version.

The table below is written from the room version pages of the spec
(content/rooms/v1.md ... v12.md in matrix-org/matrix-spec, v1.16): each row
names the first version with the behaviour and the page that says so. It is
kept apart from room_versions.py on purpose: a flag set on the wrong version
there disagrees with the table here.
"""

from __future__ import annotations

import dataclasses

import pytest

from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.room_versions import (
    DEFAULT,
    EVENT_ID_V1,
    EVENT_ID_V3,
    EVENT_ID_V4,
    KNOWN,
    V1,
    UnsupportedRoomVersion,
    get,
    of_create_content,
)

ALL = (V1, *KNOWN.values())

# flag -> (first version with it, where the spec says so); the flag holds from there on.
FIRST = {
    "enforce_key_validity": ("5", "v5 'Signing key validity period'"),
    "strict_canonical_json": ("6", "v6 'Canonical JSON' and event format (no floats, depth limit)"),
    "limit_notifications_power_levels": ("6", "v6 auth rules 9.4/9.5 changed-in v6: notifications"),
    "knock": ("7", "v7 'knock' membership added, rule 4.3.4 and 4.7"),
    "restricted": ("8", "v8 rules 4.2 and 4.3.5; v8 redaction keeps join_rules 'allow'"),
    "redaction_keeps_authorising_user": ("9", "v9 redaction keeps join_authorised_via_users_server"),
    "knock_restricted": ("10", "v10 rule 4.3.5 and 4.7.1 changed-in v10"),
    "integer_power_levels": ("10", "v10 'Values in m.room.power_levels events must be integers'"),
    "msc2176_redaction": ("11", "v11 redactions (MSC2176, MSC3821, MSC3989)"),
    "implicit_room_creator": ("11", "v11 'Remove the creator property of m.room.create events'"),
    "redacts_in_content": ("11", "v11 'Moving the redacts property ... to a content property'"),
    "room_id_is_create_hash": ("12", "v12 rule 1.2, rule 2 and the event format (MSC4291)"),
    "privileged_creators": ("12", "v12 'room creators' note and rule 10.4 (MSC4289)"),
}
# flags that a later version turned off: (last version with it, where)
LAST = {
    "special_case_aliases_auth": ("5", "v6 'Rule 4, which related specifically to m.room.aliases, is removed'"),
}
EVENT_ID = {"1": EVENT_ID_V1, "2": EVENT_ID_V1, "3": EVENT_ID_V3}  # v4+: URL-safe (v4 'Event IDs')
STATE_RES = {"1": "v1", "12": "v2.1"}  # v2-v11: "v2" (v2 page; v12 'State resolution' changed-in v12)


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_flags_follow_the_spec(version):
    n = int(version.identifier)
    for flag, (first, _where) in FIRST.items():
        assert getattr(version, flag) is (n >= int(first)), flag
    for flag, (last, _where) in LAST.items():
        assert getattr(version, flag) is (n <= int(last)), flag
    assert version.event_id_format == EVENT_ID.get(version.identifier, EVENT_ID_V4)
    assert version.state_res == STATE_RES.get(version.identifier, "v2")
    assert version.events_carry_id is (n <= 2)
    assert version.max_depth == (2**53 - 1 if n >= 6 else 2**63 - 1)  # pdu_v1/v3 vs depth_v6


def test_every_flag_is_in_the_table():
    flags = {f.name for f in dataclasses.fields(room_versions.RoomVersion)} - {"identifier", "event_id_format",
                                                                               "state_res"}  # fmt: skip
    assert flags == FIRST.keys() | LAST.keys()


def test_known_versions_and_lookup():
    assert list(KNOWN) == [str(n) for n in range(2, 13)]  # v1 needs state resolution v1: refused
    assert get("12") is KNOWN["12"] and DEFAULT is KNOWN["10"]
    for bad in ("1", "13", "org.matrix.hydra.11", 12, None):
        with pytest.raises(UnsupportedRoomVersion):
            get(bad)
    # the create event names its room's version; none named means version 1
    assert of_create_content({"room_version": "11"}) is KNOWN["11"]
    assert of_create_content({}) is V1
    assert of_create_content({"room_version": "99"}) is None and of_create_content({"room_version": 10}) is None
