"""The `lowband` command: the wire contract, its errors, bench and demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, load_json

from lowband.gateway.cli.main import main

CTX = str(DATA / "context_v1.json")
HELLO = load_json("msc3079_vectors.json")["vectors"][0]
LOWBAND = str(Path(sys.executable).parent / "lowband")


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_msc3079_encode_and_decode(capsys, tmp_path):
    source = tmp_path / "event.json"
    source.write_text(json.dumps(HELLO["json"], indent=2))
    status, out, err = run(capsys, "wire", "encode", "--profile", "msc3079", str(source))
    assert (status, out, err) == (0, HELLO["cbor"] + "\n", "")
    status, out, err = run(capsys, "wire", "decode", "--profile", "msc3079", HELLO["cbor"])
    assert status == 0 and json.loads(out) == HELLO["json"] and out.count("\n") == 1


def test_compact_encode_and_decode(capsys, tmp_path):
    for vector in load_json("compact_vectors.json")["vectors"]:
        source = tmp_path / "event.json"
        source.write_text(json.dumps(vector["event"]))
        status, out, _ = run(capsys, "wire", "encode", "--profile", "compact", "--context", CTX, str(source))
        assert (status, out.strip()) == (0, vector["compact"]), vector["name"]
        status, out, _ = run(capsys, "wire", "decode", "--profile", "compact", "--context", CTX, vector["compact"])
        assert status == 0 and json.loads(out) == vector["event"], vector["name"]


def test_ref_ts_flag_shifts_compact_timestamps(capsys):
    status, out, _ = run(capsys, "wire", "decode", "--profile", "compact", "--context", CTX, "--ref-ts", "5000",
                         "12006b74656d702032312e352043")  # fmt: skip
    assert status == 0 and json.loads(out)["origin_server_ts"] == 5000


def _context_file(tmp_path, **changes):
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps({**load_json("context_v1.json"), **changes}))
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "--profile", "msc3079", "a5026"], "truncated hex"),
        (["decode", "--profile", "msc3079", "zz"], "invalid hex"),
        (["decode", "--profile", "msc3079", ""], "no hex input"),
        (["decode", "--profile", "msc3079", "a50269"], "truncated CBOR"),
        (["decode", "--profile", "msc3079", "c0f6"], "tags"),
        (["decode", "--profile", "msc3079", "81" * 40 + "00"], "nesting deeper than 32"),
        (["decode", "--profile", "msc3079", "a1186901"], "not in the MSC3079 v1 table"),
        (["decode", "--profile", "compact", "--context", CTX, "21000101"], "message uses version 2"),
        (["decode", "--profile", "compact", "--context", CTX, "1100070102"], "truncated"),
        (["decode", "--profile", "msc3079", "--context", CTX, "f6"], "only applies"),
        (["encode", "--profile", "msc3079", "/nonexistent/event.json"], "cannot read"),
        (["encode", "--profile", "compact", "--context", "/nonexistent.json", "-"], "cannot read context"),
    ],
)
def test_bad_input_is_status_2_and_one_line(capsys, args, message):
    status, out, err = run(capsys, "wire", *args)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_compact_without_context_uses_the_shipped_table(capsys):
    with_file = run(capsys, "wire", "decode", "--profile", "compact", "--context", CTX, "11000718d71828190172")
    without = run(capsys, "wire", "decode", "--profile", "compact", "11000718d71828190172")
    assert with_file[0] == 0 and without == with_file


def test_unknown_context_version_in_the_table(capsys, tmp_path):
    status, _, err = run(capsys, "wire", "decode", "--profile", "compact", "--context", _context_file(tmp_path, version=99), "11")
    assert status == 2 and "unknown context version 99" in err


def test_bad_json_files(capsys, tmp_path):
    cases = {"invalid": "{", "nan": '{"a": NaN}', "deep": "[" * 100000 + "]" * 100000,
             "deep_but_parseable": "[" * 40 + "]" * 40, "bad_utf8": b'{"a": "\xff"}'}  # fmt: skip
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        status, out, err = run(capsys, "wire", "encode", "--profile", "msc3079", str(path))
        assert status == 2 and out == "" and err.count("\n") == 1, name


def test_oversized_inputs_through_stdin(tmp_path):
    big_hex = "60" * (1 << 20) + "00"
    proc = subprocess.run([LOWBAND, "wire", "decode", "--profile", "msc3079", "-"], input=big_hex.encode(),
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and b"exceeds" in proc.stderr and proc.stderr.count(b"\n") == 1
    big_json = json.dumps({"body": "x" * (1 << 20)}).encode()
    proc = subprocess.run([LOWBAND, "wire", "encode", "--profile", "msc3079", "-"], input=big_json,
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and b"larger than" in proc.stderr and proc.stderr.count(b"\n") == 1


def test_console_script_round_trip_and_usage_errors(tmp_path):
    source = tmp_path / "e.json"
    source.write_text(json.dumps(HELLO["json"]))
    hex_out = subprocess.run([LOWBAND, "wire", "encode", "--profile", "msc3079", str(source)],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()  # fmt: skip
    assert hex_out == HELLO["cbor"]
    proc = subprocess.run([LOWBAND, "wire", "decode", "--profile", "nope", "00"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "invalid choice" in proc.stderr


@pytest.mark.parametrize("argv", [[], ["wire"], ["wire", "encode"], ["wire", "decode"], ["wire", "demo"], ["bench"]])
def test_every_command_has_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lowband" in capsys.readouterr().out


def test_bench_wire_json_last_line(capsys):
    status, out, _ = run(capsys, "bench", "wire", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert status == 0
    for name in ("telemetry", "text_message"):
        assert set(result[name]) >= {"http_json", "msc3079", "compact"}
        assert result[name]["compact"] < result[name]["msc3079"] < result[name]["http_json"]
    assert result["telemetry"]["compact"] <= 12
    assert result["compact_frame_bytes"] == result["telemetry"]["compact"] + 4


def test_bench_wire_table_has_ratios(capsys):
    status, out, _ = run(capsys, "bench", "wire")
    assert status == 0 and "vs http_json" in out and "%" in out


def test_demo_checks_its_own_round_trip(capsys):
    status, out, _ = run(capsys, "wire", "demo")
    assert status == 0 and "identical to step 1" in out


def test_serve_reports_a_bad_component_section_in_one_line(tmp_path):
    # The [mqtt] section is checked when its component starts, after the config file itself loaded.
    config = tmp_path / "gateway.toml"
    config.write_text('[mqtt]\nbot = "mqtt"\n')
    done = subprocess.run([LOWBAND, "serve", "--data-dir", str(tmp_path / "data"), "--config", str(config),
                           "--http", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "lowband: error: mqtt.brokers is required"
    assert "Traceback" not in done.stderr
