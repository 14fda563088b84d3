"""Other servers' signing keys: fetched from their origin, cached on disk, served to peers who ask.

Rules:

* a key is looked up in memory, then on disk, then fetched from the server
  itself (``GET /_matrix/key/v2/server``), then from the configured notaries
  (``[federation] trusted_key_servers``, none by default);
* a fetched document must pass ``matrix.server_keys.parse_key_document``;
  a notary's answer must also carry the notary's own valid signature;
* one fetch per server at a time (concurrent askers wait for it), and a
  server that could not be reached is not asked again for a minute, so a
  flood of requests naming an unreachable origin costs one fetch;
* ``at_ts`` asks for a key valid at a moment (event signatures in room
  versions with enforced key validity); without it any known key will do
  (request signatures: the key must just be current, which a fresh fetch
  ensures when the cached one has expired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.matrix.server_keys import KeyResponseError, ServerKeys, key_document, parse_key_document
from lowband.gateway.matrix.signing import SignatureError, SigningKey, sign_json, verify_json
from lowband.gateway.store.interfaces import FederationStore

__all__ = ["KeyRing"]

log = logging.getLogger("lowband.federation")

OWN_KEYS_VALID_MS = 24 * 3600 * 1000  # what we promise peers; refreshed on every answer
RETRY_AFTER_FAILURE_S = 60.0
_MEMORY_SERVERS = 5000


class KeyRing:
    """Verify keys of every server we hear from, and our own key document."""

    def __init__(self, server_name: str, signing_key: SigningKey, client: FederationClient,
                 tables: FederationStore, trusted_key_servers: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.server_name = server_name
        self.signing_key = signing_key
        self.client = client
        self.tables = tables
        self.notaries = trusted_key_servers
        self.clock = clock
        # server → key_id → (key, valid_until_ts)
        self._keys: dict[str, dict[str, tuple[bytes, int]]] = {}
        self._loaded: set[str] = set()
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._failed_at: dict[str, float] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------- our own

    def own_document(self) -> dict[str, Any]:
        """What ``GET /_matrix/key/v2/server`` answers: our key, signed, valid for a day from now."""
        return key_document(self.server_name, self.signing_key, self._now_ms() + OWN_KEYS_VALID_MS)

    # ------------------------------------------------------------- lookups

    def cached_key(self, server: str, key_id: str, at_ts: int | None = None) -> bytes | None:
        """A key already in memory or on disk, valid at ``at_ts`` when given; None otherwise (no network)."""
        if server == self.server_name and key_id == self.signing_key.key_id:
            return self.signing_key.verify_key_bytes
        self._load(server)
        found = self._keys.get(server, {}).get(key_id)
        if found is None:
            return None
        key, valid_until = found
        if at_ts is not None and valid_until < at_ts:
            return None
        return key

    async def verify_key(self, server: str, key_id: str, at_ts: int | None = None) -> bytes | None:
        """The key ``key_id`` of ``server`` (valid at ``at_ts`` when given), fetching it if needed; None if none."""
        key = self.cached_key(server, key_id, at_ts)
        if key is not None and (at_ts is not None or self._current(server, key_id)):
            return key
        await self.fetch(server)
        return self.cached_key(server, key_id, at_ts)

    def _current(self, server: str, key_id: str) -> bool:
        found = self._keys.get(server, {}).get(key_id)
        return found is not None and found[1] >= self._now_ms()

    def _load(self, server: str) -> None:
        if server in self._loaded:
            return
        if len(self._loaded) >= _MEMORY_SERVERS:
            self._keys.clear()
            self._loaded.clear()
        keys = self._keys.setdefault(server, {})
        for key_id, key, valid_until, _fetched, _doc in self.tables.server_keys(server):
            keys[key_id] = (key, valid_until)
        self._loaded.add(server)

    async def fetch(self, server: str) -> None:
        """Fetch ``server``'s keys now (at most one fetch at a time; not again within a minute of a failure)."""
        if server == self.server_name:
            return
        running = self._fetching.get(server)
        if running is not None:
            await asyncio.shield(running)
            return
        failed = self._failed_at.get(server)
        if failed is not None and self.clock() - failed < RETRY_AFTER_FAILURE_S:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[server] = future
        try:
            if await self._fetch_direct(server) or await self._fetch_from_notaries(server):
                self._failed_at.pop(server, None)
            else:
                self._failed_at[server] = self.clock()
                if len(self._failed_at) > _MEMORY_SERVERS:
                    self._failed_at.clear()
        finally:
            del self._fetching[server]
            future.set_result(None)

    async def _fetch_direct(self, server: str) -> bool:
        try:
            doc = await self.client.request(server, "GET", "/_matrix/key/v2/server", timeout=15.0, max_bytes=256 * 1024)
            keys = parse_key_document(doc, server)
        except (FederationError, KeyResponseError) as exc:
            log.info("cannot get the keys of %s from it: %s", server, exc)
            return False
        await self._remember(keys)
        return True

    async def _fetch_from_notaries(self, server: str) -> bool:
        for notary in self.notaries:
            try:
                answer = await self.client.request(notary, "GET", f"/_matrix/key/v2/query/{path_segment(server)}",
                                                   timeout=15.0, max_bytes=1024 * 1024)  # fmt: skip
                docs = answer.get("server_keys") if isinstance(answer, dict) else None
                for doc in docs if isinstance(docs, list) else []:
                    keys = parse_key_document(doc, server)
                    await self._check_notary_signature(doc, notary)
                    await self._remember(keys)
                    return True
            except (FederationError, KeyResponseError, SignatureError) as exc:
                log.info("notary %s could not vouch for the keys of %s: %s", notary, server, exc)
        return False

    async def _check_notary_signature(self, doc: dict[str, Any], notary: str) -> None:
        sigs = doc.get("signatures", {}).get(notary) if isinstance(doc.get("signatures"), dict) else None
        if not isinstance(sigs, dict) or not sigs:
            raise SignatureError(f"not signed by notary {notary}")
        for key_id in sigs:
            key = await self.verify_key(notary, key_id)
            if key is not None:
                verify_json(doc, notary, key_id, key)
                return
        raise SignatureError(f"no known key of notary {notary} signed it")

    async def _remember(self, keys: ServerKeys) -> None:
        fetched = self._now_ms()
        rows = [(key_id, key, keys.key_valid_until(key_id, fetched) or 0) for key_id, key in keys.verify_keys.items()]
        rows += [(key_id, key, expired) for key_id, (key, expired) in keys.old_verify_keys.items()]
        await self.tables.save_server_keys(keys.server_name, fetched, keys.document, rows)
        self._loaded.discard(keys.server_name)
        self._keys.pop(keys.server_name, None)
        self._load(keys.server_name)

    # ------------------------------------------------------------- notary

    async def notary_answer(self, criteria: dict[str, dict[str, int | None]]) -> list[dict[str, Any]]:
        """Key documents for ``criteria`` (server → key ID → minimum_valid_until_ts), co-signed by us.

        Our own document is answered directly. A server with nothing cached,
        or whose cached keys are not valid long enough, is fetched first; a
        server that cannot be reached and has nothing cached is left out.
        """
        out: list[dict[str, Any]] = []
        for server, wanted in list(criteria.items())[:100]:
            if server == self.server_name:
                out.append(self.own_document())
                continue
            minimum = max((v for v in wanted.values() if isinstance(v, int)), default=None)
            need = minimum if minimum is not None else self._now_ms()
            rows = self.tables.server_keys(server)
            if not [r for r in rows if (not wanted or r[0] in wanted) and r[2] >= need]:
                await self.fetch(server)
                rows = self.tables.server_keys(server)
            if rows:
                latest = max(rows, key=lambda r: r[3])[4]  # the document fetched last
                out.append(sign_json(latest, self.server_name, self.signing_key))
        return out
