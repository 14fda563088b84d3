"""User-interactive authentication (UIA): one implementation for every endpoint that asks for it.

Registration, password change, deactivation, device deletion and replacing cross-signing keys all come here.

Rules:

* a request without ``auth`` starts a session and is answered 401 with the flows, the session ID and no
  ``errcode``; the session remembers what it was started for (a *purpose* such as ``register`` or
  ``delete_device:ABC``), for whom (a user ID, or None before registration) and the request's parameters
  (those the endpoint names, each of bounded size);
* ``auth`` naming a session continues it. A session serves only its own purpose and user (403 otherwise);
  the parameters of its first request win, a later request only adds keys the first lacked (clients such as
  Element send the username and password once);
* ``auth`` without a session starts one and tries the stage at once (bots send the password up front); an
  unknown or expired session is answered 401 with a fresh one and ``M_UNKNOWN``;
* a stage passed is remembered; a failed one is answered 401 with ``errcode`` and what was completed. Stages
  run in the order of a flow; a flow whose stages are all completed authorises the operation;
* the operation's answer is kept in its session (:attr:`Session.answer`, under :attr:`Session.lock`): the
  same session completed again gets the same answer and the operation never runs twice;
* at most :data:`MAX_SESSIONS` sessions, each living :data:`SESSION_LIFETIME_S` from its start; when full,
  the oldest goes first. Sessions live in memory: a restart forgets them (clients start again).

:class:`UIASessions` is the session table (no I/O, ``now`` passed in); :class:`UserInteractiveAuth` adds the
stage checks, which read the account and hash the password off the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.homeserver.accounts import check_password
from lowband.gateway.homeserver.ratelimit import LoginThrottle
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden
from lowband.gateway.store.interfaces import AccountStore

PASSWORD = "m.login.password"
DUMMY = "m.login.dummy"
REGISTRATION_TOKEN = "m.login.registration_token"

#: sessions remembered at once (the oldest is forgotten first)
MAX_SESSIONS = 10_000
#: how long a session lives from its start (Element's registration dialog takes a minute or two)
SESSION_LIFETIME_S = 15 * 60.0
#: passwords longer than this never match (registration and password change refuse them)
_MAX_PASSWORD_CHARS = 512

Flows = Sequence[Sequence[str]]


@dataclass
class Session:
    """One user-interactive auth session."""

    session_id: str
    purpose: str
    user_id: str | None
    params: dict[str, Any]
    started: float
    completed: list[str] = field(default_factory=list)
    #: the operation's answer once it ran (set by the endpoint under :attr:`lock`)
    answer: Any = None
    #: held while the operation runs, so two completions at once run it once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UIASessions:
    """The session table: bounded in number and lifetime; no I/O, the caller passes ``now``."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, lifetime_s: float = SESSION_LIFETIME_S) -> None:
        self.max_sessions = max_sessions
        self.lifetime_s = lifetime_s
        self._sessions: dict[str, Session] = {}  # in start order: the first is the oldest

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, purpose: str, user_id: str | None, params: dict[str, Any], now: float) -> Session:
        """A new session (forgetting expired ones, then the oldest while full)."""
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        session = Session(secrets.token_urlsafe(18), purpose, user_id, dict(params), now)
        self._sessions[session.session_id] = session
        return session

    def find(self, session_id: str, now: float) -> Session | None:
        """The live session with this ID, or None (unknown or expired)."""
        self._expire(now)
        return self._sessions.get(session_id)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.started < self.lifetime_s:
                return
            del self._sessions[oldest.session_id]


def challenge(session: Session, flows: Flows, errcode: str = "", error: str = "") -> MatrixError:
    """The 401 answer: flows, params, session, completed stages, and the error of a failed attempt if any.

    An empty ``errcode`` leaves ``errcode``/``error`` out of the body (the HTTP layer does so), as the spec
    shows for a request that has not tried a stage yet.
    """
    extra: dict[str, Any] = {"flows": [{"stages": list(f)} for f in flows], "params": {},
                             "session": session.session_id}  # fmt: skip
    if session.completed:
        extra["completed"] = list(session.completed)
    return MatrixError(401, errcode, error or "authentication required", **extra)


def flow_complete(flows: Flows, completed: Sequence[str]) -> bool:
    """Whether the stages completed, in order, make up one of the flows."""
    return any(list(f) == list(completed[: len(f)]) and len(f) == len(completed) for f in flows)


def _next_allowed(flows: Flows, completed: Sequence[str], stage: str) -> bool:
    """Whether ``stage`` comes next after ``completed`` in some flow."""
    n = len(completed)
    return any(list(f[:n]) == list(completed) and len(f) > n and f[n] == stage for f in flows)


