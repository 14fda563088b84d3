"""Step 2 and 3: signed by the servers that must sign it, or dropped; a wrong content hash means redaction."""

from __future__ import annotations

import asyncio

from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.budget import FetchBudget
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.matrix.events import ContentHashError, Event, server_name_of
from lowband.gateway.matrix.signing import SignatureError

#: The longest a receive path waits for one server's keys (the key ring's own fetch is bounded too).
KEY_FETCH_S = 30.0


def _signing_servers(incoming: Incoming) -> dict[str, list[str]]:
    """Server → key IDs of the signatures the event carries from the servers that must sign it."""
    pdu = incoming.event.pdu
    signatures = pdu.get("signatures")
    if not isinstance(signatures, dict):
        return {}
    servers = [server_name_of(incoming.event.sender)]
    via = incoming.event.content.get("join_authorised_via_users_server") if incoming.event.type == "m.room.member" else None
    if isinstance(via, str) and ":" in via:
        servers.append(server_name_of(via))
    out: dict[str, list[str]] = {}
    for server in servers:
        keys = signatures.get(server)
        if isinstance(keys, dict):
            out[server] = [k for k in list(keys)[:8] if isinstance(k, str) and k.startswith("ed25519:")]
    return out


async def check_signatures(incoming: Incoming, keyring: KeyRing, budget: FetchBudget | None = None) -> Incoming:
    """Verify ``incoming``; PduDropped if a required signature is missing or wrong.

    Keys are fetched as needed (``at_ts`` = the event's ``origin_server_ts``
    where the room version enforces key validity), within ``budget``'s time
    when given. A wrong content hash replaces the event by its redaction
    and marks it ``redacted``.
    """
    version = incoming.version
    at_ts = incoming.event.origin_server_ts if version.enforce_key_validity else None
    try:
        wanted = _signing_servers(incoming)
    except ValueError:
        raise PduDropped("the sender has no server name") from None
    keys: dict[tuple[str, str], bytes] = {}
    for server, key_ids in wanted.items():
        for key_id in key_ids:
            try:
                if budget is None:
                    key = await keyring.verify_key(server, key_id, at_ts)
                else:
                    wait = budget.wait_at_most(KEY_FETCH_S)
                    key = await asyncio.wait_for(keyring.verify_key(server, key_id, at_ts), wait)
            except TimeoutError:
                raise PduDropped(f"the keys of {server[:100]} did not come in time") from None
            if key is not None:
                keys[(server, key_id)] = key
    try:
        versioned.verify(incoming.event.pdu, version, lambda server, key_id: keys.get((server, key_id)))
    except ContentHashError:
        pdu = versioned.redacted(incoming.event.pdu, version)
        incoming.event = Event(incoming.event.event_id, pdu)
        incoming.redacted = True
    except SignatureError as exc:
        raise PduDropped(f"bad signatures: {exc}") from None
    return incoming
