"""Link emulators: a sans-I/O model of a slow, lossy, half-duplex line and a pty relay around it.

``lowband.sim.link_model.LinkModel`` is the model (bytes and ``now`` in,
deliveries and the next deadline out); ``lowband.sim.pty_link.PtyLink``
exposes it as two pseudo-terminals that a gateway and a device open like
serial ports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .link_model import A, B, LinkCounters, LinkModel

if TYPE_CHECKING:
    from .pty_link import PtyLink

__all__ = ["A", "B", "LinkCounters", "LinkModel", "PtyLink"]


def __getattr__(name: str) -> type[PtyLink]:
    # Imported on first use so that `python -m lowband.sim.pty_link` does not
    # find the module already loaded by its own package.
    if name == "PtyLink":
        from .pty_link import PtyLink

        return PtyLink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
