"""The federation component: what a running gateway needs to be a member of the Matrix network.

``start_federation`` (in ``app.COMPONENTS``) builds the outbound client,
the key ring, the receive path, the membership handshakes, invites, EDUs,
the transaction sender, the client's questions to other servers (profiles,
aliases, public rooms), end-to-end encryption's remote half (set on
``services.device_keys.remote`` and ``services.to_device.remote``) and,
when asked, LAN discovery, and hangs them on
``services.components["federation"]``; the federation HTTP handlers and
the client API (remote joins and invites) find them there. With
``[federation] enabled = false`` nothing is built and the federation API
answers 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lowband.gateway.federation.backfill import Backfiller
from lowband.gateway.federation.client import FederationClient
from lowband.gateway.federation.discovery import LanDiscovery
from lowband.gateway.federation.e2ee import FederatedKeys, FederatedToDevice
from lowband.gateway.federation.edus import Edus
from lowband.gateway.federation.inbound.pipeline import InboundPipeline
from lowband.gateway.federation.invites import Invites
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.federation.membership import Memberships
from lowband.gateway.federation.presence_edus import PresenceEdus
from lowband.gateway.federation.queries import RemoteQueries
from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.rooms.dag import RoomDag
from lowband.gateway.homeserver.services import Services
from lowband.gateway.store.interfaces import FederationStore

__all__ = ["Federation", "federation_of", "start_federation"]

log = logging.getLogger("lowband.federation")
NAME = "federation"


@dataclass
class Federation:
    """The federation runtime of one gateway."""

    server_name: str
    client: FederationClient
    keyring: KeyRing
    store: FederationStore
    dag: RoomDag
    pipeline: InboundPipeline
    memberships: Memberships
    invites: Invites
    sender: FederationSender
    edus: Edus
    backfiller: Backfiller
    queries: RemoteQueries
    e2ee: FederatedKeys
    to_device: FederatedToDevice
    discovery: LanDiscovery | None = None

    async def stop(self) -> None:
        """Withdraw the LAN announcement, stop sending and close outbound connections.

        What is unsent stays logged for the next start (EDUs, kept in memory, are lost).
        """
        e2ee = self.e2ee.services
        e2ee.device_keys.remote, e2ee.to_device.remote = None, None  # from now on nothing would be sent
        if self.discovery is not None:
            await self.discovery.stop()
        await self.sender.stop()
        await self.client.close()


def federation_of(services: Services) -> Federation | None:
    """The running federation runtime, or None when federation is disabled."""
    found = services.components.get(NAME)
    return found if isinstance(found, Federation) else None


async def start_federation(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Component entry: build everything unless ``[federation] enabled = false``."""
    config = services.config
    if not config.federation.enabled:
        log.info("federation disabled by the config")
        return None
    rooms = services.rooms
    key = rooms.signing_key
    server_name = config.server_name
    client = FederationClient(server_name, key, config.federation)
    tables = services.store.federation
    keyring = KeyRing(server_name, key, client, tables, config.federation.trusted_key_servers)
    dag = rooms.dag
    sender = FederationSender(server_name, key.version, client, tables, dag.servers_of, dag.pdu_of)
    edus = Edus(services, sender)
    invites = Invites(server_name, key, client, keyring, rooms, services.store, services.notifier.notify)
    presence = PresenceEdus(services, sender)  # m.presence out and in (presence_edus.py)
    pipeline = InboundPipeline(client, keyring, dag, presence.wrap(edus.receive), outside=invites.outside_room)
    memberships = Memberships(server_name, key, client, keyring, dag, lambda: int(time.time() * 1000))
    backfiller = Backfiller(server_name, client, keyring, dag)
    backfiller.expired = services.sync.expired  # history past the room's retention is not fetched back
    e2ee, to_device = FederatedKeys(services, client, sender), FederatedToDevice(sender)
    federation = Federation(server_name, client, keyring, tables, dag, pipeline, memberships, invites, sender, edus,
                            backfiller, RemoteQueries(client), e2ee, to_device)  # fmt: skip
    services.device_keys.remote, services.to_device.remote = e2ee, to_device
    rooms.sender.log_listeners.append(lambda stream, event_id: _logged(sender, stream, event_id))
    await sender.start()
    if config.federation.discovery:
        federation.discovery = await _start_discovery(services, client, sender)
    services.components[NAME] = federation
    return federation.stop


async def _start_discovery(services: Services, client: FederationClient,
                           sender: FederationSender) -> LanDiscovery | None:  # fmt: skip
    """LAN discovery as ``[federation] discovery = true`` asks; None (logged) when multicast is unavailable."""
    config = services.config
    tls = config.tls_cert is not None
    if not tls:
        log.warning("LAN discovery: no --tls-cert, so other gateways cannot federate with this one: browsing only")
    discovery = LanDiscovery(config.server_name, config.http_host, config.http_port, client.resolver,
                             sender.peer_is_back, announce=tls)  # fmt: skip
    try:
        await discovery.start()
    except OSError as exc:
        log.error("LAN discovery could not start (no multicast on this host?): %s", exc)
        await discovery.stop()
        return None
    return discovery


def _logged(sender: FederationSender, stream: int, event_id: str) -> None:
    import asyncio

    asyncio.ensure_future(sender.event_logged(stream, event_id))
