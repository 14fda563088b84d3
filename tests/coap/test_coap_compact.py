"""Compact mode (gateway/coap/compact.py, compact_client.py, docs/protocol/coap-compact.md): byte vectors, alias life cycle, sync, hostile input.

The server session and the client are paired in memory; the HTTP side is a small
fake that answers as ``mapping.Gateway.handle`` does (MSC3079 CBOR, integer keys).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from lowband.codecs import cbor, coap, msc3079
from lowband.gateway.coap import compact
from lowband.gateway.coap.compact import (
    CompactError,
    CompactSession,
    negotiate,
    serve,
)
from lowband.gateway.coap.compact_client import CompactClient
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer

ROOM = "!kT7yQmZpLr2sVb4N:gw.example"
ALICE = "@alice:gw.example"
BOB = "@bob.sensor:gw.example"
TEXT = "temp 21.5 C"
#: The 11 bytes the Noise session frame adds to each UDP datagram (header 1, address 1, seq 1, CCM-8 tag 8).
NOISE_FRAME = 11
T0 = 1_764_892_800_000  # 2025-12-05 00:00 UTC, ms


def event_id(n: int) -> str:
    """A room-version-10 shaped event ID: '$' + 43 base64url characters."""
    return "$" + f"ev{n:05d}".ljust(43, "Q")


def message(n: int, ts: int, sender: str = ALICE, body: str | None = None, txn: str | None = None) -> dict[str, Any]:
    unsigned: dict[str, Any] = {"age": 1234}
    if txn is not None:
        unsigned["transaction_id"] = txn
    return {
        "event_id": event_id(n), "type": "m.room.message", "sender": sender, "origin_server_ts": ts,
        "content": {"msgtype": "m.text", "body": body if body is not None else f"reading {n}"}, "unsigned": unsigned,
    }  # fmt: skip


def member(n: int, user: str, ts: int) -> dict[str, Any]:
    return {"event_id": event_id(n), "type": "m.room.member", "sender": user, "state_key": user,
            "origin_server_ts": ts, "content": {"membership": "join", "displayname": user[1:].split(":")[0]},
            "unsigned": {"age": 99}}  # fmt: skip


def sync_doc(next_batch: str, events: list[dict[str, Any]], *, state: list[dict[str, Any]] | None = None,
             limited: bool = False, unread: int = 0, room: str = ROOM) -> dict[str, Any]:  # fmt: skip
    """A /sync answer shaped as the homeserver writes it (gateway/homeserver/sync.py), empties included."""
    return {
        "next_batch": next_batch,
        "rooms": {
            "join": {
                room: {
                    "timeline": {"events": events, "limited": limited, "prev_batch": "s41"},
                    "state": {"events": state or []},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                    "unread_notifications": {"notification_count": unread, "highlight_count": 0},
                    "summary": {},
                }
            },
            "invite": {}, "leave": {}, "knock": {},
        },
        "account_data": {"events": []},
        "presence": {"events": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
    }  # fmt: skip


def ok(body: Any, code: int = coap.CONTENT) -> CoapResponse:
    return CoapResponse(code, msc3079.encode(body), coap.FORMAT_CBOR)


def exchange(session: CompactSession, client: CompactClient, method: str, path: tuple[str, ...],
             answer: Any, body: Any = None, query: tuple[str, ...] = (), code: int = coap.CONTENT,
             ) -> tuple[CoapRequest, CoapRequest, CoapResponse, Any]:  # fmt: skip
    """One request client → session → (canned MSC3079 answer) → session → client."""
    cpath, payload = client.encode_request(method, path, body)
    creq = CoapRequest(method, cpath, client.encode_query(cpath, query), payload)
    plain = session.inbound(creq)
    resp = session.outbound(plain, creq, ok(answer, code))
    return creq, plain, resp, client.decode_response(cpath, resp.code, resp.body)


def pair() -> tuple[CompactSession, CompactClient]:
    client = CompactClient()
    client.note_profile(compact.PROFILE_COMPACT_V1)
    return CompactSession(), client


def prune(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    return [prune(v) for v in value] if isinstance(value, list) else value


def normal(doc: dict[str, Any], batch: str, session: CompactSession) -> dict[str, Any]:
    """What compact mode promises to keep of a sync: no empties, no unsigned.age, no limited=false/prev_batch;
    ``next_batch`` is the batch's handle ``batch``, event IDs are the session's handles ``~n``."""
    doc = prune(doc)
    doc["next_batch"] = batch
    for group in doc.get("rooms", {}).values():
        for room in group.values():
            timeline = room.get("timeline", {})
            if not timeline.get("limited"):
                timeline.pop("limited", None)
                timeline.pop("prev_batch", None)
            for section in ("timeline", "state"):
                for event in room.get(section, {}).get("events", []):
                    if "event_id" in event:
                        event["event_id"] = f"~{session.tables['e'].find(event['event_id'])}"
                    unsigned = event.get("unsigned", {})
                    unsigned.pop("age", None)
                    if not unsigned:
                        event.pop("unsigned", None)
    return doc


def learn_room(session: CompactSession, client: CompactClient, room: str = ROOM) -> None:
    """The client learns the room's alias as it would after login: the answer of a join."""
    exchange(session, client, "POST", ("K", room), {"room_id": room}, body={})


# ------------------------------------------------------------------ byte vectors


