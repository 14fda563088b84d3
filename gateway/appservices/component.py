"""The application service component: what runs for the registered bridges while the gateway runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lowband.gateway.appservices.client import BridgeClient
from lowband.gateway.appservices.registration import AppServices, appservices_of
from lowband.gateway.homeserver.services import Services

NAME = "appservice_runtime"


@dataclass
class AppServiceRuntime:
    """The running side of the bridges: the client that calls them."""

    bridges: AppServices
    client: BridgeClient


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
    services.components[NAME] = runtime

    async def stop() -> None:
        await runtime.client.close()

    return stop
