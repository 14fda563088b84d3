"""Authorization rules of room version 10, as a pure function of events.

Rules (room versions spec, v10 "Authorization rules"; server-server API,
"Auth events selection", "Definitions" and "Checks performed on receipt"):

* ``check_auth(event, auth_state)`` applies the numbered v10 rules in the
  spec's order and raises :class:`AuthError` with the reason of the first
  one that rejects. ``auth_state`` maps ``(type, state_key)`` to the events
  to judge by: the event's own auth events (build the map with
  :func:`auth_state_from_events`, which applies rule 2.1), or the pairs
  :func:`auth_types_for_event` names taken from the state before the event
  or from the current state (:func:`select_auth_state`).
* The caller keeps rejected events out of ``auth_state`` (rule 2.3); this
  module cannot know which events were rejected.
* Signatures are checked by :func:`lowband.gateway.matrix.events.verify_event`
  before auth, including the ``join_authorised_via_users_server`` server's
  signature (rule 4.2); ``check_auth`` only requires that signature to be
  present, which is all it can see without keys.
* Third-party invites (rule 4.4.1) are checked in full: the identity
  server's signature on ``signed`` against the public keys of the
  ``m.room.third_party_invite`` event.
* Redactions pass auth like any message (rule 7 then 10); whether a
  redaction may be *applied* to its target is :func:`redaction_allowed`.
* Power-level values must be integers (v10); ``bool`` is not an integer
  here although Python says it is.

Defaults (``m.room.power_levels`` schema): users 0 (the creator 100 while
the room has no power levels event), ``events_default`` 0,
``state_default`` 50, ``kick``/``ban``/``redact`` 50, ``invite`` 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lowband.gateway.matrix.canonical_json import CanonicalJSONError, encode_canonical_json
from lowband.gateway.matrix.events import ROOM_VERSION, Event, server_name_of
from lowband.gateway.matrix.signing import decode_base64, verify_ed25519

__all__ = [
    "AuthError",
    "StateKey",
    "action_power_level",
    "auth_state_from_events",
    "auth_types_for_event",
    "check_auth",
    "power_level_for_user",
    "redaction_allowed",
    "required_power_level",
    "required_power_level_for",
    "select_auth_state",
]

StateKey = tuple[str, str]

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

JOIN, INVITE, LEAVE, BAN, KNOCK = "join", "invite", "leave", "ban", "knock"
_VIA = "join_authorised_via_users_server"

_ACTION_DEFAULTS: Mapping[str, int] = {"invite": 0, "kick": 50, "ban": 50, "redact": 50}
_SCALAR_LEVELS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
_MAP_LEVELS = ("events", "notifications")


class AuthError(Exception):
    """The event is not authorised. ``reason`` is one line for humans.

    The client-server API turns it into ``403 M_FORBIDDEN``; over
    federation the event is rejected (or soft-failed).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_user_id(value: Any) -> bool:
    if not isinstance(value, str) or not value.startswith("@") or len(value.encode("utf-8", "replace")) > 255:
        return False
    localpart, sep, server = value[1:].partition(":")
    return bool(localpart and sep and server)


def _domain(identifier: str) -> str:
    try:
        return server_name_of(identifier)
    except ValueError:
        raise AuthError(f"{identifier[:80]!r} has no server name") from None


# -- selection ----------------------------------------------------------------


def auth_types_for_event(
    event_type: str, sender: str, state_key: str | None, content: Mapping[str, Any]
) -> list[StateKey]:
    """Return the state pairs an event's ``auth_events`` are chosen from.

    For ``m.room.create``: none. Otherwise the create event, the power
    levels, the sender's membership and, for ``m.room.member``: the target's
    membership; the join rules when joining, inviting or knocking; the
    ``m.room.third_party_invite`` named by ``third_party_invite.signed.token``;
    the membership of ``join_authorised_via_users_server``. No duplicates;
    malformed content just selects less (auth then rejects the event).
    """
    if event_type == CREATE:
        return []
    wanted: list[StateKey] = [(CREATE, ""), (POWER_LEVELS, ""), (MEMBER, sender)]
    if event_type == MEMBER and isinstance(state_key, str):
        wanted.append((MEMBER, state_key))
        membership = content.get("membership")
        # The spec's selection list names join and invite only, but rule
        # 4.7.1 judges a knock by the join rule, so knocks need it too.
        if membership in (JOIN, INVITE, KNOCK):
            wanted.append((JOIN_RULES, ""))
        if membership == INVITE:
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                wanted.append((THIRD_PARTY_INVITE, token))
        via = content.get(_VIA)
        if isinstance(via, str):
            wanted.append((MEMBER, via))
    return list(dict.fromkeys(wanted))


