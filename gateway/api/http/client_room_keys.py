"""Server-side key backups over HTTP: ``/room_keys/version[/{v}]`` and ``/room_keys/keys[/{room}[/{session}]]``.

The rules and limits are in :mod:`lowband.gateway.homeserver.room_keys`; this
module reads the request (token, write bucket, JSON body, path, ``?version=``)
and writes the answer. A download of a whole backup or room is written out a
page of keys at a time (chunked), so its size costs no memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, rate_limit, services
from lowband.gateway.homeserver.room_keys import RoomKeyBackups
from lowband.gateway.homeserver.services import Services

_COMPONENT = "room_keys"


def backups(svc: Services) -> RoomKeyBackups:
    """The gateway's key backup service (made on first use, kept with the services for its counters)."""
    found = svc.components.get(_COMPONENT)
    if not isinstance(found, RoomKeyBackups):
        found = svc.components[_COMPONENT] = RoomKeyBackups(svc.store.room_keys)
    return found


def _room(request: web.Request) -> str | None:
    return request.match_info.get("room_id")


def _session(request: web.Request) -> str | None:
    return request.match_info.get("session_id")


# ------------------------------------------------------------ versions


async def post_version(request: web.Request) -> web.Response:
    """POST /room_keys/version: create a backup version (it becomes the current one)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    return ok(await backups(services(request)).create_version(requester.user_id, body))


async def get_version(request: web.Request) -> web.Response:
    """GET /room_keys/version[/{version}]: algorithm, auth_data, count, etag, version."""
    requester = authenticate(request)
    return ok(backups(services(request)).get_version(requester.user_id, request.match_info.get("backup")))


async def put_version(request: web.Request) -> web.Response:
    """PUT /room_keys/version/{version}: replace its auth_data."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    return ok(await backups(services(request)).update_version(requester.user_id, request.match_info["backup"], body))


async def delete_version(request: web.Request) -> web.Response:
    """DELETE /room_keys/version/{version}: the version and its keys."""
    requester = authenticate(request)
    rate_limit(request, requester)
    return ok(await backups(services(request)).delete_version(requester.user_id, request.match_info["backup"]))


# ---------------------------------------------------------------- keys


async def put_keys(request: web.Request) -> web.Response:
    """PUT /room_keys/keys[/{roomId}[/{sessionId}]]?version=: store keys in the current version."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    answer = await backups(services(request)).put_keys(requester.user_id, request.query.get("version"), body,
                                                       _room(request), _session(request))  # fmt: skip
    return ok(answer)


async def delete_keys(request: web.Request) -> web.Response:
    """DELETE /room_keys/keys[/{roomId}[/{sessionId}]]?version=."""
    requester = authenticate(request)
    rate_limit(request, requester)
    answer = await backups(services(request)).delete_keys(requester.user_id, request.query.get("version"),
                                                          _room(request), _session(request))  # fmt: skip
    return ok(answer)


async def get_keys(request: web.Request) -> web.Response:
    """GET /room_keys/keys[/{roomId}[/{sessionId}]]?version=: one key, or every key of a room or the backup."""
    requester = authenticate(request)
    service = backups(services(request))
    version, room_id, session_id = request.query.get("version"), _room(request), _session(request)
    if room_id is not None and session_id is not None:
        text = service.get_key(requester.user_id, version, room_id, session_id)
        return web.Response(text=text, content_type="application/json")
    number = service.open_download(requester.user_id, version, room_id)
    pieces = service.download(requester.user_id, number, room_id)

    async def body() -> AsyncIterator[bytes]:
        # Each piece is one store page. The write after it waits only while the client's buffer is full, so
        # a fast reader would hold the loop for the whole download (0.7 s for 90 MB): let others in per page.
        for piece in pieces:
            yield piece.encode("utf-8")
            await asyncio.sleep(0)

    # aiohttp sends an async iterable chunked, after the middleware has added its headers
    return web.Response(body=body(), content_type="application/json")


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    # the path's backup version is {backup}: {version} is CLIENT's v3 or r0
    version = CLIENT + "/room_keys/version"
    keys = CLIENT + "/room_keys/keys"
    room = keys + "/{room_id}"
    session = room + "/{session_id}"
    return [
        web.post(version, post_version),
        web.get(version, get_version),
        web.get(version + "/{backup}", get_version),
        web.put(version + "/{backup}", put_version),
        web.delete(version + "/{backup}", delete_version),
        *[route for path in (keys, room, session)
          for route in (web.put(path, put_keys), web.get(path, get_keys), web.delete(path, delete_keys))],
    ]  # fmt: skip
