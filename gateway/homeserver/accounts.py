"""Accounts: user IDs, passwords, tokens and the namespaces edges reserve.

Rules:

* a localpart uses only the characters the spec allows (``a-z 0-9 ._=-/+``)
  and the whole user ID fits in 255 bytes;
* passwords are kept as salted scrypt hashes, never in clear;
* an edge that speaks as Matrix users of its own (device links, bridges)
  reserves their localparts in :class:`ReservedNamespaces`; registration
  refuses a reserved localpart, and the edge never adopts an account it
  did not create (see ``users.owner`` in the store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from lowband.gateway.matrix.errors import MatrixError

_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+")


def valid_localpart(localpart: str) -> bool:
    """Whether a user ID localpart uses only the characters the spec allows."""
    return bool(_LOCALPART.fullmatch(localpart))


def user_id_for(localpart: str, server_name: str) -> str:
    """``@localpart:server``; M_INVALID_USERNAME if the localpart is not allowed."""
    if not localpart or not valid_localpart(localpart) or len(localpart) + len(server_name) + 2 > 255:
        raise MatrixError(400, "M_INVALID_USERNAME", "user names may only contain a-z, 0-9 and ._=-/+")
    return f"@{localpart}:{server_name}"


# ----------------------------------------------------------------- namespaces


@dataclass(frozen=True)
class Reservation:
    """Localparts an edge keeps for its own users: one exact name or every name with a prefix."""

    owner: str  # who holds it, for error messages ("the MQTT bridge")
    exact: str | None = None
    prefix: str | None = None
    #: full user IDs it holds, as a test (an application service's exclusive regexes)
    user_ids: Callable[[str], bool] | None = None

    def covers(self, localpart: str, user_id: str = "") -> bool:
        """Whether ``localpart`` (with its full ``user_id``) falls in this reservation."""
        if self.exact is not None and localpart == self.exact:
            return True
        if self.user_ids is not None and user_id and self.user_ids(user_id):
            return True
        return bool(self.prefix) and localpart.startswith(self.prefix or "")


class ReservedNamespaces:
    """Every reservation of a running gateway, filled from the config at start-up."""

    def __init__(self, reservations: list[Reservation] | None = None) -> None:
        self._items: list[Reservation] = list(reservations or [])

    def add(self, reservation: Reservation) -> None:
        """Reserve one more namespace."""
        self._items.append(reservation)

    def owner_of(self, localpart: str, user_id: str = "") -> str | None:
        """Who reserved ``localpart`` (full ID ``user_id``), or None when it is free to register."""
        for item in self._items:
            if item.covers(localpart, user_id):
                return item.owner
        return None

    def check_registrable(self, localpart: str, user_id: str) -> None:
        """M_EXCLUSIVE (400) naming the owner when ``localpart`` is reserved."""
        owner = self.owner_of(localpart, user_id)
        if owner is not None:
            raise MatrixError(400, "M_EXCLUSIVE", f"{user_id} is in a namespace reserved for {owner}")


# ----------------------------------------------------------------- passwords

#: OWASP's password storage guidance lists scrypt at N=2^17, r=8, p=1 and, as equal in strength, N=2^14, r=8,
#: p=5: the same work (about 150 ms here), but 16 MiB of memory per hash instead of 128 MiB, which a gateway on
#: a small board can afford for parallel logins. Hashes made with weaker parameters (N=2^14, p=1 before
#: 2026-12) are replaced at the next successful login (:func:`needs_rehash`).
_SCRYPT = {"n": 2**14, "r": 8, "p": 5}


def hash_password(password: str) -> str:
    """A salted scrypt hash in the form ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just matched was made with other parameters than :func:`hash_password` uses now."""
    parts = stored.split("$")
    return len(parts) != 6 or parts[0] != "scrypt" or parts[1:4] != [str(_SCRYPT[k]) for k in ("n", "r", "p")]


def new_token() -> str:
    """A fresh access token."""
    return "lb_" + secrets.token_urlsafe(24)


def new_device_id() -> str:
    """A fresh device ID."""
    return "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(10))