def select_auth_state(
    state: Mapping[StateKey, Event],
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> dict[StateKey, Event]:
    """Return the part of ``state`` that :func:`auth_types_for_event` selects."""
    return {key: state[key] for key in auth_types_for_event(event_type, sender, state_key, content) if key in state}


def auth_state_from_events(event: Event, auth_events: Iterable[Event]) -> dict[StateKey, Event]:
    """Build ``auth_state`` from the events named in ``event.auth_events``.

    Raises :class:`AuthError` if an event is given that ``event`` does not
    list, a listed event is not given, one is not a state event, or two
    share a ``(type, state_key)`` pair (rule 2.1).
    """
    listed = set(event.auth_events)
    out: dict[StateKey, Event] = {}
    seen: set[str] = set()
    for auth_event in auth_events:
        if auth_event.event_id not in listed:
            raise AuthError(f"{auth_event.event_id} is not among the event's auth_events")
        if auth_event.event_id in seen:
            continue
        seen.add(auth_event.event_id)
        if auth_event.state_key is None:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = (auth_event.type, auth_event.state_key)
        if key in out:
            raise AuthError(f"duplicate auth events for {key[0]} {key[1]!r}")
        out[key] = auth_event
    missing = listed - seen
    if missing:
        raise AuthError(f"auth event {sorted(missing)[0]} is missing")
    return out


# -- levels -------------------------------------------------------------------


def _level(content: Mapping[str, Any] | None, name: str, default: int) -> int:
    value = content.get(name) if content is not None else None
    # Accepted v10 power levels hold integers only (rule 9); anything else
    # can only come from an unchecked caller and falls back to the default.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default


def power_level_for_user(
    power_levels_content: Mapping[str, Any] | None, create_event: Event | None, user_id: str
) -> int:
    """Return ``user_id``'s power level.

    With no power levels event (``None``): 100 for the room's creator
    (``content.creator`` of the v10 create event), 0 for everyone else.
    Otherwise ``users[user_id]``, else ``users_default``, else 0.
    """
    if power_levels_content is None:
        creator = create_event.content.get("creator") if create_event is not None else None
        return 100 if creator == user_id else 0
    users = power_levels_content.get("users")
    if isinstance(users, dict) and _is_int(users.get(user_id)):
        return int(users[user_id])
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
    if isinstance(events, dict) and _is_int(events.get(event_type)):
        return int(events[event_type])
    if is_state:
        return _level(power_levels_content, "state_default", 50)
    return _level(power_levels_content, "events_default", 0)


def required_power_level(event: Event, power_levels_content: Mapping[str, Any] | None) -> int:
    """Return the event's *required power level* (see :func:`required_power_level_for`)."""
    return required_power_level_for(event.type, event.is_state, power_levels_content)


def redaction_allowed(
    redaction_sender: str,
    original_sender: str,
    power_levels_content: Mapping[str, Any] | None,
    create_event: Event | None,
) -> bool:
    """Return whether a redaction may be applied to its target (v3+ "Handling redactions").

    True if the redaction's sender has at least the *redact level*, or
    is on the same server as the original event's sender. A server should
    additionally let its own users redact only their own events below the
    redact level; that check is the client API's (compare the user IDs).
    """
    level = power_level_for_user(power_levels_content, create_event, redaction_sender)
    if level >= action_power_level(power_levels_content, "redact"):
        return True
    try:
        return server_name_of(redaction_sender) == server_name_of(original_sender)
    except ValueError:
        return False


# -- the rules ------------------------------------------------------------------


class _Room:
    """The facts of ``auth_state`` the rules ask about."""

    def __init__(self, auth_state: Mapping[StateKey, Event], create: Event) -> None:
        self.state = auth_state
        self.create = create
        pl_event = auth_state.get((POWER_LEVELS, ""))
        self.power_levels: Mapping[str, Any] | None = pl_event.content if pl_event is not None else None

    def membership(self, user_id: str) -> str:
        member = self.state.get((MEMBER, user_id))
        value = member.content.get("membership") if member is not None else None
        return value if isinstance(value, str) else LEAVE

    def level(self, user_id: str) -> int:
        return power_level_for_user(self.power_levels, self.create, user_id)

    def action_level(self, action: str) -> int:
        return action_power_level(self.power_levels, action)

    @property
    def join_rule(self) -> str:
        # No join rules event: nobody may join uninvited (what servers do;
        # the spec leaves this case unstated).
        event = self.state.get((JOIN_RULES, ""))
        value = event.content.get("join_rule") if event is not None else None
        return value if isinstance(value, str) else INVITE


def check_auth(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    """Apply the room version 10 authorization rules to ``event``.

    ``auth_state`` maps ``(type, state_key)`` to the state events to judge
    by (none are needed for ``m.room.create``). Returns ``None`` if the
    event is authorised and raises :class:`AuthError` naming the first
    rule that rejects it otherwise. Never raises anything else for any
    event that passed ``check_event_format``.
    """
    if event.type == CREATE:
        _check_create(event)
        return
    create = _check_auth_state(event, auth_state)  # rule 2
    # Rule 3: a non-federating room stays on its creator's server.
    if create.content.get("m.federate", True) is False and _domain(event.sender) != _domain(create.sender):
        raise AuthError("room does not federate and sender is on another server")
    room = _Room(auth_state, create)
    if event.type == MEMBER:
        _check_membership(event, room)  # rule 4: allows or rejects
        return
    # Rule 5.
    if room.membership(event.sender) != JOIN:
        raise AuthError(f"{event.sender} is not joined to the room")
    sender_level = room.level(event.sender)
    # Rule 6.
    if event.type == THIRD_PARTY_INVITE:
        if sender_level >= room.action_level("invite"):
            return
        raise AuthError("sender's power level is below the invite level")
    # Rule 7.
    needed = required_power_level(event, room.power_levels)
    if needed > sender_level:
        raise AuthError(f"sending {event.type} needs power level {needed}; sender has {sender_level}")
    # Rule 8.
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        raise AuthError("a state_key starting with '@' must be the sender's user ID")
    # Rule 9.
    if event.type == POWER_LEVELS:
        _check_power_levels(event, room, sender_level)
    # Rule 10: allow.


def _check_create(event: Event) -> None:
    """Rule 1."""
    if event.prev_events:
        raise AuthError("m.room.create must have no prev_events")
    if _domain(event.room_id) != _domain(event.sender):
        raise AuthError("m.room.create: room_id and sender are on different servers")
    content = event.content
    # Rule 1.3 allows any *recognised* version; these rules are v10's, so a
    # create event announcing another version belongs to other rules.
    if "room_version" in content and content["room_version"] != ROOM_VERSION:
        raise AuthError(f"m.room.create: room version {content['room_version']!r} is not handled here")
    if "creator" not in content:
        raise AuthError("m.room.create has no creator")


def _check_auth_state(event: Event, auth_state: Mapping[StateKey, Event]) -> Event:
    """Rule 2 (2.1 lives in :func:`auth_state_from_events`); returns the create event."""
    allowed = set(auth_types_for_event(event.type, event.sender, event.state_key, event.content))
    for key, auth_event in auth_state.items():
        if (auth_event.type, auth_event.state_key) != key:
            raise AuthError(f"auth state entry {key[0]} {key[1]!r} holds a different event")
        if key not in allowed:
            raise AuthError(f"auth event {key[0]} {key[1]!r} is not one this event may cite")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} is in another room")
    create = auth_state.get((CREATE, ""))
    if create is None:
        raise AuthError("no m.room.create event among the auth events")
    return create


def _check_membership(event: Event, room: _Room) -> None:
    """Rule 4: returns if allowed, raises AuthError otherwise."""
    content = event.content
    target = event.state_key
    membership = content.get("membership")
    if target is None or not isinstance(membership, str):  # 4.1
        raise AuthError("m.room.member needs a state_key and content.membership")
    via = content.get(_VIA)
    if via is not None:  # 4.2
        if not _is_user_id(via):
            raise AuthError(f"{_VIA} is not a user ID")
        signatures = event.pdu.get("signatures")
        if not isinstance(signatures, dict) or _domain(via) not in signatures:
            raise AuthError(f"event is not signed by the server of {_VIA}")

    sender = event.sender
    if membership == JOIN:
        _check_join(event, room, target, via)
    elif membership == INVITE:
        _check_invite(event, room, target)
    elif membership == LEAVE:
        _check_leave(room, sender, target)
    elif membership == BAN:  # 4.6
        if room.membership(sender) != JOIN:
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = room.level(sender)
        if sender_level < room.action_level("ban"):
            raise AuthError("sender's power level is below the ban level")
        if room.level(target) >= sender_level:
            raise AuthError("cannot ban a user whose power level is not below the sender's")
    elif membership == KNOCK:  # 4.7
        if room.join_rule not in (KNOCK, "knock_restricted"):
            raise AuthError(f"join rule {room.join_rule!r} does not allow knocking")
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if room.membership(sender) in (BAN, INVITE, JOIN):
            raise AuthError(f"cannot knock with membership {room.membership(sender)!r}")
    else:  # 4.8
        raise AuthError(f"unknown membership {membership[:40]!r}")


def _check_join(event: Event, room: _Room, target: str, via: Any) -> None:
    """Rule 4.3."""
    # 4.3.1: the creator's own join, straight after the create event.
    if event.prev_events == [room.create.event_id] and target == room.create.content.get("creator"):
        return
    if event.sender != target:  # 4.3.2
        raise AuthError("cannot join on behalf of another user")
    current = room.membership(target)
    if current == BAN:  # 4.3.3
        raise AuthError(f"{target} is banned from the room")
    rule = room.join_rule
    if rule in (INVITE, KNOCK):  # 4.3.4
        if current in (INVITE, JOIN):
            return
        raise AuthError(f"join rule {rule!r} needs an invite first")
    if rule in ("restricted", "knock_restricted"):  # 4.3.5
        if current in (INVITE, JOIN):
            return
        if not isinstance(via, str):
            raise AuthError(f"restricted join without {_VIA}")
        # "A user with sufficient permission to invite": inviting also needs
        # a joined sender (4.4.2), so the authorising user must be joined.
        if room.membership(via) != JOIN:
            raise AuthError(f"authorising user {via} is not joined to the room")
        if room.level(via) < room.action_level("invite"):
            raise AuthError(f"authorising user {via} may not invite")
        return
    if rule == "public":  # 4.3.6
        return
    raise AuthError(f"join rule {rule[:40]!r} does not allow joining")  # 4.3.7


def _check_invite(event: Event, room: _Room, target: str) -> None:
    """Rule 4.4."""
    tpi = event.content.get("third_party_invite")
    if tpi is not None:  # 4.4.1
        _check_third_party_invite(event, room, target, tpi)
        return
    sender = event.sender
    if room.membership(sender) != JOIN:  # 4.4.2
        raise AuthError(f"{sender} is not joined to the room")
    if room.membership(target) in (JOIN, BAN):  # 4.4.3
        raise AuthError(f"cannot invite a user whose membership is {room.membership(target)!r}")
    if room.level(sender) < room.action_level("invite"):  # 4.4.4-5
        raise AuthError("sender's power level is below the invite level")


def _check_third_party_invite(event: Event, room: _Room, target: str, tpi: Any) -> None:
    """Rule 4.4.1: returns if the identity server's signature matches a key of the 3PID invite."""
    if room.membership(target) == BAN:
        raise AuthError(f"{target} is banned from the room")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    if mxid != target:
        raise AuthError("third_party_invite.signed.mxid is not the invited user")
    invite = room.state.get((THIRD_PARTY_INVITE, token))
    if invite is None:
        raise AuthError("no m.room.third_party_invite matches the token")
    if invite.sender != event.sender:
        raise AuthError("sender did not send the matching m.room.third_party_invite")
    if _signed_by_any(signed, _third_party_public_keys(invite.content)):
        return
    raise AuthError("third_party_invite is not signed by a key of the m.room.third_party_invite")


def _third_party_public_keys(content: Mapping[str, Any]) -> list[bytes]:
    encoded: list[Any] = [content.get("public_key")]
    listed = content.get("public_keys")
    if isinstance(listed, list):
        encoded += [item.get("public_key") for item in listed if isinstance(item, dict)]
    keys = []
    for value in encoded:
        if isinstance(value, str):
            try:
                # Identity servers publish standard base64; some use the URL-safe alphabet.
                keys.append(decode_base64(value.replace("-", "+").replace("_", "/")))
            except ValueError:
                continue
    return keys


def _signed_by_any(signed: Mapping[str, Any], keys: list[bytes]) -> bool:
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict) or not keys:
        return False
    try:
        data = encode_canonical_json({k: v for k, v in signed.items() if k not in ("signatures", "unsigned")})
    except CanonicalJSONError:
        return False
    for server_sigs in signatures.values():
        if not isinstance(server_sigs, dict):
            continue
        for key_id, encoded in server_sigs.items():
            if not (isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(encoded, str)):
                continue
            try:
                signature = decode_base64(encoded)
            except ValueError:
                continue
            if any(verify_ed25519(key, data, signature) for key in keys):
                return True
    return False


