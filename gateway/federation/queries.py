"""Questions our clients ask about other servers: a user's profile, what an alias names, the public rooms.

Rules:

* each question goes to the server the identifier names (``/query/profile``,
  ``/query/directory``, ``/publicRooms``) with a bounded timeout and a
  bounded answer size;
* answers are checked before a client sees them: only the fields the spec
  defines, of the right types, in bounded numbers;
* failures become the client-server API's errors (:func:`client_error`):
  the other server's 404 is ``404 M_NOT_FOUND``, its other 4xx pass through,
  an unreachable server (connection, TLS, timeout, 5xx) or a malformed answer
  is ``502``;
* profiles are cached for :data:`PROFILE_TTL_S` (a missing user too), at
  most :data:`MAX_CACHED_PROFILES` of them, and simultaneous questions about
  one user share one request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, PeerUnreachable
from lowband.gateway.federation.resolver import ServerNameError, parse_server_name
from lowband.gateway.matrix.errors import MatrixError, not_found
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.identifiers import is_room_id

__all__ = ["MAX_CACHED_PROFILES", "PROFILE_TTL_S", "RemoteQueries", "client_error"]

PROFILE_TTL_S = 60.0
MAX_CACHED_PROFILES = 1024
PROFILE_TIMEOUT_S = 10.0
DIRECTORY_TIMEOUT_S = 15.0
PUBLIC_ROOMS_TIMEOUT_S = 20.0
_SMALL_ANSWER = 64 * 1024
_PUBLIC_ROOMS_ANSWER = 4 * 1024 * 1024
_MAX_FIELD_CHARS = 1024
_MAX_ROOMS = 1000
_MAX_SERVERS = 20


def client_error(exc: FederationError, what: str) -> MatrixError:
    """What a client is told when asking ``exc.destination`` about ``what`` failed."""
    server = exc.destination
    if exc.status == 404:
        return not_found(f"{server} does not know {what}")
    if exc.status == 0 and exc.errcode == "M_INVALID_PARAM":
        return MatrixError(400, "M_INVALID_PARAM", f"{server[:100]!r} is not a server name")
    if isinstance(exc, PeerUnreachable) or exc.status == 0 or exc.status >= 500:
        return MatrixError(502, "M_UNKNOWN", f"{server} could not be asked about {what}: {exc.message}"[:400])
    return MatrixError(exc.status, exc.errcode, f"{server}: {exc.message}"[:400])


def _bad_answer(server: str, what: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", f"{server} gave an unusable answer about {what}")


class RemoteQueries:
    """Client questions about other servers, asked through ``client``."""

    def __init__(self, client: FederationClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self._profiles: dict[str, tuple[float, dict[str, str] | None]] = {}  # user -> (expiry, profile or None)
        self._asking: dict[str, asyncio.Future[dict[str, str] | None]] = {}

    # ------------------------------------------------------------- profiles

    async def profile(self, user_id: str) -> dict[str, str]:
        """``displayname`` and ``avatar_url`` (those set) of a user of another server; MatrixError otherwise."""
        now = self.clock()
        cached = self._profiles.get(user_id)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            pending = self._asking.get(user_id)
            if pending is None:
                pending = asyncio.ensure_future(self._ask_profile(user_id))
                self._asking[user_id] = pending
                pending.add_done_callback(lambda _f: self._asking.pop(user_id, None))
            found = await asyncio.shield(pending)
        if found is None:
            raise not_found(f"no profile of {user_id[:100]}")
        return dict(found)

    async def _ask_profile(self, user_id: str) -> dict[str, str] | None:
        server = server_name_of(user_id)
        try:
            answer = await self.client.request(server, "GET", "/_matrix/federation/v1/query/profile",
                                               query={"user_id": user_id}, timeout=PROFILE_TIMEOUT_S,
                                               max_bytes=_SMALL_ANSWER)  # fmt: skip
        except FederationError as exc:
            if exc.status != 404:
                raise client_error(exc, f"the profile of {user_id[:100]}") from None
            found: dict[str, str] | None = None
        else:
            if not isinstance(answer, dict):
                raise _bad_answer(server, f"the profile of {user_id[:100]}")
            found = {k: v for k in ("displayname", "avatar_url")
                     if isinstance(v := answer.get(k), str) and 0 < len(v) <= _MAX_FIELD_CHARS}  # fmt: skip
        self._remember(user_id, found)
        return found

    def _remember(self, user_id: str, found: dict[str, str] | None) -> None:
        now = self.clock()
        if len(self._profiles) >= MAX_CACHED_PROFILES:
            self._profiles = {u: e for u, e in self._profiles.items() if e[0] > now}
            while len(self._profiles) >= MAX_CACHED_PROFILES:
                self._profiles.pop(next(iter(self._profiles)))  # the oldest entry
        self._profiles[user_id] = (now + PROFILE_TTL_S, found)

    # ------------------------------------------------------------- aliases

    async def directory(self, alias: str) -> tuple[str, list[str]]:
        """(room ID, servers in the room) for an alias of another server; MatrixError otherwise."""
        try:
            server = server_name_of(alias)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "an alias needs a server name") from None
        try:
            answer = await self.client.request(server, "GET", "/_matrix/federation/v1/query/directory",
                                               query={"room_alias": alias}, timeout=DIRECTORY_TIMEOUT_S,
                                               max_bytes=_SMALL_ANSWER)  # fmt: skip
        except FederationError as exc:
            raise client_error(exc, f"the alias {alias[:100]}") from None
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        if not isinstance(room_id, str) or not is_room_id(room_id):
            raise _bad_answer(server, f"the alias {alias[:100]}")
        hints = answer.get("servers")
        servers = [s for s in (hints if isinstance(hints, list) else [])[:100] if _is_server_name(s)][:_MAX_SERVERS]
        return room_id, list(dict.fromkeys([*servers, server]))

    # ------------------------------------------------------------- public rooms

    async def public_rooms(self, server: str, limit: int | None, since: str | None,
                           search: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """One page of ``server``'s public room directory; ``search`` (POST) carries ``filter`` and friends."""
        if not _is_server_name(server):
            raise MatrixError(400, "M_INVALID_PARAM", f"{server[:100]!r} is not a server name")
        path = "/_matrix/federation/v1/publicRooms"
        try:
            if search is None:
                query = {k: str(v) for k, v in (("limit", limit), ("since", since)) if v is not None}
                answer = await self.client.request(server, "GET", path, query=query or None,
                                                   timeout=PUBLIC_ROOMS_TIMEOUT_S, max_bytes=_PUBLIC_ROOMS_ANSWER)  # fmt: skip
            else:
                body = {k: v for k, v in (("limit", limit), ("since", since)) if v is not None}
                body.update({k: search[k] for k in ("filter", "include_all_networks", "third_party_instance_id")
                             if k in search})  # fmt: skip
                answer = await self.client.request(server, "POST", path, body=body, timeout=PUBLIC_ROOMS_TIMEOUT_S,
                                                   max_bytes=_PUBLIC_ROOMS_ANSWER)  # fmt: skip
        except FederationError as exc:
            raise client_error(exc, "its public rooms") from None
        chunk = answer.get("chunk") if isinstance(answer, dict) else None
        if not isinstance(chunk, list):
            raise _bad_answer(server, "its public rooms")
        rooms = [r for r in chunk[:_MAX_ROOMS] if isinstance(r, dict) and isinstance(r.get("room_id"), str)
                 and is_room_id(r["room_id"]) and isinstance(r.get("num_joined_members"), int)]  # fmt: skip
        page: dict[str, Any] = {"chunk": rooms}
        for key in ("next_batch", "prev_batch"):
            if isinstance(answer.get(key), str) and answer[key]:
                page[key] = answer[key][:500]
        estimate = answer.get("total_room_count_estimate")
        if isinstance(estimate, int) and not isinstance(estimate, bool) and estimate >= 0:
            page["total_room_count_estimate"] = estimate
        return page


def _is_server_name(value: Any) -> bool:
    try:
        parse_server_name(value)
    except ServerNameError:
        return False
    return True