def test_compact_send_request_and_response_are_byte_exact_and_within_60_bytes() -> None:
    session, client = pair()
    learn_room(session, client)
    path, payload = client.send_text(ROOM, "1", TEXT)
    assert path == ("9", "~0", "1")
    assert payload == bytes.fromhex("6b") + TEXT.encode()

    request = coap.encode(coap.Message(coap.CON, coap.PUT, mid=0x1234, options=[(coap.OPT_URI_PATH, s.encode()) for s in path],
                                       payload=payload))  # fmt: skip
    assert request.hex(" ") == (
        "40 03 12 34"  # CoAP v1, CON, TKL 0 | PUT | message ID
        " b1 39"  # Uri-Path (Δ11, len 1) "9"
        " 02 7e 30"  # Uri-Path (Δ0, len 2) "~0": the room's alias
        " 01 31"  # Uri-Path (Δ0, len 1) "1": the transaction ID
        " ff"  # payload marker
        " 6b 74 65 6d 70 20 32 31 2e 35 20 43"  # CBOR text(11) "temp 21.5 C" = m.text
    )

    creq = CoapRequest("PUT", path, (), payload)
    plain = session.inbound(creq)
    assert plain.path == ("9", ROOM, "m.room.message", "1")
    assert msc3079.decode(plain.body) == {"msgtype": "m.text", "body": TEXT}
    assert plain.content_format == coap.FORMAT_CBOR and plain.cbor_version == 1 and plain.profile is None

    # mapping.Gateway answers a PUT 2.04 Changed with {"event_id": …} in MSC3079 CBOR (key 1).
    resp = session.outbound(plain, creq, ok({"event_id": event_id(7)}, coap.CHANGED))
    assert resp.body == b"\x00" and resp.content_format is None  # the event's handle 0; CBOR implied
    response = coap.encode(coap.Message(coap.ACK, resp.code, mid=0x1234, payload=resp.body))
    assert response.hex(" ") == "60 44 12 34 ff 00"  # ACK, 2.04, same MID | marker | handle 0

    assert len(request) == 24 and len(response) == 6
    total = len(request) + NOISE_FRAME + len(response) + NOISE_FRAME
    print(f"\ncompact send: request {len(request)} + response {len(response)} B CoAP, {total} B with Noise frames")
    assert total == 52
    assert total <= 60  # the target
    assert client.decode_response(path, resp.code, resp.body) == {"event_id": "~0"}


def test_first_request_carries_the_profile_option_and_the_answer_echoes_it() -> None:
    client = CompactClient()
    assert client.profile_option() == compact.PROFILE_COMPACT_V1
    # Before the echo: plain MSC3079 (an old server must understand it).
    path, payload = client.send_text(ROOM, "1", TEXT)
    assert path == ("9", ROOM, "m.room.message", "1")
    assert msc3079.decode(payload) == {"msgtype": "m.text", "body": TEXT}
    msg = coap.Message(coap.CON, coap.PUT, options=[(coap.OPT_URI_PATH, b"7"), (coap.OPT_PROFILE, coap.uint_encode(1))])
    assert coap.encode(msg).hex(" ") == "40 03 00 00 b1 37 e1 fc d0 01"  # Δ 64989: nibble 14, 64989-269 = 0xfcd0; 4 B
    peer = Peer("udp:test")
    assert negotiate(CoapRequest("GET", ("7",), profile=1), peer) == 1
    assert isinstance(peer.compact, CompactSession)
    session = peer.compact
    assert negotiate(CoapRequest("GET", ("7",), profile=1), peer) == 1 and peer.compact is session  # sticky
    client.note_profile(1)
    assert client.active and client.profile_option() is None


def test_other_profile_values_are_ignored_as_an_old_server_would() -> None:
    peer = Peer("udp:test")
    assert negotiate(CoapRequest("GET", ("7",), profile=2), peer) is None and peer.compact is None
    assert negotiate(CoapRequest("GET", ("7",)), peer) is None and peer.compact is None
    client = CompactClient()
    client.note_profile(None)  # no echo: the server speaks MSC3079 only
    assert not client.active
    body = msc3079.encode({"event_id": event_id(1)})
    assert client.decode_response(("9", ROOM, "m.room.message", "1"), coap.CHANGED, body) == {"event_id": event_id(1)}


# ------------------------------------------------------------------ the transport's view: serve()


