"""Versions, capabilities, login, logout, registration, whoami."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import (
    CLIENT,
    Requester,
    access_token,
    authenticate,
    get_str,
    json_body,
    ok,
    rate_limit,
    services,
)
from lowband.gateway.api.http.client_presence import register_guest
from lowband.gateway.appservices.registration import appservices_of
from lowband.gateway.homeserver.accounts import (
    check_password,
    hash_password,
    needs_rehash,
    new_device_id,
    new_token,
    user_id_for,
)
from lowband.gateway.homeserver.guests import GUEST_OWNER
from lowband.gateway.homeserver.services import COAP_VERSIONS, Services
from lowband.gateway.homeserver.uia import DUMMY, REGISTRATION_TOKEN
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden
from lowband.gateway.store.interfaces import UserExists

SPEC_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"]


async def versions(request: web.Request) -> web.Response:
    """GET /_matrix/client/versions; with a CoAP listener running, MSC3079's low-bandwidth object too."""
    body: dict[str, Any] = {"versions": SPEC_VERSIONS, "unstable_features": {}}
    low_bandwidth = services(request).components.get(COAP_VERSIONS)
    if isinstance(low_bandwidth, dict) and low_bandwidth:
        # the stable name and the MSC's unstable prefix, for clients that know only one of them
        body["m.low_bandwidth"] = dict(low_bandwidth)
        body["org.matrix.msc3079.low_bandwidth"] = dict(low_bandwidth)
    return ok(body)


async def capabilities(request: web.Request) -> web.Response:
    """GET /capabilities."""
    authenticate(request)
    return ok({
        "capabilities": {
            "m.room_versions": {
                "default": room_versions.DEFAULT.identifier,
                "available": dict.fromkeys(room_versions.KNOWN, "stable"),
            },
            "m.change_password": {"enabled": True},
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.3pid_changes": {"enabled": False},
        }
    })  # fmt: skip


async def login_flows(request: web.Request) -> web.Response:
    """GET /login."""
    return ok({"flows": [{"type": "m.login.password"}, {"type": "m.login.application_service"}]})


async def _issue_token(request: web.Request, user_id: str, body: dict) -> dict:
    svc = services(request)
    device_id = get_str(body, "device_id", required=False) or new_device_id()
    display_name = get_str(body, "initial_device_display_name", required=False)
    token = new_token()
    new_device = svc.store.user_device(user_id, device_id) is None
    await svc.store.add_token(token, user_id, device_id, display_name, int(time.time() * 1000))
    if new_device:  # users sharing a room learn of it (device_lists.changed) and can warn about it
        await svc.store.e2ee.device_list_changed([user_id])
        svc.device_keys.changed(user_id)
    return {"user_id": user_id, "access_token": token, "device_id": device_id, "home_server": svc.server_name}


async def login(request: web.Request) -> web.Response:
    """POST /login with m.login.password and an m.id.user identifier."""
    rate_limit(request)
    svc = services(request)
    body = await json_body(request)
    if body.get("type") == "m.login.application_service":
        return await _login_appservice_user(request, body)
    if body.get("type") != "m.login.password":
        raise MatrixError(400, "M_UNKNOWN", "only m.login.password and m.login.application_service are supported")
    identifier = body.get("identifier")
    if isinstance(identifier, dict):
        if identifier.get("type") != "m.id.user":
            raise MatrixError(400, "M_UNKNOWN", "only m.id.user identifiers are supported")
        user = get_str(identifier, "user")
    else:
        user = get_str(body, "user")
    password = get_str(body, "password")
    assert user is not None and password is not None
    user_id = user if user.startswith("@") else f"@{user.lower()}:{svc.server_name}"
    throttle = svc.login_throttle
    if throttle is not None:
        throttle.check(user_id)
    row = svc.store.get_user(user_id)
    # An unknown user costs the same scrypt as a wrong password: the answer's timing must not tell which names
    # exist (it did: 38 ms against 0.6 ms). A deactivated account keeps its hash: only its right password
    # learns that it was deactivated.
    stored = row["password_hash"] if row is not None else await asyncio.to_thread(_decoy_hash)
    matches = await asyncio.to_thread(check_password, password, stored)
    if row is None or not matches:
        if throttle is not None:
            throttle.failed(user_id)
        raise forbidden("invalid user name or password")
    if row["deactivated"]:
        raise MatrixError(403, "M_USER_DEACTIVATED", f"{user_id} has been deactivated")
    if throttle is not None:
        throttle.succeeded(user_id)
    if needs_rehash(stored):  # the one moment the password is at hand: bring an old hash up to today's cost
        await svc.store.set_password_hash(user_id, await asyncio.to_thread(hash_password, password))
    return ok(await _issue_token(request, user_id, body))


