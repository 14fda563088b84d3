"""Push rules, notifications and pushers: ``/pushrules/...``, ``/notifications``, ``/pushers``, ``/pushers/set``
(behaviour and bounds: docs/client-api.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, rate_limit, services
from lowband.gateway.homeserver import push_rules
from lowband.gateway.homeserver.notifications import is_read, push_of
from lowband.gateway.homeserver.push_destination import AddressPolicy, PushURLError, check_push_url
from lowband.gateway.homeserver.pushers import MAX_PUSHERS_PER_USER, NOTIFY_PATH
from lowband.gateway.matrix.errors import MatrixError, invalid_param
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import PusherRow, TooManyPushers

#: GET /notifications: default and largest page
DEFAULT_NOTIFICATIONS = 20
MAX_NOTIFICATIONS = 100
#: pusher fields: the longest string taken, and the largest ``data`` object (as JSON)
MAX_FIELD = 512
MAX_DATA_KEYS = 20


# ------------------------------------------------------------------ push rules


async def get_all_rules(request: web.Request) -> web.Response:
    """GET /pushrules/ (and /pushrules/global/): the user's whole ruleset."""
    requester = authenticate(request)
    book = push_of(services(request)).book
    rules = push_rules.ruleset(requester.user_id, book.document(requester.user_id))
    if "scope" in request.match_info:
        push_rules.check_scope_kind(request.match_info["scope"], "override")
        return ok(rules)
    return ok({"global": rules})


def _path(request: web.Request) -> tuple[str, str]:
    kind = request.match_info["kind"]
    push_rules.check_scope_kind(request.match_info["scope"], kind)
    return kind, request.match_info["rule_id"]


async def get_rule(request: web.Request) -> web.Response:
    """GET /pushrules/global/{kind}/{ruleId}; 404 M_NOT_FOUND when there is no such rule."""
    requester = authenticate(request)
    kind, rule_id = _path(request)
    book = push_of(services(request)).book
    return ok(push_rules.find_rule(requester.user_id, book.document(requester.user_id), kind, rule_id))


async def put_rule(request: web.Request) -> web.Response:
    """PUT /pushrules/global/{kind}/{ruleId}[?before=|after=]: add or replace one of the user's rules."""
    requester = authenticate(request)
    rate_limit(request, requester)
    kind, rule_id = _path(request)
    body = await json_body(request)
    rule = push_rules.check_new_rule(kind, rule_id, body)
    before, after = request.query.get("before"), request.query.get("after")
    user_id = requester.user_id
    await push_of(services(request)).book.edit(
        user_id, lambda doc: push_rules.put_rule(user_id, doc, kind, rule, before, after)
    )
    return ok()


async def delete_rule(request: web.Request) -> web.Response:
    """DELETE /pushrules/global/{kind}/{ruleId}: 404 for no such rule, 400 M_UNKNOWN for a server-default one."""
    requester = authenticate(request)
    rate_limit(request, requester)
    kind, rule_id = _path(request)
    user_id = requester.user_id
    await push_of(services(request)).book.edit(user_id, lambda doc: push_rules.delete_rule(user_id, doc, kind, rule_id))
    return ok()


async def get_attribute(request: web.Request) -> web.Response:
    """GET /pushrules/global/{kind}/{ruleId}/enabled|actions."""
    requester = authenticate(request)
    kind, rule_id = _path(request)
    name = request.match_info["attr"]
    book = push_of(services(request)).book
    rule = push_rules.find_rule(requester.user_id, book.document(requester.user_id), kind, rule_id)
    return ok({name: rule[name]})


async def put_attribute(request: web.Request) -> web.Response:
    """PUT /pushrules/global/{kind}/{ruleId}/enabled {"enabled": bool} | /actions {"actions": [...]}."""
    requester = authenticate(request)
    rate_limit(request, requester)
    kind, rule_id = _path(request)
    name = request.match_info["attr"]
    body = await json_body(request)
    if name not in body:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{name}'")
    value: Any = body[name]
    if name == "enabled":
        if not isinstance(value, bool):
            raise invalid_param("'enabled' must be true or false")
    else:
        value = push_rules.check_actions(value)
    user_id = requester.user_id
    await push_of(services(request)).book.edit(
        user_id, lambda doc: push_rules.set_attribute(user_id, doc, kind, rule_id, name, value)
    )
    return ok()


# ------------------------------------------------------------------ notifications


async def get_notifications(request: web.Request) -> web.Response:
    """GET /notifications?from=&limit=&only=highlight: the user's notifications, newest first."""
    requester = authenticate(request)
    svc = services(request)
    raw_from = request.query.get("from")
    below = parse_digits(raw_from) if raw_from else None
    if raw_from and below is None:
        raise invalid_param("'from' is not a token this server gave")
    raw_limit = request.query.get("limit")
    limit = DEFAULT_NOTIFICATIONS if raw_limit is None else parse_digits(raw_limit)
    if limit is None or limit < 1:
        raise invalid_param("'limit' must be a positive integer")
    limit = min(limit, MAX_NOTIFICATIONS)
    only = request.query.get("only")
    if only not in (None, "", "highlight"):
        raise invalid_param("'only' may only be 'highlight'")
    rows = svc.store.push.notifications(requester.user_id, below, limit + 1, only == "highlight")
    read: dict[str, dict[str, int]] = {}  # per room: the user's receipt positions, by thread
    out = []
    for row in rows[:limit]:
        stored = svc.store.get_event(row.event_id)
        if stored is None:
            continue
        if row.room_id not in read:
            read[row.room_id] = svc.store.read_positions(row.room_id, requester.user_id)
        out.append({"actions": row.actions, "event": svc.sync.client_event(stored),
                    "read": is_read(read[row.room_id], row.stream, row.thread_id),
                    "room_id": row.room_id, "ts": row.ts})  # fmt: skip
    body: dict[str, Any] = {"notifications": out}
    if len(rows) > limit:
        body["next_token"] = str(rows[limit - 1].stream)
    return ok(body)


