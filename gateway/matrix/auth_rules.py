"""Authorization rules of room versions 1–12, as a pure function of events.

Rules (room versions spec, "Authorization rules" of each version;
server-server API, "Auth events selection", "Definitions" and "Checks
performed on receipt"):

* ``check_auth(event, auth_state, room_version=…)`` applies the numbered
  rules of that version in the spec's order and raises :class:`AuthError`
  with the reason of the first one that rejects. ``auth_state`` maps
  ``(type, state_key)`` to the events to judge by: the event's own auth
  events (build the map with :func:`auth_state_from_events`, which applies
  rule 2.1), or the pairs :func:`auth_types_for_event` names taken from the
  state before the event or from the current state (:func:`select_auth_state`).
* Version 12 (MSC4291) never cites the create event in ``auth_events``: the
  room ID names it. ``auth_state`` must still hold it under
  ``("m.room.create", "")`` — the caller finds it from the room ID
  (``identifiers.create_event_id_of_room``) — and ``check_auth`` checks that
  the room ID is its ID (v12 rule 2) and that ``auth_events`` does not list it.
* The caller keeps rejected events out of ``auth_state`` (rule 2.3, and the
  v12 create event's "accepted"); this module cannot know which events were
  rejected.
* Signatures are checked by :func:`lowband.gateway.matrix.events.verify_event`
  before auth, including the ``join_authorised_via_users_server`` server's
  signature (v8+ rule 4.2); ``check_auth`` only requires that signature to
  be present, which is all it can see without keys.
* Third-party invites (rule 4.4.1) are checked in full: the identity
  server's signature on ``signed`` against the public keys of the
  ``m.room.third_party_invite`` event.
* From v3, redactions pass auth like any message; whether a redaction may
  be *applied* to its target is ``power_levels.redaction_allowed``. In
  v1–v2 rule 11 judges them here (redact level, or the same server in both
  event IDs).
* The version differences, by flag of :class:`RoomVersion`: the
  ``m.room.aliases`` rule (v1–v5); ``notifications`` in power level changes
  (v6+); knocking (v7+); restricted joins (v8+); ``knock_restricted`` and
  integer-only levels (v10+, with ``bool`` no integer here although Python
  says it is); the creator is the create event's sender (v11+); creators'
  infinite power and the create event found from the room ID (v12).

Levels and creators: :mod:`lowband.gateway.matrix.power_levels` (re-exported
here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lowband.gateway.matrix.canonical_json import CanonicalJSONError, encode_canonical_json
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.identifiers import create_event_id_of_room, is_user_id, server_name_of
from lowband.gateway.matrix.power_levels import (
    CREATOR_POWER_LEVEL,
    action_power_level,
    creator_of,
    parse_level,
    power_level_for_user,
    redaction_allowed,
    required_power_level,
    required_power_level_for,
    room_creators,
    valid_level,
)
from lowband.gateway.matrix.room_versions import V10, RoomVersion, of_create_content
from lowband.gateway.matrix.signing import decode_base64, verify_ed25519

__all__ = [
    "CREATOR_POWER_LEVEL",
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
    "room_creators",
    "select_auth_state",
]

StateKey = tuple[str, str]

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

JOIN, INVITE, LEAVE, BAN, KNOCK = "join", "invite", "leave", "ban", "knock"
RESTRICTED, KNOCK_RESTRICTED, PUBLIC = "restricted", "knock_restricted", "public"
_VIA = "join_authorised_via_users_server"

_SCALAR_LEVELS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")


class AuthError(Exception):
    """The event is not authorised. ``reason`` is one line for humans.

    The client-server API turns it into ``403 M_FORBIDDEN``; over
    federation the event is rejected (or soft-failed).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _domain(identifier: str) -> str:
    try:
        return server_name_of(identifier)
    except ValueError:
        raise AuthError(f"{identifier[:80]!r} has no server name") from None


# -- selection ----------------------------------------------------------------


