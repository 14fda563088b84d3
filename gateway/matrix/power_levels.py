"""Power levels and room creators of every room version, as pure functions.

Rules (server-server API "Definitions"; room versions spec, "Authorisation
rules" and "Deprecated event content schemas"):

* a level in an *accepted* power levels event is an integer; v1–v9 also
  accept an integer written as a string (``" +100 "``: optional sign,
  leading zeroes and surrounding whitespace), v1–v5 a float (truncated
  toward zero). An accepted event of a later version never holds those
  forms (the auth rules refuse them), so reading is lenient for every
  version and only :func:`valid_level` asks the version;
* defaults: users 0, ``events_default`` 0, ``state_default`` 50,
  ``kick``/``ban``/``redact`` 50, ``invite`` 0;
* with no power levels event the room's creator has 100 and everyone else
  0; the creator is ``content.creator`` of the create event up to v10 and
  its ``sender`` from v11 (MSC2175);
* v12 (MSC4289): the *creators* — the create event's sender and its
  ``content.additional_creators`` — have an infinite level, whatever the
  power levels event says (:data:`CREATOR_POWER_LEVEL`, above every level
  an event can hold).

The version is taken from the create event (its ``room_version``) unless
the caller passes one, so a caller that holds the create event cannot
apply another version's creator rules by mistake.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

from lowband.gateway.matrix.canonical_json import MAX_SAFE_INTEGER
from lowband.gateway.matrix.identifiers import server_name_of
from lowband.gateway.matrix.room_versions import V10, RoomVersion, of_create_content

__all__ = [
    "CREATOR_POWER_LEVEL",
    "action_power_level",
    "creator_of",
    "parse_level",
    "power_level_for_user",
    "redaction_allowed",
    "required_power_level",
    "required_power_level_for",
    "room_creators",
    "valid_level",
]

#: A creator's level in a v12 room: one above the largest integer canonical JSON allows, so
#: every comparison with a level an event can hold sees it as greater (Synapse uses the same value).
CREATOR_POWER_LEVEL = MAX_SAFE_INTEGER + 1

_ACTION_DEFAULTS: Mapping[str, int] = {"invite": 0, "kick": 50, "ban": 50, "redact": 50}
# ASCII digits only: str.isdigit and int() would also take other scripts' digits and "1_000".
_INTEGER_STRING = re.compile(r"\s*[+-]?[0-9]+\s*")


class _EventLike(Protocol):
    """What these functions read of an event (``events.Event`` has it)."""

    @property
    def sender(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def is_state(self) -> bool: ...

    @property
    def content(self) -> dict[str, Any]: ...


def parse_level(value: Any) -> int | None:
    """A level as an accepted power levels event holds it, as an integer; ``None`` if it is none.

    Integers (not ``bool``), integer strings (v1–v9 form) and finite floats
    (v1–v5 form, truncated toward zero) give an integer.
    """
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is str:
        return int(value) if _INTEGER_STRING.fullmatch(value) else None
    if kind is float and math.isfinite(value):
        return int(value)
    return None


def valid_level(value: Any, room_version: RoomVersion) -> bool:
    """Whether ``value`` is a level a new power levels event of ``room_version`` may hold.

    v10+: integers only; v6–v9: integers or integer strings; v1–v5: floats too.
    """
    kind = type(value)
    if kind is int:
        return True
    if room_version.integer_power_levels:
        return False
    if kind is str:
        return _INTEGER_STRING.fullmatch(value) is not None
    return kind is float and not room_version.strict_canonical_json and math.isfinite(value)


def _version_of(create_event: _EventLike | None, room_version: RoomVersion | None) -> RoomVersion:
    if room_version is not None:
        return room_version
    if create_event is not None:
        named = of_create_content(create_event.content)
        if named is not None:
            return named
    return V10


def creator_of(create_event: _EventLike, room_version: RoomVersion | None = None) -> str | None:
    """The room's creator: ``content.creator`` up to v10, the create event's sender from v11."""
    if _version_of(create_event, room_version).implicit_room_creator:
        return create_event.sender
    creator = create_event.content.get("creator")
    return creator if isinstance(creator, str) else None


def room_creators(create_event: _EventLike, room_version: RoomVersion | None = None) -> frozenset[str]:
    """The users with a creator's powers: the creator, and from v12 the ``additional_creators`` too.

    Entries of ``additional_creators`` that are not strings are ignored here
    (the auth rules refuse such a create event).
    """
    version = _version_of(create_event, room_version)
    creator = creator_of(create_event, version)
    creators = {creator} if creator is not None else set()
    if version.privileged_creators:
        extra = create_event.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(user for user in extra if isinstance(user, str))
    return frozenset(creators)


def _is_creator(create_event: _EventLike, user_id: str, version: RoomVersion) -> bool:
    """``user_id in room_creators(create_event, version)``, without building the set.

    State resolution asks it once per sorted event and the rules for every
    sender and target: in a v12 room the set cost more than the rest of
    :func:`power_level_for_user` together.
    """
    if user_id == creator_of(create_event, version):
        return True
    extra = create_event.content.get("additional_creators") if version.privileged_creators else None
    return isinstance(extra, list) and user_id in extra  # a non-string entry never equals a user ID


def _level(content: Mapping[str, Any] | None, name: str, default: int) -> int:
    value = parse_level(content.get(name)) if content is not None else None
    return default if value is None else value


def power_level_for_user(
    power_levels_content: Mapping[str, Any] | None,
    create_event: _EventLike | None,
    user_id: str,
    *,
    room_version: RoomVersion | None = None,
) -> int:
    """Return ``user_id``'s power level.

    v12: :data:`CREATOR_POWER_LEVEL` for a creator. Otherwise, with no
    power levels event (``None``): 100 for the creator, 0 for everyone
    else; with one: ``users[user_id]``, else ``users_default``, else 0.
    ``room_version`` defaults to the one the create event names.
    """
    version = _version_of(create_event, room_version)
    if version.privileged_creators and create_event is not None and _is_creator(create_event, user_id, version):
        return CREATOR_POWER_LEVEL
    if power_levels_content is None:
        return 100 if create_event is not None and creator_of(create_event, version) == user_id else 0
    users = power_levels_content.get("users")
    if isinstance(users, dict):
        level = parse_level(users.get(user_id))
        if level is not None:
            return level
    return _level(power_levels_content, "users_default", 0)


def action_power_level(power_levels_content: Mapping[str, Any] | None, action: str) -> int:
    """Return the level needed to ``invite`` (default 0), ``kick``, ``ban`` or ``redact`` (50).

    Raises ``KeyError`` for another ``action``.
    """
    return _level(power_levels_content, action, _ACTION_DEFAULTS[action])


def required_power_level_for(
    event_type: str, is_state: bool, power_levels_content: Mapping[str, Any] | None
) -> int:
    """Return the level needed to send an event of ``event_type``.

    ``events[event_type]`` if set, else ``state_default`` (50) for state
    events or ``events_default`` (0) for others.
    """
    events = power_levels_content.get("events") if power_levels_content is not None else None
    if isinstance(events, dict):
        level = parse_level(events.get(event_type))
        if level is not None:
            return level
    if is_state:
        return _level(power_levels_content, "state_default", 50)
    return _level(power_levels_content, "events_default", 0)


def required_power_level(event: _EventLike, power_levels_content: Mapping[str, Any] | None) -> int:
    """Return the event's *required power level* (see :func:`required_power_level_for`)."""
    return required_power_level_for(event.type, event.is_state, power_levels_content)


def redaction_allowed(
    redaction_sender: str,
    original_sender: str,
    power_levels_content: Mapping[str, Any] | None,
    create_event: _EventLike | None,
    *,
    room_version: RoomVersion | None = None,
) -> bool:
    """Return whether a redaction may be applied to its target (v3+ "Handling redactions").

    True if the redaction's sender has at least the *redact level*, or
    is on the same server as the original event's sender. A server should
    additionally let its own users redact only their own events below the
    redact level; that check is the client API's (compare the user IDs).
    (v1–v2 judge redactions in the auth rules instead: rule 11.)
    """
    level = power_level_for_user(power_levels_content, create_event, redaction_sender, room_version=room_version)
    if level >= action_power_level(power_levels_content, "redact"):
        return True
    try:
        return server_name_of(redaction_sender) == server_name_of(original_sender)
    except ValueError:
        return False
