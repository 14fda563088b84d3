"""Server signing keys and signed JSON (appendices, "Signing JSON").

A homeserver signs events and federation requests with one Ed25519 key,
named ``ed25519:<version>``. A signature covers the canonical JSON of the
object without its ``signatures`` and ``unsigned`` members, and is stored as
``signatures[<server name>][<key id>]`` in unpadded base64.

The key file holds one line, ``ed25519 <version> <unpadded base64 seed>``
(the format Synapse and other servers use, so a key can be moved between
them). It is written with mode 0600 to a temporary file in the same
directory and renamed into place, so a crash never leaves half a key.

Everything here but the key file helpers is pure computation.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError, CryptoError

from lowband.gateway.matrix.canonical_json import encode_canonical_json

__all__ = [
    "ServerKey",
    "SignatureError",
    "SigningKey",
    "decode_base64",
    "encode_base64",
    "encode_base64_urlsafe",
    "sign_json",
    "verify_ed25519",
    "verify_json",
]

ALGORITHM = "ed25519"
_SEED_LEN = 32
_VERSION_CHARS = string.ascii_letters + string.digits


class SignatureError(ValueError):
    """A signature is missing, malformed, made with an unknown key, or wrong.

    The message names the server and key id involved, never key material.
    """


@dataclass(frozen=True)
class ServerKey:
    """Another server's public verify key, as a key store hands it to signature checks.

    ``key`` is the 32-byte Ed25519 public key. ``valid_until_ts`` (ms) is
    the ``valid_until_ts`` of a current key or the ``expired_ts`` of an old
    one, already capped by the caller at 7 days after it fetched the key;
    ``None`` when no end is known. Room versions 5+ ignore a key whose
    validity ended before the event's ``origin_server_ts``.
    """

    key: bytes
    valid_until_ts: int | None = None


# -- base64 ------------------------------------------------------------------


def encode_base64(data: bytes) -> str:
    """Return ``data`` as unpadded standard base64 (RFC 4648 alphabet, no ``=``)."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def encode_base64_urlsafe(data: bytes) -> str:
    """Return ``data`` as unpadded URL-safe base64 (``-`` and ``_``, no ``=``)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard base64, padded or unpadded (the spec asks us to take both).

    Raises ``ValueError`` for characters outside the standard alphabet,
    padding in the middle, padding that does not complete a 4-character
    group, and a length no base64 encoder produces (4n+1 characters).
    """
    if not isinstance(text, str):
        raise ValueError("base64 input must be a str")
    body = text.rstrip("=")
    if len(body) != len(text) and len(text) % 4:
        raise ValueError("base64 padding does not complete a 4-character group")
    if len(body) % 4 == 1:
        raise ValueError("base64 input has an impossible length")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


# -- keys --------------------------------------------------------------------


