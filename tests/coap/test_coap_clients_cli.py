"""``lowband coap-client add|list|remove`` and the files it writes (gateway/coap/clients.py)."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from harness import LOWBAND

from lowband.gateway.cli.main import main
from lowband.gateway.coap import clients
from lowband.gateway.coap.secure_core import SecureClient, SecureListener, Transmit
from lowband.gateway.devices.registry import load_or_create_link_key
from lowband.gateway.link.handshake import public_from_private


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    (path / "server_name").write_text("gw.example\n")  # what `lowband serve` leaves in a data dir
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_add_writes_a_key_file_that_completes_a_handshake(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "coap-client", "add", "laptop", "--user", "@alice:gw.example",
                         "--data-dir", str(data_dir), "--endpoint", "gw.example:5684")  # fmt: skip
    assert status == 0 and "address 1" in out
    path = data_dir / "coap-clients" / "laptop.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = clients.read_key_file(path)
    assert doc["user_id"] == "@alice:gw.example" and doc["endpoint"] == "gw.example:5684" and doc["address"] == 1
    gateway_key = load_or_create_link_key(data_dir / "link.key")  # the same link key as the device links
    assert bytes.fromhex(doc["gateway_public"]) == public_from_private(gateway_key)
    # the list the gateway reads holds the public key only
    listed = json.loads((data_dir / clients.CLIENTS_FILE).read_text())
    assert doc["client_private"] not in json.dumps(listed)
    # the key file and the list work together: a handshake completes
    listener = SecureListener(gateway_key)
    listener.set_clients(clients.entries(data_dir))
    peer = SecureClient(bytes.fromhex(doc["client_private"]), bytes.fromhex(doc["gateway_public"]), doc["address"])
    (answer,) = listener.receive(peer.connect(0.0), 0.0, "here")
    assert isinstance(answer, Transmit)
    peer.receive(answer.frame)
    assert peer.established


def test_addresses_list_and_remove(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "coap-client", "list", "--data-dir", str(data_dir))[1] == "no CoAP clients\n"
    for name, user in (("laptop", "@alice:gw.example"), ("phone", "@bob:gw.example"), ("bot", "@carol:gw.example")):
        assert run(capsys, "coap-client", "add", name, "--user", user, "--data-dir", str(data_dir))[0] == 0
    status, out, _ = run(capsys, "coap-client", "list", "--data-dir", str(data_dir))
    lines = out.splitlines()
    assert status == 0 and [line.split()[0] for line in lines] == ["bot", "laptop", "phone"]
    assert "addr 3" in lines[0] and "@carol:gw.example" in lines[0]
    status, out, _ = run(capsys, "coap-client", "remove", "phone", "--data-dir", str(data_dir))
    assert status == 0 and "refused" in out
    assert not (data_dir / "coap-clients" / "phone.json").exists()
    assert {r.name: r.address for r in clients.load_clients(data_dir)} == {"bot": 3, "laptop": 1}
    # a freed address is handed out again
    run(capsys, "coap-client", "add", "tablet", "--user", "@bob:gw.example", "--data-dir", str(data_dir))
    assert {r.name: r.address for r in clients.load_clients(data_dir)}["tablet"] == 2


def test_rekey_keeps_the_address_and_changes_the_key(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "coap-client", "add", "laptop", "--user", "@alice:gw.example", "--data-dir", str(data_dir))
    (before,) = clients.load_clients(data_dir)
    status, _, err = run(
        capsys, "coap-client", "add", "laptop", "--user", "@alice:gw.example", "--data-dir", str(data_dir)
    )
    assert status == 2 and "--rekey" in err
    assert run(capsys, "coap-client", "add", "laptop", "--user", "@alice:gw.example", "--data-dir", str(data_dir),
               "--rekey")[0] == 0  # fmt: skip
    (after,) = clients.load_clients(data_dir)
    assert after.address == before.address and after.static_public != before.static_public


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "Bad Name", "--user", "@alice:gw.example"], "client names"),
    (["add", "laptop", "--user", "alice"], "not a Matrix user ID"),
    (["add", "laptop", "--user", "@alice:elsewhere.example"], "not a user of this gateway"),
    (["add", "laptop", "--user", "@alice:gw.example", "--rekey"], "no client named"),
    (["remove", "nobody"], "no client named"),
])  # fmt: skip
def test_refusals_are_one_line_and_status_2(data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                           message: str) -> None:  # fmt: skip
    status, _, err = run(capsys, "coap-client", *argv, "--data-dir", str(data_dir))
    assert status == 2 and message in err and len(err.splitlines()) == 1
    assert not (data_dir / clients.CLIENTS_FILE).exists() or not clients.load_clients(data_dir)


def test_not_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "coap-client", "list", "--data-dir", str(tmp_path))
    assert status == 2 and "not a gateway data dir" in err


def test_a_broken_client_list_is_reported(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data_dir / clients.CLIENTS_FILE).write_text("{not json")
    status, _, err = run(capsys, "coap-client", "list", "--data-dir", str(data_dir))
    assert status == 2 and "cannot be read" in err


def test_the_console_script(data_dir: Path) -> None:
    done = subprocess.run([LOWBAND, "coap-client", "add", "laptop", "--user", "@alice:gw.example",
                           "--data-dir", str(data_dir)], check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run([LOWBAND, "coap-client", "list", "--data-dir", str(data_dir)],
                          check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("laptop") and "@alice:gw.example" in done.stdout
