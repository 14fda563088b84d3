"""A real appservice on mautrix-python (PyPI ``mautrix``) on the homeserver under test (issue 17's acceptance).

The module writes a registration shaped as mautrix bridges generate theirs
(a random mixed-case ``sender_localpart``, the bot ``@mxbot`` in the user
namespace beside the ``@mx_*`` puppets) and starts the homeserver with it;
each test runs mautrix's ``AppService`` (its aiohttp server for
transactions, its intents for the client API) in the test's loop.
The bridge registers its bot and puppets, masquerades as a puppet
(``?user_id=``), gets a room's events and its typing and receipts pushed, and,
down while 1,000 messages are sent, gets all of them once and in order when it
is back. The security tests show the spec's refusals as a real bridge meets
them. ``LOWBAND_AS_HOMESERVER=synapse`` runs the same against Synapse.

Found: the gateway stopped at start-up on the registration's random
``sender_localpart`` (upper case), and refused mautrix's registration of its
bot and puppets (``?user_id=`` naming the user being registered: 403).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from bridge_homes import Home, home_kind, start_home
from harness import Client, free_port
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.errors import MatrixStandardRequestError, MUnknownToken
from mautrix.types import EventType, RoomID, UserID

V3 = "/_matrix/client/v3"
APP_ID, BOT = "mautrixtest", "mxbot"
BURST, PARALLEL = 1000, 10


@dataclass
class Setup:
    """The homeserver, and the registration it was started with."""

    home: Home
    port: int
    as_token: str
    hs_token: str
    workdir: Path

    def user(self, localpart: str) -> UserID:
        return UserID(f"@{localpart}:{self.home.server_name}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The homeserver under test with one mautrix bridge registered (users ``@mx_*`` and ``@mxbot``, ephemeral events)."""
    workdir = tmp_path_factory.mktemp("mautrix")
    port, as_token, hs_token = free_port(), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    registration = workdir / "mautrix.yaml"
    registration.write_text(yaml.safe_dump({
        "id": APP_ID, "url": f"http://127.0.0.1:{port}", "as_token": as_token, "hs_token": hs_token,
        # As mautrix bridges generate it: a random sender nobody uses (64 URL-safe characters, upper case too)
        # and the bot, which the bridge registers itself, in the user namespace beside the puppets.
        "sender_localpart": secrets.token_urlsafe(48), "rate_limited": False, "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        "namespaces": {"users": [{"regex": "@mx_.*", "exclusive": True}, {"regex": f"@{BOT}:.*", "exclusive": True}],
                       "aliases": [], "rooms": []},
    }))  # fmt: skip
    with start_home(home_kind(), workdir / "home", [registration]) as home:
        yield Setup(home, port, as_token, hs_token, workdir)


@dataclass
class Seen:
    """Everything the bridge's handler was given, in order: (kind, room_id, details)."""

    items: list[tuple[str, str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def handle(self, event: Any) -> None:
        """mautrix's event handler; a failure here is kept (mautrix would only log it) and fails the test."""
        try:
            self._record(event)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"{event!r}: {exc!r}")

    def _record(self, event: Any) -> None:
        kind = str(event.type)
        if event.type == EventType.TYPING:
            self.items.append((kind, event.room_id, tuple(event.content.user_ids)))
        elif event.type == EventType.RECEIPT:  # {event ID: {receipt type: [user IDs]}}
            receipts = {str(event_id): {getattr(rtype, "value", str(rtype)): sorted(map(str, users))
                                        for rtype, users in by_kind.items()}
                        for event_id, by_kind in event.content.items()}  # fmt: skip
            self.items.append((kind, event.room_id, receipts))
        elif event.type == EventType.ROOM_MESSAGE:
            self.items.append((kind, event.room_id, (event.sender, event.event_id, event.content.body)))
        else:
            self.items.append((kind, getattr(event, "room_id", ""), (getattr(event, "sender", ""),
                                                                      getattr(event, "state_key", None))))  # fmt: skip

    def messages(self, room_id: str) -> list[tuple[str, str, str]]:
        return [item[2] for item in self.items if item[0] == "m.room.message" and item[1] == room_id]


async def until(found: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until ``found()`` is truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)
    return value


@asynccontextmanager
async def running_bridge(setup: Setup, seen: Seen, as_token: str | None = None) -> AsyncIterator[AppService]:
    """mautrix's AppService listening on the registered port, every event handed to ``seen`` in order."""
    az = AppService(server=setup.home.url, domain=setup.home.server_name, as_token=as_token or setup.as_token,
                    hs_token=setup.hs_token, bot_localpart=BOT, id=APP_ID, ephemeral_events=True,
                    state_store=FileASStateStore(setup.workdir / f"state-{secrets.token_hex(4)}.json", binary=False))  # fmt: skip
    az.synchronous_handlers = True  # handlers in arrival order: the test checks the order
    az.matrix_event_handler(seen.handle)
    await az.start(host="127.0.0.1", port=setup.port)
    try:
        yield az
    finally:
        await az.stop()


async def _alice(session: aiohttp.ClientSession, home: Home, name: str) -> Client:
    alice = Client(session, home.url)
    await alice.register(name)
    return alice


async def _room_with_bot(alice: Client, setup: Setup, az: AppService, seen: Seen) -> RoomID:
    """Alice's room, the bot invited; the bot joins once its invite reaches it in a transaction."""
    status, body = await alice.request("POST", f"{V3}/createRoom", {"invite": [az.bot_mxid], "preset": "private_chat"})
    assert status == 200, body
    room_id = RoomID(body["room_id"])
    await until(lambda: any(i[0] == "m.room.member" and i[1] == room_id and i[2][1] == az.bot_mxid for i in seen.items),
                "the bot's invite pushed to the bridge")  # fmt: skip
    await az.intent.join_room(room_id)
    return room_id


def _run(setup: Setup, seen: Seen, test: Callable[[], Any]) -> None:
    """Run the test's coroutine; a failure's message gets what the bridge saw last and the server's log."""
    try:
        asyncio.run(test())
        assert not seen.errors, seen.errors
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- the bridge saw last: {seen.items[-8:]}\n--- {setup.home.kind} log:\n"
                             f"{setup.home.log_tail()}") from None  # fmt: skip


