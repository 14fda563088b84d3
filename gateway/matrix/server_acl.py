"""Server ACLs (``m.room.server_acl``): which servers may take part in a room at the network level.

Rules, in the spec's order, with the server's port ignored:

1. no ACL event in the state: allow;
2. an IP literal when ``allow_ip_literals`` is ``false``: deny (anything
   else than a boolean counts as true);
3. matching a ``deny`` glob: deny;
4. matching an ``allow`` glob: allow (no ``allow`` list denies everyone);
5. otherwise deny.

Globs are case-insensitive with ``*`` (any run of characters) and ``?``
(one character); entries that are not strings are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

__all__ = ["server_allowed"]


def _host(server_name: str) -> str:
    if server_name.startswith("["):
        return server_name[: server_name.find("]") + 1] if "]" in server_name else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    escaped = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern[:512])
    return re.compile(escaped, re.IGNORECASE | re.DOTALL)


def _matches(host: str, patterns: Any) -> bool:
    if not isinstance(patterns, list):
        return False
    return any(isinstance(p, str) and _glob(p).fullmatch(host) is not None for p in patterns[:1000])


def server_allowed(acl_content: dict[str, Any] | None, server_name: str) -> bool:
    """Whether ``server_name`` may take part, given the room's ACL event content (None: no ACL)."""
    if acl_content is None:
        return True
    host = _host(server_name)
    if acl_content.get("allow_ip_literals") is False and _is_ip_literal(host):
        return False
    if _matches(host, acl_content.get("deny")):
        return False
    return _matches(host, acl_content.get("allow"))