async def _login_appservice_user(request: web.Request, body: dict) -> web.Response:
    """m.login.application_service: a token for a user in the bridge's namespace, with its as_token."""
    token = access_token(request)
    svc = services(request)
    bridge = appservices_of(svc).by_token(token) if token is not None else None
    if bridge is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "m.login.application_service needs an application service's token")
    identifier = body.get("identifier")
    user = get_str(identifier, "user") if isinstance(identifier, dict) else get_str(body, "user")
    assert user is not None
    user_id = user if user.startswith("@") else f"@{user.lower()}:{svc.server_name}"
    if not bridge.may_act_as(user_id):
        raise MatrixError(403, "M_EXCLUSIVE", f"{user_id[:100]} is outside the application service's namespaces")
    row = svc.store.get_user(user_id)
    if row is None or row["deactivated"]:
        raise forbidden(f"{user_id[:100]} is not registered")
    return ok(await _issue_token(request, user_id, body))


async def logout(request: web.Request) -> web.Response:
    """POST /logout."""
    requester = authenticate(request)
    await services(request).store.delete_token(requester.token)
    return ok()


async def register(request: web.Request) -> web.Response:
    """POST /register: m.login.dummy when registration is enabled; m.login.application_service for a bridge."""
    svc = services(request)
    token = access_token(request)
    bridge = appservices_of(svc).by_token(token) if token is not None else None
    if bridge is not None:  # the bridge itself, whatever ?user_id= says (mautrix names the user it registers)
        return await _register_appservice_user(request, Requester(bridge.sender, "", token or "", bridge))
    rate_limit(request)
    kind = request.query.get("kind", "user")
    if kind == "guest":  # client_presence.py (guests.py): only when the config allows guests
        return await register_guest(request)
    if kind != "user":
        raise MatrixError(400, "M_INVALID_PARAM", "kind must be user or guest")
    if not svc.config.registration_enabled:
        raise forbidden("registration is disabled on this gateway")
    body = await json_body(request)
    username = _registration_params(body)
    # flows as below: the token (when configured) then m.login.dummy
    flows = [[REGISTRATION_TOKEN, DUMMY]] if svc.config.registration_tokens else [[DUMMY]]
    finished = _finished_upgrade(svc, body)
    if finished is not None:  # a retry after the answer was lost: the guest token it named has ended
        return ok(finished)
    guest = _upgrading_guest(svc, token, body)
    if guest is not None:
        return await _upgrade_guest(request, svc, guest, username, body, flows)
    if username is not None and not isinstance(body.get("auth"), dict):  # the first request: say it at once
        _check_available(svc, username)
    # User-interactive auth (homeserver/uia.py): the session keeps the first request's parameters and, once
    # the account is made, its answer: completing the session again returns that answer, never a 2nd account.
    # With tokens the flow is the token then m.login.dummy, as Synapse offers it (matrix-nio's
    # register_with_token completes the session with m.login.dummy after the token).
    session = await svc.uia.require("register", body, flows, keep=_REGISTRATION_PARAMS)
    async with session.lock:
        if session.answer is None:
            session.answer = await _create_account(request, svc, session.params)
            session.params.pop("password", None)  # no longer needed in memory
    return ok(session.answer)


#: the purpose of a guest's upgrade session, with the guest's user ID after it
_GUEST_UPGRADE = "register_guest:"
#: what a registration session remembers of its first request (each bounded by _registration_params)
_REGISTRATION_PARAMS = ("username", "password", "device_id", "initial_device_display_name", "inhibit_login")