def test_bot_and_puppets_register_masquerade_and_receive_events_typing_and_receipts(setup: Setup) -> None:
    seen = Seen()

    async def main() -> None:
        async with running_bridge(setup, seen) as az, aiohttp.ClientSession() as session:
            # the bot and a puppet register (m.login.application_service, ?user_id= naming the user, as mautrix does)
            await az.intent.ensure_registered()
            assert (await az.intent.whoami()).user_id == az.bot_mxid
            puppet = az.intent.user(setup.user("mx_bob"))
            await puppet.ensure_registered()
            assert (await puppet.whoami()).user_id == setup.user("mx_bob")  # ?user_id= masquerading
            alice = await _alice(session, setup.home, "mxalice")
            room_id = await _room_with_bot(alice, setup, az, seen)
            # the puppet joins (the bot invites it) and talks as itself
            await puppet.ensure_joined(room_id)
            sent = await puppet.send_text(room_id, "hello from the bridge")
            status, body = await alice.request("GET", f"{V3}/rooms/{room_id}/event/{sent}")
            assert status == 200 and body["sender"] == setup.user("mx_bob"), body
            # alice's message, her typing and her read receipt reach the bridge
            status, body = await alice.request("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1",
                                               {"msgtype": "m.text", "body": "hello bridge"})  # fmt: skip
            assert status == 200, body
            mine = body["event_id"]
            await until(lambda: (alice.user_id, mine, "hello bridge") in seen.messages(room_id), "alice's message")
            status, body = await alice.request("PUT", f"{V3}/rooms/{room_id}/typing/{alice.user_id}",
                                               {"typing": True, "timeout": 20_000})  # fmt: skip
            assert status == 200, body
            await until(lambda: ("m.typing", room_id, (alice.user_id,)) in seen.items, "alice typing")
            status, body = await alice.request("PUT", f"{V3}/rooms/{room_id}/typing/{alice.user_id}", {"typing": False})
            assert status == 200, body
            await until(lambda: ("m.typing", room_id, ()) in seen.items, "alice no longer typing")
            status, body = await alice.request("POST", f"{V3}/rooms/{room_id}/receipt/m.read/{sent}", {})
            assert status == 200, body

            def receipt() -> bool:
                return any(kind == "m.receipt" and room == room_id and alice.user_id in
                           details.get(sent, {}).get("m.read", {}) for kind, room, details in seen.items)  # fmt: skip

            await until(receipt, "alice's read receipt")

    _run(setup, seen, main)


