"""The encrypted-room figures of ``lowband bench homeserver``: real E2EE clients, Olm and Megolm.

Two matrix-nio clients with encryption (``matrix-nio[e2e]``, vodozemac inside) on a started server:

* they register, the first creates a room with ``m.room.encryption`` and invites the second, who joins;
  both upload their device keys and one-time keys and learn each other's devices (``keys/query``);
* ``e2ee_sends_per_s`` — the first sends encrypted messages one after another (Megolm encryption in the
  client, the room key shared over to-device with the first message), each waiting for its response;
* ``e2ee_latency_ms`` — median time from the start of a send until the second client, long-polling
  ``/sync``, has *decrypted* that message: what a person waiting for the text sees;
* ``e2ee_undecryptable`` — messages the second client received but could not decrypt (0 unless the
  server lost a room key on the way).

nio is a client library, not a dependency of the gateway: without it these figures are None and the
table says how to install it (``pip install 'lowband[e2e]'``). The same code measures Lowband and Synapse.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.gateway.bench.processes import BenchError, ServerProcess

FIGURES = ("e2ee_sends_per_s", "e2ee_latency_ms", "e2ee_latency_ms_max", "e2ee_undecryptable", "e2ee_messages")
MISSING = "matrix-nio[e2e] is not installed (pip install 'lowband[e2e]'): no encrypted-room figures"
_PASSWORD = "bench-e2ee-password"
_STEP_TIMEOUT_S = 30.0


def available() -> bool:
    """Whether the E2EE client library can be imported."""
    try:
        import nio  # noqa: F401
        from nio.crypto import ENCRYPTION_ENABLED
    except ImportError:
        return False
    return bool(ENCRYPTION_ENABLED)


class _Client:
    """One nio client with encryption and what it decrypted (body → time)."""

    def __init__(self, base_url: str, store: Path) -> None:
        import nio

        store.mkdir(parents=True, exist_ok=True)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True, request_timeout=_STEP_TIMEOUT_S)
        self.nio = nio
        self.client = nio.AsyncClient(base_url, "", store_path=str(store), config=config)
        self.decrypted: dict[str, float] = {}
        self.undecryptable = 0
        self.client.add_event_callback(self._on_text, nio.RoomMessageText)
        self.client.add_event_callback(self._on_megolm, nio.MegolmEvent)

    async def _on_text(self, room: Any, event: Any) -> None:
        if event.decrypted:
            self.decrypted.setdefault(event.body, time.perf_counter())

    async def _on_megolm(self, room: Any, event: Any) -> None:
        self.undecryptable += 1

    def _check(self, answer: Any, expected: type, what: str) -> Any:
        if not isinstance(answer, expected):
            raise BenchError(f"e2ee: {what} failed: {str(answer)[:200]}")
        return answer

    async def register(self, name: str) -> None:
        nio = self.nio
        self.client.user = name
        answer = await self.client.register(name, _PASSWORD, device_name="lowband bench")
        if not isinstance(answer, nio.RegisterResponse):  # a server that wants the dummy stage inside a session
            session = getattr(answer, "session", None)
            answer = await self.client.register(name, _PASSWORD, device_name="lowband bench", session_token=session)
        self._check(answer, nio.RegisterResponse, f"registering {name}")  # nio loads the Olm store on success

    async def step(self, timeout_ms: int = 0) -> None:
        """One /sync and what a client does after it: keys up, queried and claimed, to-device out."""
        nio = self.nio
        self._check(await self.client.sync(timeout=timeout_ms), nio.SyncResponse, "/sync")
        if self.client.should_upload_keys:
            self._check(await self.client.keys_upload(), nio.KeysUploadResponse, "keys/upload")
        if self.client.should_query_keys:
            self._check(await self.client.keys_query(), nio.KeysQueryResponse, "keys/query")
        if self.client.should_claim_keys:
            self._check(await self.client.keys_claim(self.client.get_users_for_key_claiming()), nio.KeysClaimResponse,
                        "keys/claim")  # fmt: skip
        for sent in await self.client.send_to_device_messages():
            self._check(sent, nio.ToDeviceResponse, "sendToDevice")

    async def send(self, room_id: str, body: str) -> None:
        answer = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                             ignore_unverified_devices=True)  # fmt: skip
        self._check(answer, self.nio.RoomSendResponse, "an encrypted send")

    async def close(self) -> None:
        await self.client.close()


async def measure_encrypted(server: ServerProcess, seconds: float, messages: int, rounds: int,
                            progress: Any) -> dict[str, Any]:  # fmt: skip
    """The encrypted-room figures of one started server (see the module docstring); BenchError on failure."""
    if not available():
        return dict.fromkeys(FIGURES)
    with tempfile.TemporaryDirectory(prefix="lowband-bench-e2ee-") as tmp:
        alice, bob = _Client(server.base_url, Path(tmp) / "a"), _Client(server.base_url, Path(tmp) / "b")
        try:
            return await asyncio.wait_for(_measure(alice, bob, seconds, messages, rounds, progress, server.name),
                                          timeout=seconds + rounds * _STEP_TIMEOUT_S + 120)  # fmt: skip
        except TimeoutError:
            raise BenchError(f"{server.name}: the encrypted-room phase did not finish in time") from None
        finally:
            await alice.close()
            await bob.close()


async def _measure(alice: _Client, bob: _Client, seconds: float, messages: int, rounds: int, progress: Any,
                   name: str) -> dict[str, Any]:  # fmt: skip
    nio = alice.nio
    progress(f"{name}: encrypted room: two matrix-nio clients with Olm/Megolm")
    await alice.register("e2ee_alice")
    await bob.register("e2ee_bob")
    created = alice._check(await alice.client.room_create(
        invite=[bob.client.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    ), nio.RoomCreateResponse, "creating the encrypted room")  # fmt: skip
    room_id = created.room_id
    await bob.step()
    bob._check(await bob.client.join(room_id), nio.JoinResponse, "joining the encrypted room")
    for _ in range(3):  # keys up, each other's devices known
        await alice.step()
        await bob.step()
    # The first message shares the room key (Olm over to-device): not timed.
    await alice.send(room_id, "e2ee warm-up")
    deadline = time.monotonic() + _STEP_TIMEOUT_S
    while "e2ee warm-up" not in bob.decrypted:
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: the second client never decrypted the first encrypted message")
        await bob.step(1000)

    progress(f"{name}: encrypted sends (≤ {messages} or {seconds:g} s)")
    started = time.perf_counter()
    sent = 0
    while sent < messages and time.perf_counter() - started < seconds:
        await alice.send(room_id, f"e2ee {sent}")
        sent += 1
    send_seconds = time.perf_counter() - started

    progress(f"{name}: send → decrypted latency, {rounds} rounds")
    stop = asyncio.Event()

    async def keep_syncing() -> None:
        while not stop.is_set():
            await bob.step(30_000)

    syncing = asyncio.create_task(keep_syncing())
    latencies = []
    try:
        await asyncio.sleep(0.2)  # let the long-poll park
        for n in range(rounds):
            body = f"e2ee latency {n}"
            began = time.perf_counter()
            await alice.send(room_id, body)
            deadline = time.monotonic() + _STEP_TIMEOUT_S
            while body not in bob.decrypted:
                if syncing.done():
                    syncing.result()
                    raise BenchError(f"{name}: the receiving client stopped syncing")
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: message {n} was not decrypted within {_STEP_TIMEOUT_S:g} s")
                await asyncio.sleep(0.001)
            latencies.append((bob.decrypted[body] - began) * 1000)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        syncing.cancel()
        try:
            await syncing
        except (asyncio.CancelledError, BenchError):
            pass
    return {
        "e2ee_sends_per_s": round(sent / send_seconds, 1),
        "e2ee_latency_ms": round(float(statistics.median(latencies)), 2),
        "e2ee_latency_ms_max": round(max(latencies), 2),
        "e2ee_undecryptable": bob.undecryptable,
        "e2ee_messages": sent,
    }