class UserInteractiveAuth:
    """UIA for a gateway: the session table and the stage checks (password, dummy, registration token)."""

    def __init__(self, store: AccountStore, throttle: LoginThrottle | None = None,
                 registration_tokens: Sequence[str] = (), clock: Callable[[], float] = time.monotonic,
                 sessions: UIASessions | None = None) -> None:  # fmt: skip
        self.store = store
        self.throttle = throttle
        self.registration_tokens = tuple(registration_tokens)
        self.clock = clock
        self.sessions = sessions or UIASessions()

    async def require(self, purpose: str, body: dict[str, Any], flows: Flows, user_id: str | None = None,
                      keep: Sequence[str] = ()) -> Session:  # fmt: skip
        """The session once one of ``flows`` is complete for ``purpose`` (and ``user_id``); otherwise raises.

        ``keep`` names the body's parameters the session remembers (the caller has bounded their sizes): a
        session holds a few small values, never a whole body, however many sessions a flood starts.

        Raises the 401 challenge (see :func:`challenge`) until then, 403 M_FORBIDDEN for a session started for
        another purpose or user, 400 M_BAD_JSON for a malformed ``auth``, 429 while the account's failed
        passwords make it wait. A completed session is returned again without checking any stage: the caller
        answers with :attr:`Session.answer` when it is set.
        """
        now = self.clock()
        auth = body.get("auth")
        params = {k: body[k] for k in keep if k in body}
        if auth is None:
            raise challenge(self.sessions.start(purpose, user_id, params, now), flows)
        if not isinstance(auth, dict):
            raise bad_json("'auth' must be an object")
        session_id = auth.get("session")
        if session_id is None:
            session = self.sessions.start(purpose, user_id, params, now)
        elif not isinstance(session_id, str) or len(session_id) > 255:
            raise bad_json("'auth.session' must be a session ID")
        else:
            found = self.sessions.find(session_id, now)
            if found is None:
                raise challenge(self.sessions.start(purpose, user_id, params, now), flows, "M_UNKNOWN",
                                "unknown or expired session: start again with this one")  # fmt: skip
            session = found
        if session.purpose != purpose or session.user_id != user_id:
            raise forbidden("this session was started for another request")
        for key, value in params.items():  # the first request's parameters win
            session.params.setdefault(key, value)
        if flow_complete(flows, session.completed):
            return session
        stage = auth.get("type")
        if stage is None:  # asking where the session stands
            raise challenge(session, flows)
        if not isinstance(stage, str) or not _next_allowed(flows, session.completed, stage):
            raise challenge(session, flows, "M_UNRECOGNIZED", f"{str(stage)[:64]!r} is not a stage this needs now")
        await self._check_stage(stage, auth, session, flows)
        session.completed.append(stage)
        if flow_complete(flows, session.completed):
            return session
        raise challenge(session, flows)

    async def _check_stage(self, stage: str, auth: dict[str, Any], session: Session, flows: Flows) -> None:
        if stage == DUMMY:
            return
        if stage == REGISTRATION_TOKEN:
            token = auth.get("token")
            if not isinstance(token, str) or not self.token_valid(token):
                raise challenge(session, flows, "M_FORBIDDEN", "invalid registration token")
            return
        if stage == PASSWORD:
            if not await self._password_matches(auth, session.user_id):
                raise challenge(session, flows, "M_FORBIDDEN", "invalid password")
            return
        raise challenge(session, flows, "M_UNRECOGNIZED", f"{stage[:64]!r} is not supported")

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` is one of the configured registration tokens (compared in constant time)."""
        found = False
        for known in self.registration_tokens:
            found = hmac.compare_digest(token.encode("utf-8", "surrogatepass"), known.encode()) or found
        return found

    async def _password_matches(self, auth: dict[str, Any], user_id: str | None) -> bool:
        if user_id is None:
            return False
        identifier = auth.get("identifier")
        user = identifier.get("user") if isinstance(identifier, dict) else auth.get("user")
        if user not in (None, user_id, user_id[1:].split(":")[0]):
            return False  # the password of the requester only, whoever else is named
        password = auth.get("password")
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD_CHARS:
            return False
        if self.throttle is not None:
            self.throttle.check(user_id)
        row = self.store.get_user(user_id)
        good = row is not None and await asyncio.to_thread(check_password, password, row["password_hash"])
        if self.throttle is not None:
            (self.throttle.succeeded if good else self.throttle.failed)(user_id)
        return bool(good)
