"""Unknown-alias recovery in the compact client (gateway/coap/compact_client.py), against a real CompactSession.

Under loss the server counts a definition as delivered once any later request
arrives (NSTART = 1), so a client can be handed bare alias numbers it never saw
defined; and the server can evict an alias the client still uses. Both are
recovered in :class:`CompactClient`; these tests drive it by hand, the way
gateway/coap/client.py and sim/coap_peer.py do.
"""

from __future__ import annotations

from typing import Any

from lowband.codecs import cbor, coap, msc3079
from lowband.gateway.coap import compact
from lowband.gateway.coap.compact import CompactError, CompactSession
from lowband.gateway.coap.compact_client import CompactClient, Decoded
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse

ROOM = "!kT7yQmZpLr2sVb4N:gw.example"
ALICE = "@alice:gw.example"
T0 = 1_764_892_800_000


def message(n: int, sender: str = ALICE, kind: str = "m.room.message") -> dict[str, Any]:
    return {"event_id": f"$ev{n:05d}".ljust(44, "Q"), "type": kind, "sender": sender, "origin_server_ts": T0 + n,
            "content": {"msgtype": "m.text", "body": f"reading {n}"}}  # fmt: skip


def sync_doc(batch: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"next_batch": batch, "rooms": {"join": {ROOM: {"timeline": {"events": events}}}}}


def serve(session: CompactSession, client: CompactClient, method: str, path: tuple[str, ...], answer: Any,
          body: Any = None) -> tuple[tuple[str, ...], CoapResponse]:  # fmt: skip
    """One request through the session with a canned MSC3079 answer; the compact response is not decoded."""
    cpath, payload = client.encode_request(method, path, body)
    creq = CoapRequest(method, cpath, client.encode_query(cpath, ()), payload)
    try:
        plain = session.inbound(creq)
    except CompactError as exc:
        return cpath, exc.response()
    return cpath, session.outbound(plain, creq, CoapResponse(coap.CONTENT, msc3079.encode(answer), coap.FORMAT_CBOR))


def recover(session: CompactSession, client: CompactClient, decoded: Decoded) -> list[bool]:
    """Look each unknown alias up through the session, as a client would over the wire."""
    learnt = []
    for kind, number in decoded.unknown:
        path = client.lookup_path(kind, number)
        try:
            answer = session.answer(CoapRequest("GET", path))
        except CompactError as exc:
            answer = exc.response()
        assert answer is not None
        learnt.append(client.learn_lookup(kind, number, answer.code, answer.body))
    return learnt


def active() -> CompactClient:
    client = CompactClient()
    client.note_profile(compact.PROFILE_COMPACT_V1)
    return client


def test_a_lost_definition_is_reported_and_recovered_by_lookups() -> None:
    session, client = CompactSession(), active()
    # The first sync defines the room, the user and a dynamic type; its answer is lost on the way.
    first = sync_doc("s1", [message(1), message(2, kind="org.example.reading")])
    path, lost = serve(session, client, "GET", ("7",), first)
    assert cbor.loads(lost.body)[2][0][0] == [0, ROOM]
    # Any later request counts, for the server, as proof that the definitions arrived.
    path, resp = serve(
        session, client, "GET", ("7",), sync_doc("s2", [message(3), message(4, kind="org.example.reading")])
    )
    body = cbor.loads(resp.body)
    assert body[2][0][0] == 0 and body[2][0][1][0][2] == 0  # bare numbers
    decoded = client.decode(path, resp.code, resp.body)
    assert decoded.unknown == (("r", 0), ("t", len(compact.STATIC_TYPES)), ("u", 0)) and not decoded.retry
    assert decoded.value["rooms"]["join"] == {"~0": decoded.value["rooms"]["join"]["~0"]}
    assert recover(session, client, decoded) == [True, True, True]
    again = client.decode(path, resp.code, resp.body)
    assert again.unknown == () and not client.unresolved
    events = again.value["rooms"]["join"][ROOM]["timeline"]["events"]
    assert [(e["sender"], e["type"]) for e in events] == [(ALICE, "m.room.message"), (ALICE, "org.example.reading")]
    # From now on requests use the learnt alias.
    assert client.send_text(ROOM, "t1", "hi")[0] == ("9", "~0", "t1")


