"""The CoAP API over serial lines and transparent LoRa modems (``[coap] links``, docs/protocol/coap-links.md).

A laptop with a serial radio or a LoRa modem is a full Matrix client: the
same Noise sessions as on UDP (``secure_core``: HS1/HS2, one CoAP message
per DATA frame, AES-CCM-8), carried as the device links carry theirs —
``COBS(frame) || 0x00`` on the line (docs/protocol/link.md section 2). CoAP's
own confirmable messages give reliability; there is no link ARQ underneath
(it would cost a 14-byte pure ACK per answer on top of CoAP's ACK, see the
docs).

For each configured line this module

* opens the port as the device link runtime does
  (``link.runtime.SerialTransport``, reopened when it disappears; for
  ``lora:`` the ``link.lora_modem.LoRaModemTransport``, which keeps the
  region's duty cycle and refuses packets over the data rate's size);
* splits the byte stream into frames (``SerialFramer``) and hands each to a
  :class:`~lowband.gateway.coap.secure_server.SecureServer` of its own —
  the UDP listener's per-client machinery (message layer, blockwise,
  OBSERVE, compact sessions, provisioned users), reused whole, with a
  transport that writes frames to the line instead of datagrams to a
  socket;
* sizes everything for the line: frames at most 255 bytes (serial) or the
  LoRa data rate's packet (220 bytes of frame at EU868 DR5), so a CoAP
  message is at most the frame less :data:`~.secure_core.DATA_OVERHEAD`,
  bodies above that travel in blocks (RFC 7959) that leave room for CoAP's
  header and options; ACK_TIMEOUT above one round trip at the line's rate
  (:func:`line_params`).

A line is dedicated to CoAP clients: a path the device links also use is
refused (two readers on one port would steal each other's bytes). Clients
are the provisioned ones (``lowband coap-client add``), each known by its
address byte: several may share a radio channel.

Line spec: ``serial:/dev/ttyUSB1?bps=100`` (``&latency=S``: a modem's one-way
delay in seconds, for the timers) or
``lora:/dev/ttyUSB2?region=EU868&dr=5&bps=9600`` (``bps`` is the modem's
UART rate; the air rate follows from region and data rate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowband.codecs.link_frame import MAX_FRAME, SerialFramer, serial_encode
from lowband.gateway.coap.config import CoapConfig
from lowband.gateway.coap.messaging import TransmissionParams
from lowband.gateway.coap.secure_core import DATA_OVERHEAD, SecureListener
from lowband.gateway.coap.secure_server import BLOCK_TTL_S, Handles, SecureServer
from lowband.gateway.config import ConfigError
from lowband.gateway.devices.registry import load_or_create_link_key
from lowband.gateway.link.runtime import SerialTransport, parse_link

log = logging.getLogger("lowband.coap.links")

__all__ = ["LINK_LINES", "LineSettings", "LinkLine", "block_lifetime", "line_params", "line_settings",
           "serial_airtime", "start_link_lines"]  # fmt: skip

#: ``services.components[LINK_LINES]``: the running :class:`LinkLine` objects, by spec
LINK_LINES = "coap_link_lines"
#: a CoAP message must hold a compact send (about 30 bytes) and a block's options; smaller lines are refused
MIN_MESSAGE = 64
#: bytes of a typical request on the line, for ACK_TIMEOUT (the answer is taken as a full frame)
TYPICAL_REQUEST = 80
#: COBS code byte and the 0x00 delimiter of a frame under 254 bytes
_COBS = 2

Stop = Callable[[], Awaitable[None]]


def line_params(airtime_s: Callable[[int], float], *, latency: float = 0.0, request_bytes: int = TYPICAL_REQUEST,
                answer_bytes: int = MAX_FRAME, max_retransmit: int = 4) -> TransmissionParams:  # fmt: skip
    """CoAP transmission parameters for a line whose frames of ``n`` bytes take ``airtime_s(n)`` seconds.

    ACK_TIMEOUT covers one round trip: a request of ``request_bytes`` and an
    answer of ``answer_bytes`` on the air, ``latency`` each way and a second
    of turnaround (at 100 bps: 34.7 s; RFC 7252's 2 s would send every
    request again before its answer could arrive). MAX_LATENCY covers the
    slowest frame, so message IDs are remembered for the whole exchange.
    Raises ValueError for a negative latency.
    """
    if latency < 0:
        raise ValueError("latency must not be negative")
    round_trip = airtime_s(request_bytes) + airtime_s(answer_bytes) + 2 * latency + 1.0
    ack_timeout = max(2.0, round_trip)
    return TransmissionParams(ack_timeout=ack_timeout, max_retransmit=max_retransmit,
                              max_latency=max(100.0, airtime_s(MAX_FRAME) + latency),
                              empty_ack_delay=ack_timeout / 2)  # fmt: skip


def block_lifetime(params: TransmissionParams) -> float:
    """Seconds a blockwise transfer is kept between two of its blocks on a line with ``params``.

    UDP's 93 s (``secure_server.BLOCK_TTL_S``) is far too short at 100 bps
    with loss: one block's exchange may take MAX_TRANSMIT_WAIT (about 33
    minutes with ACK_TIMEOUT 42.9 s), so a transfer is kept twice that; the
    stores stay bounded by their byte limits.
    """
    return max(BLOCK_TTL_S, 2 * params.max_transmit_wait)


def serial_airtime(bps: float, bits_per_byte: int = 10) -> Callable[[int], float]:
    """Seconds a frame of ``n`` bytes takes on a serial line (COBS and delimiter included, 8N1)."""
    return lambda n: (n + _COBS) * bits_per_byte / bps


@dataclass(frozen=True)
class LineSettings:
    """What a line spec says: the port, its rates and the sizes and timers that follow from them."""

    spec: str
    kind: str  # "serial" or "lora"
    path: str
    bps: int
    #: the largest link frame on this line (before COBS)
    frame_limit: int
    #: the largest CoAP message in one DATA frame
    max_message: int
    params: TransmissionParams
    query: tuple[tuple[str, str], ...] = ()


def line_settings(spec: str) -> LineSettings:
    """Parse ``serial:PATH?bps=N[&latency=S]`` or ``lora:PATH?region=R&dr=N[&freq=F][&bps=N]``.

    Raises :class:`~lowband.gateway.config.ConfigError` for another kind, a
    number that does not parse, an unknown region or data rate, or a LoRa
    data rate whose packet cannot hold :data:`MIN_MESSAGE` bytes of CoAP
    (EU868 DR0-2: 49-byte frames; not supported yet, see docs/protocol/coap-links.md).
    """
    kind, path, query = parse_link(spec)
    if kind not in ("serial", "lora") or not path:
        raise ConfigError(f"coap.links: {spec[:80]!r} is neither serial:PATH nor lora:PATH")
    try:
        bps = int(query.get("bps", "9600"))
        latency = float(query.get("latency", "0"))
        if bps <= 0 or not 0 <= latency < 3600:
            raise ValueError("out of range")
    except ValueError:
        raise ConfigError(f"coap.links: {spec[:80]!r}: bps must be a positive integer, latency seconds") from None
    frame_limit, airtime = MAX_FRAME, serial_airtime(bps)
    if kind == "lora":
        from lowband.gateway.link.lora_modem import frame_airtime, scheduler_for

        try:
            scheduler = scheduler_for(query)
        except (ValueError, KeyError, LookupError, OSError) as exc:
            raise ConfigError(f"coap.links: {spec[:80]!r}: {exc}") from None
        frame_limit, airtime = min(MAX_FRAME, scheduler.mtu), frame_airtime(scheduler)
    max_message = frame_limit - DATA_OVERHEAD
    if max_message < MIN_MESSAGE:
        raise ConfigError(f"coap.links: {spec[:80]!r}: frames of {frame_limit} bytes hold {max_message} bytes of "
                          f"CoAP, fewer than {MIN_MESSAGE}: choose a faster data rate")  # fmt: skip
    params = line_params(airtime, latency=latency, answer_bytes=frame_limit)
    return LineSettings(spec, kind, path, bps, frame_limit, max_message, params, tuple(sorted(query.items())))


class _FrameTransport(asyncio.DatagramTransport):
    """What the secure server sends to: each "datagram" is a link frame for the line."""

    def __init__(self, line: LinkLine) -> None:
        super().__init__()
        self._line = line
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Write one frame to the line (``addr``, the client's route, is the line itself)."""
        if not self._closing:
            self._line.write_frame(bytes(data))

    def close(self) -> None:
        """Stop writing (the port itself is closed by :meth:`LinkLine.stop`)."""
        self._closing = True

    def is_closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing


class LinkLine:
    """One line of CoAP clients: port, framer and the secure server behind it (see the module docstring)."""

    def __init__(self, settings: LineSettings, server: SecureServer) -> None:
        self.settings = settings
        self.server = server
        self.framer = SerialFramer()
        serial = SerialTransport(settings.path, settings.bps, self._on_bytes)
        self.transport: Any = serial
        if settings.kind == "lora":
            from lowband.gateway.link.lora_modem import LoRaModemTransport, scheduler_for

            self.transport = LoRaModemTransport(serial, scheduler_for(dict(settings.query)))
        #: frames and bytes each way (bytes as on the line: COBS and delimiter included), refusals
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_in", "bytes_in", "frames_out", "bytes_out", "undecodable", "oversize"), 0
        )

    async def start(self) -> None:
        """Start the server's loops, then open the port (now, or as soon as it appears)."""
        await self.server.attach(_FrameTransport(self), self.settings.spec)
        self.transport.start()
        log.info("CoAP API (Noise sessions) on link %s: frames up to %d bytes, ACK timeout %.1f s",
                 self.settings.spec, self.settings.frame_limit, self.settings.params.ack_timeout)  # fmt: skip

    async def stop(self) -> None:
        """Stop the server (requests, observations) and close the port."""
        await self.server.stop()
        await self.transport.close()

    def _on_bytes(self, data: bytes) -> None:
        self.counters["bytes_in"] += len(data)
        dropped = self.framer.dropped
        frames = self.framer.feed(data)
        self.counters["undecodable"] += self.framer.dropped - dropped
        for frame in frames:
            self.counters["frames_in"] += 1
            # Every frame names its client's address (byte 1): the route, and a host of its own for the
            # API's per-address rate limits (the secure server copies it into the client's Peer).
            address = frame[1] if len(frame) > 1 else 0
            self.server.datagram_received(frame, (f"link:{self.settings.path}#{address}", address))

    def write_frame(self, frame: bytes) -> None:
        """Put one frame on the line, COBS-framed; one too long for the line is dropped and counted."""
        if len(frame) > self.settings.frame_limit:
            self.counters["oversize"] += 1
            log.warning("link %s: a %d-byte frame does not fit (limit %d); not sent", self.settings.spec,
                        len(frame), self.settings.frame_limit)  # fmt: skip
            return
        wire = serial_encode(frame)
        self.counters["frames_out"] += 1
        self.counters["bytes_out"] += len(wire)
        self.transport.write(wire)