def auth_types_for_event(
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    *,
    room_version: RoomVersion = V10,
) -> list[StateKey]:
    """Return the state pairs an event's ``auth_events`` are chosen from.

    For ``m.room.create``: none. Otherwise the create event (not in v12,
    where the room ID names it), the power levels, the sender's membership
    and, for ``m.room.member``: the target's membership; the join rules when
    joining, inviting or knocking; the ``m.room.third_party_invite`` named
    by ``third_party_invite.signed.token``; for a join in a version with
    restricted rooms (v8+), the membership of
    ``join_authorised_via_users_server``. No duplicates; malformed content
    just selects less (auth then rejects the event).
    """
    if event_type == CREATE:
        return []
    wanted: list[StateKey] = [] if room_version.room_id_is_create_hash else [(CREATE, "")]
    wanted += [(POWER_LEVELS, ""), (MEMBER, sender)]
    if event_type == MEMBER and isinstance(state_key, str):
        wanted.append((MEMBER, state_key))
        membership = content.get("membership")
        if membership in (JOIN, INVITE, KNOCK):
            wanted.append((JOIN_RULES, ""))
        if membership == INVITE:
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                wanted.append((THIRD_PARTY_INVITE, token))
        via = content.get(_VIA)
        if membership == JOIN and room_version.restricted and isinstance(via, str):
            wanted.append((MEMBER, via))
    return list(dict.fromkeys(wanted))


def select_auth_state(
    state: Mapping[StateKey, Event],
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    *,
    room_version: RoomVersion = V10,
) -> dict[StateKey, Event]:
    """Return the part of ``state`` that :func:`auth_types_for_event` selects (v12: never the create event)."""
    selected = auth_types_for_event(event_type, sender, state_key, content, room_version=room_version)
    return {key: state[key] for key in selected if key in state}


def auth_state_from_events(
    event: Event, auth_events: Iterable[Event], *, room_version: RoomVersion = V10
) -> dict[StateKey, Event]:
    """Build ``auth_state`` from the events named in ``event.auth_events``.

    In v12 ``auth_events`` should also hold the room's create event, which
    the event does not list (its ID is the room ID's).

    Raises :class:`AuthError` if an event is given that ``event`` does not
    list (other than that create event), a listed event is not given, one
    is not a state event, two share a ``(type, state_key)`` pair (rule
    2.1), or a v12 event lists its create event.
    """
    listed = set(event.auth_events)
    implied = create_event_id_of_room(event.room_id) if room_version.room_id_is_create_hash else None
    if implied is not None and implied in listed:
        raise AuthError("auth_events list the create event, which the room ID already names")
    out: dict[StateKey, Event] = {}
    seen: set[str] = set()
    for auth_event in auth_events:
        if auth_event.event_id not in listed and auth_event.event_id != implied:
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
        raise AuthError(f"auth event {min(missing)} is missing")
    return out


# -- the rules ------------------------------------------------------------------


class _Room:
    """The facts of ``auth_state`` the rules ask about."""

    def __init__(self, auth_state: Mapping[StateKey, Event], create: Event, version: RoomVersion) -> None:
        self.state = auth_state
        self.create = create
        self.version = version
        pl_event = auth_state.get((POWER_LEVELS, ""))
        self.power_levels: Mapping[str, Any] | None = pl_event.content if pl_event is not None else None

    def membership(self, user_id: str) -> str:
        member = self.state.get((MEMBER, user_id))
        value = member.content.get("membership") if member is not None else None
        return value if isinstance(value, str) else LEAVE

    def level(self, user_id: str) -> int:
        return power_level_for_user(self.power_levels, self.create, user_id, room_version=self.version)

    def action_level(self, action: str) -> int:
        return action_power_level(self.power_levels, action)

    @property
    def join_rule(self) -> str:
        # No join rules event: nobody may join uninvited (what servers do;
        # the spec leaves this case unstated).
        event = self.state.get((JOIN_RULES, ""))
        value = event.content.get("join_rule") if event is not None else None
        return value if isinstance(value, str) else INVITE


def check_auth(event: Event, auth_state: Mapping[StateKey, Event], *, room_version: RoomVersion = V10) -> None:
    """Apply ``room_version``'s authorization rules to ``event``.

    ``auth_state`` maps ``(type, state_key)`` to the state events to judge
    by (none are needed for ``m.room.create``; v12 needs the room's create
    event there too, see the module rules). Returns ``None`` if the event is
    authorised and raises :class:`AuthError` naming the first rule that
    rejects it otherwise. Never raises anything else for any event that
    passed ``check_event_format`` for ``room_version``.
    """
    event_type, sender = event.type, event.sender
    if event_type == CREATE:
        _check_create(event, room_version)
        return
    create = _check_auth_state(event, auth_state, room_version)
    # A non-federating room stays on its creator's server (rule 3; 4 in v12).
    if create.content.get("m.federate", True) is False and _domain(sender) != _domain(create.sender):
        raise AuthError("room does not federate and sender is on another server")
    room = _Room(auth_state, create, room_version)
    if event_type == MEMBER:
        _check_membership(event, room)  # allows or rejects
        return
    if event_type == ALIASES and room_version.special_case_aliases_auth:  # v1-v5 rule 4
        if not event.state_key or event.state_key != _domain(sender):
            raise AuthError("m.room.aliases needs the sender's server as its state_key")
        return
    if room.membership(sender) != JOIN:
        raise AuthError(f"{sender} is not joined to the room")
    sender_level = room.level(sender)
    if event_type == THIRD_PARTY_INVITE:
        if sender_level >= room.action_level("invite"):
            return
        raise AuthError("sender's power level is below the invite level")
    state_key = event.state_key
    needed = required_power_level_for(event_type, state_key is not None, room.power_levels)
    if needed > sender_level:
        raise AuthError(f"sending {event_type} needs power level {needed}; sender has {_shown(sender_level)}")
    if state_key is not None and state_key.startswith("@") and state_key != sender:
        raise AuthError("a state_key starting with '@' must be the sender's user ID")
    if event_type == POWER_LEVELS:
        _check_power_levels(event, room, sender_level)
    elif event_type == REDACTION and room_version.events_carry_id:  # v1-v2 rule 11
        _check_redaction_v1(event, room, sender_level)
    # Otherwise: allow.


