"""The resident side's room-version rule for knocks, whatever versions the asking server offers."""

from __future__ import annotations

import asyncio

import pytest
from memory_dag import MemoryDag

from lowband.gateway.federation.membership import Memberships
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.signing import SigningKey

ROOM = "!old:a.example"
BOB = "@bob:b.example"


class Version6Dag(MemoryDag):
    def room_version(self, room_id):
        return room_versions.V6 if room_id in self.rooms else None


def memberships() -> Memberships:
    dag = Version6Dag()
    dag.rooms[ROOM] = {"state": {}, "extremities": []}
    return Memberships("a.example", SigningKey.generate(), None, None, dag, lambda: 0)


def test_a_version_6_room_refuses_make_knock_even_from_a_server_that_offers_version_6():
    with pytest.raises(MatrixError) as refused:
        memberships().make_template("b.example", ROOM, BOB, "knock", list(room_versions.KNOWN))
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")
    assert "version 7" in refused.value.message
    # a server that does not offer the room's version hears that first, as for joins
    with pytest.raises(MatrixError) as refused:
        memberships().make_template("b.example", ROOM, BOB, "knock", ["7", "10"])
    assert (refused.value.status, refused.value.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")


def test_a_version_6_room_refuses_send_knock_before_looking_at_the_event():
    with pytest.raises(MatrixError) as refused:
        asyncio.run(memberships().accept("b.example", ROOM, "$k", {"not": "an event"}, "knock"))
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")
