"""Device keys, one-time keys, cross-signing and signatures: the server's half of Olm/Megolm key exchange.

Rules:

* the server stores and hands out what clients sign; it never sees a
  private key or a plaintext. What it checks is what a client cannot check
  for itself: a device uploads only its own keys, signed by itself; a
  cross-signing key is signed by the user's master key; an uploaded
  signature verifies against the key that made it;
* a one-time key is handed out once (the claim deletes it in the same
  transaction), then the device's fallback key, marked used;
* every change a client must learn about (a device's keys, its removal,
  the user's cross-signing keys, a signature on them) is a device list
  change at a stream position; ``/sync`` tells the users sharing a room
  (``e2ee_sync``), ``keys/changes`` answers between two tokens;
* every request is bounded: the number of users, devices and keys it
  names, and the size of each key object (``M_LIMIT_EXCEEDED`` /
  ``M_TOO_LARGE``, 400).

Keys of users on other servers are asked of their server through
:attr:`DeviceKeys.remote` (federation's ``/user/keys/query`` and
``/user/keys/claim``) at each request, not cached: a server that cannot be
reached is reported in ``failures``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from lowband.gateway.matrix.errors import MatrixError, bad_json, invalid_param
from lowband.gateway.matrix.signing import SignatureError, decode_base64, verify_json
from lowband.gateway.store.interfaces import OneTimeKeyConflict, Store, TooManyOneTimeKeys

#: Largest key object (a device's keys, a one-time key, a cross-signing key), as compact JSON.
MAX_KEY_BYTES = 8 * 1024
#: One-time keys one upload may carry, and one device may hold unclaimed.
MAX_OTKS_PER_UPLOAD = 200
MAX_OTKS_PER_DEVICE = 1000
#: Users one query or claim may name, and (user, device) pairs in all.
MAX_USERS_PER_REQUEST = 1000
MAX_DEVICES_PER_REQUEST = 10_000
_USAGES = ("master", "self_signing", "user_signing")


def _too_many(what: str, limit: int) -> MatrixError:
    return MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {limit} {what} per request")


def _bounded(value: Any, what: str) -> None:
    if len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise MatrixError(400, "M_TOO_LARGE", f"{what} is larger than {MAX_KEY_BYTES} bytes")


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad_json(f"{what} must be an object of strings")
    return value


def _ed25519(keys: dict[str, str], key_id: str, what: str) -> bytes:
    try:
        raw = decode_base64(keys[key_id])
    except (KeyError, ValueError):
        raise bad_json(f"{what} has no usable {key_id}") from None
    if len(raw) != 32:
        raise bad_json(f"{what}: {key_id} is not an ed25519 public key")
    return raw


def _signed_by(obj: dict[str, Any], user_id: str, key_id: str, public: bytes, what: str) -> None:
    try:
        verify_json(obj, user_id, key_id, public)
    except SignatureError as exc:
        raise MatrixError(400, "M_INVALID_SIGNATURE", f"{what}: {exc}") from None


class RemoteKeys(Protocol):
    """What federation does for E2EE (set on :attr:`DeviceKeys.remote` by the federation component)."""

    async def query(self, server: str, device_keys: dict[str, list[str]]) -> dict[str, Any]:
        """Ask ``server`` for its users' keys (``/user/keys/query``); its checked answer. MatrixError on failure."""
        ...

    async def claim(self, server: str, one_time_keys: dict[str, dict[str, str]]) -> dict[str, Any]:
        """Claim keys of ``server``'s devices (``/user/keys/claim``); its checked answer. MatrixError on failure."""
        ...

    def local_keys_changed(self, user_id: str) -> None:
        """A local user's devices or cross-signing keys changed: tell the servers sharing a room with them."""
        ...


