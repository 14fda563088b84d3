"""Server-side key backups ("room_keys"): the spec's rules, the limits, and request validation.

Rules (client-server API, "Server-side key backups"):

* backups are per user; a user has versions numbered 1, 2, … (decimal
  strings on the wire, never reused); the **current** version is the highest
  one not deleted. Keys are written only to the current version: an upload
  naming another is answered 403 ``M_WRONG_ROOM_KEYS_VERSION`` with
  ``current_version`` (404 ``M_NOT_FOUND`` when the user has no backup).
  Reading and deleting keys works on any live version;
* a version string that is not one of ours (not a decimal without leading
  zeros, 1 to 18 digits) is 404 ``M_NOT_FOUND``, like a version never
  created; versions are looked up only among the requester's own, so
  another user's backup cannot be named at all;
* an uploaded key for a session the backup already holds replaces it only
  when it is better (:func:`replaces`): a verified key beats an unverified
  one, then the lower ``first_message_index`` wins, then the lower
  ``forwarded_count``; on a full tie the stored key stays, so uploading the
  same key again changes nothing;
* ``etag`` is a counter per version that grows whenever its keys change
  (stored, replaced or deleted), never otherwise; ``count`` is the number of
  keys in the version. Both are in every key write's answer and in the
  version's description;
* deleting a version deletes its keys; deleting it again is 200 (the spec
  asks so), deleting a number never handed out is 404;
* ``PUT /room_keys/version/{v}`` changes only ``auth_data``: ``algorithm``
  must be the version's, a ``version`` in the body must be the path's
  (400 ``M_INVALID_PARAM`` otherwise).

The server never decrypts anything: ``auth_data`` and ``session_data`` are
kept as the client sent them (size-bounded JSON objects). Everything here is
pure except :class:`RoomKeyBackups`, which calls the store; the HTTP layer
is ``api/http/client_room_keys.py``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from lowband.gateway.matrix.errors import MatrixError, bad_json, invalid_param, not_found
from lowband.gateway.matrix.identifiers import is_room_id
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import (
    BackedUpKey,
    RoomKeysFull,
    RoomKeyStore,
    RoomKeyVersion,
    WrongRoomKeysVersion,
)  # fmt: skip

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ limits
# A request is also bounded by http.max_request_bytes (1 MiB), which at ~1 KB a
# key binds before MAX_SESSIONS_PER_REQUEST does; clients send 100 (matrix-rust-sdk)
# or 200 (matrix-js-sdk's older crypto) keys per request.

#: sessions (keys) in one upload, over all its rooms
MAX_SESSIONS_PER_REQUEST = 1000
#: rooms in one upload (a room with an empty ``sessions`` still counts)
MAX_ROOMS_PER_REQUEST = 1000
#: keys one user may keep, over all live versions (a heavy Element account holds tens of thousands)
MAX_KEYS_PER_USER = 100_000
#: bytes of session_data one user may keep, over all live versions (a key's is about 1 KB)
MAX_BYTES_PER_USER = 128 * 1024 * 1024
#: one key's session_data, as compact JSON (an encrypted session export is about 800 bytes)
MAX_SESSION_DATA_BYTES = 8 * 1024
#: a version's auth_data, as compact JSON (a public key and a few signatures)
MAX_AUTH_DATA_BYTES = 32 * 1024
#: live (not deleted) versions per user
MAX_VERSIONS_PER_USER = 100
MAX_ALGORITHM_BYTES = 255
MAX_SESSION_ID_BYTES = 255
#: first_message_index and forwarded_count: integers JSON carries exactly (2^53 - 1)
MAX_COUNTER = (1 << 53) - 1
#: keys read per page while a download is written out
DOWNLOAD_PAGE = 200

CURVE25519_BACKUP = "m.megolm_backup.v1.curve25519-aes-sha2"

_ALGORITHM = re.compile(r"[\x21-\x7e]+")  # a namespaced identifier: printable ASCII, no spaces
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -------------------------------------------------------------- the rule


def replaces(stored: BackedUpKey, new: BackedUpKey) -> bool:
    """Whether an uploaded key ``new`` takes the place of the ``stored`` key of the same session.

    The spec's order: ``is_verified`` true wins; then the lower ``first_message_index`` (the key decrypts
    more of the session); then the lower ``forwarded_count``. A full tie keeps the stored key.
    """
    if stored.is_verified != new.is_verified:
        return new.is_verified
    if stored.first_message_index != new.first_message_index:
        return new.first_message_index < stored.first_message_index
    return new.forwarded_count < stored.forwarded_count


# ------------------------------------------------------------- validation


def parse_version(text: str | None) -> int:
    """A backup version from a path or the ``version`` query parameter.

    400 M_MISSING_PARAM when absent; 404 M_NOT_FOUND when it is not a version this server hands out
    (a decimal without leading zeros, 1 to 18 digits): no such backup can exist.
    """
    if text is None:
        raise MatrixError(400, "M_MISSING_PARAM", "missing the 'version' query parameter")
    value = parse_digits(text)
    if value is None or value == 0 or text[0] == "0":
        raise not_found("Unknown backup version")
    return value


def check_room_id(room_id: Any) -> str:
    """``room_id`` if it is a room ID (any room version, ≤ 255 bytes); 400 M_INVALID_PARAM otherwise."""
    if not is_room_id(room_id) or _CONTROL.search(room_id):
        raise invalid_param(f"not a room ID: {_shown(room_id)}")
    return str(room_id)


def check_session_id(session_id: Any) -> str:
    """``session_id`` if it is 1 to 255 bytes without control characters; 400 M_INVALID_PARAM otherwise."""
    if not isinstance(session_id, str) or not session_id or _CONTROL.search(session_id):
        raise invalid_param(f"not a session ID: {_shown(session_id)}")
    if len(session_id.encode("utf-8", "replace")) > MAX_SESSION_ID_BYTES:
        raise invalid_param(f"a session ID is at most {MAX_SESSION_ID_BYTES} bytes")
    return session_id


def _shown(value: Any) -> str:
    """A bounded, printable form of a refused value for an error message."""
    return repr(value)[:80]


def _object_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, dict):
        raise bad_json(f"'{name}' must be a JSON object")
    text = _dumps(value)
    if len(text.encode("utf-8")) > limit:
        raise MatrixError(413, "M_TOO_LARGE", f"'{name}' is larger than {limit} bytes")
    return text


def parse_backup_info(body: dict[str, Any]) -> tuple[str, str]:
    """(algorithm, auth_data as JSON text) of a version's creation or update body.

    400 M_MISSING_PARAM when one is absent, M_BAD_JSON for a wrong type, M_INVALID_PARAM for an algorithm
    that is not a namespaced identifier of at most 255 bytes, 413 M_TOO_LARGE for auth_data over
    :data:`MAX_AUTH_DATA_BYTES`. For the spec's algorithm, ``auth_data.public_key`` must be a string (and
    ``signatures`` an object, when present); other algorithms' auth_data is any object.
    """
    for name in ("algorithm", "auth_data"):
        if body.get(name) is None:
            raise MatrixError(400, "M_MISSING_PARAM", f"missing '{name}'")
    algorithm = body["algorithm"]
    if not isinstance(algorithm, str):
        raise bad_json("'algorithm' must be a string")
    if len(algorithm) > MAX_ALGORITHM_BYTES or not _ALGORITHM.fullmatch(algorithm):
        raise invalid_param(f"'algorithm' must be printable ASCII without spaces, at most {MAX_ALGORITHM_BYTES} bytes")
    auth_data = _object_text(body["auth_data"], "auth_data", MAX_AUTH_DATA_BYTES)
    if algorithm == CURVE25519_BACKUP:
        if not isinstance(body["auth_data"].get("public_key"), str):
            raise bad_json("'auth_data.public_key' must be a string")
        if not isinstance(body["auth_data"].get("signatures", {}), dict):
            raise bad_json("'auth_data.signatures' must be an object")
    return algorithm, auth_data


def _counter(data: dict[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{name}' in {where}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_json(f"'{name}' must be an integer in {where}")
    if not 0 <= value <= MAX_COUNTER:
        raise invalid_param(f"'{name}' must be between 0 and {MAX_COUNTER} in {where}")
    return value


def parse_key(data: Any, where: str = "the key") -> BackedUpKey:
    """A KeyBackupData object: ``first_message_index`` and ``forwarded_count`` (integers 0 … 2^53-1),
    ``is_verified`` (boolean), ``session_data`` (an object of at most :data:`MAX_SESSION_DATA_BYTES`).

    400 M_BAD_JSON for a wrong type, M_MISSING_PARAM for an absent field, M_INVALID_PARAM for a number
    out of range; 413 M_TOO_LARGE for session_data over the limit. ``where`` names the key in messages.
    """
    if not isinstance(data, dict):
        raise bad_json(f"{where} must be a JSON object")
    first = _counter(data, "first_message_index", where)
    forwarded = _counter(data, "forwarded_count", where)
    verified = data.get("is_verified")
    if verified is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing 'is_verified' in {where}")
    if not isinstance(verified, bool):
        raise bad_json(f"'is_verified' must be a boolean in {where}")
    if data.get("session_data") is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing 'session_data' in {where}")
    session_data = _object_text(data["session_data"], "session_data", MAX_SESSION_DATA_BYTES)
    return BackedUpKey(first, forwarded, verified, session_data)


def _sessions(room: Any, room_id: str, keys: list[tuple[str, str, BackedUpKey]]) -> None:
    if not isinstance(room, dict):
        raise bad_json(f"the backup data of room {_shown(room_id)} must be a JSON object")
    sessions = room.get("sessions")
    if sessions is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing 'sessions' for room {_shown(room_id)}")
    if not isinstance(sessions, dict):
        raise bad_json(f"'sessions' of room {_shown(room_id)} must be a JSON object")
    if len(keys) + len(sessions) > MAX_SESSIONS_PER_REQUEST:
        raise MatrixError(413, "M_TOO_LARGE", f"at most {MAX_SESSIONS_PER_REQUEST} keys per request")
    for session_id, data in sessions.items():
        check_session_id(session_id)
        keys.append((room_id, session_id, parse_key(data, f"session {_shown(session_id)}")))


def parse_upload(body: dict[str, Any], room_id: str | None = None,
                 session_id: str | None = None) -> list[tuple[str, str, BackedUpKey]]:  # fmt: skip
    """The keys of an upload as (room_id, session_id, key): ``body`` is ``{"rooms": {…}}`` for
    ``/room_keys/keys``, ``{"sessions": {…}}`` with ``room_id``, one KeyBackupData with both IDs.

    Errors as :func:`parse_key`, and 400 M_INVALID_PARAM for a room or session ID that is not one,
    413 M_TOO_LARGE past :data:`MAX_ROOMS_PER_REQUEST` rooms or :data:`MAX_SESSIONS_PER_REQUEST` keys.
    """
    keys: list[tuple[str, str, BackedUpKey]] = []
    if room_id is not None and session_id is not None:
        return [(check_room_id(room_id), check_session_id(session_id), parse_key(body))]
    if room_id is not None:
        _sessions(body, check_room_id(room_id), keys)
        return keys
    rooms = body.get("rooms")
    if rooms is None:
        raise MatrixError(400, "M_MISSING_PARAM", "missing 'rooms'")
    if not isinstance(rooms, dict):
        raise bad_json("'rooms' must be a JSON object")
    if len(rooms) > MAX_ROOMS_PER_REQUEST:
        raise MatrixError(413, "M_TOO_LARGE", f"at most {MAX_ROOMS_PER_REQUEST} rooms per request")
    for room, sessions in rooms.items():
        _sessions(sessions, check_room_id(room), keys)
    return keys


# ---------------------------------------------------------------- answers


def version_body(found: RoomKeyVersion) -> dict[str, Any]:
    """The answer to GET /room_keys/version[/{v}]."""
    return {"algorithm": found.algorithm, "auth_data": json.loads(found.auth_data), "count": found.key_count,
            "etag": str(found.etag), "version": str(found.version)}  # fmt: skip


def key_text(key: BackedUpKey) -> str:
    """A stored key as KeyBackupData JSON text (session_data is already JSON text)."""
    return (f'{{"first_message_index":{key.first_message_index},"forwarded_count":{key.forwarded_count},'
            f'"is_verified":{"true" if key.is_verified else "false"},"session_data":{key.session_data}}}')  # fmt: skip


class KeysDocument:
    """Writes the answer to GET /room_keys/keys (``{"rooms": …}``) or to a room's (``{"sessions": …}``)
    from rows ordered by (room, session), a page at a time, so a big backup is never held whole.

    :meth:`feed` and :meth:`finish` return the next piece of text; their concatenation is the document.
    """

    def __init__(self, whole: bool) -> None:
        self.whole = whole
        self._room: str | None = None
        self._first = True  # no session written yet in the open room (or in the document)
        self._started = False

    def feed(self, rows: Iterable[tuple[str, str, BackedUpKey]]) -> str:
        """Text for ``rows`` (which follow, in order, every row fed before)."""
        parts = [] if self._started else ['{"rooms":{' if self.whole else '{"sessions":{']
        self._started = True
        for room_id, session_id, key in rows:
            if self.whole and room_id != self._room:
                if self._room is not None:
                    parts.append("}},")
                parts.append(_dumps(room_id) + ':{"sessions":{')
                self._room, self._first = room_id, True
            parts.append(("" if self._first else ",") + _dumps(session_id) + ":" + key_text(key))
            self._first = False
        return "".join(parts)

    def finish(self) -> str:
        """The text that closes the document."""
        head = self.feed(())
        return head + ("}}}}" if self._room is not None else "}}")


# ----------------------------------------------------------------- service


class RoomKeyBackups:
    """The key backup operations of one gateway, on its :class:`RoomKeyStore`.

    Every method takes the requester's user ID and parsed request parts and raises
    :class:`~lowband.gateway.matrix.errors.MatrixError` as the spec names; each refusal is counted in
    :attr:`refused` (by errcode) and logged with its reason.
    """

    def __init__(self, store: RoomKeyStore) -> None:
        self.store = store
        self.refused: Counter[str] = Counter()

    def refuse(self, user_id: str, what: str, error: MatrixError) -> MatrixError:
        """Count and log a refusal; returns ``error`` for the caller to raise."""
        self.refused[error.errcode] += 1
        # "no backup yet" is every client's first question: not worth a line at info
        level = logging.DEBUG if error.status == 404 else logging.INFO
        log.log(level, "room_keys: refused %s for %s: %s %s", what, user_id, error.errcode, error.message)
        return error

    # ------------------------------------------------------------ versions

    async def create_version(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /room_keys/version: ``{"version": "N"}``; 403 M_FORBIDDEN past :data:`MAX_VERSIONS_PER_USER`."""
        try:
            algorithm, auth_data = parse_backup_info(body)
            try:
                version = await self.store.create_version(user_id, algorithm, auth_data, MAX_VERSIONS_PER_USER)
            except RoomKeysFull as exc:
                raise MatrixError(403, "M_FORBIDDEN", str(exc)) from None
        except MatrixError as exc:
            raise self.refuse(user_id, "a new version", exc) from None
        log.info("room_keys: %s created backup version %d (%s)", user_id, version, algorithm)
        return {"version": str(version)}

    def get_version(self, user_id: str, version: str | None) -> dict[str, Any]:
        """GET /room_keys/version (``version`` None: the current one) or /room_keys/version/{v}; 404 M_NOT_FOUND."""
        try:
            if version is None:
                found = self.store.current_version(user_id)
                if found is None:
                    raise not_found("No current backup version")
            else:
                found = self._live(user_id, version)
        except MatrixError as exc:
            raise self.refuse(user_id, "reading a version", exc) from None
        return version_body(found)

    async def update_version(self, user_id: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /room_keys/version/{v}: new auth_data. 404 for an unknown version, 400 M_INVALID_PARAM when
        ``algorithm`` is not the version's or ``version`` in the body is not the path's."""
        try:
            number = parse_version(version)
            algorithm, auth_data = parse_backup_info(body)
            named = body.get("version")
            if named is not None and not isinstance(named, str):
                raise bad_json("'version' must be a string")
            if named is not None and named != version:
                raise invalid_param("the version in the body is not the version in the path")
            found = self._live(user_id, version)
            if algorithm != found.algorithm:
                raise invalid_param("the algorithm does not match the backup's")
            if not await self.store.update_version(user_id, number, auth_data):
                raise not_found("Unknown backup version")  # deleted meanwhile
        except MatrixError as exc:
            raise self.refuse(user_id, "updating a version", exc) from None
        return {}

    async def delete_version(self, user_id: str, version: str) -> dict[str, Any]:
        """DELETE /room_keys/version/{v} and its keys; 200 also when it was deleted before, 404 when never made."""
        try:
            number = parse_version(version)
            if not await self.store.delete_version(user_id, number) and number > self.store.last_issued(user_id):
                raise not_found("Unknown backup version")
        except MatrixError as exc:
            raise self.refuse(user_id, "deleting a version", exc) from None
        log.info("room_keys: %s deleted backup version %d", user_id, number)
        return {}

    def _live(self, user_id: str, version: str | None) -> RoomKeyVersion:
        found = self.store.get_version(user_id, parse_version(version))
        if found is None:
            raise not_found("Unknown backup version")
        return found

    # ---------------------------------------------------------------- keys

    async def put_keys(self, user_id: str, version: str | None, body: dict[str, Any], room_id: str | None = None,
                       session_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """PUT /room_keys/keys[/{room}[/{session}]]: ``{"etag", "count"}`` of the version after.

        403 M_WRONG_ROOM_KEYS_VERSION (with ``current_version``) when ``version`` is not the current one,
        404 when the user has no backup, 403 M_FORBIDDEN past :data:`MAX_KEYS_PER_USER` or
        :data:`MAX_BYTES_PER_USER`; validation errors as :func:`parse_upload`. All or nothing.
        """
        try:
            number = parse_version(version)
            keys = parse_upload(body, room_id, session_id)
            try:
                etag, count = await self.store.put_keys(user_id, number, keys, replaces, MAX_KEYS_PER_USER,
                                                        MAX_BYTES_PER_USER)  # fmt: skip
            except WrongRoomKeysVersion as exc:
                if exc.current is None:
                    raise not_found("No current backup version") from None
                raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version.",
                                  current_version=str(exc.current)) from None  # fmt: skip
            except RoomKeysFull as exc:
                raise MatrixError(403, "M_FORBIDDEN", str(exc)) from None
        except MatrixError as exc:
            raise self.refuse(user_id, "storing keys", exc) from None
        return {"etag": str(etag), "count": count}

    async def delete_keys(self, user_id: str, version: str | None, room_id: str | None = None,
                          session_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """DELETE /room_keys/keys[/{room}[/{session}]] from a live version: ``{"etag", "count"}``; 404 otherwise."""
        try:
            number = parse_version(version)
            if room_id is not None:
                check_room_id(room_id)
            if session_id is not None:
                check_session_id(session_id)
            result = await self.store.delete_keys(user_id, number, room_id, session_id)
            if result is None:
                raise not_found("Unknown backup version")
        except MatrixError as exc:
            raise self.refuse(user_id, "deleting keys", exc) from None
        return {"etag": str(result[0]), "count": result[1]}

    def get_key(self, user_id: str, version: str | None, room_id: str, session_id: str) -> str:
        """GET /room_keys/keys/{room}/{session}: the KeyBackupData as JSON text; 404 for no version or key."""
        try:
            number = self._live(user_id, version).version
            key = self.store.get_key(user_id, number, check_room_id(room_id), check_session_id(session_id))
            if key is None:
                raise not_found("Key not found")
        except MatrixError as exc:
            raise self.refuse(user_id, "reading a key", exc) from None
        return key_text(key)

    def open_download(self, user_id: str, version: str | None, room_id: str | None) -> int:
        """Check a GET of a version's (or a room's) keys may start: the version number; 404 otherwise."""
        try:
            number = self._live(user_id, version).version
            if room_id is not None:
                check_room_id(room_id)
        except MatrixError as exc:
            raise self.refuse(user_id, "reading keys", exc) from None
        return number

    def download(self, user_id: str, version: int, room_id: str | None) -> Iterator[str]:
        """The text of GET /room_keys/keys[/{room}] in pieces, one store page each (a missing room: no keys)."""
        document = KeysDocument(whole=room_id is None)
        after: tuple[str, str] | None = None
        while True:
            rows = self.store.keys_page(user_id, version, room_id, after, DOWNLOAD_PAGE)
            if rows:
                yield document.feed(rows)
                after = rows[-1][0], rows[-1][1]
            if len(rows) < DOWNLOAD_PAGE:
                break
        yield document.finish()
