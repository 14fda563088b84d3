"""Security: a peer whose DAG has deep gaps, many missing prev events, endless auth chains or state, or that answers
slowly or never, costs the gateway a bounded number of requests and bounded time; the server keeps serving.

The hostile peer answers the gateway's fetches honestly from what it holds
unless a test overrides an endpoint; ``peer.hits`` counts what the gateway
asked it. A prober (another connection) keeps using the gateway meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from urllib.parse import unquote

from aiohttp import web
from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, public_room
from test_security_flood import Prober

from lowband.gateway.federation.inbound.budget import MAX_FETCHES_PER_TRANSACTION
from lowband.gateway.federation.inbound.fetch_auth_events import MAX_AUTH_CHAIN
from lowband.gateway.federation.inbound.fetch_prev_events import FETCH_ONE_BY_ONE, MAX_STATE_EVENTS

FETCHES = ("event", "event_auth", "get_missing_events", "state_ids", "state", "backfill")


def _fetches(peer: HostilePeer) -> int:
    return sum(peer.hits[kind] for kind in FETCHES)


async def _scene(tmp_path, session, gw, peer):
    alice = await local_user(session, gw, "alice")
    room_id = await public_room(alice)
    await peer.join(session, gw, room_id)
    return alice, room_id


def _run(tmp_path, scenario, timeout=180):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice, room_id = await _scene(tmp_path, session, gw, peer)
            async with Prober(alice, room_id) as prober:
                await scenario(peer, gw, session, room_id)
                await prober.two_more()
            prober.check()

    asyncio.run(asyncio.wait_for(main(), timeout))


def test_an_event_10000_deep_past_what_we_hold_costs_a_few_requests(tmp_path):
    async def scenario(peer, gw, session, room_id):
        chain = peer.chain(10_000)
        started = time.monotonic()
        status, answer = await peer.send(session, gw, [chain[-1]])
        took = time.monotonic() - started
        assert status == 200 and answer["pdus"] == {chain[-1].event_id: {}}, answer
        # one /get_missing_events (10 events, each a gap of its own, dropped), then the state at the gap
        assert peer.hits["get_missing_events"] == 1 and peer.hits["state_ids"] == 1, peer.hits
        assert _fetches(peer) <= 2 + FETCH_ONE_BY_ONE, peer.hits
        assert took < 30, took
        known = gw.federation.dag.known(chain[-1].event_id)
        assert known is not None and known.rejected is None and not known.outlier

    _run(tmp_path, scenario)


def test_twenty_unknown_prev_events_cost_bounded_fetches_and_twenty_one_are_refused(tmp_path):
    async def scenario(peer, gw, session, room_id):
        join = peer.latest[0]
        tips = [peer.chain(3, prefix=f"fork{f}.")[-1] for f in range(20) if not peer.__setattr__("latest", [join])]
        merge = peer.message("merge of 20 forks", prev=tips)
        status, answer = await peer.send(session, gw, [merge])
        assert status == 200 and answer["pdus"] == {merge.event_id: {}}, answer
        assert peer.hits["get_missing_events"] == 1, peer.hits
        assert _fetches(peer) <= MAX_FETCHES_PER_TRANSACTION, peer.hits
        assert gw.federation.dag.known(merge.event_id).rejected is None

        # 21 prev events: the event format refuses it before anything is fetched
        before = _fetches(peer)
        too_many = copy.deepcopy(peer.message("21 prevs", keep=False).pdu)
        too_many["prev_events"] = [t.event_id for t in tips] + [join.event_id]
        status, answer = await peer.send(session, gw, [too_many])
        [refused] = answer["pdus"].values()
        assert "prev_events" in refused["error"] and "20" in refused["error"], answer
        assert _fetches(peer) == before

    _run(tmp_path, scenario)


def test_twenty_gaps_each_naming_new_state_run_out_of_the_transactions_budget(tmp_path):
    """The worst the format allows: 20 prev events nobody will describe, each gap listing state to fetch one by one."""

    async def scenario(peer, gw, session, room_id):
        join = peer.latest[0]
        tips = []
        for f in range(20):
            peer.latest = [join]
            tips.append(peer.message(f"fork {f}"))
        # each gap's state names FETCH_ONE_BY_ONE - 1 events the gateway does not have (the peer serves them)
        fakes = {tip.event_id: [peer.make("m.room.member", {"membership": "leave"}, state_key=peer.user(f"ghost{f}.{i}"),
                                          prev=[join], keep=True).event_id for i in range(FETCH_ONE_BY_ONE - 1)]
                 for f, tip in enumerate(tips)}  # fmt: skip
        peer.latest = tips

        async def nothing_missing(request):
            return web.json_response({"events": []})

        async def state_ids(request):
            state = list(peer.state_before[join.event_id].values())
            return web.json_response({"pdu_ids": state + fakes[request.query["event_id"]], "auth_chain_ids": []})

        peer.overrides.update(get_missing_events=nothing_missing, state_ids=state_ids)
        merge = peer.message("merge of 20 forks", prev=tips)
        status, answer = await peer.send(session, gw, [merge, peer.message("after it", prev=[merge], keep=False)])
        assert status == 200, answer
        errors = [v.get("error", "") for v in answer["pdus"].values()]
        assert all("requests this transaction's events may cost are spent" in e for e in errors), errors
        assert _fetches(peer) <= MAX_FETCHES_PER_TRANSACTION, peer.hits
        assert gw.federation.dag.known(merge.event_id) is None

    _run(tmp_path, scenario)


def test_an_auth_chain_of_100000_events_or_state_ids_of_1000000_is_refused_after_one_request(tmp_path):
    async def scenario(peer, gw, session, room_id):
        # an event citing an auth event the gateway lacks: the gateway asks /event_auth once
        stranger_join = peer.make("m.room.member", {"membership": "join"}, sender=peer.user("sybil"),
                                  state_key=peer.user("sybil"), keep=False)  # fmt: skip
        sample = stranger_join.pdu

        for size in (100_000, MAX_AUTH_CHAIN + 1):
            async def endless_chain(request, size=size):
                return web.Response(body=json.dumps({"auth_chain": [sample] * size}).encode(),
                                    content_type="application/json")  # fmt: skip

            peer.overrides["event_auth"] = endless_chain
            before = peer.hits["event_auth"]
            message = peer.message(f"by sybil {size}", sender=peer.user("sybil"), keep=False,
                                   auth=[peer.state[("m.room.create", "")], peer.state[("m.room.power_levels", "")],
                                         stranger_join])  # fmt: skip
            started = time.monotonic()
            status, answer = await peer.send(session, gw, [message])
            assert time.monotonic() - started < 30
            error = answer["pdus"][message.event_id]["error"]
            assert "M_TOO_LARGE" in error if size == 100_000 else f"more than {MAX_AUTH_CHAIN}" in error, error
            assert peer.hits["event_auth"] == before + 1

        # an event past a gap, whose state the peer lists with a million IDs (or just over the count limit)
        for count in (1_000_000, MAX_STATE_EVENTS + 1):
            async def huge_state(request, count=count):
                ids = [f"${i:043d}" for i in range(count)]
                return web.Response(body=json.dumps({"pdu_ids": ids, "auth_chain_ids": []}).encode(),
                                    content_type="application/json")  # fmt: skip

            async def nothing_missing(request):
                return web.json_response({"events": []})

            peer.overrides.update(state_ids=huge_state, get_missing_events=nothing_missing)
            hidden = peer.message(f"hidden {count}")
            shown = peer.message(f"shown {count}")
            before = dict(peer.hits)
            status, answer = await peer.send(session, gw, [shown])
            assert status == 200, answer
            error = answer["pdus"][shown.event_id]["error"]
            assert "M_TOO_LARGE" in error if count == 1_000_000 else f"more than {MAX_STATE_EVENTS} IDs" in error, error
            assert peer.hits["state_ids"] == before.get("state_ids", 0) + 1
            assert peer.hits["event"] == before.get("event", 0) and peer.hits["state"] == before.get("state", 0)
            assert gw.federation.dag.known(hidden.event_id) is None

    _run(tmp_path, scenario)


def test_a_peer_that_answers_slowly_or_never_costs_the_transaction_deadline_at_most(tmp_path):
    async def scenario(peer, gw, session, room_id):
        release = asyncio.Event()

        def answering(kind, delay):
            async def handler(request):
                if delay is None:
                    await asyncio.wait_for(release.wait(), 120)
                else:
                    await asyncio.sleep(delay)
                return await peer._honest(kind, request, [unquote(p) for p in request.raw_path.split("?")[0].split("/")])
            return handler

        # (name, each fetch answered after, the deadline (45 s in production; the rule is the same), placed?)
        try:
            for name, delay, deadline, placed in (("never", None, 3.0, False), ("slowly", 0.3, 15.0, True),
                                                  ("too slowly", 2.0, 3.0, False)):  # fmt: skip
                gw.federation.pipeline.deadline_s = deadline
                peer.overrides.update({kind: answering(kind, delay) for kind in FETCHES})
                hidden = peer.chain(15, prefix=f"hidden {name} ")  # deeper than one /get_missing_events reaches
                shown, after = peer.message(f"shown {name}"), peer.message(f"after {name}")
                before = _fetches(peer)
                started = time.monotonic()
                status, answer = await peer.send(session, gw, [shown, after])
                took = time.monotonic() - started
                assert status == 200, answer
                assert took < deadline + 5.0, (name, took)  # the deadline, and what the rest of the transaction costs
                if placed:
                    assert answer["pdus"] == {shown.event_id: {}, after.event_id: {}}, (name, answer)
                else:
                    assert all(v.get("error") for v in answer["pdus"].values()), (name, answer)
                    assert gw.federation.dag.known(shown.event_id) is None
                    assert _fetches(peer) - before <= 3, (name, peer.hits)  # the rest got no time to ask
                assert gw.federation.dag.known(hidden[0].event_id) is None
        finally:
            release.set()

    _run(tmp_path, scenario)
