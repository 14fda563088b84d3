"""``lowband coap``: one request by hand, as a user runs it (a real process against a real gateway process)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOWBAND, GatewayProcess, free_udp_port


def lowband(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, Path]]:
    """A gateway process with ``[coap]`` (plain and Noise) on loopback and a user alice.

    Yields (plain coap URL, secure coap URL, HTTP URL, data dir).
    """
    tmp = tmp_path_factory.mktemp("coap-cli")
    port, secure = free_udp_port(), free_udp_port()
    config = f'[coap]\nbind = "127.0.0.1:{port}"\nsecure_bind = "127.0.0.1:{secure}"\n'
    with GatewayProcess(tmp / "data", config=config) as process:
        import urllib.request

        body = json.dumps({"username": "alice", "password": "secret-pw", "auth": {"type": "m.login.dummy"}}).encode()
        request = urllib.request.Request(process.url + "/_matrix/client/v3/register", body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        yield f"coap://127.0.0.1:{port}", f"coap://127.0.0.1:{secure}", process.url, tmp / "data"


def test_get_versions_by_code_and_by_path(gateway: tuple[str, str, str, Path]) -> None:
    url = gateway[0]
    for path in ("0", "/_matrix/client/versions"):
        out = lowband("coap", "--url", url, "-v", "GET", path)
        assert out.returncode == 0, out.stderr
        versions = json.loads(out.stdout)
        assert "r0.6.1" in versions["versions"] and versions["m.low_bandwidth"]["coap_enum_version"] == 1
        assert "2.05" in out.stderr and "bytes:" in out.stderr


def test_login_then_create_send_and_sync(gateway: tuple[str, str, str, Path]) -> None:
    url = gateway[0]
    auth = ["--user", "alice", "--password", "secret-pw"]
    made = lowband("coap", "--url", url, *auth, "POST", "G", "--body", '{"preset": "public_chat"}')
    assert made.returncode == 0, made.stderr
    room = json.loads(made.stdout)["room_id"]
    sent = lowband("coap", "--url", url, *auth, "PUT", f"9/{room}/m.room.message/cli1",
                   "--body", '{"msgtype": "m.text", "body": "hello from the shell"}')  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["event_id"].startswith("$") and "2.04" in sent.stderr
    synced = lowband("coap", "--url", url, *auth, "GET", "7", "--query", "timeout=0")
    assert synced.returncode == 0, synced.stderr
    events = json.loads(synced.stdout)["rooms"]["join"][room]["timeline"]["events"]
    assert any(e["content"].get("body") == "hello from the shell" for e in events)


def test_error_answers_exit_1_with_the_body(gateway: tuple[str, str, str, Path]) -> None:
    url = gateway[0]
    out = lowband("coap", "--url", url, "GET", "7")  # no token
    assert out.returncode == 1
    assert json.loads(out.stdout)["errcode"] == "M_MISSING_TOKEN" and "4.01" in out.stderr
    wrong = lowband("coap", "--url", url, "--user", "alice", "--password", "wrong", "GET", "7")
    assert wrong.returncode == 1 and "login failed" in wrong.stderr


def test_bad_input_exits_2_with_one_line(gateway: tuple[str, str, str, Path], tmp_path: Path) -> None:
    url = gateway[0]
    not_a_key = tmp_path / "key.json"
    not_a_key.write_text("not json")
    cases = [
        (["--url", "http://127.0.0.1:5683", "GET", "0"], "coap://"),
        (["--url", url, "PUT", "9/!r:x/m.room.message/t", "--body", "{oops"], "--body is not JSON"),
        (["--url", url, "--key", str(not_a_key), "GET", "0"], "cannot be read"),
        (["--url", url, "--key", str(tmp_path / "missing.json"), "GET", "0"], "cannot be read"),
        (["--url", url, "--user", "alice", "GET", "0"], "--user and --password"),
        (["--url", url, "FETCH", "0"], "invalid choice"),
    ]
    for args, expected in cases:
        out = lowband("coap", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_no_answer_exits_3() -> None:
    out = lowband("coap", "--url", f"coap://127.0.0.1:{free_udp_port()}", "--timeout", "2", "GET", "0")
    assert out.returncode == 3, out.stderr
    assert "no answer" in out.stderr and "Traceback" not in out.stderr


def test_help_documents_the_exit_codes() -> None:
    out = lowband("coap", "--help")
    assert out.returncode == 0
    for line in ("0  the gateway answered 2.xx", "1  the gateway answered 4.xx", "2  bad input", "3  no answer"):
        assert line in out.stdout


def test_noise_session_and_compact_mode_with_a_key_file(gateway: tuple[str, str, str, Path], tmp_path: Path) -> None:
    _, secure_url, _, data_dir = gateway
    key = tmp_path / "laptop.json"
    made = lowband("coap-client", "add", "laptop", "--user", "@alice:localhost", "--data-dir", str(data_dir),
                   "--out", str(key))  # fmt: skip
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 30
    while True:  # the listener reads the new client list within a second or two
        out = lowband("coap", "--url", secure_url, "--key", str(key), "--compact", "--timeout", "3", "-v",
                      "--user", "alice", "--password", "secret-pw", "GET", "I")  # fmt: skip
        if out.returncode != 3 or time.monotonic() > deadline:
            break
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout)["joined_rooms"], list) and "2.05" in out.stderr
    plain = lowband("coap", "--url", gateway[0], "--key", str(key), "--timeout", "3", "GET", "0")
    assert plain.returncode == 3  # the plain port does not speak Noise: no answer
