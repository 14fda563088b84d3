"""MSC3079 CoAP path enums (version 1, the MSC's appendix B): one-character codes for client API paths.

A CoAP client may send ``/9/{roomId}/{eventType}/{txnId}`` in place of
``/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}``: the first
Uri-Path segment is the code, the following segments are the template's
parameters left to right. Servers must also accept full paths, so a path
whose first segment is ``_matrix`` passes through unchanged.

Rules kept here:

* a code's parameter count is exact (``/8/{roomId}/{type}`` without the
  state key is refused; an empty state key is an empty last segment, as
  CoAP Uri-Path options can be empty);
* code ``n`` is ``/_matrix/client/r0/pushrules/``: its last segment is empty;
* ``.`` and ``..`` segments are refused, because URL normalisation would
  turn them into a different path than the one the client named;
* :func:`shorten` picks the code whenever a template matches, for the
  ``r0`` and the ``v3`` spelling alike (the HTTP API serves both).

Pure code: segments in, segments out, :class:`PathError` for what is refused.
"""

from __future__ import annotations

#: version 1 of the path table: code -> path template (the MSC's appendix B, in its order)
PATHS_V1: dict[str, str] = {
    "0": "/_matrix/client/versions",
    "1": "/_matrix/client/r0/login",
    "2": "/_matrix/client/r0/capabilities",
    "3": "/_matrix/client/r0/logout",
    "4": "/_matrix/client/r0/register",
    "5": "/_matrix/client/r0/user/{userId}/filter",
    "6": "/_matrix/client/r0/user/{userId}/filter/{filterId}",
    "7": "/_matrix/client/r0/sync",
    "8": "/_matrix/client/r0/rooms/{roomId}/state/{eventType}/{stateKey}",
    "9": "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}",
    "A": "/_matrix/client/r0/rooms/{roomId}/event/{eventId}",
    "B": "/_matrix/client/r0/rooms/{roomId}/state",
    "C": "/_matrix/client/r0/rooms/{roomId}/members",
    "D": "/_matrix/client/r0/rooms/{roomId}/joined_members",
    "E": "/_matrix/client/r0/rooms/{roomId}/messages",
    "F": "/_matrix/client/r0/rooms/{roomId}/redact/{eventId}/{txnId}",
    "G": "/_matrix/client/r0/createRoom",
    "H": "/_matrix/client/r0/directory/room/{roomAlias}",
    "I": "/_matrix/client/r0/joined_rooms",
    "J": "/_matrix/client/r0/rooms/{roomId}/invite",
    "K": "/_matrix/client/r0/rooms/{roomId}/join",
    "L": "/_matrix/client/r0/join/{roomIdOrAlias}",
    "M": "/_matrix/client/r0/rooms/{roomId}/leave",
    "N": "/_matrix/client/r0/rooms/{roomId}/forget",
    "O": "/_matrix/client/r0/rooms/{roomId}/kick",
    "P": "/_matrix/client/r0/rooms/{roomId}/ban",
    "Q": "/_matrix/client/r0/rooms/{roomId}/unban",
    "R": "/_matrix/client/r0/directory/list/room/{roomId}",
    "S": "/_matrix/client/r0/publicRooms",
    "T": "/_matrix/client/r0/user_directory/search",
    "U": "/_matrix/client/r0/profile/{userId}/displayname",
    "V": "/_matrix/client/r0/profile/{userId}/avatar_url",
    "W": "/_matrix/client/r0/profile/{userId}",
    "X": "/_matrix/client/r0/voip/turnServer",
    "Y": "/_matrix/client/r0/rooms/{roomId}/typing/{userId}",
    "Z": "/_matrix/client/r0/rooms/{roomId}/receipt/{receiptType}/{eventId}",
    "a": "/_matrix/client/r0/rooms/{roomId}/read_markers",
    "b": "/_matrix/client/r0/presence/{userId}/status",
    "c": "/_matrix/client/r0/sendToDevice/{eventType}/{txnId}",
    "d": "/_matrix/client/r0/devices",
    "e": "/_matrix/client/r0/devices/{deviceId}",
    "f": "/_matrix/client/r0/delete_devices",
    "g": "/_matrix/client/r0/keys/upload",
    "h": "/_matrix/client/r0/keys/query",
    "i": "/_matrix/client/r0/keys/claim",
    "j": "/_matrix/client/r0/keys/changes",
    "k": "/_matrix/client/r0/pushers",
    "l": "/_matrix/client/r0/pushers/set",
    "m": "/_matrix/client/r0/notifications",
    "n": "/_matrix/client/r0/pushrules/",
    "o": "/_matrix/client/r0/search",
    "p": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags",
    "q": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags/{tag}",
    "r": "/_matrix/client/r0/user/{userId}/account_data/{type}",
    "s": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/account_data/{type}",
    "t": "/_matrix/client/r0/rooms/{roomId}/context/{eventId}",
    "u": "/_matrix/client/r0/rooms/{roomId}/report/{eventId}",
}

