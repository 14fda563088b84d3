"""Commands typed into a room for a device or a sensor: ``!NAME text``.

Every edge that takes commands from rooms (device links, BLE sensors) reads
them the same way: a ``m.room.message`` whose body is ``!`` + the name +
a space + a non-empty text, from a member whose power level reaches the
room's ``org.lowband.command`` level (in ``m.room.power_levels`` ``events``,
default 50, the level of a moderator). The edge decides what the text
becomes (a compact text message for a link device, bytes written to a GATT
characteristic for a BLE sensor).
"""

from __future__ import annotations

from typing import Any

#: the key in ``m.room.power_levels`` ``events`` naming the level a command needs
COMMAND_LEVEL_KEY = "org.lowband.command"
DEFAULT_COMMAND_LEVEL = 50


def parse_command(body: Any, prefix: str = "") -> tuple[str, str] | None:
    """``!NAME text`` → (NAME without ``prefix``, the text stripped); None for any other body or an empty text.

    ``prefix`` is the localpart prefix of the edge's users (``dev.``, ``ble_``),
    so ``!dev.board1 report`` and ``!board1 report`` name the same device.
    """
    if not isinstance(body, str) or not body.startswith("!"):
        return None
    name, _, text = body[1:].partition(" ")
    text = text.strip()
    if not name or not text:
        return None
    return name.removeprefix(prefix), text


def command_level(rooms: Any, room_id: str) -> int:
    """The power level a command needs in ``room_id`` (an integer in the power levels, else the default)."""
    levels = rooms.state_event(room_id, "m.room.power_levels")
    if levels is None:
        return DEFAULT_COMMAND_LEVEL
    value = (levels.content.get("events") or {}).get(COMMAND_LEVEL_KEY, DEFAULT_COMMAND_LEVEL)
    return value if isinstance(value, int) else DEFAULT_COMMAND_LEVEL


def may_command(rooms: Any, room_id: str, sender: str) -> tuple[bool, int]:
    """Whether ``sender`` may command in ``room_id``, and the level needed (for the refusal's wording)."""
    needed = command_level(rooms, room_id)
    return rooms.power_level(room_id, sender) >= needed, needed


__all__ = ["COMMAND_LEVEL_KEY", "DEFAULT_COMMAND_LEVEL", "command_level", "may_command", "parse_command"]