class FakeGateway:
    """Answers like mapping.Gateway.handle for send, join and sync, and records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[CoapRequest] = []
        self.events: list[dict[str, Any]] = []
        self.txns: dict[str, str] = {}

    async def handle(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        self.seen.append(req)
        code = req.path[0] if req.path else ""
        if code == "9" and len(req.path) == 4 and req.method == "PUT":
            if req.path[1] != ROOM:
                return CoapResponse(coap.FORBIDDEN, msc3079.encode({"errcode": "M_FORBIDDEN", "error": "no"}), 60)
            txn = req.path[3]
            if txn not in self.txns:
                content = msc3079.decode(req.body)
                n = len(self.events) + 1
                self.txns[txn] = event_id(n)
                event = message(n, T0 + 1000 * n, body=content["body"], txn=txn)
                event["content"] = content
                self.events.append(event)
            return ok({"event_id": self.txns[txn]}, coap.CHANGED)
        if code == "K":
            return ok({"room_id": req.path[1]}, coap.CHANGED)
        if code == "7":
            since = next((q[6:] for q in req.query if q.startswith("since=")), "s0")
            start = int(since[1:])
            return ok(sync_doc(f"s{len(self.events)}", self.events[start:]))
        return CoapResponse(coap.NOT_FOUND, msc3079.encode({"errcode": "M_UNRECOGNIZED", "error": "?"}), 60)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_round_trip_through_serve_send_sync_and_own_echo() -> None:
    gateway, peer, client = FakeGateway(), Peer("udp:test"), CompactClient()

    def call(method: str, path: tuple[str, ...], body: Any = None, query: tuple[str, ...] = ()) -> Any:
        cpath, payload = client.encode_request(method, path, body)
        req = CoapRequest(method, cpath, client.encode_query(cpath, query), payload, profile=client.profile_option())
        resp, echo = run(serve(req, peer, gateway.handle))
        client.note_profile(echo)
        return cpath, resp, client.decode_response(cpath, resp.code, resp.body)

    _, resp, answer = call("POST", ("K", ROOM), {})
    assert answer == {"room_id": ROOM} and client.active
    assert cbor.loads(resp.body) == [0, ROOM]  # the room's definition
    cpath, resp, answer = call("PUT", ("9", ROOM, "m.room.message", "a"), {"msgtype": "m.text", "body": TEXT})
    assert cpath == ("9", "~0", "a") and answer == {"event_id": "~0"}
    assert gateway.seen[-1].path == ("9", ROOM, "m.room.message", "a")
    # A retry of the same transaction is the same event, the same handle.
    assert call("PUT", ("9", ROOM, "m.room.message", "a"), {"msgtype": "m.text", "body": TEXT})[2] == {"event_id": "~0"}
    _, resp, doc = call("GET", ("7",))
    assert doc["next_batch"] == "~0"  # batch handles count apart from event handles
    (event,) = doc["rooms"]["join"][ROOM]["timeline"]["events"]
    # The own echo: the session left transaction_id out (the client has it), the client put it back.
    assert event == {"event_id": "~0", "type": "m.room.message", "sender": ALICE, "origin_server_ts": T0 + 1000,
                     "content": {"msgtype": "m.text", "body": TEXT}, "unsigned": {"transaction_id": "a"}}  # fmt: skip
    assert b'"a"' not in resp.body and b"\x61" + b"a" not in resp.body
    # The next sync names its batch by alias: "~n" as a query item; the session expands it.
    call("PUT", ("9", ROOM, "m.room.message", "b"), {"msgtype": "m.notice", "body": "x"})
    _, _, doc2 = call("GET", ("7",), query=(f"since={doc['next_batch']}",))
    assert gateway.seen[-1].query == ("since=s1",)
    (event2,) = doc2["rooms"]["join"][ROOM]["timeline"]["events"]
    assert event2["origin_server_ts"] == T0 + 2000 and event2["content"] == {"msgtype": "m.notice", "body": "x"}
    # A plain MSC3079 client on another connection never sees compact bodies.
    plain_peer = Peer("udp:other")
    req = CoapRequest("GET", ("7",))
    resp, echo = run(serve(req, plain_peer, gateway.handle))
    assert echo is None and plain_peer.compact is None and resp.content_format == 60
    assert msc3079.decode(resp.body)["next_batch"] == "s2"


def test_a_compact_error_becomes_its_response_in_serve() -> None:
    peer = Peer("udp:test")
    negotiate(CoapRequest("GET", ("7",), profile=1), peer)
    resp, _ = run(serve(CoapRequest("PUT", ("9", "~5", "t"), (), b"\x61x"), peer, FakeGateway().handle))
    assert resp.code == coap.NOT_FOUND
    assert msc3079.decode(resp.body)["errcode"] == compact.ERR_UNKNOWN_ALIAS


# ------------------------------------------------------------------ aliases


def test_definitions_repeat_until_a_request_shows_the_client_has_them() -> None:
    session = CompactSession()
    doc = sync_doc("s1", [message(1, T0)])
    creq = CoapRequest("GET", ("7",))
    plain = session.inbound(creq)
    first = cbor.loads(session.outbound(plain, creq, ok(doc)).body)
    room_entry = first[2][0]
    assert room_entry[0] == [0, ROOM] and room_entry[1][0][2] == [0, ALICE]
    # A second answer before any new request (an OBSERVE notification) defines them again ...
    again = cbor.loads(session.outbound(plain, creq, ok(sync_doc("s2", [message(2, T0 + 5)]))).body)
    assert again[2][0][0] == [0, ROOM] and again[2][0][1][0][2] == [0, ALICE]
    # ... but only once within one answer.
    both = cbor.loads(session.outbound(plain, creq, ok(sync_doc("s3", [message(3, T0), message(4, T0)]))).body)
    assert both[2][0][1][0][2] == [0, ALICE] and both[2][0][1][1][2] == 0
    # Any later request: the client had the answers (NSTART = 1), so plain numbers from now on.
    session.inbound(CoapRequest("GET", ("7",)))
    later = cbor.loads(session.outbound(plain, creq, ok(sync_doc("s4", [message(5, T0)]))).body)
    assert later[2][0][0] == 0 and later[2][0][1][0][2] == 0


def test_using_an_alias_confirms_it_and_static_types_are_never_defined() -> None:
    session, client = pair()
    learn_room(session, client)
    assert session.tables["r"].unconfirmed == {0: 1}
    _, _, resp, _ = exchange(session, client, "PUT", ("9", ROOM, "m.room.message", "t"), {"event_id": event_id(1)},
                             body={"msgtype": "m.text", "body": "x"})  # fmt: skip
    assert session.tables["r"].unconfirmed == {}
    # m.room.message is static type 0, a dynamic type is defined once
    doc = sync_doc("s1", [message(1, T0), {**message(2, T0), "type": "org.example.reading"}])
    _, _, resp, decoded = exchange(session, client, "GET", ("7",), doc)
    events = cbor.loads(resp.body)[2][0][1]
    assert events[0][1] == 0 and events[1][1] == [len(compact.STATIC_TYPES), "org.example.reading"]
    assert decoded["rooms"]["join"][ROOM]["timeline"]["events"][1]["type"] == "org.example.reading"


def test_eviction_keeps_tables_bounded_and_never_reuses_a_number() -> None:
    session, client = pair()
    rooms = [f"!room{i:04d}:gw.example" for i in range(compact.MAX_ALIASES + 40)]
    for room in rooms:
        exchange(session, client, "POST", ("K", room), {"room_id": room}, body={})
    table = session.tables["r"]
    assert len(table) == compact.MAX_ALIASES
    # The 40 least recently used are gone; their numbers answer 4.04 and are not handed out again.
    with pytest.raises(CompactError) as info:
        session.inbound(CoapRequest("POST", ("K", "~0"), (), b"\xa0"))
    assert info.value.code == coap.NOT_FOUND and info.value.errcode == compact.ERR_UNKNOWN_ALIAS
    assert info.value.response().code == coap.NOT_FOUND
    # The client still has alias 0 (its mirror is larger): its request is answered 4.04, it forgets the alias
    # and the retry names the room in full, which gives it a new number.
    path, _ = client.encode_request("POST", ("K", rooms[0]), {})
    assert path == ("K", "~0")
    error = CompactError("x", coap.NOT_FOUND, compact.ERR_UNKNOWN_ALIAS).response()
    assert client.decode_response(path, error.code, error.body)["errcode"] == compact.ERR_UNKNOWN_ALIAS
    _, _, resp, answer = exchange(session, client, "POST", ("K", rooms[0]), {"room_id": rooms[0]}, body={})
    assert cbor.loads(resp.body) == [len(rooms), rooms[0]] and answer == {"room_id": rooms[0]}
    assert client.encode_request("POST", ("K", rooms[0]), {})[0] == ("K", f"~{len(rooms)}")
    # Recent ones are still there, and the client's mirror is bounded too.
    assert session.inbound(CoapRequest("POST", ("K", f"~{len(rooms) - 1}"), (), b"\xa0")).path == ("K", rooms[-1])
    assert len(client.tables["r"]) <= compact.CLIENT_MAX_ALIASES
    # Event handles: bounded as well, however many events pass by.
    for n in range(3 * compact.MAX_ALIASES):
        session.tables["e"].number(event_id(n))
    assert len(session.tables["e"]) == compact.MAX_ALIASES


def test_unknown_alias_recovery_by_lookup() -> None:
    session, client = pair()
    learn_room(session, client)
    session.inbound(CoapRequest("GET", ("7",)))  # the client confirmed the room
    # A client that lost its table (or missed an answer) sees a number it does not know ...
    forgetful = CompactClient()
    forgetful.note_profile(1)
    _, _, resp, doc = exchange(session, forgetful, "GET", ("7",), sync_doc("s1", [message(1, T0, sender=BOB)]))
    assert cbor.loads(resp.body)[2][0][0] == 0
    assert list(doc["rooms"]["join"]) == ["~0"] and forgetful.unresolved == {("r", 0)}
    # ... and asks for it: GET /~/r/0 answers the full ID, learnt by the client.
    path = forgetful.lookup_path("r", 0)
    answer = session.answer(CoapRequest("GET", path))
    assert answer is not None and answer.code == coap.CONTENT and cbor.loads(answer.body) == ROOM
    assert forgetful.decode_response(path, answer.code, answer.body) == ROOM
    assert forgetful.unresolved == set() and forgetful.send_text(ROOM, "z", "hi")[0] == ("9", "~0", "z")
    # Event handles resolve the same way; an unknown number is 4.04.
    handle = session.answer(CoapRequest("GET", ("~", "e", "0")))
    assert handle is not None and cbor.loads(handle.body) == event_id(1)
    for bad, code in ((("~", "e", "999"), coap.NOT_FOUND), (("~", "x", "1"), coap.NOT_FOUND),
                      (("~", "r", "01"), coap.BAD_REQUEST), (("~", "r"), coap.NOT_FOUND)):  # fmt: skip
        with pytest.raises(CompactError) as info:
            session.answer(CoapRequest("GET", bad))
        assert info.value.code == code
    with pytest.raises(CompactError):
        session.answer(CoapRequest("PUT", ("~", "r", "0")))
    assert session.answer(CoapRequest("GET", ("7",))) is None


def test_escaping_keeps_literal_tildes_and_refuses_aliases_where_none_fit() -> None:
    session, client = pair()
    learn_room(session, client)
    creq, plain, _, _ = exchange(session, client, "PUT", ("9", ROOM, "~odd.type", "~txn"), {"event_id": event_id(1)},
                                 body={"k": 1})  # fmt: skip
    assert creq.path == ("9", "~0", "~~odd.type", "~~txn") and plain.path == ("9", ROOM, "~odd.type", "~txn")
    for path in (("9", "~0", "~1"), ("9", "~0", "m.room.message", "~3")):  # an alias as transaction ID
        with pytest.raises(CompactError) as info:
            session.inbound(CoapRequest("PUT", path, (), b"\x61x"))
        assert info.value.code == coap.BAD_REQUEST


# ------------------------------------------------------------------ sync


def test_five_message_sync_compacted_against_msc3079() -> None:
    session, client = pair()
    state = [member(1, ALICE, T0 - 60_000), member(2, BOB, T0 - 50_000)]
    first = sync_doc("s10_3", [message(3, T0 - 10_000, sender=BOB)], state=state, limited=True, unread=1)
    _, _, _, doc0 = exchange(session, client, "GET", ("7",), first)
    assert doc0 == normal(first, "~0", session)
    # The measured one: five new messages (telemetry from one sender, a reply from another), incremental.
    batch = [message(10 + i, T0 + 60_000 * i + 17 * i, sender=BOB if i != 3 else ALICE,
                     body=f"temp {21 + i / 10:.1f} C") for i in range(5)]  # fmt: skip
    doc = sync_doc("s15_3", batch, unread=1)  # unread count unchanged since the last sync
    query = (f"since={doc0['next_batch']}",)
    msc_bytes = len(msc3079.encode(doc))
    creq, plain, resp, decoded = exchange(session, client, "GET", ("7",), doc, query=query)
    assert creq.query == ("~0",) and plain.query == ("since=s10_3",)
    # An OBSERVE loop that sets since= on the request as sent (mapping.with_query keeps the bare "~0"):
    again = session.inbound(CoapRequest("GET", ("7",), ("~0", "since=s15_3", "timeout=30000")))
    assert again.query == ("since=s15_3", "timeout=30000")
    expected = normal(doc, "~1", session)
    assert decoded == expected  # unread_notifications restored from the client's memory
    compact_bytes = len(resp.body)
    print(f"\n5-message sync body: MSC3079 {msc_bytes} B, compact {compact_bytes} B ({compact_bytes / msc_bytes:.0%})")
    assert compact_bytes * 4 < msc_bytes
    top = cbor.loads(resp.body)
    assert top[1] == 0  # relative to batch 0's time
    assert 6 not in top  # device_one_time_keys_count unchanged: left out
    events = top[2][0][1]
    assert [e[3] for e in events[1:]] == [60_017] * 4  # Δ ms to the previous event
    assert all(isinstance(e[4], str) for e in events)  # m.text as bare text
    assert len(top[2][0]) == 2  # nothing but the timeline changed


def test_sticky_sections_are_sent_when_they_change_even_to_empty() -> None:
    session, client = pair()
    doc = sync_doc("s1", [], unread=2)
    _, _, _, decoded = exchange(session, client, "GET", ("7",), doc)
    assert decoded["device_one_time_keys_count"] == {"signed_curve25519": 50}
    doc2 = sync_doc("s2", [], unread=0)
    doc2["device_one_time_keys_count"] = {}
    _, _, resp2, decoded2 = exchange(session, client, "GET", ("7",), doc2, query=("since=~0",))
    assert cbor.loads(resp2.body)[2] == [[0, [], {3: [0, 0]}]]  # changed counts: [notification, highlight]
    assert decoded2["device_one_time_keys_count"] == {}
    assert decoded2["rooms"]["join"][ROOM]["unread_notifications"]["notification_count"] == 0
    # idle: nothing changed at all → a few bytes
    doc3 = sync_doc("s2", [], unread=0)
    doc3["device_one_time_keys_count"] = {}
    _, _, resp3, decoded3 = exchange(session, client, "GET", ("7",), doc3, query=("since=~1",))
    assert resp3.body == bytes.fromhex("a1 00 01")  # {0: batch 1}: nothing else changed
    assert decoded3 == {"next_batch": "~1", "device_one_time_keys_count": {}}  # the sticky part from memory
    print(f"\nidle sync answer: {len(resp3.body)} B body ({resp3.body.hex()})")


def test_answers_not_sent_are_taken_back() -> None:
    """An OBSERVE loop polls without news many times (new tokens, nothing for the client) and sends none of
    it: the client's batch must survive, and what those answers carried must count as never told."""
    session, client = pair()
    _, _, _, first = exchange(session, client, "GET", ("7",), sync_doc("s1", [message(1, T0)], unread=0))
    poll = CoapRequest("GET", ("7",), ("since=s1",))
    plain = session.inbound(poll)
    for n in range(3 * compact.MAX_BATCHES):
        quiet = sync_doc(f"s1_{n}", [], unread=0)
        quiet["device_one_time_keys_count"] = {"signed_curve25519": 49}  # changed, but not news for has_news()
        session.outbound(plain, poll, ok(quiet))
        session.not_sent()
    # The client's batch ~0 is still there, with its time, and the changed key count is still news to it.
    creq, plain2, resp, doc = exchange(session, client, "GET", ("7",), sync_doc("s2", [message(2, T0 + 7)]),
                                       query=(f"since={first['next_batch']}",))  # fmt: skip
    assert plain2.query == ("since=s1",) and cbor.loads(resp.body)[1] == 0
    assert doc["rooms"]["join"][ROOM]["timeline"]["events"][0]["origin_server_ts"] == T0 + 7
    assert doc["device_one_time_keys_count"] == {"signed_curve25519": 50}  # the value this answer carried
    # Definitions an unsent answer carried are sent again by the next one, even after a request.
    fresh = CompactSession()
    creq = CoapRequest("GET", ("7",))
    fresh.outbound(fresh.inbound(creq), creq, ok(sync_doc("s1", [message(1, T0, sender=BOB)])))
    fresh.not_sent()
    fresh.inbound(CoapRequest("GET", ("I",)))
    again = cbor.loads(fresh.outbound(fresh.inbound(creq), creq, ok(sync_doc("s1", [message(1, T0, sender=BOB)]))).body)
    assert again[2][0][0] == [0, ROOM] and again[2][0][1][0][2] == [0, BOB]


