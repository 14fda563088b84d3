"""Progress where users wait (gateway/cli/progress.py): bars and phase spinners on a terminal, plain lines elsewhere.

`lowband device flash` is run against a stand-in for mpremote (a script on
PATH whose "board" is a directory): once with stdout and stderr in pipes,
as a log or CI sees it, and once with stderr on a pseudo-terminal, where
the bar is drawn and stdout must hold only the result line.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from harness import LOWBAND

from lowband.gateway.cli import progress

FAKE_MPREMOTE = """#!/bin/sh
# mpremote connect PORT exec CODE | mpremote connect PORT fs cp SRC :DST, onto the directory $FAKE_BOARD
[ "$1" = connect ] || exit 2
shift 2
case "$1" in
  exec) echo exec >> "$FAKE_BOARD.log" ;;
  fs) [ "$2" = cp ] || exit 2
      dst="${4#:}"
      mkdir -p "$FAKE_BOARD/$(dirname "$dst")" && cp "$3" "$FAKE_BOARD/$dst" && echo "cp $dst" >> "$FAKE_BOARD.log" ;;
  *) exit 2 ;;
esac
"""


def test_meter_without_a_terminal_writes_plain_lines_or_nothing():
    out = io.StringIO()
    with progress.meter("copying", 300, unit="bytes", steps=3, enabled=False, plain=out) as bar:
        for note in ("a", "b", "c"):
            bar.advance(100, note)
    assert out.getvalue() == "[1/3] a  33%\n[2/3] b  66%\n[3/3] c  100%\n"
    with progress.meter("quiet", 2, enabled=False) as bar:  # no plain stream: nothing at all
        bar.advance()
    assert bar.done == 1 and bar.step == 1
    with pytest.raises(ValueError):
        bar.advance(-1)
    with pytest.raises(ValueError), progress.meter("x", -1, enabled=False):
        pass


def test_meter_draws_a_bar_when_enabled():
    out = io.StringIO()
    with progress.meter("compiling", 3, enabled=True, stream=out) as bar:
        for package in ("lbwire", "lbcrypto", "lbnode"):
            bar.advance(1, package)
    drawn = out.getvalue()
    assert "compiling" in drawn and "3/3" in drawn and "lbnode" in drawn


def test_phases_tick_each_line_on_a_terminal_and_pass_through_elsewhere():
    out = io.StringIO()
    with progress.phases(enabled=True, stream=out) as lines:
        lines.write("bench x: starting\nbench x: meas")
        lines.write("uring\n")
    drawn = out.getvalue()
    assert "bench x: starting" in drawn and "bench x: measuring" in drawn and drawn.count("✓") >= 2
    plain = io.StringIO()
    with progress.phases(enabled=False, stream=plain) as lines:
        assert lines is plain  # unchanged: the lines go where they went before
        lines.write("bench x: starting\n")
    assert plain.getvalue() == "bench x: starting\n"


def test_a_failing_phase_is_marked_failed():
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress.phases(enabled=True, stream=out) as lines:
        lines.write("bench x: starting the gateway\n")
        raise RuntimeError("boom")
    assert "bench x: starting the gateway — failed" in out.getvalue()


def test_interactive_only_on_a_terminal_without_machine_output(monkeypatch):
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty:
            monkeypatch.setenv("TERM", "xterm")
            assert progress.interactive(tty)
            assert not progress.interactive(tty, machine_output=True)
            monkeypatch.setenv("TERM", "dumb")
            assert not progress.interactive(tty)
        assert not progress.interactive(io.StringIO())
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture()
def fake_board(tmp_path):
    """(env with the stand-in mpremote first on PATH, the board directory, a device config)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mpremote"
    tool.write_text(FAKE_MPREMOTE)
    tool.chmod(0o755)
    board = tmp_path / "board"
    config = tmp_path / "kitchen.json"
    config.write_text('{"name": "kitchen", "address": 1}\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_BOARD=str(board), TERM="xterm")
    return env, board, config


def _flash_args(config: Path) -> list[str]:
    return [LOWBAND, "device", "flash", "kitchen", "--port", "/dev/fake0", "--data-dir", str(config.parent),
            "--config", str(config)]  # fmt: skip


def _copied(board: Path) -> dict[str, bytes]:
    return {str(p.relative_to(board)): p.read_bytes() for p in board.rglob("*") if p.is_file()}


def test_flash_in_a_pipe_prints_a_line_per_file_and_copies_everything(fake_board):
    env, board, config = fake_board
    done = subprocess.run(_flash_args(config), capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    files = _copied(board)
    assert files["lowband.json"] == config.read_bytes() and "main.py" in files
    assert any(name.startswith("lib/lbcrypto/") for name in files)
    assert lines[-1] == f"flashed kitchen: {len(files)} files, {sum(map(len, files.values()))} bytes; reset the board to start it"
    assert lines[0].startswith(f"[1/{len(files)}] :lib/lbwire/") and lines[-2] == f"[{len(files)}/{len(files)}] :lowband.json  100%"
    assert len(lines) == len(files) + 1 and done.stderr == ""  # no bar drawn into a pipe
    assert (board.parent / "board.log").read_text().splitlines()[0] == "exec"  # folders made before any copy


def test_flash_on_a_terminal_draws_a_bar_and_keeps_stdout_clean(fake_board):
    env, board, config = fake_board
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(_flash_args(config) + ["--mpy"], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    os.close(slave)
    drawn = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0, drawn[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        os.close(master)
    files = _copied(board)
    assert all(name.endswith(".mpy") for name in files if name.startswith("lib/")) and "lowband.json" in files
    assert stdout == f"flashed kitchen: {len(files)} files, {sum(map(len, files.values()))} bytes; reset the board to start it\n"
    text = drawn.decode(errors="replace")
    assert "compiling with mpy-cross" in text and "3/3" in text  # the mpy-cross step, a package at a time
    total_kb = f"{sum(map(len, files.values())) / 1000:.1f}"
    assert "flashing kitchen" in text and f"{total_kb}/{total_kb} kB" in text and ":lowband.json" in text


FAKE_BENCH = '''
import sys

def run():
    print("bench fake: starting the server", file=sys.stderr)
    print("bench fake: measuring", file=sys.stderr)
    return {"answer": 42}, "answer 42"
'''


def _bench_on_a_terminal(monkeypatch, tmp_path, *argv: str) -> tuple[int, str, str]:
    """`lowband bench fake ARGV` in this process with stderr on a pseudo-terminal: (status, stdout, terminal)."""
    from lowband.gateway.cli import bench
    from lowband.gateway.cli.main import main

    (tmp_path / "lowband_fake_bench.py").write_text(FAKE_BENCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(bench.BENCHMARKS, "fake", ("a benchmark for this test", "lowband_fake_bench", ()))
    monkeypatch.setenv("TERM", "xterm")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    stdout = io.StringIO()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        monkeypatch.setattr("sys.stderr", tty)
        monkeypatch.setattr("sys.stdout", stdout)
        status = main(["bench", "fake", *argv])
        tty.flush()
    drawn = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return status, stdout.getvalue(), drawn.decode(errors="replace")


def test_bench_phases_are_spinners_on_a_terminal(monkeypatch, tmp_path):
    status, stdout, drawn = _bench_on_a_terminal(monkeypatch, tmp_path)
    assert status == 0 and stdout == "answer 42\n"
    assert "\x1b[" in drawn  # drawn by rich: cursor movement and colour
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    assert "✓ bench fake: starting the server" in text and "✓ bench fake: measuring" in text


def test_bench_json_keeps_plain_phase_lines(monkeypatch, tmp_path):
    status, stdout, drawn = _bench_on_a_terminal(monkeypatch, tmp_path, "--json")
    assert status == 0 and stdout == '{"answer": 42}\n'
    assert drawn.replace("\r\n", "\n") == "bench fake: starting the server\nbench fake: measuring\n"
