"""Push rules: the spec's server-default rules, a user's own rules, and the edits the client API makes.

Rules:

* the server-default rules are those of the spec (v1.11, the newest version
  ``/versions`` advertises; they do not depend on the room version), made
  for each user (``.m.rule.invite_for_me`` names the user,
  ``.m.rule.contains_user_name`` matches the localpart). Two unstable
  duplicates matrix-js-sdk still expects are served as well
  (``.org.matrix.msc3786.rule.room.server_acl``,
  ``.org.matrix.msc3914.rule.room.call``), so it adds none of its own and
  warns about none missing; the second has a condition kind the spec lacks
  and so never matches here;
* a user's state is one JSON document: ``rules`` (their own rules, per kind,
  most important first) and ``defaults`` (what they changed of a
  server-default rule: ``enabled``, ``actions``). Server-default rules cannot
  be added, moved or deleted, only enabled, disabled or given other actions;
* within a kind a user's rules come before the server-default ones, except
  ``.m.rule.master``, which comes first of all;
* every write is checked here and raises the spec's error (``MatrixError``);
  a user holds at most :data:`MAX_USER_RULES` rules, each a bounded size.
"""

from __future__ import annotations

import copy
from typing import Any

from lowband.gateway.matrix.errors import MatrixError, invalid_param, not_found
from lowband.gateway.matrix.identifiers import is_room_id, is_user_id

__all__ = ["KINDS", "MAX_USER_RULES", "default_rules", "ordered_rules", "ruleset"]

KINDS = ("override", "content", "room", "sender", "underride")
MAX_USER_RULES = 200
MAX_RULE_ID = 255
MAX_CONDITIONS = 20
MAX_ACTIONS = 20
MAX_PATTERN = 1000
_ACTION_WORDS = ("notify", "dont_notify", "coalesce")

_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True) -> dict[str, Any]:
    return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions, "actions": actions}