def test_an_answer_not_from_our_homeserver_falls_back_to_msc3079_and_tells_nothing() -> None:
    session, client = pair()
    doc = sync_doc("s1", [message(1, T0, sender=BOB), "not an event"])  # type: ignore[list-item]
    creq = CoapRequest("GET", ("7",))
    resp = session.outbound(session.inbound(creq), creq, ok(doc))
    assert resp.body == msc3079.encode(doc) and resp.content_format is None
    decoded = client.decode_response(("7",), resp.code, resp.body)
    assert decoded["next_batch"] == "s1" and decoded["device_one_time_keys_count"] == {"signed_curve25519": 50}
    session.inbound(CoapRequest("GET", ("I",)))
    creq = CoapRequest("GET", ("7",))
    later = session.outbound(session.inbound(creq), creq, ok(sync_doc("s2", [message(2, T0, sender=BOB)])))
    top = cbor.loads(later.body)
    assert top[2][0][0] == [0, ROOM] and top[2][0][1][0][2] == [0, BOB]  # never told: defined now
    assert client.decode_response(("7",), later.code, later.body)["device_one_time_keys_count"] == {
        "signed_curve25519": 50
    }


def test_events_that_do_not_fit_the_array_form_travel_as_msc3079() -> None:
    session, client = pair()
    odd = {"type": "m.room.message", "content": {"body": "no id"}, "sender": ALICE}
    weird_key = {**message(1, T0), "state_key": 5}
    other_room = {**message(2, T0 + 1), "room_id": "!elsewhere:gw.example", "redacts": event_id(1)}
    doc = sync_doc("s1", [odd, weird_key, other_room], state=[member(3, ALICE, T0)])
    _, _, resp, decoded = exchange(session, client, "GET", ("7",), doc)
    events = cbor.loads(resp.body)[2][0][1]
    assert isinstance(events[0], dict) and isinstance(events[1], dict) and isinstance(events[2], list)
    expected = normal(doc, "~0", session)
    expected["rooms"]["join"][ROOM]["timeline"]["events"][1] = weird_key  # as it was: event ID and age kept
    assert decoded == expected