def test_event_and_batch_handles_are_not_unknown_aliases() -> None:
    session, client = CompactSession(), active()
    path, resp = serve(session, client, "GET", ("7",), sync_doc("s1", [message(1)]))
    decoded = client.decode(path, resp.code, resp.body)
    assert decoded.unknown == ()
    value: Any = decoded.value
    assert value["next_batch"] == "~0" and value["rooms"]["join"][ROOM]["timeline"]["events"][0]["event_id"] == "~0"


def test_a_refused_lookup_leaves_the_placeholder_and_is_not_asked_again() -> None:
    session, client = CompactSession(), active()
    serve(session, client, "GET", ("7",), sync_doc("s1", [message(1)]))  # lost
    path, resp = serve(session, client, "GET", ("7",), sync_doc("s2", [message(2)]))
    decoded = client.decode(path, resp.code, resp.body)
    assert ("r", 0) in decoded.unknown and ("r", 0) in client.unresolved
    refused = CompactError("gone", coap.NOT_FOUND, compact.ERR_UNKNOWN_ALIAS).response()
    assert client.learn_lookup("r", 0, refused.code, refused.body) is False
    assert ("r", 0) not in client.unresolved
    # Malformed answers and answers for another kind are refused without raising.
    for code, payload in ((coap.CONTENT, b"\xff"), (coap.CONTENT, cbor.dumps(7)), (coap.CONTENT, b""),
                          (coap.INTERNAL_SERVER_ERROR, b"")):  # fmt: skip
        assert client.learn_lookup("u", 0, code, payload) is False
    assert client.learn_lookup("x", 0, coap.CONTENT, cbor.dumps(ROOM)) is False
    assert client.decode(path, resp.code, resp.body).value["rooms"]["join"].keys() == {"~0"}


def test_an_evicted_alias_drops_the_requests_aliases_and_asks_for_a_retry() -> None:
    session, client = CompactSession(), active()
    client.learn("r", 5, ROOM)  # an alias the server does not have (evicted, or from an older session)
    path, resp = serve(session, client, "PUT", ("9", ROOM, "m.room.message", "t1"), {"event_id": "$e"},
                       body={"msgtype": "m.text", "body": "x"})  # fmt: skip
    assert path == ("9", "~5", "t1") and resp.code == coap.NOT_FOUND
    decoded = client.decode(path, resp.code, resp.body)
    assert decoded.retry and decoded.value["errcode"] == compact.ERR_UNKNOWN_ALIAS
    # The retry names the room in full and succeeds.
    path, resp = serve(session, client, "PUT", ("9", ROOM, "m.room.message", "t1"), {"event_id": "$e"},
                       body={"msgtype": "m.text", "body": "x"})  # fmt: skip
    assert path == ("9", ROOM, "t1") and resp.code == coap.CONTENT
    # Nothing to drop (no alias in the path, or not in compact mode): no retry, the error is the answer.
    assert not client.decode(path, coap.NOT_FOUND, resp_error()).retry
    plain = CompactClient()
    plain.learn("r", 5, ROOM)
    assert not plain.decode(("9", "~5", "t1"), coap.NOT_FOUND, resp_error()).retry
    other = CompactError("no", coap.NOT_FOUND, "M_NOT_FOUND").response()
    client.learn("r", 6, "!other:gw.example")
    assert not client.decode(("K", "~6"), other.code, other.body).retry and 6 in client.tables["r"]


def resp_error() -> bytes:
    return CompactError("gone", coap.NOT_FOUND, compact.ERR_UNKNOWN_ALIAS).response().body