def default_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The server-default rules for ``user_id``, per kind, in the spec's order (fresh copies)."""
    localpart = user_id[1:].split(":", 1)[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [_match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", user_id)],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", _SOUND, _HIGHLIGHT],
        ),
        _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", _SOUND, _HIGHLIGHT]),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [{"kind": "sender_notification_permission", "key": "room"}, _match("content.body", "@room")],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")], ["notify", _HIGHLIGHT]
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
        _rule(
            ".org.matrix.msc3786.rule.room.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
            [],
        ),
        _rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        }
    ]
    underride = [
        _rule(".m.rule.call", [_match("type", "m.call.invite")], ["notify", {"set_tweak": "sound", "value": "ring"}]),
        _rule(
            ".org.matrix.msc3914.rule.room.call",
            [_match("type", "org.matrix.msc3401.call"), {"kind": "call_started"}],
            ["notify", _SOUND],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


def _with_defaults_changed(rules: list[dict[str, Any]], doc: dict[str, Any]) -> list[dict[str, Any]]:
    changed = doc.get("defaults", {})
    for rule in rules:
        edit = changed.get(rule["rule_id"])
        if edit:
            if "enabled" in edit:
                rule["enabled"] = edit["enabled"]
            if "actions" in edit:
                rule["actions"] = copy.deepcopy(edit["actions"])
    return rules


def ruleset(user_id: str, doc: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The user's whole global ruleset as ``GET /pushrules/`` shows it: per kind, most important first."""
    doc = doc or {}
    defaults = default_rules(user_id)
    own = doc.get("rules", {})
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        mine = [dict(copy.deepcopy(r), default=False) for r in own.get(kind, [])]
        server = _with_defaults_changed(defaults[kind], doc)
        if kind == "override":
            out[kind] = [server[0], *mine, *server[1:]]  # .m.rule.master first of all
        else:
            out[kind] = [*mine, *server]
    return out


def ordered_rules(user_id: str, doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every rule of the user in evaluation order, content/room/sender rules given their implied conditions."""
    out: list[dict[str, Any]] = []
    for kind, rules in ruleset(user_id, doc).items():
        for rule in rules:
            if kind == "content":
                rule = dict(rule, conditions=[_match("content.body", str(rule.get("pattern", "")))])
            elif kind == "room":
                rule = dict(rule, conditions=[_match("room_id", rule["rule_id"])])
            elif kind == "sender":
                rule = dict(rule, conditions=[_match("sender", rule["rule_id"])])
            out.append(rule)
    return out


# ------------------------------------------------------------------ checks


def check_scope_kind(scope: str, kind: str) -> None:
    """400 M_INVALID_PARAM unless ``scope`` is ``global`` and ``kind`` one of :data:`KINDS`."""
    if scope != "global":
        raise invalid_param("the only push rule scope is 'global'")
    if kind not in KINDS:
        raise invalid_param(f"push rule kind must be one of {', '.join(KINDS)}")


def find_rule(user_id: str, doc: dict[str, Any] | None, kind: str, rule_id: str) -> dict[str, Any]:
    """One rule as ``GET /pushrules/global/{kind}/{ruleId}`` shows it; 404 M_NOT_FOUND when there is none."""
    for rule in ruleset(user_id, doc)[kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise not_found("no such push rule")


def check_actions(actions: Any) -> list[Any]:
    """A valid ``actions`` list (strings of the spec, or ``set_tweak`` objects); 400 M_INVALID_PARAM otherwise."""
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        raise invalid_param(f"actions must be a list of at most {MAX_ACTIONS} actions")
    for action in actions:
        if isinstance(action, str):
            if action not in _ACTION_WORDS:
                raise invalid_param(f"unknown push rule action {action[:40]!r}")
        elif isinstance(action, dict):
            tweak = action.get("set_tweak")
            if not isinstance(tweak, str) or not tweak or len(tweak) > 100:
                raise invalid_param("an object action needs a 'set_tweak' string")
            if tweak == "highlight" and not isinstance(action.get("value", True), bool):
                raise invalid_param("the highlight tweak's value must be true or false")
        else:
            raise invalid_param("an action is a string or an object")
    return copy.deepcopy(actions)


def _check_condition(condition: Any) -> None:
    if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
        raise invalid_param("a condition is an object with a 'kind'")
    kind = condition["kind"]
    if kind == "event_match":
        if not isinstance(condition.get("key"), str) or not isinstance(condition.get("pattern"), str):
            raise invalid_param("event_match needs 'key' and 'pattern' strings")
        if len(condition["pattern"]) > MAX_PATTERN:
            raise invalid_param(f"a pattern is at most {MAX_PATTERN} characters")
    elif kind in ("event_property_is", "event_property_contains"):
        value = condition.get("value", ...)
        if not isinstance(condition.get("key"), str) or not (value is None or isinstance(value, (str, int, bool))):
            raise invalid_param(f"{kind} needs a 'key' string and a string, integer, boolean or null 'value'")
    elif kind == "room_member_count" and not isinstance(condition.get("is"), str):
        raise invalid_param("room_member_count needs an 'is' string")
    elif kind == "sender_notification_permission" and not isinstance(condition.get("key"), str):
        raise invalid_param("sender_notification_permission needs a 'key' string")
    # other kinds (contains_display_name, kinds of later versions) are kept: an unknown one never matches


def check_new_rule(kind: str, rule_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The user rule a ``PUT /pushrules/global/{kind}/{ruleId}`` body makes (without ``enabled``/``default``).

    400 M_INVALID_PARAM for a reserved or malformed rule ID (leading dot, slash, backslash; a room rule not
    named by a room ID, a sender rule not by a user ID) or a malformed body; M_MISSING_PARAM without actions
    or, for a content rule, without a pattern.
    """
    if not rule_id or len(rule_id) > MAX_RULE_ID:
        raise invalid_param(f"a rule ID is 1 to {MAX_RULE_ID} characters")
    if rule_id.startswith("."):
        raise invalid_param("rule IDs starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise invalid_param("a rule ID may not contain '/' or '\\'")
    if kind == "room" and not is_room_id(rule_id):
        raise invalid_param("a room rule's ID is the room ID")
    if kind == "sender" and not is_user_id(rule_id):
        raise invalid_param("a sender rule's ID is the sender's user ID")
    if "actions" not in body:
        raise MatrixError(400, "M_MISSING_PARAM", "missing 'actions'")
    rule: dict[str, Any] = {"rule_id": rule_id, "actions": check_actions(body["actions"])}
    if kind == "content":
        pattern = body.get("pattern")
        if pattern is None:
            raise MatrixError(400, "M_MISSING_PARAM", "a content rule needs a 'pattern'")
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
            raise invalid_param(f"'pattern' must be a string of at most {MAX_PATTERN} characters")
        rule["pattern"] = pattern
    elif kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
            raise invalid_param(f"'conditions' must be a list of at most {MAX_CONDITIONS} conditions")
        for condition in conditions:
            _check_condition(condition)
        rule["conditions"] = copy.deepcopy(conditions)
    return rule


def _is_default(user_id: str, kind: str, rule_id: str) -> bool:
    return any(r["rule_id"] == rule_id for r in default_rules(user_id)[kind])


# ------------------------------------------------------------------ edits (on a copy of the document)


def put_rule(user_id: str, doc: dict[str, Any] | None, kind: str, rule: dict[str, Any], before: str | None,
             after: str | None) -> dict[str, Any]:  # fmt: skip
    """The document with ``rule`` added or replaced among the user's ``kind`` rules.

    A new rule is enabled and goes first unless ``before``/``after`` (a user rule of the same kind; ``before``
    wins when both are given) place it; a replaced rule keeps its place and its enabled flag unless moved.
    400 M_UNKNOWN when ``before``/``after`` names no user rule of this kind (server-default rules cannot be
    used); 400 M_INVALID_PARAM past :data:`MAX_USER_RULES`.
    """
    out = copy.deepcopy(doc or {})
    rules: list[dict[str, Any]] = out.setdefault("rules", {}).setdefault(kind, [])
    index = next((i for i, r in enumerate(rules) if r["rule_id"] == rule["rule_id"]), None)
    enabled = True if index is None else rules[index].get("enabled", True)
    stored = dict(rule, enabled=enabled)
    anchor = before if before is not None else after
    if anchor is not None:
        if anchor == rule["rule_id"] or not any(r["rule_id"] == anchor for r in rules):
            raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {anchor[:80]}")
        if index is not None:
            rules.pop(index)
        at = next(i for i, r in enumerate(rules) if r["rule_id"] == anchor)
        rules.insert(at if before is not None else at + 1, stored)
    elif index is not None:
        rules[index] = stored
    else:
        rules.insert(0, stored)
    if sum(len(v) for v in out["rules"].values()) > MAX_USER_RULES:
        raise invalid_param(f"a user may have at most {MAX_USER_RULES} push rules")
    return out


def delete_rule(user_id: str, doc: dict[str, Any] | None, kind: str, rule_id: str) -> dict[str, Any]:
    """The document without the user's rule; 400 M_UNKNOWN for a server-default rule, 404 for no such rule."""
    if _is_default(user_id, kind, rule_id):
        raise MatrixError(400, "M_UNKNOWN", "server-default push rules cannot be deleted (disable them instead)")
    out = copy.deepcopy(doc or {})
    rules = out.get("rules", {}).get(kind, [])
    kept = [r for r in rules if r["rule_id"] != rule_id]
    if len(kept) == len(rules):
        raise not_found("no such push rule")
    out["rules"][kind] = kept
    return out


def set_attribute(user_id: str, doc: dict[str, Any] | None, kind: str, rule_id: str, name: str,
                  value: Any) -> dict[str, Any]:  # fmt: skip
    """The document with ``enabled`` or ``actions`` of one rule (a user's or a server-default one) set; 404 when
    the kind has no such rule."""
    find_rule(user_id, doc, kind, rule_id)  # 404 first
    out = copy.deepcopy(doc or {})
    if _is_default(user_id, kind, rule_id):
        out.setdefault("defaults", {}).setdefault(rule_id, {})[name] = value
        return out
    for rule in out["rules"][kind]:
        if rule["rule_id"] == rule_id:
            rule[name] = value
    return out