def test_a_sync_relative_to_a_batch_the_client_lost_is_an_error_not_a_wrong_time() -> None:
    session, client = pair()
    exchange(session, client, "GET", ("7",), sync_doc("s1", [message(1, T0)]))
    other = CompactClient()
    other.note_profile(1)
    creq = CoapRequest("GET", ("7",), ("~0",))
    resp = session.outbound(session.inbound(creq), creq, ok(sync_doc("s2", [message(2, T0 + 5)])))
    with pytest.raises(CompactError):
        other.decode_response(("7",), resp.code, resp.body)
    assert client.decode_response(("7",), resp.code, resp.body)["rooms"]["join"][ROOM]["timeline"]["events"][0][
        "origin_server_ts"] == T0 + 5  # fmt: skip


def test_other_answers_pass_through_and_errors_stay_msc3079() -> None:
    session, client = pair()
    learn_room(session, client)
    _, _, resp, answer = exchange(session, client, "GET", ("I",), {"joined_rooms": [ROOM]})
    assert resp.body == msc3079.encode({"joined_rooms": [ROOM]}) and answer == {"joined_rooms": [ROOM]}
    creq = CoapRequest("PUT", ("9", "~0", "q"), (), b"\x61x")
    err = CoapResponse(coap.FORBIDDEN, msc3079.encode({"errcode": "M_FORBIDDEN", "error": "no"}), 60)
    resp = session.outbound(session.inbound(creq), creq, err)
    assert resp.code == coap.FORBIDDEN and resp.content_format is None
    assert client.decode_response(creq.path, resp.code, resp.body) == {"errcode": "M_FORBIDDEN", "error": "no"}
    # A handler answer of an unexpected shape is passed on; the client reads it as MSC3079.
    resp = session.outbound(session.inbound(creq), creq, ok({"something": "else"}, coap.CHANGED))
    assert client.decode_response(creq.path, resp.code, resp.body) == {"something": "else"}
    # Full paths are not compact: untouched both ways.
    full = CoapRequest("GET", ("_matrix", "client", "r0", "rooms", "~0", "state"))
    assert session.inbound(full).path == full.path
    raw = ok({"event_id": event_id(1)})
    assert session.outbound(full, full, raw).body == raw.body


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize(
    "path",
    [("9", "~", "t"), ("9", "~01", "t"), ("9", "~x", "t"), ("9", "~-1", "t"), ("9", "~1e3", "t"),
     ("9", "~" + "9" * 20, "t"), ("9", "~٣", "t"), ("K", "~" + "9" * 19)],
)  # fmt: skip
def test_bad_alias_segments_are_compact_errors(path: tuple[str, ...]) -> None:
    session, _ = pair()
    with pytest.raises(CompactError) as info:
        session.inbound(CoapRequest("PUT", path, (), b"\x61x"))
    assert info.value.code in (coap.BAD_REQUEST, coap.NOT_FOUND)
    assert len(str(info.value)) < 80