class SigningKey:
    """One Ed25519 signing key of this server, with its version.

    ``key_id`` is ``"ed25519:<version>"``; ``verify_key_bytes`` is the
    32-byte public key that other servers fetch from our key endpoint.
    """

    __slots__ = ("_private", "_seed", "key_id", "public_key_base64", "verify_key_bytes", "version")

    def __init__(self, seed: bytes, version: str) -> None:
        """Prefer :meth:`generate`, :meth:`from_seed` or :meth:`load`."""
        _check_version(version)
        if len(seed) != _SEED_LEN:
            raise ValueError(f"an ed25519 seed is {_SEED_LEN} bytes, not {len(seed)}")
        self._seed = bytes(seed)
        # libsodium (PyNaCl, as Synapse's signedjson uses): about two thirds of the time OpenSSL's
        # Ed25519 takes here, and the call releases the interpreter lock.
        self.verify_key_bytes, self._private = crypto_sign_seed_keypair(self._seed)
        self.version = version
        self.key_id = f"{ALGORITHM}:{version}"
        self.public_key_base64 = encode_base64(self.verify_key_bytes)

    def __repr__(self) -> str:
        # The seed stays out of logs and tracebacks.
        return f"SigningKey({self.key_id!r}, public={self.public_key_base64!r})"

    @classmethod
    def generate(cls, version: str | None = None) -> SigningKey:
        """Make a new random key; ``version`` defaults to ``a_`` plus 4 random letters/digits."""
        if version is None:
            version = "a_" + "".join(secrets.choice(_VERSION_CHARS) for _ in range(4))
        return cls(secrets.token_bytes(_SEED_LEN), version)

    @classmethod
    def from_seed(cls, seed: bytes, version: str) -> SigningKey:
        """Rebuild a key from its 32-byte seed. Raises ``ValueError`` on a bad seed or version."""
        return cls(seed, version)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key file (``ed25519 <version> <base64 seed>``, first non-blank line).

        Raises ``OSError`` if the file cannot be read and ``ValueError`` if
        its content is not one ed25519 key line.
        """
        text = Path(path).read_text(encoding="ascii")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty key file")
        parts = lines[0].split()
        if len(parts) != 3 or parts[0] != ALGORITHM:
            raise ValueError(f"{path}: expected 'ed25519 <version> <base64 seed>'")
        return cls(decode_base64(parts[2]), parts[1])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this key to ``path`` (mode 0600), replacing any file there.

        The write goes to a temporary file in the same directory that is
        then renamed over ``path``, so readers see the old key or the new
        one, never a torn file. Raises ``OSError`` on I/O failure.
        """
        _write_private_file(Path(path), self._key_line(), replace=True)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load the key at ``path``, or generate one and save it there first.

        If two processes race to create the key, both end up using the one
        that reached the disk first (the file is linked into place only if
        no file exists). Raises ``OSError`` / ``ValueError`` like
        :meth:`load` and :meth:`save`.
        """
        target = Path(path)
        if not target.exists():
            key = cls.generate()
            try:
                _write_private_file(target, key._key_line(), replace=False)
            except FileExistsError:
                pass
        return cls.load(target)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return crypto_sign(data, self._private)[:64]  # libsodium returns signature + message

    def _key_line(self) -> bytes:
        return f"{ALGORITHM} {self.version} {encode_base64(self._seed)}\n".encode("ascii")


def _check_version(version: str) -> None:
    # The version ends up in a key id, a file line and URLs: keep it to the
    # characters servers use in practice.
    if not version or any(c not in _VERSION_CHARS + "_" for c in version):
        raise ValueError("key version must be non-empty and use only [A-Za-z0-9_]")


def _write_private_file(target: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``target`` with mode 0600 through a temporary file.

    With ``replace`` false the file is hard-linked into place, which fails
    with ``FileExistsError`` if ``target`` exists; where hard links are not
    supported it falls back to an ``O_EXCL`` create of the target itself.
    """
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits; never adds any
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise
            except OSError:
                _create_exclusive(target, data)
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_exclusive(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- signed JSON --------------------------------------------------------------


def _signing_bytes(obj: dict[str, Any]) -> bytes:
    return encode_canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def sign_json(obj: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``obj`` with ``signatures[server_name][key.key_id]`` added.

    The signature covers the canonical JSON of ``obj`` without
    ``signatures`` and ``unsigned``; other signatures already present are
    kept. ``obj`` itself is not modified (nested values are shared with the
    copy, except the ``signatures`` maps, which are new). Raises
    :class:`~lowband.gateway.matrix.canonical_json.CanonicalJSONError` if ``obj``
    has no canonical form.
    """
    signature = encode_base64(key.sign(_signing_bytes(obj)))
    old = obj.get("signatures")
    signatures: dict[str, Any] = {name: dict(sigs) for name, sigs in old.items()} if isinstance(old, dict) else {}
    signatures.setdefault(server_name, {})[key.key_id] = signature
    signed = dict(obj)
    signed["signatures"] = signatures
    return signed


def verify_ed25519(verify_key_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``data``.

    A key that is not 32 bytes, or a signature that is not 64, is simply
    not valid: the result is ``False``, never an exception.
    """
    if len(verify_key_bytes) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + data, verify_key_bytes)
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True


def verify_json(obj: dict[str, Any], server_name: str, key_id: str, verify_key_bytes: bytes) -> None:
    """Check that ``obj`` carries a valid signature by ``server_name`` with ``key_id``.

    Raises :class:`SignatureError` if the signature is absent, not base64,
    made with an algorithm other than ed25519, or does not verify against
    ``verify_key_bytes`` over the canonical JSON of ``obj`` without
    ``signatures`` and ``unsigned`` (also if ``obj`` has no canonical form).
    """
    if not key_id.startswith(ALGORITHM + ":"):
        raise SignatureError(f"{server_name} {key_id}: unsupported signing algorithm")
    signatures = obj.get("signatures")
    server_sigs = signatures.get(server_name) if isinstance(signatures, dict) else None
    encoded = server_sigs.get(key_id) if isinstance(server_sigs, dict) else None
    if not isinstance(encoded, str):
        raise SignatureError(f"no signature from {server_name} with {key_id}")
    try:
        signature = decode_base64(encoded)
        data = _signing_bytes(obj)
    except ValueError:  # includes CanonicalJSONError
        raise SignatureError(f"{server_name} {key_id}: malformed signature or object") from None
    if not verify_ed25519(verify_key_bytes, data, signature):
        raise SignatureError(f"{server_name} {key_id}: signature does not verify")
