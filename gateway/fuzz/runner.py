"""``python -m lowband.gateway.fuzz.runner TARGET [libFuzzer flags] [corpus dirs]``.

The process libFuzzer owns: it instruments the target's module (and every
``lowband`` module that module imports for the first time) as it imports
it, hands the target's ``check`` to atheris and never returns — libFuzzer
ends the process. ``lowband fuzz`` starts it and reads its output; run it
by hand for libFuzzer flags the CLI does not offer (``-help=1`` lists them).

Exit status: libFuzzer's (0 done, non-zero after a crash, timeout or
out-of-memory), or 2 for an unknown target or a missing atheris.
"""

from __future__ import annotations

import sys

from lowband.gateway.fuzz.registry import TARGETS, load

#: The line ``lowband fuzz`` prints when atheris is absent (exit status 2).
INSTALL_HINT = "lowband fuzz needs atheris: pip install 'lowband[fuzz]' (or pip install atheris)"


def main(argv: list[str]) -> int:
    """Run target ``argv[1]`` under libFuzzer with the rest of ``argv`` as its flags; does not return
    when it starts fuzzing."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.stderr.write(
            f"usage: python -m lowband.gateway.fuzz.runner TARGET [libFuzzer flags]; targets: {', '.join(TARGETS)}\n"
        )
        return 2
    try:
        import atheris
    except ImportError:
        sys.stderr.write(INSTALL_HINT + "\n")
        return 2
    with atheris.instrument_imports(include=["lowband"]):
        target = load(argv[1])
    check = target.check

    def one_input(data: bytes) -> None:
        check(data)

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()
    return 0  # pragma: no cover - atheris.Fuzz() ends the process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
