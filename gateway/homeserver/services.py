"""What every edge and API reaches: the homeserver's services, built once per gateway.

``lowband.gateway.app`` builds a :class:`Services` from the config; the HTTP
handlers, the device links and the bridges receive it. Edges that run as
components hang their own runtime objects on :attr:`Services.components`
by name, so this layer never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.config import Config, RateLimits
from lowband.gateway.homeserver.accounts import ReservedNamespaces
from lowband.gateway.homeserver.e2ee_keys import DeviceKeys
from lowband.gateway.homeserver.guests import Guests
from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.presence import PresenceTracker
from lowband.gateway.homeserver.ratelimit import LoginThrottle, RateLimiter
from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.homeserver.sync import SyncHandler
from lowband.gateway.homeserver.to_device import ToDevice
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.homeserver.uia import UserInteractiveAuth
from lowband.gateway.store.interfaces import Store


#: ``components[HTTP_SERVER]``: the HTTP API's ``aiohttp.web.Server`` (a protocol factory), set by app.run_gateway
#: before the components start; the CoAP API serves its requests through it in memory (gateway/coap/inproc.py).
HTTP_SERVER = "http_server"
#: ``components[COAP_VERSIONS]``: the ``m.low_bandwidth`` object of ``/versions`` (MSC3079), set by the CoAP component
#: while it runs (gateway/coap/component.py); the HTTP ``/versions`` handler adds it when present.
COAP_VERSIONS = "coap_versions"


@dataclass
class Services:
    """Everything handlers reach, built once per running gateway."""

    config: Config
    store: Store
    rooms: RoomService
    sync: SyncHandler
    typing: TypingTracker
    notifier: Notifier
    user_limiter: RateLimiter | None = None
    ip_limiter: RateLimiter | None = None
    #: every client/media GET, per user (per address without a token); None when rate limits are off
    read_limiter: RateLimiter | None = None
    login_sessions: dict[str, float] = field(default_factory=dict)
    #: failed logins per account (None: rate limits are off in the config)
    login_throttle: LoginThrottle | None = None
    namespaces: ReservedNamespaces = field(default_factory=ReservedNamespaces)
    components: dict[str, Any] = field(default_factory=dict)
    #: told (room_id, receipt_type, user_id, event_id, ts, thread_id or None) of every public receipt a local
    #: user moves
    receipt_listeners: list[Callable[[str, str, str, str, int, str | None], None]] = field(default_factory=list)
    #: end-to-end encryption: device keys and to-device messages (built from the store)
    device_keys: DeviceKeys = field(init=False)
    #: user-interactive auth sessions and stages, shared by every endpoint that asks for them (uia.py)
    uia: UserInteractiveAuth = field(init=False)
    to_device: ToDevice = field(init=False)
    #: which users are guests (guests.py)
    guests: Guests = field(init=False)

    def __post_init__(self) -> None:
        self.uia = UserInteractiveAuth(self.store, self.login_throttle, self.config.registration_tokens)
        self.device_keys = DeviceKeys(self.store, self.config.server_name, self.notifier.notify)
        self.to_device = ToDevice(self.store, self.config.server_name, self.notifier.notify)
        self.guests = Guests(self.store)
        self.guests.watch(self.rooms)  # guests leave a room that stops allowing them
        self.sync.erased.update(self.store.account_lifecycle.erased_users())  # served redacted (sync.py)
        if self.config.presence_enabled and self.sync.presence is None:
            self.sync.presence = PresenceTracker(self.typing, idle_s=self.config.presence_idle_s,
                                                 offline_s=self.config.presence_offline_s,
                                                 on_change=self.notifier.notify)  # fmt: skip
            # presence kept before a restart (presence.py)
            self.sync.presence.restore(self.store.presence.load(self.sync.presence.max_users))

    @classmethod
    def rate_limiters(cls, limits: RateLimits) -> tuple[RateLimiter | None, RateLimiter | None]:
        """The user and IP limiters the config asks for (None when disabled)."""
        if not limits.enabled:
            return None, None
        return RateLimiter(limits.per_user_per_s, limits.per_user_burst), RateLimiter(limits.per_ip_per_s, limits.per_ip_burst)

    @classmethod
    def read_rate_limiter(cls, limits: RateLimits) -> RateLimiter | None:
        """The per-user bucket for reads the config asks for (None when disabled)."""
        return RateLimiter(limits.reads_per_user_per_s, limits.reads_per_user_burst) if limits.enabled else None

    @property
    def server_name(self) -> str:
        """This gateway's Matrix server name."""
        return self.config.server_name
