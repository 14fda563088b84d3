"""An account after registration: password change, deactivation, OpenID tokens, whois, the client well-known.

User-interactive auth is :mod:`lowband.gateway.homeserver.uia` (the same sessions as registration and device
deletion); each operation keeps its answer in its session, so completing a session twice runs it once.
Registration itself is in ``client_auth.py``; docs/client-api.md describes every endpoint here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, rate_limit, services
from lowband.gateway.api.http.client_keys import remove_devices
from lowband.gateway.homeserver.accounts import hash_password
from lowband.gateway.homeserver.services import Services
from lowband.gateway.homeserver.uia import PASSWORD
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found

log = logging.getLogger(__name__)

#: how long an OpenID token is valid (the spec's example and what integration managers expect)
OPENID_LIFETIME_S = 3600
#: live OpenID tokens one user holds at most (the oldest ends when a new one is asked for past it)
OPENID_MAX_PER_USER = 20
#: the longest password accepted (as registration)
MAX_PASSWORD_CHARS = 512
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def _password_param(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_PASSWORD_CHARS:
        raise bad_json(f"'{key}' must be a string of at most {MAX_PASSWORD_CHARS} characters")
    if not value:
        raise MatrixError(400, "M_WEAK_PASSWORD", "the password must not be empty")
    return value


def _bool_param(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_json(f"'{key}' must be true or false")
    return value


# ----------------------------------------------------------------- password


async def change_password(request: web.Request) -> web.Response:
    """POST /account/password: a new password once the current one is given (m.login.password).

    ``logout_devices`` (default true) ends every other device of the account, with its tokens and end-to-end
    keys, as deleting a device does; the device making the request stays logged in.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request)
    _password_param(body, "new_password")
    _bool_param(body, "logout_devices", True)
    session = await svc.uia.require("password", body, [[PASSWORD]], user_id=requester.user_id,
                                    keep=("new_password", "logout_devices"))  # fmt: skip
    async with session.lock:
        if session.answer is None:
            new_password = _password_param(session.params, "new_password")
            if new_password is None:
                raise MatrixError(400, "M_MISSING_PARAM", "missing 'new_password'")
            await svc.store.set_password_hash(requester.user_id, await asyncio.to_thread(hash_password, new_password))
            if _bool_param(session.params, "logout_devices", True):
                others = [d.device_id for d in svc.store.user_devices(requester.user_id) if d.device_id != requester.device_id]
                await remove_devices(svc, requester.user_id, others)
            session.params.pop("new_password", None)  # no longer needed in memory
            session.answer = {}
    return ok(session.answer)


# ------------------------------------------------------------- deactivation


