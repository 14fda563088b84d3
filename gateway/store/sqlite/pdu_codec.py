"""How the ``events`` table keeps a PDU: compressed against a dictionary made of the store's own recent events.

Rules (docs/storage.md, "Compact events"):

* ``events.pdu`` holds the event's canonical JSON in one of two forms:
  the JSON itself (TEXT, or a BLOB whose first byte is ``{``: stores
  written before compression, and events written before the store had a
  dictionary), or format 1: the byte ``0x01``, the dictionary's ID as an
  unsigned LEB128 varint, then raw DEFLATE (RFC 1951, no zlib header) of
  the JSON with the dictionary as the preset (``zdict``). Any other first
  byte is refused as :class:`PduDecodeError`.
* A dictionary is at most 32 KiB (DEFLATE's window): the canonical JSON of
  the newest stored events, newest last, after a fixed seed of the keys
  every PDU has. Thousands of near-identical events (telemetry from one
  room: same room, sender, auth events, keys) then cost little more than
  what differs between them: signature, hash, ``prev_events``, values.
* Dictionaries are rows of ``pdu_dictionaries`` and never change or go
  away while an event uses them. A new one is made in its own write job
  and used only after that job has committed, so no committed event ever
  names a dictionary that is not committed before it.
* When a new one is made: when the store has none (at its first events),
  after ``FIRST_RETRAIN`` positions with the first, then every
  ``RETRAIN_EVERY`` positions.
* ``index_fields``: what the SQL of the search and relations indexes reads
  of an event (:func:`index_fields`), as plain JSON next to the compressed
  PDU, since SQL cannot read inside DEFLATE.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

FORMAT_DEFLATE = 0x01
WINDOW = 32 * 1024
#: events sampled into a new dictionary
SAMPLE_EVENTS = 48
FIRST_RETRAIN = 200
RETRAIN_EVERY = 10_000
LEVEL = 6  # level 9 gives the same sizes on PDUs here, at 1.4× the time
#: the start of every dictionary: fragments of every PDU's canonical JSON (the newest events follow it)
SEED = (
    b'{"auth_events":["$","content":{"body":"","msgtype":"m.text"},"depth":,"hashes":{"sha256":""},'
    b'"origin_server_ts":1,"prev_events":["$"],"room_id":"!","sender":"@","signatures":{"":{"ed25519:'
    b'"}},"state_key":"","type":"m.room.message","unsigned":{}}'
)


#: top-level content keys the index SQL reads of an event that is not a state event (store/sqlite/search.py,
#: relations.py); a state event's whole content is kept (member profiles, room name and topic)
_MESSAGE_KEYS = ("body", "m.relates_to")
_SENML = "org.lowband.senml"


class PduDecodeError(ValueError):
    """A stored PDU in no known form, or naming a dictionary the store does not have."""


def index_fields(event_type: str, state_key: str | None, content: Any) -> str | None:
    """``events.index_fields`` for an event: ``{"content": {...}}`` with the content keys the index SQL reads,
    or None when it reads none (a telemetry reading, most events).

    Same answers from the SQL as the whole PDU would give: a state event keeps
    its whole content; any other keeps ``body`` and ``m.relates_to``, except
    ``body`` of a SenML reading (search never indexes one: search.py).
    """
    if not isinstance(content, dict):
        return None
    if state_key is not None:
        kept = content
    else:
        kept = {k: content[k] for k in _MESSAGE_KEYS if k in content}
        if _SENML in content:
            kept.pop("body", None)
    if not kept:
        return None
    return json.dumps({"content": kept}, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while at < len(data) and shift <= 28:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, at
        shift += 7
    raise PduDecodeError("stored PDU: truncated dictionary ID")


def make_sample(recent: list[bytes]) -> bytes:
    """A dictionary from the canonical JSON of recent events (oldest first): the seed, then them, last 32 KiB."""
    return (SEED + b"".join(recent))[-WINDOW:]


Lookup = Callable[[int], bytes | None]


class PduCodec:
    """Encodes PDUs with the store's current dictionary and decodes any stored form (see the module rules).

    ``lookup(id)`` reads a dictionary's row (its ``sample`` column) when a
    decode meets one not cached yet. Encoding runs in the writer thread; the
    current dictionary changes only in :meth:`adopt`, after its commit.
    """

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._samples: dict[int, bytes] = {}
        self._lock = threading.Lock()
        #: (id, first_stream, sample) of the dictionary new events use, None before the store has one
        self.current: tuple[int, int, bytes] | None = None
        self.training = False

    def load_current(self, row: tuple[Any, ...] | None) -> None:
        """Start from the newest dictionary row ``(id, first_stream, sample)`` (None: the store has none)."""
        if row is not None:
            self.adopt(int(row[0]), int(row[1]), zlib.decompress(bytes(row[2])))

    def adopt(self, dict_id: int, first_stream: int, sample: bytes) -> None:
        """Use a committed dictionary for the events encoded from now on."""
        with self._lock:
            self._samples[dict_id] = sample
        self.current = (dict_id, first_stream, sample)
        self.training = False

    def due(self, position: int) -> bool:
        """Whether a new dictionary should be made now that the store is at stream ``position``."""
        if self.training:
            return False
        if self.current is None:
            return True
        dict_id, first, _ = self.current
        return position - first >= (FIRST_RETRAIN if dict_id == 1 else RETRAIN_EVERY)

    def encode(self, canonical: bytes) -> bytes:
        """What ``events.pdu`` stores for an event's canonical JSON."""
        current = self.current
        if current is None:
            return canonical
        dict_id, _, sample = current
        # memLevel 8: 9 costs a fifth more time per event for the same bytes
        co = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, sample)
        packed = bytes([FORMAT_DEFLATE]) + _varint(dict_id) + co.compress(canonical) + co.flush()
        return packed if len(packed) < len(canonical) else canonical

    def decode_bytes(self, stored: str | bytes | memoryview, lookup: Lookup | None = None) -> bytes:
        """The canonical JSON of a stored ``events.pdu`` (``lookup``: read dictionaries through another
        connection than the store's own). Raises PduDecodeError."""
        if isinstance(stored, str):
            return stored.encode("utf-8", "surrogatepass")
        data = bytes(stored)
        if not data:
            raise PduDecodeError("stored PDU: empty")
        if data[0] == 0x7B:  # '{': the JSON itself
            return data
        if data[0] != FORMAT_DEFLATE:
            raise PduDecodeError(f"stored PDU: unknown form 0x{data[0]:02x}")
        dict_id, at = _read_varint(data, 1)
        sample = self._sample(dict_id, lookup)
        try:
            d = zlib.decompressobj(-15, sample)
            out = d.decompress(data[at:])
        except zlib.error as exc:
            raise PduDecodeError(f"stored PDU: damaged ({exc})") from None
        if not d.eof:
            raise PduDecodeError("stored PDU: truncated")
        return out

    def decode(self, stored: str | bytes | memoryview, lookup: Lookup | None = None) -> dict[str, Any]:
        """The PDU of a stored ``events.pdu``. Raises PduDecodeError (also for JSON that is no object)."""
        try:
            pdu = json.loads(self.decode_bytes(stored, lookup))
        except ValueError as exc:
            if isinstance(exc, PduDecodeError):
                raise
            raise PduDecodeError(f"stored PDU: not JSON ({exc})") from None
        if not isinstance(pdu, dict):
            raise PduDecodeError("stored PDU: not a JSON object")
        return pdu

    def _sample(self, dict_id: int, lookup: Lookup | None) -> bytes:
        with self._lock:
            sample = self._samples.get(dict_id)
        if sample is not None:
            return sample
        packed = (lookup or self._lookup)(dict_id)
        if packed is None:
            raise PduDecodeError(f"stored PDU: dictionary {dict_id} is missing")
        sample = zlib.decompress(bytes(packed))
        with self._lock:
            self._samples[dict_id] = sample
        return sample

    def train(self, c: sqlite3.Connection, position: int) -> tuple[int, int, bytes]:
        """A write job: make and insert a dictionary from the newest events; ``(id, first_stream, sample)`` to
        :meth:`adopt` once committed."""
        rows = c.execute("SELECT pdu FROM events ORDER BY stream DESC LIMIT ?", (SAMPLE_EVENTS,)).fetchall()
        recent = [self.decode_bytes(r[0], lambda i: _row_sample(c, i)) for r in reversed(rows)]
        sample = make_sample(recent)
        top = c.execute("SELECT MAX(id) FROM pdu_dictionaries").fetchone()[0]
        dict_id = (top or 0) + 1
        c.execute("INSERT INTO pdu_dictionaries (id, first_stream, created_ts, sample) VALUES (?, ?, ?, ?)",
                  (dict_id, position, int(time.time() * 1000), zlib.compress(sample, 9)))  # fmt: skip
        return dict_id, position, sample


def _row_sample(c: Any, dict_id: int) -> bytes | None:
    row = c.execute("SELECT sample FROM pdu_dictionaries WHERE id = ?", (dict_id,)).fetchone()
    return None if row is None else bytes(row[0])


def reader_codec(conn: Any) -> PduCodec:
    """A codec that decodes through ``conn`` (a read-only connection: ``db check``, ``db migrate``, tools)."""
    return PduCodec(lambda i: _row_sample(conn, i))