def _registration_params(body: dict) -> str | None:
    """Check the types and sizes of /register's parameters (M_BAD_JSON); the username, if any."""
    for key in ("username", "password", "device_id", "initial_device_display_name"):
        get_str(body, key, required=False)
    if len(body.get("password") or "") > 512:
        raise bad_json("password too long")
    if len(body.get("username") or "") > 255:
        raise MatrixError(400, "M_INVALID_USERNAME", "a user ID is at most 255 bytes")
    if len(body.get("initial_device_display_name") or "") > 255 or len(body.get("device_id") or "") > 255:
        raise bad_json("device_id and initial_device_display_name must be at most 255 characters")
    if not isinstance(body.get("inhibit_login", False), bool):
        raise bad_json("'inhibit_login' must be true or false")
    return get_str(body, "username", required=False)


def _finished_upgrade(svc: Services, body: dict) -> dict | None:
    """The answer of the completed guest-upgrade session ``auth.session`` names, else None (as for any
    registration, completing a session again returns its answer, never runs it twice)."""
    auth = body.get("auth")
    session_id = auth.get("session") if isinstance(auth, dict) else None
    if not isinstance(session_id, str) or len(session_id) > 255:
        return None
    found = svc.uia.sessions.find(session_id, svc.uia.clock())
    if found is None or not found.purpose.startswith(_GUEST_UPGRADE) or found.answer is None:
        return None
    answer: dict = found.answer
    return answer


def _upgrading_guest(svc: Services, header_token: str | None, body: dict) -> tuple[str, str] | None:
    """(guest user ID, its access token) when this registration upgrades a guest: the body's
    ``guest_access_token`` (the spec's parameter) or else the Authorization header's token. None without either.

    401 M_UNKNOWN_TOKEN for a token nobody holds; 403 M_FORBIDDEN for the token of an account that is not a guest
    (a full account is never registered over).
    """
    token = body.get("guest_access_token")
    if token is not None and (not isinstance(token, str) or len(token) > 512):
        raise bad_json("'guest_access_token' must be an access token")
    token = token if token is not None else header_token
    if token is None:
        return None
    found = svc.store.lookup_token(token)
    if found is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "unknown access token", soft_logout=False)
    if not svc.guests.is_guest(found[0]):
        raise forbidden("only a guest's access token upgrades an account: this one is not a guest's")
    return found[0], token


async def _upgrade_guest(request: web.Request, svc: Services, guest: tuple[str, str], username: str | None,
                         body: dict, flows: list[list[str]]) -> web.Response:  # fmt: skip
    """The ordinary registration flow for a guest becoming a full account under its own user ID."""
    user_id, _ = guest
    localpart = user_id[1:].partition(":")[0]
    if username is not None and username != localpart:
        raise forbidden(f"a guest keeps its user ID: 'username' must be {localpart!r} or absent")
    # the session is bound to this guest: another guest's token cannot complete it
    session = await svc.uia.require(_GUEST_UPGRADE + user_id, body, flows, keep=_REGISTRATION_PARAMS)
    async with session.lock:
        if session.answer is None:
            session.answer = await _upgrade_account(request, svc, guest, session.params)
            session.params.pop("password", None)  # no longer needed in memory
    return ok(session.answer)


async def _upgrade_account(request: web.Request, svc: Services, guest: tuple[str, str], params: dict) -> dict:
    """Give the guest a password and make it a full account; a new token (the guest's own one ends) unless
    ``inhibit_login``, when the guest's token stays and is now the full account's."""
    user_id, guest_token = guest
    password = get_str(params, "password", required=False)
    if password is None:
        raise MatrixError(400, "M_MISSING_PARAM", "a password is required")
    password_hash = await asyncio.to_thread(hash_password, password)
    if not await svc.store.account_lifecycle.upgrade_guest(user_id, GUEST_OWNER, password_hash):
        raise forbidden(f"{user_id} is not a guest account")  # upgraded or deactivated meanwhile
    svc.guests.upgraded(user_id)
    if params.get("inhibit_login") is True:
        return {"user_id": user_id, "home_server": svc.server_name}
    answer = await _issue_token(request, user_id, params)
    await svc.store.delete_token(guest_token)
    return answer


