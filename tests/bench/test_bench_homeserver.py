"""The pure parts of ``lowband bench homeserver``; no server is started here."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from harness import stub_server

from lowband.gateway.bench import homeserver as bench
from lowband.gateway.bench import matrix_load, processes, synapse

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  612340 kB
VmSize:\t  540112 kB
VmHWM:\t  130220 kB
VmRSS:\t  127488 kB
RssAnon:\t   98304 kB
Threads:\t8
"""


def figures(sends_8: float, rss_load: float, latency: float) -> dict:
    return {
        "sends_per_s": sends_8 / 2,
        "sends_per_s_8": sends_8,
        "sync_latency_ms": latency,
        "rss_idle_mb": rss_load * 0.9,
        "rss_load_mb": rss_load,
    }


def test_vmrss_is_read_in_kib():
    assert processes.parse_vmrss_kib(STATUS) == 127488


def test_a_process_without_vmrss_holds_nothing():
    zombie = "Name:\tsynapse\nState:\tZ (zombie)\nPid:\t7\n"
    assert processes.parse_vmrss_kib(zombie) == 0


def test_an_unreadable_vmrss_line_is_an_error():
    with pytest.raises(ValueError):
        processes.parse_vmrss_kib("VmRSS:\tlots kB\n")


def test_own_rss_is_plausible():
    mib = processes.rss_mib(os.getpid())
    assert 5 < mib < 4096


@pytest.mark.parametrize(
    ("values", "expected"),
    [([56.0], 56.0), ([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 3.0, 2.0], 2.5), ([10.0, 10.0, 900.0], 10.0)],
)
def test_median(values, expected):
    assert bench.median(values) == expected


def test_median_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        bench.median([])


def test_ratios_are_lowband_over_synapse():
    result = bench.assemble(
        {"lowband": figures(sends_8=600.0, rss_load=30.0, latency=5.0), "synapse": figures(29.0, 147.0, 56.0)}
    )
    assert result["ratio_sends"] == pytest.approx(600 / 29, rel=1e-3)
    assert result["ratio_rss"] == pytest.approx(30 / 147, rel=1e-3)
    assert result["ratio_latency"] == pytest.approx(5 / 56, rel=1e-3)
    for name in ("lowband", "synapse"):
        assert set(bench.FIGURE_KEYS) <= set(result[name])
    # The last line of --json is this dict; it must survive a round trip.
    assert json.loads(json.dumps(result)) == result


def test_one_server_alone_has_no_ratios():
    result = bench.assemble({"synapse": figures(29.0, 147.0, 56.0)})
    assert "lowband" not in result
    assert result["ratio_sends"] is None and result["ratio_rss"] is None and result["ratio_latency"] is None


def test_a_zero_anchor_gives_no_ratio():
    result = bench.assemble({"lowband": figures(600.0, 30.0, 5.0), "synapse": figures(0.0, 147.0, 56.0)})
    assert result["ratio_sends"] is None
    assert result["ratio_rss"] is not None


def test_assemble_copies_the_figures():
    ours = figures(600.0, 30.0, 5.0)
    result = bench.assemble({"lowband": ours})
    result["lowband"]["sends_per_s"] = -1
    assert ours["sends_per_s"] == 300.0


def test_table_shows_both_columns_ratios_and_verdicts():
    result = bench.assemble(
        {"lowband": figures(600.0, 40.0, 5.0), "synapse": figures(29.0, 147.0, 56.0)}
    )
    table = bench.render_table(result)
    sends = next(line for line in table.splitlines() if line.startswith("sends/s, 8 senders"))
    assert "600.0" in sends and "29.0" in sends and "20.7×" in sends and "≥ 20×" in sends and "met" in sends
    rss = next(line for line in table.splitlines() if line.startswith("RSS after load"))
    assert "missed" in rss  # 40 / 147 is above a quarter
    latency = next(line for line in table.splitlines() if line.startswith("send → /sync"))
    assert "met" in latency


def test_table_with_one_server_has_dashes_and_no_verdicts():
    table = bench.render_table(bench.assemble({"synapse": figures(29.0, 147.0, 56.0)}))
    assert "—" in table
    assert "met" not in table and "missed" not in table


# Trimmed from what `synapse.app.homeserver --generate-config` writes.
GENERATED = {
    "server_name": "localhost",
    "pid_file": "/somewhere/homeserver.pid",
    "listeners": [
        {
            "port": 8008,
            "tls": False,
            "type": "http",
            "x_forwarded": True,
            "bind_addresses": ["::1", "127.0.0.1"],
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }
    ],
    "database": {"name": "sqlite3", "args": {"database": "/somewhere/homeserver.db"}},
    "log_config": "/somewhere/localhost.log.config",
    "media_store_path": "/somewhere/media_store",
    "registration_shared_secret": "s3cret",
    "report_stats": False,
    "macaroon_secret_key": "m4c",
    "form_secret": "f0rm",
    "signing_key_path": "/somewhere/localhost.signing.key",
    "trusted_key_servers": [{"server_name": "matrix.org"}],
}


