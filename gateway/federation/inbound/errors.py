"""How a received PDU can fail before it is stored."""

from __future__ import annotations


class PduDropped(Exception):
    """The PDU is not kept at all (malformed, unknown room, bad signature, unreachable history).

    ``reason`` is one line for the sender's ``/send`` answer and our log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
