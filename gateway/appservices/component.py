"""The application service component: what runs for the registered bridges while the gateway runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lowband.gateway.appservices.client import BridgeClient
from lowband.gateway.appservices.pusher import AppServicePusher
from lowband.gateway.appservices.queries import BridgeQueries
from lowband.gateway.appservices.registration import AppServices, appservices_of
from lowband.gateway.appservices.thirdparty import ThirdPartyLookups
from lowband.gateway.homeserver.services import Services

NAME = "appservice_runtime"


@dataclass
class AppServiceRuntime:
    """The running side of the bridges: the client that calls them."""

    bridges: AppServices
    client: BridgeClient
    #: third-party lookups asked of the bridges, and their kept protocol metadata (thirdparty.py)
    thirdparty: ThirdPartyLookups = field(default_factory=ThirdPartyLookups)
    #: transactions pushed to the bridges (pusher.py), and the alias and user queries asked of them (queries.py)
    pusher: AppServicePusher | None = None
    queries: BridgeQueries | None = None


def runtime_of(services: Services) -> AppServiceRuntime | None:
    """The running appservice component, or None (no bridges registered)."""
    found = services.components.get(NAME)
    return found if isinstance(found, AppServiceRuntime) else None


async def start_appservices(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Component entry: runs when at least one bridge is registered."""
    bridges = appservices_of(services)
    if not bridges.all:
        return None
    runtime = AppServiceRuntime(bridges, BridgeClient())
    runtime.queries = BridgeQueries(bridges, runtime.client)
    runtime.pusher = AppServicePusher(services, bridges.all, runtime.client, services.store.appservices)
    await runtime.pusher.start()
    services.components[NAME] = runtime

    async def stop() -> None:
        if runtime.pusher is not None:
            await runtime.pusher.stop()
        await runtime.client.close()

    return stop