def test_the_bridge_gets_every_event_once_and_in_order_after_being_down(setup: Setup) -> None:
    seen = Seen()

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            alice = await _alice(session, setup.home, "mxcarol")
            async with running_bridge(setup, seen) as az:
                await az.intent.ensure_registered()
                room_id = await _room_with_bot(alice, setup, az, seen)
                await until(lambda: any(i[0] == "m.room.member" and i[1] == room_id and i[2][0] == az.bot_mxid
                                        for i in seen.items), "the bot's join pushed back")  # fmt: skip
            # the bridge is down: its port refuses connections while 1,000 messages are sent, ten at a time
            started = time.monotonic()
            for first in range(0, BURST, PARALLEL):
                answers = await asyncio.gather(*(
                    alice.request("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/b{n}",
                                  {"msgtype": "m.text", "body": f"burst {n}"}) for n in range(first, first + PARALLEL)))  # fmt: skip
                assert all(status == 200 for status, _ in answers), answers
            sending = time.monotonic() - started
            print(f"{BURST} messages sent in {sending:.1f} s while the bridge was down")
            async with running_bridge(setup, seen) as az:
                # a returning mautrix bridge pings first; homeservers may take it as a cue to retry at once
                await az.ping_self()
                await until(lambda: len(burst_seen(seen, room_id)) >= BURST,
                            f"{BURST} messages after the bridge came back (sent in {sending:.1f} s)", timeout=60)  # fmt: skip
                print(f"all {BURST} pushed {time.monotonic() - started - sending:.1f} s after the bridge came back")
                await asyncio.sleep(1.0)  # anything sent twice would come now
            got = burst_seen(seen, room_id)
            in_room = await _room_order(alice, room_id)
            assert sorted(body for _, body in in_room) == sorted(f"burst {n}" for n in range(BURST))
            delivered = [(event_id, body) for _, event_id, body in got]
            assert delivered == in_room, "not once each, or not in the room's order"

    _run(setup, seen, main)


def burst_seen(seen: Seen, room_id: str) -> list[tuple[str, str, str]]:
    return [m for m in seen.messages(room_id) if m[2].startswith("burst ")]


async def _room_order(alice: Client, room_id: str) -> list[tuple[str, str]]:
    """(event ID, body) of the room's burst messages in the room's own order (``/messages`` forwards)."""
    found: list[tuple[str, str]] = []
    token: str | None = None
    for _ in range(50):
        query = "dir=f&limit=100" + (f"&from={token}" if token else "")
        status, page = await alice.request("GET", f"{V3}/rooms/{room_id}/messages?{query}")
        assert status == 200, page
        found += [(e["event_id"], e["content"]["body"]) for e in page["chunk"]
                  if e["type"] == "m.room.message" and e["content"].get("body", "").startswith("burst ")]  # fmt: skip
        if not page["chunk"] or "end" not in page:
            return found
        token = page["end"]
    raise AssertionError("/messages did not come to an end in 50 pages")


def test_a_real_bridge_meets_the_specs_refusals(setup: Setup) -> None:
    """A wrong as_token: 401 M_UNKNOWN_TOKEN; acting as a user outside the namespaces: 403; a transaction with a
    wrong hs_token is refused by the bridge (mautrix checks it) and its events are not handled, while the same
    transaction with the right token is."""

    seen = Seen()

    async def main() -> None:
        async with running_bridge(setup, seen, as_token="not-" + setup.as_token) as az:
            with pytest.raises(MUnknownToken):
                await az.intent.whoami()
        async with running_bridge(setup, seen) as az, aiohttp.ClientSession() as session:
            await _alice(session, setup.home, "mxdave")
            with pytest.raises(MatrixStandardRequestError) as refused:
                await az.intent.user(setup.user("mxdave")).whoami()  # a real user, outside @mx_*
            # 403 on both; the spec names no code for ?user_id= outside the namespaces: Lowband answers as it
            # does for register and login there (M_EXCLUSIVE), Synapse with M_FORBIDDEN.
            expected = {"lowband": "M_EXCLUSIVE", "synapse": "M_FORBIDDEN"}[setup.home.kind]
            assert (refused.value.http_status, refused.value.errcode) == (403, expected), refused.value
            fake = {"events": [{"type": "m.room.message", "room_id": "!forged:x", "sender": "@eve:x", "event_id": "$f",
                                "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "forged"}}]}  # fmt: skip
            bridge = Client(session, f"http://127.0.0.1:{setup.port}", "not-the-hs-token")
            status, body = await bridge.request("PUT", "/_matrix/app/v1/transactions/forged1", fake)
            assert (status, body.get("errcode")) == (401, "M_UNKNOWN_TOKEN"), (status, body)
            await asyncio.sleep(0.2)
            assert not [item for item in seen.items if item[1] == "!forged:x"]
            gateway = Client(session, bridge.base, setup.hs_token)
            status, body = await gateway.request("PUT", "/_matrix/app/v1/transactions/forged2", fake)
            assert status == 200, body  # the refusal was the token's: with the right one the event is handled
            assert ("m.room.message", "!forged:x", ("@eve:x", "$f", "forged")) in seen.items

    _run(setup, seen, main)
