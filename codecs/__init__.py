"""Wire formats shared by gateways, devices and clients.

Pure code, no I/O. Every decoder here raises :class:`WireError` (and nothing
else) for input it cannot accept, so a transport pump can catch one type.
"""

from lowband.codecs.errors import WireError

__all__ = ["WireError"]