@pytest.mark.parametrize(
    "body",
    [b"\x7f", b"\x62\xff\xfe", b"\x6a" + b"short", b"\x61x\x00", b"\x7b" + b"\xff" * 8],
)
def test_bad_text_bodies_are_compact_errors(body: bytes) -> None:
    session, client = pair()
    learn_room(session, client)
    with pytest.raises(CompactError):
        session.inbound(CoapRequest("PUT", ("9", "~0", "t"), (), body))


def test_hostile_server_answers_never_crash_the_client() -> None:
    session, client = pair()
    doc = sync_doc("s2", [message(1, T0), member(2, BOB, T0 + 1), message(3, T0 + 2, sender=BOB)],
                   state=[member(4, ALICE, T0 - 5)], limited=True)  # fmt: skip
    creq = CoapRequest("GET", ("7",))
    good = session.outbound(session.inbound(creq), creq, ok(doc)).body
    rng = random.Random(16)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.6:
                data[pos] = rng.randrange(256)
            elif choice < 0.8:
                del data[pos]
            else:
                data.insert(pos, rng.choice([0xC6, 0x9F, 0xFF, 0x1B, 0x82, 0xA1, 0x00]))
        fresh = CompactClient()
        fresh.note_profile(1)
        try:
            fresh.decode_response(("7",), coap.CONTENT, bytes(data))
            outcomes["decoded"] += 1
        except CompactError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 3000
    # Hand-made shapes: tags, deep nesting, wrong types, huge numbers, oversized definitions.
    cases = [
        b"\xc6\x01", cbor.dumps({0: 1, 2: 5}), cbor.dumps({0: 1, 2: [[[1, "!x"], [[0, 0, 0, "t", "c"]]]]}),
        cbor.dumps({0: 1, 2: [[0, [[0, 0, 0, 0, 0]]]]}), cbor.dumps({0: 1, 1: 99}),
        cbor.dumps({0: 1, 2: [[[2**63, "x" * 2000], []]]}), cbor.dumps({0: True}), cbor.dumps({0: [1, 2, 3]}),
        b"\x81" * 40 + b"\x00", cbor.dumps({0: 1, 6: [1, 2]}), cbor.dumps({0: 1, 2: [[0, [[0, 0, 0, True, "x"]]]]}),
        cbor.dumps({0: 1, 2: [[0, [[0, 0, 0, 1, "x", {4: 2.5}]]]]}), cbor.dumps({0: 1, 2: [[0, [], {0: 5}]]}),
        cbor.dumps({0: 1, 2: [[0, [[0, 0, 0, 1, "x", {6: "@dup"}]]]]}), cbor.dumps({0: 1, 2: [[0, [], {2: {9999: 1}}]]}),
    ]  # fmt: skip
    for payload in cases:
        fresh = CompactClient()
        fresh.note_profile(1)
        with pytest.raises(CompactError):
            fresh.decode_response(("7",), coap.CONTENT, payload)
    for payload in (b"\xc6\x00", cbor.dumps([1, 2]), cbor.dumps(2.5), cbor.dumps([2**64 - 1, "x" * 5000])):
        with pytest.raises(CompactError):
            client.decode_response(("9", "~0", "t"), coap.CHANGED, payload)


