"""How the ``events`` table keeps a PDU: compressed against a dictionary made from the store's own recent events.

Rules (docs/storage.md, "Compact events"):

* ``events.pdu`` holds the event's canonical JSON in one of three forms:
  the JSON itself (TEXT, or a BLOB whose first byte is ``{``: stores
  written before compression, events written before the store had a
  dictionary, an event that would not shrink); format 1: the byte
  ``0x01``, the dictionary's ID as an unsigned LEB128 varint, then one
  Zstandard frame (RFC 8878; no content size, checksum or dictionary ID in
  the frame header) of the JSON, compressed with that dictionary; or
  format 2, the same without the content hash: ``0x02``, the dictionary's
  ID, the offset where the ``"hashes":{"sha256":"…"},`` member goes back
  (both varints), then the frame of the JSON without that member. The hash
  is computed again when read (:func:`_with_hash`); an event is stored so
  only when that gives back its JSON byte for byte. Any other first byte
  is refused as :class:`PduDecodeError`.
* A dictionary is trained by Zstandard (``ZDICT``, 8 KiB) on the stored
  form (without the hash) of the newest events; while there are fewer than
  ``MIN_TRAIN`` events to train on, it is raw content: a fixed seed of the keys every PDU has and the
  newest events' JSON, at most 8 KiB. Thousands of near-identical events
  (telemetry from one room: same room, sender, auth events, keys) then cost
  little more than what differs between them: signature, ``prev_events``,
  values.
* Dictionaries are rows of ``pdu_dictionaries`` and never change or go
  away while an event uses them. A new one is made in its own write job
  and used only after that job has committed, so no committed event ever
  names a dictionary that is not committed before it.
* When a new one is made: when the store has none (at its first events),
  ``EARLY_RETRAIN`` positions after the first and after the second (the
  first holds the room's creation, the second its first messages as raw
  content, the third is the first trained on enough events), then every
  ``RETRAIN_EVERY`` positions.
* ``index_fields``: what the SQL of the search and relations indexes reads
  of an event (:func:`index_fields`), as plain JSON next to the compressed
  PDU, since SQL cannot read inside a Zstandard frame.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import zstandard

FORMAT_ZSTD = 0x01
FORMAT_ZSTD_NO_HASH = 0x02
#: a raw-content dictionary's size at most; a trained one's size (telemetry after 600 events: 16 KiB stored
#: them in 181.7 bytes each, 8 KiB in 182.7, 4 KiB in 186.9; 16 KiB costs 0.8 bytes per event more when made
#: every RETRAIN_EVERY events, and 8 KiB more in a store that is still small)
RAW_MAX = 8 * 1024
TRAINED_SIZE = 8 * 1024
#: events sampled to make a new dictionary (canonical JSON, newest first); fewer than MIN_TRAIN: raw content
#: (a dictionary trained on 8 events stored the next 200 in 410 bytes each, raw content in about 210; trained
#: on 50, the next 450 telemetry notices took about 26 bytes each fewer than with 8 KiB of raw content)
SAMPLE_EVENTS = 400
MIN_TRAIN = 50
#: positions after dictionaries 1 and 2 before the next
EARLY_RETRAIN = (50, 450)
RETRAIN_EVERY = 10_000
#: Zstandard level: with a trained dictionary, 3 gives the bytes of 19 on PDUs here at a hundredth of the time
LEVEL = 3
#: a stored PDU decompressed to more than this is refused (a PDU is at most 64 KiB)
MAX_PDU = 256 * 1024
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


def _read_varint(data: bytes, at: int, what: str) -> tuple[int, int]:
    n = shift = 0
    while at < len(data) and shift <= 28:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, at
        shift += 7
    raise PduDecodeError(f"stored PDU: truncated {what}")


_HASH_MEMBER = b'"hashes":{"sha256":"'
_SIGNATURES = b',"signatures":{'


def _with_hash(unhashed: bytes, at: int) -> bytes | None:
    """The canonical JSON of a PDU stored without its content hash: the member put back at ``at``, its value the
    SHA-256 of the JSON without the hash, ``signatures`` and ``unsigned`` (the content hash's definition; a
    stored PDU has no ``unsigned``). None when there is no top-level ``signatures`` member to leave out.

    The top-level ``signatures`` member is the last ``,"signatures":{`` and ends at the first ``"}}`` after it
    (server names, key IDs and unpadded base64 signatures hold no braces); :func:`_without_hash` stores an
    event in this form only when this function gives back its JSON exactly, so neither rule can make a stored
    PDU read wrong.
    """
    start = unhashed.rfind(_SIGNATURES)
    end = unhashed.find(b'"}}', start)
    if start < 0 or end < 0 or not 0 < at <= start:
        return None
    digest = hashlib.sha256(unhashed[:start] + unhashed[end + 3:]).digest()
    value = base64.b64encode(digest).rstrip(b"=")
    return unhashed[:at] + _HASH_MEMBER + value + b'"},' + unhashed[at:]


def _without_hash(canonical: bytes) -> tuple[bytes, int] | None:
    """``(the JSON without its content hash member, where it was)``, or None when :func:`_with_hash` would not
    give the same JSON back (no hash member, another hash than the content's, ``unsigned`` kept, ...) or the
    event has an ``event_id`` member (room versions 1 and 2): its ID is no hash, so only the content hash lets
    ``lowband db check`` see a damaged body."""
    at = canonical.rfind(_HASH_MEMBER)
    if at >= 0 and canonical.find(b',"event_id":', max(0, canonical.rfind(b',"depth":', 0, at)), at) >= 0:
        return None  # the top-level members sort depth, event_id, hashes: content's "event_id" comes before depth
    while at >= 0:  # the top-level member is the last one unless a later member holds one (tried in turn)
        end = canonical.find(b'"},', at + len(_HASH_MEMBER))
        if end >= 0:
            unhashed = canonical[:at] + canonical[end + 3:]
            if _with_hash(unhashed, at) == canonical:
                return unhashed, at
        at = canonical.rfind(_HASH_MEMBER, 0, at)
    return None


def make_sample(recent: list[bytes]) -> bytes:
    """A dictionary from the canonical JSON of recent events (oldest first), in the form they are compressed in
    (without the content hash where it is left out): trained by Zstandard when there are enough of them, else
    raw content (the seed, then them, the last RAW_MAX bytes)."""
    samples: list[bytes | bytearray | memoryview] = []
    for canonical in recent:
        unhashed = _without_hash(canonical)
        samples.append(canonical if unhashed is None else unhashed[0])
    if len(samples) >= MIN_TRAIN:
        try:
            return bytes(zstandard.train_dictionary(TRAINED_SIZE, samples).as_bytes())
        except zstandard.ZstdError:  # samples too small or too alike to train on
            pass
    return (SEED + b"".join(samples))[-RAW_MAX:]


Lookup = Callable[[int], bytes | None]


class PduCodec:
    """Encodes PDUs with the store's current dictionary and decodes any stored form (see the module rules).

    ``lookup(id)`` reads a dictionary's row (its ``sample`` column) when a
    decode meets one not cached yet. Encoding runs in the writer thread; the
    current dictionary changes only in :meth:`adopt`, after its commit.
    Zstandard's (de)compressor objects are kept per thread (they are not
    safe to share); the dictionaries are shared.
    """

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        #: (id, first_stream, sample) of the dictionary new events use, None before the store has one
        self.current: tuple[int, int, bytes] | None = None
        self.training = False

    def load_current(self, row: tuple[Any, ...] | None) -> None:
        """Start from the newest dictionary row ``(id, first_stream, sample)`` (None: the store has none)."""
        if row is not None:
            self.adopt(int(row[0]), int(row[1]), bytes(row[2]))

    def adopt(self, dict_id: int, first_stream: int, sample: bytes) -> None:
        """Use a committed dictionary for the events encoded from now on."""
        self._dictionary(dict_id, sample)
        self.current = (dict_id, first_stream, sample)
        self.training = False

    def begin_training(self) -> None:
        """A dictionary is being made: :meth:`due` says no until it is adopted or :meth:`training_failed`."""
        self.training = True

    def training_failed(self) -> None:
        """Making the dictionary failed: the next :meth:`due` may start another."""
        self.training = False

    def due(self, position: int) -> bool:
        """Whether a new dictionary should be made now that the store is at stream ``position``."""
        if self.training:
            return False
        if self.current is None:
            return True
        dict_id, first, _ = self.current
        after = EARLY_RETRAIN[dict_id - 1] if dict_id <= len(EARLY_RETRAIN) else RETRAIN_EVERY
        return position - first >= after

    def encode(self, canonical: bytes) -> bytes:
        """What ``events.pdu`` stores for an event's canonical JSON."""
        current = self.current
        if current is None:
            return canonical
        dict_id = current[0]
        compressors = self._per_thread("compressors")
        cctx = compressors.get(dict_id)
        if cctx is None:
            cctx = compressors[dict_id] = zstandard.ZstdCompressor(
                level=LEVEL, dict_data=self._dictionary(dict_id, current[2]), write_checksum=False,
                write_content_size=False, write_dict_id=False)  # fmt: skip
        unhashed = _without_hash(canonical)
        if unhashed is None:
            packed = bytes([FORMAT_ZSTD]) + _varint(dict_id) + cctx.compress(canonical)
        else:
            packed = bytes([FORMAT_ZSTD_NO_HASH]) + _varint(dict_id) + _varint(unhashed[1]) + cctx.compress(unhashed[0])
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
        if data[0] not in (FORMAT_ZSTD, FORMAT_ZSTD_NO_HASH):
            raise PduDecodeError(f"stored PDU: unknown form 0x{data[0]:02x}")
        dict_id, at = _read_varint(data, 1, "dictionary ID")
        hash_at = None
        if data[0] == FORMAT_ZSTD_NO_HASH:
            hash_at, at = _read_varint(data, at, "hash offset")
        decompressors = self._per_thread("decompressors")
        dctx = decompressors.get(dict_id)
        if dctx is None:
            dctx = decompressors[dict_id] = zstandard.ZstdDecompressor(dict_data=self._dictionary(dict_id, None, lookup))
        try:
            canonical = bytes(dctx.decompress(data[at:], max_output_size=MAX_PDU))
        except zstandard.ZstdError as exc:
            raise PduDecodeError(f"stored PDU: damaged or truncated ({exc})") from None
        if hash_at is None:
            return canonical
        hashed = _with_hash(canonical, hash_at)
        if hashed is None:
            raise PduDecodeError(f"stored PDU: no content hash can go back at offset {hash_at}")
        return hashed

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

    def _per_thread(self, name: str) -> dict[int, Any]:
        table: dict[int, Any] | None = getattr(self._local, name, None)
        if table is None:
            table = {}
            setattr(self._local, name, table)
        return table

    def _dictionary(self, dict_id: int, sample: bytes | None, lookup: Lookup | None = None
                    ) -> zstandard.ZstdCompressionDict:  # fmt: skip
        """Dictionary ``dict_id`` (``sample``: its bytes when known, else read through ``lookup``)."""
        with self._lock:
            found = self._dicts.get(dict_id)
        if found is not None:
            return found
        if sample is None:
            sample = (lookup or self._lookup)(dict_id)
            if sample is None:
                raise PduDecodeError(f"stored PDU: dictionary {dict_id} is missing")
        try:
            made = zstandard.ZstdCompressionDict(bytes(sample))  # trained (by its magic number) or raw content
            made.precompute_compress(level=LEVEL)
        except zstandard.ZstdError as exc:
            raise PduDecodeError(f"stored PDU: dictionary {dict_id} is damaged ({exc})") from None
        with self._lock:
            return self._dicts.setdefault(dict_id, made)

    def train(self, c: sqlite3.Connection, position: int) -> tuple[int, int, bytes]:
        """A write job: make and insert a dictionary from the newest events; ``(id, first_stream, sample)`` to
        :meth:`adopt` once committed."""
        rows = c.execute("SELECT pdu FROM events ORDER BY stream DESC LIMIT ?", (SAMPLE_EVENTS,)).fetchall()
        recent = [self.decode_bytes(r[0], lambda i: _row_sample(c, i)) for r in reversed(rows)]
        sample = make_sample(recent)
        top = c.execute("SELECT MAX(id) FROM pdu_dictionaries").fetchone()[0]
        dict_id = (top or 0) + 1
        c.execute("INSERT INTO pdu_dictionaries (id, first_stream, created_ts, sample) VALUES (?, ?, ?, ?)",
                  (dict_id, position, int(time.time() * 1000), sample))  # fmt: skip
        return dict_id, position, sample


def _row_sample(c: Any, dict_id: int) -> bytes | None:
    row = c.execute("SELECT sample FROM pdu_dictionaries WHERE id = ?", (dict_id,)).fetchone()
    return None if row is None else bytes(row[0])


def reader_codec(conn: Any) -> PduCodec:
    """A codec that reads dictionaries through ``conn`` (the store's reader, or a read-only connection of
    ``db check`` and tools)."""
    return PduCodec(lambda i: _row_sample(conn, i))