async def deactivate(request: web.Request) -> web.Response:
    """POST /account/deactivate: the account ends for good once the password is given (m.login.password).

    An application service deactivates a user of its namespace without a password, as the spec allows.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request, allow_empty=True)
    _bool_param(body, "erase", False)
    if body.get("id_server") is not None and not isinstance(body.get("id_server"), str):
        raise bad_json("'id_server' must be a string")
    if requester.appservice is not None:
        await deactivate_account(svc, requester.user_id, erase=_bool_param(body, "erase", False))
        return ok({"id_server_unbind_result": "no-support"})
    session = await svc.uia.require("deactivate", body, [[PASSWORD]], user_id=requester.user_id, keep=("erase",))
    async with session.lock:
        if session.answer is None:
            await deactivate_account(svc, requester.user_id, erase=_bool_param(session.params, "erase", False))
            session.answer = {"id_server_unbind_result": "no-support"}  # no identity server is ever bound here
    return ok(session.answer)


async def deactivate_account(svc: Services, user_id: str, *, erase: bool) -> None:
    """End ``user_id`` for good: devices (tokens, end-to-end keys), profile, every room; see docs/client-api.md.
    With ``erase`` also their account data and filters, and their events are served redacted to every reader
    who was not joined when they were sent (homeserver/sync.py).

    Rooms held by this gateway are left with a leave event each (an invite is rejected the same way); a room
    failing to take the leave is logged and skipped, never stopping the rest. An invite to, or a knock on, a
    room this gateway does not hold is dropped from the user's view without telling the remote server.
    """
    await remove_devices(svc, user_id, [d.device_id for d in svc.store.user_devices(user_id)])
    await svc.store.account_lifecycle.deactivate(user_id, erase=erase, now_ms=int(time.time() * 1000))
    if erase:  # from now on their events reach readers who were not in the room then redacted (sync.py)
        svc.sync.erased.add(user_id)
    for room_id, membership, _, _ in svc.store.rooms_for_user(user_id):
        if membership not in ("join", "invite", "knock"):
            continue
        if svc.rooms.head(room_id) is None:
            await svc.store.forget_room(room_id, user_id)
            continue
        try:
            await svc.rooms.set_membership(user_id, room_id, user_id, "leave")
        except MatrixError as exc:
            log.warning("deactivating %s: could not leave %s: %s", user_id, room_id, exc.message)


# ------------------------------------------------------------------- OpenID


async def request_openid_token(request: web.Request) -> web.Response:
    """POST /user/{userId}/openid/request_token: a token a third party checks with /federation/v1/openid/userinfo."""
    requester = authenticate(request)
    rate_limit(request, requester)
    if request.match_info["user_id"] != requester.user_id:
        raise forbidden("an OpenID token can only be asked for oneself")
    await json_body(request, allow_empty=True)
    svc = services(request)
    token = "lbo_" + secrets.token_urlsafe(32)
    await svc.store.account_lifecycle.add_openid_token(token, requester.user_id, int(time.time() * 1000),
                                                       OPENID_LIFETIME_S * 1000, OPENID_MAX_PER_USER)  # fmt: skip
    return ok({"access_token": token, "token_type": "Bearer", "matrix_server_name": svc.server_name,
               "expires_in": OPENID_LIFETIME_S})  # fmt: skip


async def openid_userinfo(request: web.Request) -> web.Response:
    """GET /_matrix/federation/v1/openid/userinfo?access_token=: whose OpenID token this is (no server auth)."""
    token = request.query.get("access_token", "")
    if not token:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "access_token is required")
    user_id = services(request).store.account_lifecycle.openid_user(token, int(time.time() * 1000))
    if user_id is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "unknown or expired OpenID token")
    return ok({"sub": user_id})


# -------------------------------------------------------------------- whois


async def whois(request: web.Request) -> web.Response:
    """GET /admin/whois/{userId}: a user's devices and sessions, for server admins and the user themself.

    Each live access token is a session. The gateway records no client addresses or last-seen times, so
    ``connections`` is empty.
    """
    requester = authenticate(request)
    svc = services(request)
    target = request.match_info["user_id"]
    if target != requester.user_id:
        row = svc.store.get_user(requester.user_id) if requester.appservice is None else None
        if row is None or not row["admin"]:
            raise forbidden("only server admins may look up other users")
    if not target.startswith("@") or target.partition(":")[2] != svc.server_name or svc.store.get_user(target) is None:
        raise not_found("no such user on this server")
    devices: dict[str, Any] = {device_id: {"sessions": [{"connections": []} for _ in tokens]}
               for device_id, tokens in svc.store.account_lifecycle.device_sessions(target).items()}  # fmt: skip
    return ok({"user_id": target, "devices": devices})


# --------------------------------------------------------------- well-known


async def well_known_client(request: web.Request) -> web.Response:
    """GET /.well-known/matrix/client: where clients reach this server's client API (CORS by the app)."""
    config = services(request).config
    base_url = config.public_base_url
    if base_url is None:  # the address the client just used, which reached this very listener
        host = request.host if _HOST.fullmatch(request.host or "") else f"{config.http_host}:{config.http_port}"
        base_url = f"{'https' if config.tls_cert is not None else 'http'}://{host}"
    return ok({"m.homeserver": {"base_url": base_url}})


async def registration_token_validity(request: web.Request) -> web.Response:
    """GET /v1/register/m.login.registration_token/validity?token=: whether a registration token is usable."""
    svc = services(request)
    if not svc.config.registration_enabled:
        raise forbidden("registration is disabled")
    token = request.query.get("token")
    if token is None:
        raise MatrixError(400, "M_MISSING_PARAM", "'token' is required")
    if len(token) > 64:
        return ok({"valid": False})
    return ok({"valid": svc.uia.token_valid(token)})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.post(CLIENT + "/account/password", change_password),
        web.post(CLIENT + "/account/deactivate", deactivate),
        web.post(CLIENT + "/user/{user_id}/openid/request_token", request_openid_token),
        web.get("/_matrix/federation/v1/openid/userinfo", openid_userinfo),
        web.get(CLIENT + "/admin/whois/{user_id}", whois),
        web.get("/.well-known/matrix/client", well_known_client),
        web.get("/_matrix/client/v1/register/m.login.registration_token/validity", registration_token_validity),
    ]
