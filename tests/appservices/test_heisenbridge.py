"""heisenbridge, a real IRC bridge from PyPI, on the homeserver under test (issue 17's acceptance).

The module starts a private IRC server (Debian's ngircd), generates
heisenbridge's registration the ordinary way (``--generate``), starts the
homeserver with that file in its appservice config and heisenbridge against
it. A Matrix user (matrix-nio) then does what a new user does: opens a direct
chat with the bridge's bot (the control room), adds the IRC network and its
server, opens the network, connects, joins a channel, and talks with an IRC
user the test drives over a plain socket, both ways.

``LOWBAND_AS_HOMESERVER=synapse`` runs the same against Synapse (the
reference the bridge is known to work with). heisenbridge runs from its own
venv (lowband.sim.heisenbridge; ``.ci/run`` installs it beforehand).

Found: everything up to the IRC user's first message worked, then the message
never reached Matrix: heisenbridge registers each puppet with
``POST /register?user_id=@irc_…`` (mautrix names the user it registers), and
the gateway refused it, 403 "the application service has not registered" it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from bridge_homes import Home, home_kind, start_home
from harness import free_port

from lowband.sim.heisenbridge import Heisenbridge
from lowband.sim.ngircd import IrcLine, PrivateIrcd

NETWORK, CHANNEL = "testnet", "#lowband"
#: An IRC nick with upper case and brackets: heisenbridge escapes what a Matrix user ID may not hold.
IRC_NICK, PUPPET_LOCALPART = "IrcBob[1]", f"irc_{NETWORK}_ircbob=5b1=5d"


@dataclass
class Bridged:
    """The module's running pieces: the IRC server, the homeserver and the bridge."""

    ircd: PrivateIrcd
    home: Home
    bridge: Heisenbridge


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridged]:
    """ngircd, the homeserver with heisenbridge's generated registration, and heisenbridge running on it."""
    workdir = tmp_path_factory.mktemp("heisenbridge")
    bridge = Heisenbridge(workdir / "bridge", free_port())
    registration = bridge.generate()
    with PrivateIrcd(workdir / "ircd") as ircd, start_home(home_kind(), workdir / "home", [registration]) as home:
        try:
            bridge.start(home.url)
            yield Bridged(ircd, home, bridge)
        finally:
            bridge.stop()


@dataclass
class Inbox:
    """What one nio client has seen through /sync: timeline events per room, and invites (room ID → name)."""

    client: Any
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    invites: dict[str, str] = field(default_factory=dict)

    async def sync_once(self) -> None:
        import nio

        response = await self.client.sync(timeout=500)
        assert isinstance(response, nio.SyncResponse), response
        for room_id, room in response.rooms.join.items():
            self.events.setdefault(room_id, []).extend(event.source for event in room.timeline.events)
        for room_id, room in response.rooms.invite.items():
            names = [e.name for e in room.invite_state if isinstance(e, nio.InviteNameEvent)]
            self.invites[room_id] = names[-1] if names else ""

    async def wait(self, found: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Sync until ``found()`` is truthy; its value. AssertionError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not (value := found()):
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s; seen: {self.bodies()}"
            await self.sync_once()
        return value

    def bodies(self, room_id: str | None = None) -> list[tuple[str, str]]:
        """(sender, body) of every message seen in ``room_id`` (every room when None)."""
        rooms = [room_id] if room_id else list(self.events)
        return [(e["sender"], e.get("content", {}).get("body", "")) for r in rooms for e in self.events.get(r, [])
                if e.get("type") == "m.room.message"]  # fmt: skip

    async def reply(self, room_id: str, sender: str, text: str, timeout: float = 30.0) -> str:
        """Wait for a message from ``sender`` in ``room_id`` whose body holds ``text``; the body."""

        def match() -> str | None:
            return next((b for s, b in self.bodies(room_id) if s == sender and text in b), None)

        return str(await self.wait(match, f"{sender} saying {text!r} in {room_id}", timeout))

    async def invited_to(self, name_part: str, timeout: float = 30.0) -> str:
        """Wait for an invite to a room whose name holds ``name_part``, join it; the room ID."""
        import nio

        room_id = await self.wait(lambda: next((r for r, n in self.invites.items() if name_part in n), None),
                                  f"an invite to {name_part!r}", timeout)  # fmt: skip
        joined = await self.client.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        del self.invites[room_id]
        return str(room_id)


async def _say(client: Any, room_id: str, text: str) -> None:
    import nio

    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, nio.RoomSendResponse), sent


def test_a_matrix_user_and_an_irc_user_talk_through_heisenbridge(bridged: Bridged) -> None:
    """Control room, network, connect, join, then a message each way between Matrix and IRC."""
    import nio

    home = bridged.home
    bot = f"@heisenbridge:{home.server_name}"

    async def main() -> None:
        client = nio.AsyncClient(home.url, "hbuser")
        irc: IrcLine | None = None
        try:
            registered = await client.register("hbuser", "bridge-test-pw")
            assert isinstance(registered, nio.RegisterResponse), registered
            inbox = Inbox(client)
            await inbox.sync_once()
            # The control room: a direct chat with the bridge's bot, which joins and greets.
            created = await client.room_create(invite=[bot], is_direct=True)
            assert isinstance(created, nio.RoomCreateResponse), created
            control = created.room_id
            await inbox.reply(control, bot, "Howdy")
            await _say(client, control, f"ADDNETWORK {NETWORK}")
            await inbox.reply(control, bot, "Network added")
            await _say(client, control, f"ADDSERVER {NETWORK} 127.0.0.1 {bridged.ircd.port}")
            await inbox.reply(control, bot, "Server added")
            await _say(client, control, f"OPEN {NETWORK}")
            network = await inbox.invited_to(NETWORK)
            await _say(client, network, "CONNECT")
            await inbox.reply(network, bot, "End of MOTD")  # registered on the IRC server
            # An IRC user in the channel first, so the bridge joins a channel with someone in it.
            irc = await asyncio.to_thread(IrcLine, bridged.ircd.port, IRC_NICK)
            await asyncio.to_thread(irc.register)
            irc.send(f"JOIN {CHANNEL}")
            await asyncio.to_thread(irc.expect, "JOIN", CHANNEL)
            await _say(client, network, f"JOIN {CHANNEL}")
            channel = await inbox.invited_to(CHANNEL)
            await asyncio.to_thread(irc.expect, "JOIN", CHANNEL, "hbuser")
            # Matrix → IRC
            await _say(client, channel, "hello from matrix")
            line = await asyncio.to_thread(irc.expect, "PRIVMSG", CHANNEL, "hello from matrix")
            assert line.startswith(":hbuser"), line
            # IRC → Matrix, from the bridge's puppet of the IRC user
            irc.send(f"PRIVMSG {CHANNEL} :hello from irc")
            puppet = f"@{PUPPET_LOCALPART}:{home.server_name}"
            await inbox.reply(channel, puppet, "hello from irc")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- heisenbridge log:\n{bridged.bridge.tail()}\n--- {home.kind} log:\n"
                                 f"{home.log_tail()}") from None  # fmt: skip
        finally:
            if irc is not None:
                irc.close()
            await client.close()

    asyncio.run(main())