def test_hostile_requests_never_crash_the_session() -> None:
    session, client = pair()
    learn_room(session, client)
    rng = random.Random(3079)
    alphabet = ["~", "~~", "~0", "~1", "9", "K", "7", "~" + "9" * 30, "\x00", "ä", "", "!r:x", "m.room.message"]
    for _ in range(3000):
        path = tuple(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
        query = tuple(rng.choice(["~0", "since=~0", "since=~~x", "~x", "since=~5", "timeout=1"]) for _ in range(2))
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))
        req = CoapRequest(rng.choice(["GET", "PUT", "POST"]), path, query, body)
        try:
            if session.answer(req) is None:
                plain = session.inbound(req)
                session.outbound(plain, req, CoapResponse(coap.CONTENT, body, 60))
        except CompactError as exc:
            assert exc.code in (coap.BAD_REQUEST, coap.NOT_FOUND, coap.METHOD_NOT_ALLOWED)
    assert all(len(t) <= t.cap for t in session.tables.values())


def test_deeply_nested_and_oversized_bodies_are_refused_by_the_client() -> None:
    _, client = pair()
    deep = b"\x81" * 200 + b"\x00"
    with pytest.raises(CompactError):
        client.decode_response(("I",), coap.CONTENT, deep)
    with pytest.raises(CompactError):
        client.decode_response(("I",), coap.CONTENT, b"\x5a" + (compact.MAX_PAYLOAD + 1).to_bytes(4, "big"))
    with pytest.raises(CompactError):
        client.encode_request("PUT", ("9", ROOM, "m.room.message", "t"), {"x": float("nan")})


# ------------------------------------------------------------------ against the real mapping and homeserver


