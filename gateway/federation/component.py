"""The federation component: what a running gateway needs to talk to other servers.

``start_federation`` (in ``app.COMPONENTS``) builds the outbound client and
the key ring and hangs them on ``services.components["federation"]``; the
federation HTTP handlers find them there. With ``[federation] enabled =
false`` nothing is built and the federation API answers 403.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lowband.gateway.federation.client import FederationClient
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.homeserver.services import Services
from lowband.gateway.store.interfaces import FederationStore

__all__ = ["Federation", "start_federation"]

log = logging.getLogger("lowband.federation")
NAME = "federation"


@dataclass
class Federation:
    """The federation runtime of one gateway."""

    client: FederationClient
    keyring: KeyRing
    tables: FederationStore

    async def stop(self) -> None:
        """Close outbound connections."""
        await self.client.close()


def federation_of(services: Services) -> Federation | None:
    """The running federation runtime, or None when federation is disabled."""
    found = services.components.get(NAME)
    return found if isinstance(found, Federation) else None


async def start_federation(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Component entry: build the client and key ring unless ``[federation] enabled = false``."""
    config = services.config
    if not config.federation.enabled:
        log.info("federation disabled by the config")
        return None
    key = services.rooms.signing_key
    client = FederationClient(config.server_name, key, config.federation)
    tables = services.store.federation
    keyring = KeyRing(config.server_name, key, client, tables, config.federation.trusted_key_servers)
    federation = Federation(client, keyring, tables)
    services.components[NAME] = federation
    return federation.stop