def _check_available(svc: Services, username: str) -> str:
    """The user ID for ``username``: M_INVALID_USERNAME, M_EXCLUSIVE (reserved), M_USER_IN_USE otherwise."""
    user_id = user_id_for(username, svc.server_name)
    svc.namespaces.check_registrable(username, user_id)
    if svc.store.get_user(user_id) is not None:
        raise MatrixError(400, "M_USER_IN_USE", f"{user_id} is taken")
    return user_id


async def _create_account(request: web.Request, svc: Services, params: dict) -> dict:
    """Make the account a completed registration session asked for; its answer (with a token unless
    ``inhibit_login``)."""
    username = _registration_params(params) or secrets.token_hex(6)
    password = get_str(params, "password", required=False)
    if password is None:
        raise MatrixError(400, "M_MISSING_PARAM", "a password is required")
    user_id = _check_available(svc, username)
    try:
        password_hash = await asyncio.to_thread(hash_password, password)
        await svc.store.create_user(user_id, password_hash, False, int(time.time() * 1000))
    except UserExists:
        raise MatrixError(400, "M_USER_IN_USE", f"{user_id} is taken") from None
    if params.get("inhibit_login") is True:
        return {"user_id": user_id, "home_server": svc.server_name}
    return await _issue_token(request, user_id, params)


async def _register_appservice_user(request: web.Request, requester: Requester) -> web.Response:
    """A bridge registers a user in its namespace (no password: it acts as the user with its as_token)."""
    bridge = requester.appservice
    assert bridge is not None
    svc = services(request)
    body = await json_body(request)
    if body.get("type") != "m.login.application_service":
        raise MatrixError(400, "M_UNKNOWN", "an application service registers with type m.login.application_service")
    username = get_str(body, "username")
    assert username is not None
    user_id = username if username.startswith("@") else user_id_for(username, svc.server_name)
    if user_id.partition(":")[2] != svc.server_name or not bridge.may_act_as(user_id):
        raise MatrixError(400, "M_EXCLUSIVE", f"{user_id[:100]} is outside the application service's namespaces")
    user_id_for(user_id[1:].partition(":")[0], svc.server_name)  # M_INVALID_USERNAME for a bad localpart
    try:
        await svc.store.create_user(user_id, "!appservice-" + secrets.token_hex(16), False, int(time.time() * 1000),
                                    owner=f"appservice:{bridge.id}")  # fmt: skip
    except UserExists:
        raise MatrixError(400, "M_USER_IN_USE", f"{user_id} is taken") from None
    if body.get("inhibit_login") is True:
        return ok({"user_id": user_id, "home_server": svc.server_name})
    return ok(await _issue_token(request, user_id, body))


@functools.cache
def _decoy_hash() -> str:
    """A password hash no password given here matches (made once, with the same parameters as real ones)."""
    return hash_password(secrets.token_urlsafe(32))


async def register_available(request: web.Request) -> web.Response:
    """GET /register/available?username=."""
    svc = services(request)
    if not svc.config.registration_enabled:  # closed: it would only tell strangers which names exist
        raise forbidden("registration is disabled")
    _check_available(svc, request.query.get("username", ""))
    return ok({"available": True})


async def whoami(request: web.Request) -> web.Response:
    """GET /account/whoami."""
    requester = authenticate(request)
    answer: dict[str, object] = {"user_id": requester.user_id,
                                 "is_guest": services(request).guests.is_guest(requester.user_id)}
    if requester.device_id:  # an application service acting without ?device_id= has none
        answer["device_id"] = requester.device_id
    return ok(answer)


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get("/_matrix/client/versions", versions),
        web.get(CLIENT + "/capabilities", capabilities),
        web.get(CLIENT + "/login", login_flows),
        web.post(CLIENT + "/login", login),
        web.post(CLIENT + "/logout", logout),
        web.post(CLIENT + "/register", register),
        web.get(CLIENT + "/register/available", register_available),
        web.get(CLIENT + "/account/whoami", whoami),
    ]
