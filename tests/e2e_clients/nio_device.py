"""A matrix-nio client with end-to-end encryption, stepped by hand, for the real-client tests.

nio (``matrix-nio[e2e]``, on vodozemac) keeps its Olm account in a store
directory; :meth:`NioDevice.step` is one short ``/sync`` followed by what
``sync_forever`` would do after it (upload, query and claim keys; send queued
to-device messages), so a test decides when time moves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nio

from .homeservers import Account, Homeserver


class NioDevice:
    """One logged-in nio client with encryption, and every text message it decrypted."""

    def __init__(self, homeserver: Homeserver, account: Account, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        # A request that hangs fails in 20 s (nio's default is 60), well inside each test's own deadline.
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True, request_timeout=20)
        self.client = nio.AsyncClient(homeserver.base_url, account.user_id, store_path=str(store), config=config)
        self.account = account
        #: (body, sender, decrypted, verified) of each m.text seen in a timeline
        self.texts: list[tuple[str, str, bool, bool]] = []
        self.undecryptable = 0
        self.client.add_event_callback(self._on_text, nio.RoomMessageText)
        self.client.add_event_callback(self._on_megolm, nio.MegolmEvent)

    async def _on_text(self, room: Any, event: nio.RoomMessageText) -> None:
        self.texts.append((event.body, event.sender, event.decrypted, event.verified))

    async def _on_megolm(self, room: Any, event: nio.MegolmEvent) -> None:
        self.undecryptable += 1  # a Megolm event nio had no key for

    async def login(self) -> None:
        answer = await self.client.login(self.account.password, device_name="lowband e2e test")
        assert isinstance(answer, nio.LoginResponse), answer

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def step(self) -> None:
        """One short /sync, then what a client does after it: keys up, keys queried and claimed, to-device out."""
        answer = await self.client.sync(timeout=100)
        assert isinstance(answer, nio.SyncResponse), answer
        if self.client.should_upload_keys:
            uploaded = await self.client.keys_upload()
            assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
        if self.client.should_query_keys:
            queried = await self.client.keys_query()
            assert isinstance(queried, nio.KeysQueryResponse), queried
        if self.client.should_claim_keys:
            claimed = await self.client.keys_claim(self.client.get_users_for_key_claiming())
            assert isinstance(claimed, nio.KeysClaimResponse), claimed
        for sent in await self.client.send_to_device_messages():
            assert isinstance(sent, nio.ToDeviceResponse), sent

    def knows(self, user_id: str, device_id: str) -> bool:
        """This client has the keys of ``user_id``'s device ``device_id``."""
        return any(d.id == device_id for d in self.client.device_store.active_user_devices(user_id))

    def got(self, body: str) -> tuple[str, str, bool, bool] | None:
        """(body, sender, decrypted, verified) of the first m.text with this body seen, or None."""
        return next((t for t in self.texts if t[0] == body), None)

    async def send(self, room_id: str, body: str) -> None:
        answer = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                             ignore_unverified_devices=True)  # fmt: skip
        assert isinstance(answer, nio.RoomSendResponse), answer


async def pump(devices: list[NioDevice], done: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    """Step every device until ``done()``; the seconds it took, AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.gather(*(device.step() for device in devices))
    return time.monotonic() - start