def _check_leave(room: _Room, sender: str, target: str) -> None:
    """Rule 4.5 (also unbans)."""
    if sender == target:  # 4.5.1
        if room.membership(target) in (INVITE, JOIN, KNOCK):
            return
        raise AuthError(f"cannot leave with membership {room.membership(target)!r}")
    if room.membership(sender) != JOIN:  # 4.5.2
        raise AuthError(f"{sender} is not joined to the room")
    sender_level = room.level(sender)
    if room.membership(target) == BAN and sender_level < room.action_level("ban"):  # 4.5.3
        raise AuthError("unbanning needs the ban level")
    if sender_level < room.action_level("kick"):  # 4.5.4-5
        raise AuthError("sender's power level is below the kick level")
    if room.level(target) >= sender_level:
        raise AuthError("cannot kick a user whose power level is not below the sender's")


def _check_power_levels(event: Event, room: _Room, sender_level: int) -> None:
    """Rule 9."""
    new = event.content
    for name in _SCALAR_LEVELS:  # 9.1
        if name in new and not _is_int(new[name]):
            raise AuthError(f"power levels: {name} must be an integer")
    for name in _MAP_LEVELS:  # 9.2
        if name in new and not (isinstance(new[name], dict) and all(_is_int(v) for v in new[name].values())):
            raise AuthError(f"power levels: {name} must map to integers")
    if "users" in new:  # 9.3
        users = new["users"]
        if not isinstance(users, dict):
            raise AuthError("power levels: users must be an object")
        for user_id, value in users.items():
            if not _is_user_id(user_id):
                raise AuthError(f"power levels: {user_id[:80]!r} is not a user ID")
            if not _is_int(value):
                raise AuthError("power levels: users values must be integers")
    old = room.power_levels
    if old is None:  # 9.4
        return
    for name in _SCALAR_LEVELS:  # 9.5
        _check_level_change(name, old.get(name), new.get(name), sender_level, at_own_level_ok=True)
    for name in _MAP_LEVELS:  # 9.6, 9.7
        old_map, new_map = _as_map(old.get(name)), _as_map(new.get(name))
        for key in old_map.keys() | new_map.keys():
            _check_level_change(
                f"{name}.{key[:80]}", old_map.get(key), new_map.get(key), sender_level, at_own_level_ok=True
            )
    old_users, new_users = _as_map(old.get("users")), _as_map(new.get("users"))
    for user_id in old_users.keys() | new_users.keys():  # 9.8, 9.9
        _check_level_change(
            f"users.{user_id[:80]}",
            old_users.get(user_id),
            new_users.get(user_id),
            sender_level,
            at_own_level_ok=user_id == event.sender,
        )


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _check_level_change(name: str, old: Any, new: Any, sender_level: int, *, at_own_level_ok: bool) -> None:
    """One entry of rules 9.5-9.9.

    A current value may be changed or removed only if it is below the
    sender's level, or equal to it where ``at_own_level_ok`` (the scalar
    levels, ``events``, ``notifications`` and the sender's own ``users``
    entry); a new value may never exceed the sender's level.
    """
    if old == new:
        return
    if _is_int(old) and (old > sender_level or (old == sender_level and not at_own_level_ok)):
        raise AuthError(f"power levels: cannot change {name}, which is at or above your level")
    if _is_int(new) and new > sender_level:
        raise AuthError(f"power levels: cannot set {name} above your own level ({sender_level})")