def test_compact_client_against_the_real_gateway(tmp_path: Path) -> None:
    """Register, create a room, send, sync, five messages from another user, incremental sync: compact
    through mapping.Gateway and the homeserver, compared with the same incremental sync in MSC3079."""
    from lowband.gateway.coap.mapping import Gateway
    from lowband.gateway.homeserver.services import HTTP_SERVER

    from .coap_harness import gateway_services

    async def scenario() -> None:
        async with gateway_services(tmp_path) as (services, _):
            gw = Gateway(services, services.components[HTTP_SERVER])
            peer, client = Peer("udp:127.0.0.1:40001", port=40001), CompactClient()
            sizes: dict[str, int] = {}

            async def call(method: str, path: tuple[str, ...], body: Any = None, query: tuple[str, ...] = (),
                           auth: str | None = None) -> tuple[int, Any]:  # fmt: skip
                cpath, payload = client.encode_request(method, path, body)
                req = CoapRequest(method, cpath, client.encode_query(cpath, query), payload, auth=auth,
                                  profile=client.profile_option(), content_format=60 if not client.active else None)  # fmt: skip
                resp, echo = await serve(req, peer, gw.handle)
                client.note_profile(echo)
                sizes[cpath[0]] = len(resp.body)
                return resp.code, client.decode_response(cpath, resp.code, resp.body)

            register = {"username": "alice", "password": "secret-pw-1", "auth": {"type": "m.login.dummy"}}
            code, answer = await call("POST", ("4",), register)
            assert code == coap.CHANGED and client.active, answer
            token = answer["access_token"]
            code, answer = await call("POST", ("G",), {"preset": "public_chat"}, auth=token)
            assert code == coap.CHANGED, answer
            room = answer["room_id"]
            assert room.startswith("!") and client.send_text(room, "1", TEXT)[0] == ("9", "~0", "1")
            code, sent = await call("PUT", ("9", room, "m.room.message", "1"), {"msgtype": "m.text", "body": TEXT})
            assert code == coap.CHANGED and sent["event_id"].startswith("~"), sent
            assert sizes["9"] == 1
            code, first = await call("GET", ("7",))
            assert code == coap.CONTENT, first
            timeline = first["rooms"]["join"][room]["timeline"]["events"]
            mine = [e for e in timeline if e["event_id"] == sent["event_id"]]
            assert mine and mine[0]["content"] == {"msgtype": "m.text", "body": TEXT}
            assert mine[0]["unsigned"]["transaction_id"] == "1"  # the own echo, put back by the client
            assert any(e["type"] == "m.room.create" for e in timeline)

            # Bob joins and writes five messages (plain MSC3079 on his own peer, not counted).
            bob = Peer("udp:127.0.0.1:40002", port=40002)
            reg = msc3079.encode({"username": "bob", "password": "secret-pw-2", "auth": {"type": "m.login.dummy"}})
            resp = await gw.handle(CoapRequest("POST", ("4",), body=reg, content_format=60, cbor_version=1), bob)
            bob_token = msc3079.decode(resp.body)["access_token"]
            resp = await gw.handle(CoapRequest("POST", ("K", room), body=b"\xa0", auth=bob_token), bob)
            assert resp.code == coap.CHANGED, msc3079.decode(resp.body)
            code, _ = await call("GET", ("7",), query=(f"since={first['next_batch']}",))  # bob's join
            code, joined = await call("GET", ("7",), query=(f"since={first['next_batch']}",))
            since = joined["next_batch"]
            for i in range(5):
                content = msc3079.encode({"msgtype": "m.text", "body": f"temp {21 + i / 10:.1f} C"})
                resp = await gw.handle(CoapRequest("PUT", ("9", room, "m.room.message", f"b{i}"), body=content,
                                                   content_format=60), bob)  # fmt: skip
                assert resp.code == coap.CHANGED
            code, batch = await call("GET", ("7",), query=(f"since={since}",))
            events = batch["rooms"]["join"][room]["timeline"]["events"]
            assert [e["content"]["body"] for e in events] == [f"temp {21 + i / 10:.1f} C" for i in range(5)]
            assert {e["sender"] for e in events} == {"@bob:localhost"}
            # The same incremental sync in MSC3079 on a plain connection with the same token.
            lookup = client.lookup_path("b", int(since[1:]))
            resp, _ = await serve(CoapRequest("GET", lookup), peer, gw.handle)
            full_since = client.decode_response(lookup, resp.code, resp.body)
            plain = Peer("udp:127.0.0.1:40003", port=40003)
            msc = await gw.handle(
                CoapRequest("GET", ("7",), (f"since={full_since}",), auth=token, cbor_version=1), plain
            )
            reference = msc3079.decode(msc.body)["rooms"]["join"][room]["timeline"]["events"]
            assert [e["origin_server_ts"] for e in reference] == [e["origin_server_ts"] for e in events]
            for compact_event, full_event in zip(events, reference, strict=True):  # handles resolve to the IDs
                path = client.lookup_path("e", int(compact_event["event_id"][1:]))
                resp, _ = await serve(CoapRequest("GET", path), peer, gw.handle)
                assert client.decode_response(path, resp.code, resp.body) == full_event["event_id"]
            print(f"\nreal gateway, sync of 5 messages: MSC3079 {len(msc.body)} B, compact {sizes['7']} B")
            assert sizes["7"] * 3 < len(msc.body)

    asyncio.run(asyncio.wait_for(scenario(), 120))
