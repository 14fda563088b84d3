"""Rooms: building, authorising and persisting local events, a module per concern.

* :mod:`.lookups` — each room's head, the events it points at, questions
  about its state (membership, power levels), with their caches;
* :mod:`.sending` — the batch send path: auth events selection, the auth
  check, idempotent transaction IDs, one write per batch;
* :mod:`.creation` — /createRoom: presets and the initial state;
* :mod:`.membership` — join, invite, leave, kick, ban;
* :mod:`.upgrade` — /upgrade: a new room of another version replaces an old one;
* :mod:`.service` — :class:`RoomService`, the one object the rest of the
  gateway holds.

The names callers use are importable from this package; they are listed in
``__all__`` so the package itself is the public surface, not its modules.
"""

from lowband.gateway.homeserver.rooms.creation import PRESETS, default_power_levels
from lowband.gateway.homeserver.rooms.lookups import RoomHead
from lowband.gateway.homeserver.rooms.sending import SendRequest, Sent
from lowband.gateway.homeserver.rooms.service import RoomService

__all__ = ["PRESETS", "RoomHead", "RoomService", "SendRequest", "Sent", "default_power_levels"]
