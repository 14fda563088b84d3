"""Endpoints only application services call: ``/_matrix/client/v1/appservice/{id}/ping``."""

from __future__ import annotations

from aiohttp import web

from lowband.gateway.api.http.base import authenticate, json_body, ok, services
from lowband.gateway.appservices.component import runtime_of
from lowband.gateway.matrix.errors import MatrixError, bad_json


async def ping(request: web.Request) -> web.Response:
    """POST /v1/appservice/{appserviceId}/ping: the gateway pings the bridge back and answers the round trip."""
    requester = authenticate(request)
    bridge = requester.appservice
    if bridge is None or bridge.id != request.match_info["appservice_id"]:
        raise MatrixError(403, "M_FORBIDDEN", "only the application service itself may ping through its ID")
    body = await json_body(request, allow_empty=True)
    txn = body.get("transaction_id")
    if txn is not None and (not isinstance(txn, str) or len(txn) > 255):
        raise bad_json("transaction_id must be a string of at most 255 characters")
    runtime = runtime_of(services(request))
    if runtime is None:  # registered bridges always have a runtime while the gateway serves
        raise MatrixError(503, "M_UNKNOWN", "application services are not running")
    return ok({"duration_ms": await runtime.client.ping(bridge, txn)})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [web.post("/_matrix/client/v1/appservice/{appservice_id}/ping", ping)]
