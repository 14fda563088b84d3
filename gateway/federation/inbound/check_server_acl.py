"""Before the checks: the room's server ACL must allow the server that sent a PDU, else the PDU is ignored.

The spec applies ``m.room.server_acl`` to every PDU of a ``/send`` on its
own: a PDU for a room whose current ACL denies the sending server (the
transaction's origin, whoever signed the event) is not processed, and its
entry in the answer says so. The ACL judges the server that talks to us,
not the event's author: an allowed server's event relayed by a denied one
is refused too.
"""

from __future__ import annotations

from lowband.gateway.federation.inbound.dag import RoomDag
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.matrix.server_acl import server_allowed


def origin_allowed(origin: str, room_id: str, dag: RoomDag) -> bool:
    """Whether the current ``m.room.server_acl`` of ``room_id`` allows ``origin`` (no ACL: yes)."""
    event_id = dag.current_state(room_id).get(("m.room.server_acl", ""))
    known = dag.known(event_id) if event_id is not None else None
    return server_allowed(known.event.content if known is not None else None, origin)


def check_server_acl(origin: str, room_id: str, dag: RoomDag) -> None:
    """PduDropped when the room's server ACL denies ``origin``."""
    if not origin_allowed(origin, room_id, dag):
        raise PduDropped(f"the room's server ACL denies {origin[:100]}")
