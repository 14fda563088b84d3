"""Key endpoints: our key document, and the notary API for peers that ask about others."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import ok
from lowband.gateway.api.http.federation_base import federation, read_body
from lowband.gateway.federation.resolver import ServerNameError, parse_server_name
from lowband.gateway.matrix.errors import bad_json
from lowband.gateway.matrix.numbers import parse_digits

KEYS = "/_matrix/key/v2"
VERSION = "0.1.0"


async def server_keys(request: web.Request) -> web.Response:
    """GET /_matrix/key/v2/server (and the deprecated /server/{keyId})."""
    return ok(federation(request).keyring.own_document())


def _criteria(raw: Any) -> dict[str, dict[str, int | None]]:
    if not isinstance(raw, dict) or len(raw) > 100:
        raise bad_json("server_keys must be an object of at most 100 servers")
    out: dict[str, dict[str, int | None]] = {}
    for server, keys in raw.items():
        try:
            parse_server_name(server)
        except ServerNameError:
            raise bad_json(f"{str(server)[:80]!r} is not a server name") from None
        if not isinstance(keys, dict) or len(keys) > 32:
            raise bad_json("each server maps key IDs to criteria")
        out[server] = {}
        for key_id, criteria in keys.items():
            minimum = criteria.get("minimum_valid_until_ts") if isinstance(criteria, dict) else None
            out[server][str(key_id)] = minimum if isinstance(minimum, int) and not isinstance(minimum, bool) else None
    return out


async def query_one(request: web.Request) -> web.Response:
    """GET /_matrix/key/v2/query/{serverName}: that server's keys, co-signed by us."""
    server = request.match_info["server_name"]
    try:
        parse_server_name(server)
    except ServerNameError as exc:
        raise bad_json(str(exc)) from None
    minimum = request.query.get("minimum_valid_until_ts")
    at_least = parse_digits(minimum) if minimum else None
    wanted: dict[str, int | None] = {"": at_least} if at_least is not None else {}
    docs = await federation(request).keyring.notary_answer({server: wanted})
    return ok({"server_keys": docs})


async def query_many(request: web.Request) -> web.Response:
    """POST /_matrix/key/v2/query: several servers at once."""
    body = await read_body(request)
    criteria = _criteria(body.get("server_keys") if isinstance(body, dict) else None)
    return ok({"server_keys": await federation(request).keyring.notary_answer(criteria)})


async def version(request: web.Request) -> web.Response:
    """GET /_matrix/federation/v1/version (unauthenticated, as the spec allows)."""
    return ok({"server": {"name": "Lowband", "version": VERSION}})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get(KEYS + "/server", server_keys),
        web.get(KEYS + "/server/{key_id}", server_keys),
        web.get(KEYS + "/query/{server_name}", query_one),
        web.post(KEYS + "/query", query_many),
        web.get("/_matrix/federation/v1/version", version),
    ]
