"""End-to-end encryption endpoints: keys/*, sendToDevice, and device management with user-interactive auth.

The logic lives in ``homeserver.e2ee_keys`` and ``homeserver.to_device``; this module parses requests,
asks for the password where the spec wants user-interactive auth, and shapes the answers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import (
    CLIENT,
    Requester,
    authenticate,
    json_body,
    ok,
    rate_limit,
    read_limit,
    services,
)
from lowband.gateway.homeserver.services import Services
from lowband.gateway.homeserver.sync import SyncToken
from lowband.gateway.homeserver.uia import PASSWORD
from lowband.gateway.matrix.errors import MatrixError, bad_json, not_found

#: devices one delete_devices request may name
MAX_DELETE_DEVICES = 1000


async def upload_keys(request: web.Request) -> web.Response:
    """POST /keys/upload (and the deprecated /keys/upload/{deviceId}, which must name the requester's device)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    named = request.match_info.get("device_id")
    if named is not None and named != requester.device_id:
        raise MatrixError(400, "M_INVALID_PARAM", "keys can only be uploaded for the requester's own device")
    body = await json_body(request)
    return ok(await services(request).device_keys.upload(requester.user_id, requester.device_id, body))


async def query_keys(request: web.Request) -> web.Response:
    """POST /keys/query (a read, from the read bucket: a POST only because the question can be long)."""
    requester = authenticate(request)
    read_limit(request)
    body = await json_body(request)
    return ok(await services(request).device_keys.query(requester.user_id, body))


async def claim_keys(request: web.Request) -> web.Response:
    """POST /keys/claim."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    return ok(await services(request).device_keys.claim(body))


async def key_changes(request: web.Request) -> web.Response:
    """GET /keys/changes?from=&to=: device list changes between two sync tokens."""
    requester = authenticate(request)
    tokens = []
    for name in ("from", "to"):
        raw = request.query.get(name)
        if raw is None:
            raise MatrixError(400, "M_MISSING_PARAM", f"'{name}' is required")
        tokens.append(SyncToken.parse(raw).stream)
    svc = services(request)
    since, upto = tokens[0], min(tokens[1], svc.store.persisted)
    return ok(svc.device_keys.changes(requester.user_id, since, max(since, upto)))


async def upload_signing_keys(request: web.Request) -> web.Response:
    """POST /keys/device_signing/upload: the first upload needs no password (MSC3967), replacing keys does."""
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request)
    if svc.device_keys.has_cross_signing(requester.user_id):
        await _require_password(request, svc, requester, body)
    await svc.device_keys.upload_cross_signing(requester.user_id, body)
    return ok()


async def upload_signatures(request: web.Request) -> web.Response:
    """POST /keys/signatures/upload."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    return ok(await services(request).device_keys.upload_signatures(requester.user_id, body))


async def send_to_device(request: web.Request) -> web.Response:
    """PUT /sendToDevice/{eventType}/{txnId}."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request)
    await services(request).to_device.send(requester.user_id, requester.device_id, request.match_info["event_type"],
                                           request.match_info["txn_id"], body.get("messages"))  # fmt: skip
    return ok()


# ------------------------------------------------------------------ devices


async def rename_device(request: web.Request) -> web.Response:
    """PUT /devices/{deviceId}: set its display name (a device list change for everyone who shares a room)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request, allow_empty=True)
    name = body.get("display_name")
    if name is not None and (not isinstance(name, str) or len(name) > 255):
        raise bad_json("display_name must be a string of at most 255 characters")
    if "display_name" in body:
        if not await svc.store.set_device_display_name(requester.user_id, request.match_info["device_id"], name):
            raise not_found("no such device")
        await svc.store.e2ee.device_list_changed([requester.user_id])
        svc.device_keys.changed(requester.user_id)
    elif svc.store.user_device(requester.user_id, request.match_info["device_id"]) is None:
        raise not_found("no such device")
    return ok()


async def delete_device(request: web.Request) -> web.Response:
    """DELETE /devices/{deviceId}, with the password (user-interactive auth)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request, allow_empty=True)
    device_id = request.match_info["device_id"]
    if svc.store.user_device(requester.user_id, device_id) is None:
        raise not_found("no such device")
    await _require_password(request, svc, requester, body)
    await remove_devices(svc, requester.user_id, [device_id])
    return ok()


async def delete_devices(request: web.Request) -> web.Response:
    """POST /delete_devices {devices: [...]}, with the password; unknown devices are ignored."""
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request)
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise bad_json("devices must be a list of device IDs")
    if len(devices) > MAX_DELETE_DEVICES:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_DELETE_DEVICES} devices per request")
    await _require_password(request, svc, requester, body)
    await remove_devices(svc, requester.user_id, list(dict.fromkeys(devices)))
    return ok()


async def logout_all(request: web.Request) -> web.Response:
    """POST /logout/all: every token and device of the requester ends."""
    requester = authenticate(request)
    svc = services(request)
    await remove_devices(svc, requester.user_id, [d.device_id for d in svc.store.user_devices(requester.user_id)],
                         also_token=requester)  # fmt: skip
    return ok()


async def remove_devices(svc: Services, user_id: str, device_ids: list[str], also_token: Requester | None = None) -> None:
    """End the devices' tokens, forget their keys and waiting messages, and announce the change."""
    removed = False
    for device_id in device_ids:
        removed = await svc.store.remove_device(user_id, device_id) or removed
        await svc.store.e2ee.delete_device(user_id, device_id)
    if also_token is not None:  # a token whose device row went missing still ends
        await svc.store.delete_token(also_token.token)
    if removed:
        await svc.store.e2ee.device_list_changed([user_id])
        svc.device_keys.changed(user_id)


async def _require_password(request: web.Request, svc: Services, requester: Requester, body: dict[str, Any]) -> None:
    """User-interactive auth with one stage, m.login.password (homeserver/uia.py): 401 until it is given.

    One purpose for every device and key operation of the user: a session completed for deleting one device
    also serves a following deletion or key replacement while it lives (clients reuse it so), never a
    password change or deactivation.
    """
    await svc.uia.require("devices", body, [[PASSWORD]], user_id=requester.user_id)


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.post(CLIENT + "/keys/upload", upload_keys),
        web.post(CLIENT + "/keys/upload/{device_id}", upload_keys),
        web.post(CLIENT + "/keys/query", query_keys),
        web.post(CLIENT + "/keys/claim", claim_keys),
        web.get(CLIENT + "/keys/changes", key_changes),
        web.post(CLIENT + "/keys/device_signing/upload", upload_signing_keys),
        web.post(CLIENT + "/keys/signatures/upload", upload_signatures),
        web.put(CLIENT + "/sendToDevice/{event_type}/{txn_id}", send_to_device),
        web.put(CLIENT + "/devices/{device_id}", rename_device),
        web.delete(CLIENT + "/devices/{device_id}", delete_device),
        web.post(CLIENT + "/delete_devices", delete_devices),
        web.post(CLIENT + "/logout/all", logout_all),
    ]