class DeviceKeys:
    """Key upload, query, claim and changes, on the store's E2EE tables; other servers' users through ``remote``."""

    def __init__(self, store: Store, server_name: str, notify: Callable[[], None]) -> None:
        self.store = store
        self.server_name = server_name
        self.notify = notify
        #: federation's side, when federation runs (None: other servers' users are reported in ``failures``)
        self.remote: RemoteKeys | None = None

    def changed(self, user_id: str) -> None:
        """A local user's device list changed (already recorded in the store): wake syncs, tell other servers."""
        self.notify()
        if self.remote is not None:
            self.remote.local_keys_changed(user_id)

    def is_local(self, user_id: str) -> bool:
        """Whether ``user_id`` belongs to this server."""
        return user_id.partition(":")[2] == self.server_name

    # --------------------------------------------------------------- upload

    async def upload(self, user_id: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/upload: device keys, one-time keys, fallback keys; the one-time key counts."""
        device_keys = body.get("device_keys")
        if device_keys is not None:
            self._check_device_keys(user_id, device_id, device_keys)
        otks = self._key_list(body.get("one_time_keys"), "one_time_keys", MAX_OTKS_PER_UPLOAD)
        fallback_doc = body.get("fallback_keys", body.get("org.matrix.msc2732.fallback_keys"))
        fallbacks = self._key_list(fallback_doc, "fallback_keys", 10)
        if len({algorithm for algorithm, _, _ in fallbacks}) != len(fallbacks):
            raise invalid_param("one fallback key per algorithm")
        if otks:
            try:
                await self.store.e2ee.add_one_time_keys(user_id, device_id, otks, MAX_OTKS_PER_DEVICE)
            except OneTimeKeyConflict as exc:
                raise invalid_param(str(exc)) from None
            except TooManyOneTimeKeys as exc:
                raise MatrixError(400, "M_LIMIT_EXCEEDED", str(exc)) from None
        if fallbacks:
            await self.store.e2ee.set_fallback_keys(user_id, device_id, fallbacks)
        if device_keys is not None and await self.store.e2ee.set_device_keys(user_id, device_id, device_keys):
            self.changed(user_id)
        counts = self.store.e2ee.one_time_key_counts(user_id, device_id)
        counts.setdefault("signed_curve25519", 0)
        return {"one_time_key_counts": counts}

    def _check_device_keys(self, user_id: str, device_id: str, keys: Any) -> None:
        if not isinstance(keys, dict):
            raise bad_json("device_keys must be an object")
        _bounded(keys, "device_keys")
        if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            raise invalid_param("device_keys are for another user or device")
        algorithms = keys.get("algorithms")
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise bad_json("device_keys.algorithms must be a list of strings")
        key_map = _str_map(keys.get("keys"), "device_keys.keys")
        signing_key = _ed25519(key_map, f"ed25519:{device_id}", "device_keys")
        _signed_by(keys, user_id, f"ed25519:{device_id}", signing_key, "device_keys")

    @staticmethod
    def _key_list(doc: Any, what: str, limit: int) -> list[tuple[str, str, Any]]:
        """``{"algorithm:key_id": key}`` → [(algorithm, key_id, key)], checked and bounded."""
        if doc is None:
            return []
        if not isinstance(doc, dict):
            raise bad_json(f"{what} must be an object")
        if len(doc) > limit:
            raise _too_many(what, limit)
        keys = []
        for name, key in doc.items():
            algorithm, sep, key_id = name.partition(":")
            if not sep or not algorithm or not key_id or len(name) > 255:
                raise invalid_param(f"{what}: {name[:80]!r} is not ALGORITHM:KEY_ID")
            if not isinstance(key, (str, dict)):
                raise bad_json(f"{what}: {name[:80]!r} must be a string or an object")
            _bounded(key, f"{what} {name[:80]!r}")
            keys.append((algorithm, key_id, key))
        return keys

    # ---------------------------------------------------------------- query

    async def query(self, requester: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/query: device keys and cross-signing keys of the users asked for, here and on other servers."""
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict):
            raise bad_json("device_keys must be an object")
        if len(wanted) > MAX_USERS_PER_REQUEST:
            raise _too_many("users", MAX_USERS_PER_REQUEST)
        devices_asked = 0
        remote: dict[str, dict[str, list[str]]] = {}
        result: dict[str, Any] = {"device_keys": {}, "failures": {}, "master_keys": {}, "self_signing_keys": {},
                                  "user_signing_keys": {}}  # fmt: skip
        for user_id, device_ids in wanted.items():
            if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
                raise bad_json(f"device_keys.{user_id[:80]} must be a list of device IDs")
            devices_asked += len(device_ids)
            if devices_asked > MAX_DEVICES_PER_REQUEST:
                raise _too_many("devices", MAX_DEVICES_PER_REQUEST)
            if not self.is_local(user_id):
                remote.setdefault(user_id.partition(":")[2] or user_id, {})[user_id] = device_ids
                continue
            result["device_keys"][user_id] = self.devices_of(user_id, device_ids or None)
            for usage, key in self.cross_signing_of(user_id, viewer=requester).items():
                if usage != "user_signing" or user_id == requester:
                    result[f"{usage}_keys"][user_id] = key
        answers = await asyncio.gather(*(self._ask(server, asked, "query") for server, asked in remote.items()))
        for server, answer in zip(remote, answers, strict=True):
            if "errcode" in answer:
                result["failures"][server] = answer
                continue
            for name in ("device_keys", "master_keys", "self_signing_keys"):
                result[name].update({u: v for u, v in answer.get(name, {}).items() if u in remote[server]})
        return result

    async def _ask(self, server: str, asked: Any, kind: str) -> dict[str, Any]:
        """One remote query or claim; a failure as the spec's ``failures`` entry."""
        if self.remote is None:
            return {"errcode": "M_UNRECOGNIZED", "error": "this gateway does not federate"}
        try:
            return await (self.remote.query(server, asked) if kind == "query" else self.remote.claim(server, asked))
        except MatrixError as exc:
            return {"errcode": exc.errcode, "error": exc.message}

    def devices_of(self, user_id: str, device_ids: list[str] | None) -> dict[str, Any]:
        """The user's devices' keys as ``keys/query`` shows them: signatures uploaded since merged, display name."""
        names = {d.device_id: d.display_name for d in self.store.user_devices(user_id)}
        devices = self.store.e2ee.device_keys(user_id, device_ids)
        for device_id, keys in devices.items():
            if device_id not in names:  # a device removed while its keys were being read
                continue
            self._merge_signatures(user_id, device_id, keys)
            keys["unsigned"] = {"device_display_name": names[device_id]} if names[device_id] else {}
        return {d: k for d, k in devices.items() if d in names}

    def cross_signing_of(self, user_id: str, viewer: str | None = None) -> dict[str, dict[str, Any]]:
        """The user's cross-signing keys by usage, with signatures uploaded since merged.

        With a ``viewer``, another user's signature of a key (who verified whom) is shown only to that signer:
        the spec's "signatures the user is allowed to see".
        """
        keys = self.store.e2ee.cross_signing_keys(user_id)
        for key in keys.values():
            public = next(iter(key.get("keys", {}).values()), None)
            if isinstance(public, str):
                self._merge_signatures(user_id, public, key, viewer)
        return keys

    def _merge_signatures(self, user_id: str, target: str, obj: dict[str, Any], viewer: str | None = None) -> None:
        extra = self.store.e2ee.signatures_for(user_id, target)
        if viewer is not None:
            extra = [e for e in extra if e[0] in (user_id, viewer)]
        if not extra:
            return
        signatures = obj.setdefault("signatures", {})
        if not isinstance(signatures, dict):
            return
        for signer, key_id, signature in extra:
            by_signer = signatures.setdefault(signer, {})
            if isinstance(by_signer, dict):
                by_signer[key_id] = signature

    # ---------------------------------------------------------------- claim

    async def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/claim: one key per device asked for, taken away."""
        wanted_doc = body.get("one_time_keys")
        if not isinstance(wanted_doc, dict):
            raise bad_json("one_time_keys must be an object")
        if len(wanted_doc) > MAX_USERS_PER_REQUEST:
            raise _too_many("users", MAX_USERS_PER_REQUEST)
        wanted: list[tuple[str, str, str]] = []
        remote: dict[str, dict[str, dict[str, str]]] = {}
        asked = 0
        for user_id, devices in wanted_doc.items():
            algorithms = _str_map(devices, f"one_time_keys.{user_id[:80]}")
            asked += len(algorithms)
            if asked > MAX_DEVICES_PER_REQUEST:
                raise _too_many("devices", MAX_DEVICES_PER_REQUEST)
            if not self.is_local(user_id):
                remote.setdefault(user_id.partition(":")[2] or user_id, {})[user_id] = algorithms
                continue
            wanted += [(user_id, device_id, algorithm) for device_id, algorithm in algorithms.items()]
        found = await self.store.e2ee.claim(wanted)
        keys: dict[str, dict[str, Any]] = {}
        for (user_id, device_id), (key_id, key) in found.items():
            keys.setdefault(user_id, {})[device_id] = {key_id: key}
        failures: dict[str, Any] = {}
        answers = await asyncio.gather(*(self._ask(server, asked, "claim") for server, asked in remote.items()))
        for server, answer in zip(remote, answers, strict=True):
            if "errcode" in answer:
                failures[server] = answer
                continue
            keys.update({u: v for u, v in answer.get("one_time_keys", {}).items() if u in remote[server]})
        return {"one_time_keys": keys, "failures": failures}

    # -------------------------------------------------------- cross-signing

    async def upload_cross_signing(self, user_id: str, body: dict[str, Any]) -> None:
        """POST /keys/device_signing/upload (the caller has checked user-interactive auth where needed)."""
        given = {usage: body[f"{usage}_key"] for usage in _USAGES if body.get(f"{usage}_key") is not None}
        if not given:
            raise MatrixError(400, "M_MISSING_PARAM", "no cross-signing key given")
        stored = self.store.e2ee.cross_signing_keys(user_id)
        for usage, key in given.items():
            self._check_cross_signing_key(user_id, usage, key)
        master = given.get("master") or stored.get("master")
        if master is None:
            raise MatrixError(400, "M_MISSING_PARAM", "a master key is needed first")
        master_id, master_public = self._only_key(master, "master_key")
        for usage in ("self_signing", "user_signing"):
            if usage in given:
                _signed_by(given[usage], user_id, master_id, master_public, f"{usage}_key")
        await self.store.e2ee.set_cross_signing_keys(user_id, given)
        self.changed(user_id)

    def has_cross_signing(self, user_id: str) -> bool:
        """Whether the user uploaded a master key (replacing it then needs user-interactive auth)."""
        return "master" in self.store.e2ee.cross_signing_keys(user_id)

    def _check_cross_signing_key(self, user_id: str, usage: str, key: Any) -> None:
        if not isinstance(key, dict):
            raise bad_json(f"{usage}_key must be an object")
        _bounded(key, f"{usage}_key")
        if key.get("user_id") != user_id:
            raise invalid_param(f"{usage}_key is for another user")
        usages = key.get("usage")
        if not isinstance(usages, list) or usage not in usages:
            raise invalid_param(f"{usage}_key.usage must include {usage!r}")
        self._only_key(key, f"{usage}_key")

    @staticmethod
    def _only_key(key: dict[str, Any], what: str) -> tuple[str, bytes]:
        keys = _str_map(key.get("keys"), f"{what}.keys")
        if len(keys) != 1:
            raise invalid_param(f"{what} must hold exactly one key")
        key_id = next(iter(keys))
        if not key_id.startswith("ed25519:") or key_id[8:] != keys[key_id]:
            raise invalid_param(f"{what}: the key ID must be ed25519:<the public key>")
        return key_id, _ed25519(keys, key_id, what)

    async def upload_signatures(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/signatures/upload: signatures of the user's devices and keys, and of others' master keys."""
        if len(body) > MAX_USERS_PER_REQUEST:
            raise _too_many("users", MAX_USERS_PER_REQUEST)
        mine = self.cross_signing_of(user_id)
        accepted: list[tuple[str, str, str, str, str]] = []
        failures: dict[str, dict[str, Any]] = {}
        count = 0
        for target_user, objects in body.items():
            if not isinstance(objects, dict):
                raise bad_json("each user's signatures must be an object")
            count += len(objects)
            if count > MAX_DEVICES_PER_REQUEST:
                raise _too_many("signed objects", MAX_DEVICES_PER_REQUEST)
            for target_key, signed in objects.items():
                try:
                    accepted += self._check_signed(user_id, mine, target_user, target_key, signed)
                except MatrixError as exc:
                    failures.setdefault(target_user, {})[target_key] = {"errcode": exc.errcode, "error": exc.message}
        await self.store.e2ee.add_signatures(accepted)
        for target in sorted({a[0] for a in accepted}):
            self.changed(target)
        return {"failures": failures}

    def _check_signed(self, user_id: str, mine: dict[str, dict[str, Any]], target_user: str, target_key: str,
                      signed: Any) -> list[tuple[str, str, str, str, str]]:  # fmt: skip
        """The new signatures by ``user_id`` on one object, each verified; MatrixError when none can be kept."""
        if not isinstance(signed, dict):
            raise bad_json("a signed object must be an object")
        _bounded(signed, "a signed object")
        if not self.is_local(target_user):
            raise MatrixError(400, "M_UNRECOGNIZED", "signatures of other servers' keys are not kept yet")
        stored = self.store.e2ee.device_keys(target_user, [target_key]).get(target_key)
        if stored is None:
            stored = next((k for k in self.cross_signing_of(target_user).values()
                           if target_key in k.get("keys", {}).values()), None)  # fmt: skip
        if stored is None:
            raise MatrixError(404, "M_NOT_FOUND", "no such device or key")
        strip = ("signatures", "unsigned")
        if {k: v for k, v in signed.items() if k not in strip} != {k: v for k, v in stored.items() if k not in strip}:
            raise invalid_param("the signed object differs from the stored one")
        # Who may sign what: the self-signing key signs the user's own devices, a device (or the master key)
        # signs the user's own master key, the user-signing key signs other users' master keys.
        signers: dict[str, bytes] = {}
        if target_user == user_id and "device_id" in stored:
            signers = dict([self._only_key(mine["self_signing"], "self_signing_key")]) if "self_signing" in mine else {}
        elif target_user == user_id:
            for device_id, keys in self.store.e2ee.device_keys(user_id).items():
                public = keys.get("keys", {}).get(f"ed25519:{device_id}")
                if isinstance(public, str):
                    signers[f"ed25519:{device_id}"] = decode_base64(public)
        elif "user_signing" in mine:
            signers = dict([self._only_key(mine["user_signing"], "user_signing_key")])
        given = signed.get("signatures", {}).get(user_id, {})
        if not isinstance(given, dict):
            raise bad_json("signatures must be an object")
        kept = []
        for key_id, signature in given.items():
            if key_id in signers and isinstance(signature, str):
                _signed_by({**stored, "signatures": {user_id: {key_id: signature}}}, user_id, key_id, signers[key_id],
                           "the signature")  # fmt: skip
                kept.append((target_user, target_key, user_id, key_id, signature))
        if not kept:
            raise MatrixError(400, "M_INVALID_SIGNATURE", "no signature by a key that may sign this object")
        return kept

    # -------------------------------------------------------------- changes

    def changes(self, user_id: str, since: int, upto: int) -> dict[str, list[str]]:
        """GET /keys/changes: users sharing a room whose devices changed in (since, upto], and those who left."""
        changed, left = device_list_delta(self.store, user_id, since, upto)
        return {"changed": sorted(changed), "left": sorted(left)}


