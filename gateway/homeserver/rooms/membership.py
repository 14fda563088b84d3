"""Membership: join, invite, leave, kick and ban as local users, through the sending path.

A membership change is an ``m.room.member`` event like any other (the auth
rules decide who may do what); this module fills in what the event needs:
the joining user's profile, and for a restricted room a local member who
vouches for the join (``join_authorised_via_users_server``).
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.homeserver.rooms.lookups import RoomLookups
from lowband.gateway.homeserver.rooms.sending import EventSender, Sent
from lowband.gateway.matrix import auth_rules
from lowband.gateway.matrix.errors import bad_json
from lowband.gateway.store.interfaces import Store


class MembershipChanges:
    """Sends membership events as local users."""

    def __init__(self, store: Store, lookups: RoomLookups, sender: EventSender, server_name: str) -> None:
        self.store = store
        self.lookups = lookups
        self.sender = sender
        self.server_name = server_name

    async def set_membership(
        self, sender: str, room_id: str, target: str, membership: str, reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Sent:  # fmt: skip
        """Send a membership event (join, invite, leave, ban; leave on another user is a kick)."""
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            content.update(self.lookups.profile(target))
            join_rule = self.lookups.state_content(self.lookups.current_state(room_id), "m.room.join_rules") or {}
            if join_rule.get("join_rule") in ("restricted", "knock_restricted"):
                authoriser = self._join_authoriser(room_id, target, join_rule.get("allow"))
                if authoriser is not None:
                    content["join_authorised_via_users_server"] = authoriser
        if reason is not None:
            if not isinstance(reason, str):
                raise bad_json("'reason' must be a string")
            content["reason"] = reason
        if extra:
            content.update(extra)
        return await self.sender.send(sender, room_id, "m.room.member", content, state_key=target)

    def _join_authoriser(self, room_id: str, target: str, allow: Any) -> str | None:
        """A local member who may vouch for ``target`` joining a restricted room.

        Only when ``target`` is joined to a room the join rules allow;
        otherwise None, and the auth rules refuse the join unless ``target``
        was invited.
        """
        allowed = [
            entry.get("room_id") for entry in (allow if isinstance(allow, list) else [])
            if isinstance(entry, dict) and entry.get("type") == "m.room_membership"
        ]  # fmt: skip
        if not any(isinstance(r, str) and self.store.membership(r, target) == "join" for r in allowed):
            return None
        levels = self.lookups.state_event(room_id, "m.room.power_levels")
        needed = auth_rules.action_power_level(levels.content if levels else None, "invite")
        for user in self.lookups.joined_members(room_id):
            if user.endswith(":" + self.server_name) and self.lookups.power_level(room_id, user) >= needed:
                return user
        return None
