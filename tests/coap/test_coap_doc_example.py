"""docs/coap.md's worked example of a compact send is what the code puts on the wire, byte for byte.

The example's bytes are read from the document itself, so the document cannot drift from the code: the
CoAP messages must parse to what the text says, and the DATA frames must be what the Noise session
(secure_core) makes of them with the session keys of the link test vectors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lowband.codecs import cbor
from lowband.codecs import coap as C
from lowband.gateway.coap import secure_core
from lowband.gateway.link import crypto

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "coap.md").read_text()
VECTORS = json.loads((ROOT / "tests" / "data" / "link_vectors.json").read_text())
_HEX = re.compile(r"[0-9a-f]{2}")


def _blocks_after(heading: str) -> list[bytes]:
    """The bytes of each code block of the worked example from ``heading`` on: the leading hex pairs of each line."""
    section = DOC[DOC.index(heading) :]
    found = []
    for block in re.findall(r"```\n(.*?)```", section, flags=re.DOTALL):
        data = bytearray()
        for line in block.splitlines():
            for token in line.split():
                if not _HEX.fullmatch(token):
                    break
                data.append(int(token, 16))
        found.append(bytes(data))
    return found


def test_the_worked_compact_send_is_what_the_code_sends() -> None:
    request, up, response, down = _blocks_after("## Worked example: a compact send, byte by byte")[:4]

    sent = C.parse(request)
    assert (sent.mtype, sent.code, sent.mid, sent.token) == (C.CON, C.PUT, 0x1234, b"")
    assert sent.path == ("9", "~0", "1")
    assert cbor.loads(sent.payload) == "temp 21.5 C"
    assert sent.opt(C.OPT_AUTH) is None and sent.opt(C.OPT_CONTENT_FORMAT) is None  # sticky, implied
    answer = C.parse(response)
    assert (answer.mtype, answer.code, answer.mid, answer.payload) == (C.ACK, C.CHANGED, 0x1234, b"\x00")
    assert len(request) + len(response) == 30

    keys = VECTORS["handshake"]
    k_up, k_down = bytes.fromhex(keys["k_up"]), bytes.fromhex(keys["k_down"])
    address, epoch = VECTORS["address"], VECTORS["epoch"]
    for frame, plaintext, key, direction in ((up, request, k_up, crypto.DIRECTION_UP),
                                             (down, response, k_down, crypto.DIRECTION_DOWN)):  # fmt: skip
        parsed = secure_core.parse_datagram(frame)
        assert parsed is not None and (parsed.type, parsed.epoch, parsed.address, parsed.seq) == (2, epoch, address, 0)
        assert len(frame) == len(plaintext) + secure_core.DATA_OVERHEAD
        assert crypto.open_(key, direction, 0, parsed.aad, parsed.body) == plaintext
        assert parsed.aad + crypto.seal(key, direction, 0, parsed.aad, plaintext) == frame
    assert len(up) + len(down) == 52
    assert "**52 bytes together**" in DOC