#: the first segment of every full path
FULL_PREFIX = "_matrix"

#: client API versions the HTTP API serves under the same handlers (the table spells r0)
_VERSION_SPELLINGS = ("r0", "v3")


class PathError(ValueError):
    """A CoAP path that names no API path.

    ``unknown`` is True for a code that is not in the table (the mapping answers 4.04 Not Found) and
    False for a known code with the wrong number of parameters or a refused segment (4.00 Bad Request).
    """

    def __init__(self, message: str, *, unknown: bool) -> None:
        super().__init__(message)
        self.unknown = unknown


def _segments(template: str) -> tuple[str, ...]:
    return tuple(template.split("/")[1:])


def _is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


_TEMPLATES: dict[str, tuple[str, ...]] = {code: _segments(path) for code, path in PATHS_V1.items()}
_PARAMETER_COUNTS: dict[str, int] = {
    code: sum(_is_parameter(s) for s in segments) for code, segments in _TEMPLATES.items()
}


def _check_segments(segments: tuple[str, ...]) -> None:
    for segment in segments:
        if segment in (".", ".."):
            raise PathError("'.' and '..' are not accepted as path segments", unknown=False)


def expand(segments: tuple[str, ...]) -> tuple[str, ...]:
    """The full path segments for CoAP Uri-Path ``segments`` (a code and its parameters, or a full path).

    ``("9", room, type, txn)`` gives ``("_matrix", "client", "r0", "rooms", room, "send", type, txn)``;
    ``("_matrix", …)`` is returned as it is. Raises :class:`PathError`: ``unknown`` for an empty path or
    a code not in the table, not ``unknown`` for a wrong parameter count or a ``.``/``..`` segment.
    """
    if not segments:
        raise PathError("empty path", unknown=True)
    _check_segments(segments)
    head, parameters = segments[0], segments[1:]
    if head == FULL_PREFIX:
        return tuple(segments)
    template = _TEMPLATES.get(head)
    if template is None:
        raise PathError(f"unknown path code {head[:40]!r}", unknown=True)
    wanted = _PARAMETER_COUNTS[head]
    if len(parameters) != wanted:
        raise PathError(f"path code {head!r} takes {wanted} parameters, got {len(parameters)}", unknown=False)
    values = iter(parameters)
    return tuple(next(values) if _is_parameter(s) else s for s in template)


def _match(template: tuple[str, ...], full: tuple[str, ...]) -> tuple[str, ...] | None:
    """The parameters when ``full`` fits ``template`` (r0 or v3), else None."""
    if len(template) != len(full):
        return None
    parameters: list[str] = []
    for pattern, segment in zip(template, full, strict=True):
        if _is_parameter(pattern):
            parameters.append(segment)
        elif pattern != segment and not (pattern == "r0" and segment in _VERSION_SPELLINGS):
            return None
    return tuple(parameters)


def shorten(full_segments: tuple[str, ...]) -> tuple[str, ...]:
    """The shortest Uri-Path segments for a full path: the code form when a template matches, else the path.

    The inverse of :func:`expand` for clients: ``expand(shorten(p))`` names the same handler as ``p``
    (a ``v3`` path comes back as its ``r0`` spelling). Never raises.
    """
    full = tuple(full_segments)
    if not full or full[0] != FULL_PREFIX:
        return full
    for code, template in _TEMPLATES.items():
        parameters = _match(template, full)
        if parameters is not None:
            return (code, *parameters)
    return full