def _device_paths(services: Any) -> set[str]:
    """Ports the device links use (a CoAP line on one of them is refused)."""
    from lowband.gateway.devices.registry import Registry

    return {parse_link(record.link)[1] for record in Registry(services.store.link_devices).devices()}


async def start_link_lines(services: Any, gateway: Handles, config: CoapConfig) -> Stop:
    """Serve the CoAP API on every line of ``config.links``; returns ``stop()``.

    The gateway's link key (``DATA/link.key``) answers the handshakes and the
    provisioned CoAP clients (``DATA/coap_clients.json``) are the ones
    allowed, as on ``secure_bind``. A port that does not exist yet is opened
    when it appears. Raises :class:`~lowband.gateway.config.ConfigError` for a
    line spec that does not parse, or a port that a device link uses.
    """
    settings = [line_settings(spec) for spec in config.links]
    taken = _device_paths(services) & {s.path for s in settings}
    if taken:
        raise ConfigError(f"coap.links: {min(taken)} is a device link; a line shared by devices and CoAP "
                          "clients is not supported (give the CoAP clients a line of their own)")  # fmt: skip
    data_dir = Path(services.config.data_dir)
    key = load_or_create_link_key(data_dir / "link.key")
    lines: dict[str, LinkLine] = {}
    try:
        for line in settings:
            server = SecureServer(gateway, SecureListener(key, max_datagram=line.frame_limit), data_dir=data_dir,
                                 max_request_bytes=services.config.max_request_bytes,
                                 observe_timeout_s=config.observe_timeout_s, max_observations=config.max_observations,
                                 mtu=line.max_message, params=line.params,
                                 block_lifetime=block_lifetime(line.params))  # fmt: skip
            lines[line.spec] = LinkLine(line, server)
            await lines[line.spec].start()
    except BaseException:
        for started in lines.values():
            await started.stop()
        raise
    services.components[LINK_LINES] = lines

    async def stop() -> None:
        services.components.pop(LINK_LINES, None)
        for line in lines.values():
            try:
                await line.stop()
            except Exception:
                log.exception("CoAP link %s failed to stop cleanly", line.settings.spec)

    return stop
