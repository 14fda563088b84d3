"""The CoAP component (``[coap]``, see gateway/app.py): the low-bandwidth client API's listeners.

:func:`start_coap` parses ``[coap]`` (:mod:`.config`), builds the one request handler
(``mapping.Gateway`` over the HTTP API in memory), starts the plain-UDP listener (:mod:`.server`)
when ``bind`` is set, the Noise-session listener (``secure_server``) when ``secure_bind`` is set and the
serial/LoRa lines (``link_transport``) when ``links`` names any, and publishes what ``/versions``
advertises in ``services.components["coap_versions"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.coap.config import parse_coap_config
from lowband.gateway.coap.mapping import CBOR_KEYS_VERSION, Gateway
from lowband.gateway.coap.server import CoapServer, start_server
from lowband.gateway.homeserver.services import COAP_VERSIONS, HTTP_SERVER

log = logging.getLogger("lowband.coap")

Stop = Callable[[], Awaitable[None]]

#: ``services.components[COAP_SERVER]``: the running plain-UDP :class:`~.server.CoapServer` (peers, observations)
COAP_SERVER = "coap_server"

#: version of the MSC3079 path-code table served (gateway/coap/paths.py)
PATH_CODES_VERSION = 1
#: version of compact mode (option 65000, docs/coap.md)
COMPACT_VERSION = 1


def advertisement(plain_port: int | None, secure_port: int | None) -> dict[str, Any]:
    """The ``m.low_bandwidth`` object for ``/versions`` (MSC3079 "Versioning") plus Lowband's own keys."""
    found: dict[str, Any] = {}
    if plain_port is not None:
        found["coap"] = plain_port
    found.update({"cbor_enum_version": CBOR_KEYS_VERSION, "coap_enum_version": PATH_CODES_VERSION, "observe": 1})
    if secure_port is not None:  # compact mode is served in Noise sessions only (docs/coap.md)
        found["org.lowband.compact"] = COMPACT_VERSION
        found["org.lowband.noise"] = secure_port
    return found


async def start_coap(services: Any) -> Stop:
    """Component entry: start the configured CoAP listeners; returns ``stop()``, which closes them all.

    Raises ConfigError for a bad ``[coap]`` section, OSError when an address cannot be bound.
    """
    config = parse_coap_config(services.config.components.get("coap"))
    gateway = Gateway(services, services.components[HTTP_SERVER])
    stoppers: list[Stop] = []
    plain: CoapServer | None = None
    try:
        if config.bind is not None:
            plain = await start_server(gateway.handle, config, services.config.max_request_bytes)
            stoppers.append(plain.stop)
            services.components[COAP_SERVER] = plain
        if config.secure_bind is not None:
            # --- hook: Noise sessions on UDP (the "secure" part, gateway/coap/secure_server.py) -------------
            from lowband.gateway.coap.secure_server import start_secure

            stoppers.append(await start_secure(services, gateway, config))
        if config.links:
            # --- hook: Noise sessions on serial lines and LoRa modems (gateway/coap/link_transport.py) ------
            from lowband.gateway.coap.link_transport import start_link_lines

            stoppers.append(await start_link_lines(services, gateway, config))
    except BaseException:
        for stopper in reversed(stoppers):
            await stopper()
        raise
    services.components[COAP_VERSIONS] = advertisement(
        plain.port if plain is not None else None, config.secure_bind[1] if config.secure_bind is not None else None
    )

    async def stop() -> None:
        services.components.pop(COAP_VERSIONS, None)
        services.components.pop(COAP_SERVER, None)
        for stopper in reversed(stoppers):
            try:
                await stopper()
            except Exception:
                log.exception("a CoAP listener failed to stop cleanly")

    return stop