def _shown(level: int) -> str:
    return "a creator's infinite level" if level == CREATOR_POWER_LEVEL else str(level)


def _check_create(event: Event, version: RoomVersion) -> None:
    """Rule 1."""
    if event.prev_events:
        raise AuthError("m.room.create must have no prev_events")
    if version.room_id_is_create_hash:
        if "room_id" in event.pdu:
            raise AuthError("m.room.create has a room_id; in this room version its hash is the room ID")
    elif _domain(event.room_id) != _domain(event.sender):
        raise AuthError("m.room.create: room_id and sender are on different servers")
    content = event.content
    # Rule 1.3 allows any *recognised* version; the caller chose `version` from this very
    # event, so a create event that names another one is judged by other rules.
    named = content.get("room_version", "1")
    if of_create_content(content) is None:
        raise AuthError(f"m.room.create: room version {str(named)[:40]!r} is not recognised")
    if named != version.identifier:
        raise AuthError(f"m.room.create names room version {named!r}, not {version.identifier!r}")
    if not version.implicit_room_creator and "creator" not in content:
        raise AuthError("m.room.create has no creator")
    if version.privileged_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_user_id(user) for user in extra):
            raise AuthError("m.room.create: additional_creators must be a list of user IDs")


def _check_auth_state(event: Event, auth_state: Mapping[StateKey, Event], version: RoomVersion) -> Event:
    """Rule 2 (3 in v12; 2.1 lives in :func:`auth_state_from_events`); returns the create event."""
    create = auth_state.get((CREATE, ""))
    if version.room_id_is_create_hash:  # v12 rule 2, and 3.2 for the create event
        if create is None:
            raise AuthError("the room's create event (named by the room ID) is needed to judge the event")
        if create.event_id != create_event_id_of_room(event.room_id):
            raise AuthError("the room ID is not the ID of the create event given")
        if create.event_id in event.auth_events:
            raise AuthError("auth_events list the create event, which the room ID already names")
    allowed = set(auth_types_for_event(event.type, event.sender, event.state_key, event.content, room_version=version))
    for key, auth_event in auth_state.items():
        if (auth_event.type, auth_event.state_key) != key:
            raise AuthError(f"auth state entry {key[0]} {key[1]!r} holds a different event")
        if key not in allowed and not (version.room_id_is_create_hash and key == (CREATE, "")):
            raise AuthError(f"auth event {key[0]} {key[1]!r} is not one this event may cite")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} is in another room")
    if create is None:
        raise AuthError("no m.room.create event among the auth events")
    if create.content.get("room_version", "1") != version.identifier:
        # Only a create event of another room (an ID collision, before v12) can do this.
        raise AuthError(f"the create event is not one of a room version {version.identifier} room")
    return create


def _check_membership(event: Event, room: _Room) -> None:
    """Rule 4 (5 in v12): returns if allowed, raises AuthError otherwise."""
    version = room.version
    content = event.content
    target = event.state_key
    membership = content.get("membership")
    if target is None or not isinstance(membership, str):  # 4.1
        raise AuthError("m.room.member needs a state_key and content.membership")
    via = content.get(_VIA) if version.restricted else None
    if via is not None:  # 4.2
        if not is_user_id(via):
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
    elif membership == BAN:
        if room.membership(sender) != JOIN:
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = room.level(sender)
        if sender_level < room.action_level("ban"):
            raise AuthError("sender's power level is below the ban level")
        if room.level(target) >= sender_level:
            raise AuthError("cannot ban a user whose power level is not below the sender's")
    elif membership == KNOCK and version.knock:  # v7+
        knock_rules = (KNOCK, KNOCK_RESTRICTED) if version.knock_restricted else (KNOCK,)
        if room.join_rule not in knock_rules:
            raise AuthError(f"join rule {room.join_rule[:40]!r} does not allow knocking")
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if room.membership(sender) in (BAN, INVITE, JOIN):
            raise AuthError(f"cannot knock with membership {room.membership(sender)!r}")
    else:
        raise AuthError(f"unknown membership {membership[:40]!r}")


