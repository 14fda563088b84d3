"""``GET /_matrix/client/unstable/org.matrix.msc1763/retention/configuration``: the server's retention defaults
and limits (MSC1763, docs/retention.md), for any logged-in user."""

from __future__ import annotations

from aiohttp import web

from lowband.gateway.api.http.base import authenticate, ok, services
from lowband.gateway.homeserver.retention import configuration_document


async def retention_configuration(request: web.Request) -> web.Response:
    """``{"policies": {"*": default}, "limits": {"max_lifetime": {"min", "max"}}, "org.lowband.kinds": {...}}``
    in ms (see :func:`configuration_document`); 401 without a valid access token."""
    authenticate(request)
    return ok(configuration_document(services(request).config.retention))


def routes() -> list[web.RouteDef]:
    """The routes of this module."""
    return [web.get("/_matrix/client/unstable/org.matrix.msc1763/retention/configuration", retention_configuration)]
