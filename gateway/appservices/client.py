"""Requests from the gateway to its bridges (``/_matrix/app/v1/...``), authenticated with their ``hs_token``.

One aiohttp session for all bridges, made in the running loop and closed at stop. Every request has a
timeout and a bounded answer; failures are :class:`BridgeUnreachable` (connection, TLS, timeout) or
:class:`BridgeError` (an HTTP status other than 2xx, with its body's start), never a bare exception.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from lowband.gateway.appservices.registration import AppService
from lowband.gateway.matrix.errors import MatrixError

#: the largest answer read from a bridge
MAX_ANSWER_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0


class BridgeUnreachable(Exception):
    """The bridge could not be reached or did not answer in time (``timed_out`` says which)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class BridgeError(Exception):
    """The bridge answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class BridgeClient:
    """Sends requests to registered bridges."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=True)
        return self._session

    async def close(self) -> None:
        """Close the connections (at stop)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, bridge: AppService, method: str, path: str, body: Any = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:  # fmt: skip
        """One request to ``bridge``'s ``url`` + ``path``; its JSON answer (None when empty).

        BridgeUnreachable, BridgeError; MatrixError 400 M_URL_NOT_SET when the bridge has no URL.
        """
        if bridge.url is None:
            raise MatrixError(400, "M_URL_NOT_SET", f"the application service {bridge.id!r} has no url")
        headers = {"Authorization": f"Bearer {bridge.hs_token}"}
        data = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().request(method, bridge.url + path, data=data, headers=headers) as response:
                    raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                    status = response.status
        except TimeoutError:
            raise BridgeUnreachable(f"no answer within {timeout_s:g} s", timed_out=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BridgeUnreachable(f"{type(exc).__name__}: {exc}") from None
        text = raw[:MAX_ANSWER_BYTES].decode("utf-8", "replace")
        if not 200 <= status < 300:
            raise BridgeError(status, text)
        if len(raw) > MAX_ANSWER_BYTES:
            raise BridgeError(status, f"answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            return json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):  # nesting past the recursion limit is not an answer we take either
            raise BridgeError(status, "answer is not JSON") from None

    async def ping(self, bridge: AppService, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping; the round trip in ms. MatrixError with the spec's codes on failure."""
        started = time.monotonic()
        body = {} if transaction_id is None else {"transaction_id": transaction_id}
        try:
            await self.request(bridge, "POST", "/_matrix/app/v1/ping", body, timeout_s=15.0)
        except BridgeUnreachable as exc:
            if exc.timed_out:
                raise MatrixError(504, "M_CONNECTION_TIMEOUT", f"the application service did not answer: {exc}") from None
            raise MatrixError(502, "M_CONNECTION_FAILED", f"cannot reach the application service: {exc}") from None
        except BridgeError as exc:
            refused = MatrixError(502, "M_BAD_STATUS", f"the application service answered {exc.status}")
            refused.extra.update({"status": exc.status, "body": exc.body[:1000]})  # the spec's field names
            raise refused from None
        return int((time.monotonic() - started) * 1000)


def path_segment(value: str) -> str:
    """``value`` quoted as one URL path segment."""
    return quote(value, safe="")