def test_synapse_config_listens_on_loopback_client_only():
    config = synapse.configure_synapse(GENERATED, port=40123, data_dir="/tmp/x")
    (listener,) = config["listeners"]
    assert listener["port"] == 40123
    assert listener["bind_addresses"] == ["127.0.0.1"]
    assert listener["x_forwarded"] is False and listener["tls"] is False
    names = [n for r in listener["resources"] for n in r["names"]]
    assert names == ["client"]


def test_synapse_config_is_local_open_and_unthrottled():
    config = synapse.configure_synapse(GENERATED, port=40123, data_dir="/tmp/x")
    assert config["database"] == {"name": "sqlite3", "args": {"database": "/tmp/x/homeserver.db"}}
    assert config["media_store_path"] == "/tmp/x/media_store"
    assert config["enable_registration"] is True
    assert config["enable_registration_without_verification"] is True
    assert config["trusted_key_servers"] == []
    assert config["suppress_key_server_warning"] is True
    assert config["report_stats"] is False
    for key in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation"):
        assert config[key]["per_second"] >= 10_000 and config[key]["burst_count"] >= 10_000
    for key, subs in (("rc_login", ("address", "account", "failed_attempts")), ("rc_joins", ("local", "remote"))):
        for sub in subs:
            assert config[key][sub]["per_second"] >= 10_000


def test_synapse_config_keeps_secrets_and_leaves_the_input_alone():
    before = json.dumps(GENERATED, sort_keys=True)
    config = synapse.configure_synapse(GENERATED, port=40123, data_dir="/tmp/x")
    assert config["macaroon_secret_key"] == "m4c" and config["signing_key_path"] == GENERATED["signing_key_path"]
    assert json.dumps(GENERATED, sort_keys=True) == before
    # Written as JSON, which YAML reads as it is.
    assert json.loads(json.dumps(config)) == config


@pytest.mark.parametrize("kwargs", [{"only": "dendrite"}, {"messages": 0}, {"seconds": 0}, {"latency_rounds": 0}])
def test_bad_arguments_are_refused_before_anything_starts(kwargs):
    with pytest.raises(ValueError):
        bench.run(**kwargs)


def test_registration_answers_a_uia_401_with_its_session(tmp_path):
    """Some servers want the dummy stage inside a session they hand out first."""
    from aiohttp import ClientSession, web

    seen = []

    async def register(request):
        body = await request.json()
        seen.append(body["auth"])
        if body["auth"].get("session") != "s1":
            return web.json_response({"session": "s1", "flows": [{"stages": ["m.login.dummy"]}], "params": {}}, status=401)
        return web.json_response({"user_id": "@bench0:localhost", "access_token": "t0"})

    async def scenario():
        app = web.Application()
        app.router.add_post("/_matrix/client/v3/register", register)
        async with stub_server(app) as port:
            server = processes.ServerProcess("stub", [], tmp_path, tmp_path / "log", "0", port)
            async with ClientSession() as http:
                user = matrix_load.MatrixUser(http, server, matrix_load.Counters())
                await user.register("bench0")
                return user

    user = asyncio.run(scenario())
    assert (user.token, user.user_id) == ("t0", "@bench0:localhost")
    assert seen == [{"type": "m.login.dummy"}, {"type": "m.login.dummy", "session": "s1"}]


def test_the_encrypted_room_phase_against_a_real_gateway(tmp_path):
    # Two matrix-nio clients with Olm/Megolm against `lowband serve`: every figure measured, nothing undecryptable.
    from lowband.gateway.bench import encrypted_room

    assert encrypted_room.available()
    server = bench.prepare_lowband(tmp_path)
    server.start()
    try:

        async def measure() -> dict:
            import aiohttp

            async with aiohttp.ClientSession() as http:
                await matrix_load.wait_ready(http, server)
            return await encrypted_room.measure_encrypted(server, seconds=1.0, messages=20, rounds=3, progress=print)

        found = asyncio.run(measure())
    finally:
        server.stop()
    assert set(found) == set(encrypted_room.FIGURES)
    assert 1 <= found["e2ee_messages"] <= 20
    assert found["e2ee_sends_per_s"] > 0 and 0 < found["e2ee_latency_ms"] <= found["e2ee_latency_ms_max"]
    assert found["e2ee_undecryptable"] == 0


def test_the_table_says_when_the_encrypted_figures_could_not_be_measured():
    from lowband.gateway.bench import encrypted_room

    plain = figures(100, 40, 10)
    result = bench.assemble({"lowband": {**plain, **dict.fromkeys(encrypted_room.FIGURES)}})
    assert result["ratio_e2ee_latency"] is None
    assert encrypted_room.MISSING in bench.render_table(result)
    measured = {**plain, "e2ee_sends_per_s": 50.0, "e2ee_latency_ms": 12.0}
    result = bench.assemble({"lowband": measured, "synapse": {**figures(5, 120, 60), "e2ee_sends_per_s": 5.0,
                                                              "e2ee_latency_ms": 60.0}})  # fmt: skip
    assert (result["ratio_e2ee_sends"], result["ratio_e2ee_latency"]) == (10.0, 0.2)
    assert encrypted_room.MISSING not in bench.render_table(result)