def device_list_delta(store: Store, user_id: str, since: int, upto: int) -> tuple[set[str], set[str]]:
    """(changed, left) for ``user_id`` between two stream positions.

    changed: users sharing a room now whose device list changed, users who joined a shared room, every member
    of a room the user joined. left: users who shared a room before and share none now.
    """
    changed_lists = set(store.e2ee.device_lists_changed(since, upto))
    mine = store.rooms_for_user(user_id)
    moved = [room for room, _, stream, _ in mine if since < stream <= upto]
    joined_rooms = [room for room, membership, _, _ in mine if membership == "join"]
    member_moves = store.memberships_in(joined_rooms, since, upto) if joined_rooms else []
    if not changed_lists and not moved and not member_moves:
        return set(), set()
    sharing = store.users_sharing_rooms(user_id)
    changed = {u for u in changed_lists if u in sharing or u == user_id}
    candidates_left: set[str] = set()
    for _, other, membership in member_moves:
        if membership == "join":
            changed.add(other)
        elif membership in ("leave", "ban"):
            candidates_left.add(other)
    if moved:
        floor = -(1 << 62)
        for _, other, membership in store.memberships_in(moved, floor, upto):
            if membership == "join":
                (changed if other in sharing else candidates_left).add(other)
    left = {u for u in candidates_left if u not in sharing and u != user_id}
    if user_id not in changed_lists:  # the user's own entry is about their own devices only
        changed.discard(user_id)
    return changed - left, left