# ------------------------------------------------------------------ pushers


def _public(pusher: PusherRow) -> dict[str, Any]:
    return {k: v for k, v in pusher.body.items() if k != "pushkey_ts"}


async def get_pushers(request: web.Request) -> web.Response:
    """GET /pushers: the user's pushers."""
    requester = authenticate(request)
    return ok({"pushers": [_public(p) for p in services(request).store.push.pushers(requester.user_id)]})


def _field(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"missing '{name}'")
        return None
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise invalid_param(f"'{name}' must be a string of at most {MAX_FIELD} characters")
    return value


async def post_pushers_set(request: web.Request) -> web.Response:
    """POST /pushers/set: add, replace (``append`` false also removes other users' pushers with the same app_id
    and pushkey) or, with ``kind: null``, delete a pusher. Only ``http`` pushers are taken."""
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    body = await json_body(request)
    pushkey, app_id = _field(body, "pushkey"), _field(body, "app_id")
    assert pushkey is not None and app_id is not None
    if len(app_id) > 64:
        raise invalid_param("'app_id' is at most 64 characters")
    runtime = push_of(svc)
    if "kind" not in body:
        raise MatrixError(400, "M_MISSING_PARAM", "missing 'kind'")
    kind = body["kind"]
    if kind is None:
        await svc.store.push.delete_pusher(requester.user_id, app_id, pushkey)
        if runtime.delivery is not None:
            runtime.delivery.reload()
        return ok()
    if kind == "email":  # refused rather than kept: a stored email pusher would never deliver (docs/client-api.md)
        raise invalid_param("email pushers are not supported: this server sends no mail and keeps no email "
                            "addresses; set an http pusher (a push gateway) instead")
    if kind != "http":
        raise invalid_param("'kind' must be 'http' (or null to delete)")
    fields = {name: _field(body, name) for name in ("app_display_name", "device_display_name", "lang")}
    profile_tag = _field(body, "profile_tag", required=False)
    data = body.get("data")
    if not isinstance(data, dict):
        raise MatrixError(400, "M_MISSING_PARAM", "missing 'data' object")
    if len(data) > MAX_DATA_KEYS or len(str(data)) > 4 * MAX_FIELD:
        raise invalid_param("'data' is too large")
    url = data.get("url")
    if not isinstance(url, str):
        raise invalid_param("an http pusher needs 'data.url'")
    policy = runtime.delivery.policy if runtime.delivery is not None else AddressPolicy(svc.config.push)
    try:  # scheme, user info and host (docs/security.md "Push gateway addresses")
        check_push_url(url, policy)
    except PushURLError as exc:
        raise invalid_param(str(exc)) from None
    if urlsplit(url).path != NOTIFY_PATH:
        raise invalid_param(f"'data.url' must be an http(s) URL with the path {NOTIFY_PATH}")
    if data.get("format") not in (None, "event_id_only"):
        raise invalid_param("'data.format' may only be 'event_id_only'")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise invalid_param("'append' must be true or false")
    now_ms = svc.rooms.now_ms()
    public: dict[str, Any] = {"pushkey": pushkey, "kind": kind, "app_id": app_id, **fields, "data": dict(data),
                              "pushkey_ts": now_ms // 1000}  # fmt: skip
    if profile_tag is not None:
        public["profile_tag"] = profile_tag
    cursor = runtime.delivery.start_position() if runtime.delivery is not None else svc.store.persisted
    row = PusherRow(requester.user_id, app_id, pushkey, kind, public, requester.device_id, cursor)
    try:
        await svc.store.push.set_pusher(row, append=append, limit=MAX_PUSHERS_PER_USER, ts=now_ms)
    except TooManyPushers:
        raise invalid_param(f"a user may have at most {MAX_PUSHERS_PER_USER} pushers") from None
    if runtime.delivery is not None:
        runtime.delivery.reload(set_again=row)
    return ok()


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    rule = CLIENT + "/pushrules/{scope}/{kind}/{rule_id}"
    attr = rule + "/{attr:(?:enabled|actions)}"
    return [
        web.get(CLIENT + "/pushrules/", get_all_rules),
        web.get(CLIENT + "/pushrules", get_all_rules),
        web.get(CLIENT + "/pushrules/{scope}/", get_all_rules),
        web.get(rule, get_rule),
        web.put(rule, put_rule),
        web.delete(rule, delete_rule),
        web.get(attr, get_attribute),
        web.put(attr, put_attribute),
        web.get(CLIENT + "/notifications", get_notifications),
        web.get(CLIENT + "/pushers", get_pushers),
        web.post(CLIENT + "/pushers/set", post_pushers_set),
    ]
