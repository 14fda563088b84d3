"""``lowband bench appservice``: its pure parts, the bench bridge over loopback, and one short real run."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from lowband.gateway.appservices.registration import parse_registration
from lowband.gateway.bench import appservice as bench
from lowband.gateway.bench import synapse
from lowband.gateway.bench.bridge_receiver import BridgeReceiver, PushLedger, check_hs_token

HS_TOKEN = "hs-bench-token"


def figures(push: float, latency: float, p99: float, rss: float, lost: int = 0, duplicated: int = 0) -> dict:
    return {
        "push_events_per_s": push,
        "push_latency_ms": latency,
        "push_latency_ms_p99": p99,
        "transactions": 40,
        "events_per_transaction": 5.0,
        "lost": lost,
        "duplicated": duplicated,
        "rss_idle_mb": rss * 0.9,
        "rss_load_mb": rss,
    }


# --------------------------------------------------------------------------
# Percentiles, assembling, the table.


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7.0], 99, 7.0),
        ([float(v) for v in range(1, 101)], 99, 99.0),  # nearest rank: a measured value, no interpolation
        ([float(v) for v in range(1, 101)], 100, 100.0),
        ([float(v) for v in range(1, 101)], 50, 50.0),
        ([float(v) for v in range(1, 11)], 99, 10.0),  # fewer than 100 samples: p99 is the largest
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([30.0, 10.0, 20.0, 40.0], 25, 10.0),
    ],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert bench.percentile(values, q) == expected


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 0), ([1.0], 101)])
def test_percentile_refuses_nothing_and_out_of_range(values, q):
    with pytest.raises(ValueError):
        bench.percentile(values, q)


def test_ratios_are_lowband_over_synapse():
    result = bench.assemble({"lowband": figures(900.0, 4.0, 9.0, 40.0), "synapse": figures(30.0, 80.0, 150.0, 120.0)})
    assert result["ratio_push"] == pytest.approx(30.0)
    assert result["ratio_latency"] == pytest.approx(0.05)
    assert result["ratio_latency_p99"] == pytest.approx(0.06)
    assert result["ratio_rss"] == pytest.approx(1 / 3, rel=1e-3)
    for name in bench.SERVERS:
        assert set(bench.FIGURE_KEYS) <= set(result[name])
    assert json.loads(json.dumps(result)) == result  # the --json line


def test_one_side_alone_or_a_zero_anchor_gives_no_ratio():
    alone = bench.assemble({"synapse": figures(30.0, 80.0, 150.0, 120.0)})
    assert "lowband" not in alone
    assert all(alone[k] is None for k in ("ratio_push", "ratio_latency", "ratio_latency_p99", "ratio_rss"))
    zero = bench.assemble({"lowband": figures(900.0, 4.0, 9.0, 40.0), "synapse": figures(0.0, 80.0, 150.0, 120.0)})
    assert zero["ratio_push"] is None and zero["ratio_latency"] is not None


def test_assemble_copies_the_figures():
    ours = figures(900.0, 4.0, 9.0, 40.0)
    bench.assemble({"lowband": ours})["lowband"]["lost"] = 99
    assert ours["lost"] == 0


def test_table_shows_both_servers_and_the_ratios():
    table = bench.render_table(
        bench.assemble({"lowband": figures(900.0, 4.0, 9.0, 40.0), "synapse": figures(30.0, 80.0, 150.0, 120.0)})
    )
    lines = table.splitlines()
    push = next(line for line in lines if line.startswith("events pushed/s"))
    assert "900.0" in push and "30.0" in push and "30×" in push
    p99 = next(line for line in lines if line.startswith("send → bridge, p99"))
    assert "9.0" in p99 and "150.0" in p99 and "0.06×" in p99
    assert "LOST" not in table


def test_table_shouts_lost_or_duplicated_and_dashes_a_missing_side():
    table = bench.render_table(bench.assemble({"lowband": figures(900.0, 4.0, 9.0, 40.0, duplicated=2)}))
    assert "LOST OR DUPLICATED" in table
    lost = next(line for line in table.splitlines() if line.startswith("duplicated"))
    assert lost.split()[1:] == ["2", "—"]


@pytest.mark.parametrize("kwargs", [{"only": "dendrite"}, {"messages": 0}, {"seconds": 0}, {"latency_rounds": 0}])
def test_bad_arguments_are_refused_before_anything_starts(kwargs):
    with pytest.raises(ValueError):
        bench.run(**kwargs)


def test_the_registration_is_one_our_gateway_accepts():
    doc = bench.registration("http://127.0.0.1:9999", "as-token", HS_TOKEN)
    bridge = parse_registration(json.loads(json.dumps(doc)), synapse.SERVER_NAME)
    assert bridge.url == "http://127.0.0.1:9999" and bridge.hs_token == HS_TOKEN and not bridge.rate_limited
    assert bridge.sender == f"@{bench.BOT_LOCALPART}:localhost"
    assert not bridge.owns_user("@bench0:localhost")  # the load users are ordinary users


def test_synapse_gets_the_registration_files_only_when_given():
    generated = {"server_name": "localhost", "listeners": []}
    with_bridge = synapse.configure_synapse(generated, port=1, data_dir="/tmp/x", app_service_config_files=["/r.yaml"])
    assert with_bridge["app_service_config_files"] == ["/r.yaml"]
    assert "app_service_config_files" not in synapse.configure_synapse(generated, port=1, data_dir="/tmp/x")


# --------------------------------------------------------------------------
# The bridge's ledger and token check.


@pytest.mark.parametrize(
    ("authorization", "query", "expected"),
    [
        (f"Bearer {HS_TOKEN}", None, None),
        (f"bearer {HS_TOKEN}", None, None),
        (None, HS_TOKEN, None),  # the older query parameter Synapse also sends
        (None, None, (401, "M_UNAUTHORIZED")),
        ("Bearer ", None, (401, "M_UNAUTHORIZED")),
        (f"Basic {HS_TOKEN}", None, (401, "M_UNAUTHORIZED")),
        ("Bearer as-token-instead", None, (403, "M_FORBIDDEN")),
        (None, HS_TOKEN + "x", (403, "M_FORBIDDEN")),
        (f"Bearer {HS_TOKEN[:-1]}", None, (403, "M_FORBIDDEN")),
    ],
)
def test_hs_token_check(authorization, query, expected):
    assert check_hs_token(authorization, query, HS_TOKEN) == expected


def message(event_id: str, text: str) -> dict:
    return {"event_id": event_id, "type": "m.room.message", "content": {"msgtype": "m.text", "body": text}}


def test_a_retried_transaction_is_acknowledged_and_not_counted_twice():
    ledger = PushLedger()
    body = {"events": [message("$a", "one"), message("$b", "two")]}
    assert ledger.accept("1", body, now=10.0)
    assert ledger.accept("1", body, now=11.0)  # the homeserver did not see our answer and pushed again
    assert (ledger.transactions, ledger.retried, ledger.events, ledger.duplicated) == (1, 1, 2, 0)
    assert ledger.by_body == {"one": 10.0, "two": 10.0}
    assert ledger.sizes == [2]


def test_an_event_in_two_transactions_is_a_duplicate_and_keeps_its_first_time():
    ledger = PushLedger()
    ledger.accept("1", {"events": [message("$a", "one")]}, now=10.0)
    ledger.accept("2", {"events": [message("$a", "one"), message("$c", "three")]}, now=12.0)
    ledger.accept("3", {"events": [message("$d", "four"), message("$d", "four")]}, now=13.0)
    assert (ledger.transactions, ledger.events, ledger.duplicated) == (3, 5, 2)
    assert ledger.by_body["one"] == 10.0 and ledger.first_seen["$c"] == 12.0
    assert ledger.missing(["one", "three", "four", "five"]) == ["five"]


def test_malformed_transactions_are_refused_and_events_without_ids_only_counted():
    ledger = PushLedger()
    for body in ([1, 2], {"events": "many"}, "text", None):
        assert not ledger.accept("x", body, now=1.0)
    assert ledger.refused == 4 and ledger.transactions == 0
    # A refused ID is not burnt: the proper transaction under it is taken.
    assert ledger.accept("x", {"events": [{"type": "m.room.message"}, "junk", message("$e", "five")]}, now=2.0)
    assert ledger.accept("y", {}, now=3.0)  # no events key: an empty transaction (ephemeral only)
    assert (ledger.transactions, ledger.events, ledger.sizes) == (2, 3, [3, 0])
    assert ledger.by_body == {"five": 2.0}


# --------------------------------------------------------------------------
# The bridge over loopback HTTP.


def test_the_bridge_refuses_bad_tokens_and_records_good_pushes():
    async def scenario() -> tuple[list, BridgeReceiver, bool, bool]:
        bridge = BridgeReceiver(HS_TOKEN)
        await bridge.start()
        answers = []
        try:
            async with aiohttp.ClientSession() as http:
                url = f"{bridge.url}/_matrix/app/v1/transactions"
                forged = {"events": [message("$forged", "forged")]}
                for txn, headers, params in (
                    ("1", {}, {}),
                    ("2", {"Authorization": "Bearer wrong"}, {}),
                    ("3", {}, {"access_token": "wrong"}),
                ):
                    async with http.put(f"{url}/{txn}", json=forged, headers=headers, params=params) as resp:
                        answers.append((resp.status, (await resp.json())["errcode"]))
                waiter = asyncio.create_task(bridge.wait_for(["hello"], 5.0))
                await asyncio.sleep(0.05)
                good = {"Authorization": f"Bearer {HS_TOKEN}"}
                async with http.put(f"{url}/4", json={"events": [message("$h", "hello")]}, headers=good) as resp:
                    answers.append((resp.status, await resp.json()))
                async with http.put(f"{url}/5", data=b"{not json", headers=good) as resp:
                    answers.append((resp.status, (await resp.json())["errcode"]))
                async with http.post(
                    f"{bridge.url}/_matrix/app/v1/ping", json={}, params={"access_token": HS_TOKEN}
                ) as resp:
                    answers.append((resp.status, await resp.json()))
                async with http.get(f"{bridge.url}/transactions/6", headers=good) as resp:
                    answers.append((resp.status, (await resp.json())["errcode"]))
                arrived = await waiter
                never = await bridge.wait_for(["forged"], 0.2)
        finally:
            await bridge.stop()
        return answers, bridge, arrived, never

    started = time.perf_counter()
    answers, bridge, arrived, never = asyncio.run(scenario())
    assert answers == [
        (401, "M_UNAUTHORIZED"),
        (403, "M_FORBIDDEN"),
        (403, "M_FORBIDDEN"),
        (200, {}),
        (400, "M_NOT_JSON"),
        (200, {}),
        (404, "M_UNRECOGNIZED"),
    ]
    assert arrived and not never
    ledger = bridge.ledger
    assert ledger.refused == 4 and ledger.transactions == 1 and "$forged" not in ledger.first_seen
    assert bridge.unknown_requests == 1
    assert ledger.by_body["hello"] >= started
    assert time.perf_counter() - started < 5.0


# --------------------------------------------------------------------------
# One short real run.


def test_a_short_run_against_a_real_gateway(tmp_path, monkeypatch):
    # `lowband serve` with the bench bridge registered: every message reaches the bridge exactly once, timed.
    monkeypatch.setattr(bench, "FIRST_PUSH_TIMEOUT_S", 20.0)
    monkeypatch.setattr(bench, "IDLE_SETTLE_S", 0.2)
    started = time.perf_counter()
    found = asyncio.run(bench._measure_with_bridge("lowband", tmp_path, messages=60, seconds=20.0, rounds=10))
    assert set(bench.FIGURE_KEYS) <= set(found)
    assert found["lost"] == 0 and found["duplicated"] == 0 and found["refused_requests"] == 0
    assert found["burst_messages"] == 60 and found["latency_rounds"] == 10
    assert found["sent"] == 60 + 10 + bench.SENDERS * bench.WARMUP_SENDS
    assert found["push_events_per_s"] > 0 and 0 < found["push_latency_ms"] <= found["push_latency_ms_p99"]
    assert found["push_latency_ms_p99"] <= found["push_latency_ms_max"]
    assert 1 <= found["transactions"] <= 60 and found["events_per_transaction"] >= 1
    assert found["push_lag_ms"] >= 0 and found["rss_load_mb"] > 5
    assert time.perf_counter() - started < 90