def _check_join(event: Event, room: _Room, target: str, via: Any) -> None:
    """Rule 4.3."""
    version = room.version
    # 4.3.1: the creator's own join, straight after the create event (v12: its sender only,
    # not the additional creators).
    if event.prev_events == [room.create.event_id] and target == creator_of(room.create, version):
        return
    if event.sender != target:  # 4.3.2
        raise AuthError("cannot join on behalf of another user")
    current = room.membership(target)
    if current == BAN:  # 4.3.3
        raise AuthError(f"{target} is banned from the room")
    rule = room.join_rule
    if rule == INVITE or (rule == KNOCK and version.knock):  # 4.3.4
        if current in (INVITE, JOIN):
            return
        raise AuthError(f"join rule {rule!r} needs an invite first")
    if (rule == RESTRICTED and version.restricted) or (rule == KNOCK_RESTRICTED and version.knock_restricted):
        if current in (INVITE, JOIN):  # 4.3.5
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
    if rule == PUBLIC:  # 4.3.6
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
    if sender == target:  # 4.5.1: from v7 a knock may be withdrawn too
        own = (INVITE, JOIN, KNOCK) if room.version.knock else (INVITE, JOIN)
        if room.membership(target) in own:
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


def _check_redaction_v1(event: Event, room: _Room, sender_level: int) -> None:
    """v1-v2 rule 11: the redact level, or the redaction and its target made on one server (event IDs)."""
    if sender_level >= room.action_level("redact"):
        return
    target = event.redacts
    if target is not None and _domain(target) == _domain(event.event_id):
        return
    raise AuthError("redacting another server's event needs the redact level")


def _check_power_levels(event: Event, room: _Room, sender_level: int) -> None:
    """Rule 9 (10 in v1-v5 and v12)."""
    version = room.version
    new = event.content
    if version.integer_power_levels:  # v10+ 9.1, 9.2
        for name in _SCALAR_LEVELS:
            if name in new and not valid_level(new[name], version):
                raise AuthError(f"power levels: {name} must be an integer")
        for name in ("events", "notifications"):
            if name in new and not (
                isinstance(new[name], dict) and all(valid_level(v, version) for v in new[name].values())
            ):
                raise AuthError(f"power levels: {name} must map to integers")
    if "users" in new:  # 9.3 (v1-v9: integer strings, and v1-v5 floats, pass too)
        users = new["users"]
        if not isinstance(users, dict):
            raise AuthError("power levels: users must be an object")
        for user_id, value in users.items():
            if not is_user_id(user_id):
                raise AuthError(f"power levels: {user_id[:80]!r} is not a user ID")
            if not valid_level(value, version):
                raise AuthError("power levels: users values must be integers")
        if version.privileged_creators:  # v12 10.4
            listed = room_creators(room.create, version) & users.keys()
            if listed:
                raise AuthError(f"power levels: creator {min(listed)[:80]} cannot be given a level")
    old = room.power_levels
    if old is None:  # 9.4
        return
    for name in _SCALAR_LEVELS:  # 9.5
        _check_level_change(name, old.get(name), new.get(name), sender_level, at_own_level_ok=True)
    maps = ("events", "notifications") if version.limit_notifications_power_levels else ("events",)
    for name in maps:  # 9.6, 9.7 (v1-v5: events only)
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
    entry); a new value may never exceed the sender's level. Values are
    compared as levels (``"50"`` and ``50`` are no change); one that is no
    level at all cannot be judged, and the event is refused.
    """
    if old == new:
        return
    old_level = parse_level(old) if old is not None else None
    new_level = parse_level(new) if new is not None else None
    if (old is not None and old_level is None) or (new is not None and new_level is None):
        raise AuthError(f"power levels: {name} is not a level")
    if old_level == new_level:
        return
    if old_level is not None and (old_level > sender_level or (old_level == sender_level and not at_own_level_ok)):
        raise AuthError(f"power levels: cannot change {name}, which is at or above your level")
    if new_level is not None and new_level > sender_level:
        raise AuthError(f"power levels: cannot set {name} above your own level ({_shown(sender_level)})")
