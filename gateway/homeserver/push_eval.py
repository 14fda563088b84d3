"""Push rule evaluation, sans-I/O: one event, one user's ordered rules, the room facts the conditions need.

Rules (the spec's push module, v1.7 and later):

* rules are tried in order (override, content, room, sender, underride; see
  ``push_rules.ordered_rules``); the first enabled rule whose conditions all
  hold decides, and its actions are the answer; no rule: no notification;
* ``event_match`` compares a glob (``*`` any run, ``?`` one character) with a
  string field of the event, case-insensitively, as a whole; on
  ``content.body`` it matches any part of the body that starts and ends at a
  word boundary (start or end, or a character outside ``[A-Za-z0-9_]``). A
  field that is absent or not a string never matches, even ``*``;
* ``event_property_is`` / ``event_property_contains``: the field equals the
  value, or is an array holding it, with JSON types kept apart (``true`` is
  not ``1``);
* ``contains_display_name``: the user's display name in the room, taken
  literally, at word boundaries in ``content.body`` (never for an empty name);
* ``room_member_count``: ``is`` is ``N``, ``==N``, ``<N``, ``>N``, ``<=N`` or
  ``>=N`` against the joined members;
* ``sender_notification_permission``: the sender's power level reaches the
  room's ``notifications[key]`` level (50 by default);
* an unknown condition kind never matches, so its rule is skipped;
* an event carrying ``m.mentions`` is not judged by the legacy mention rules
  (``.m.rule.contains_display_name``, ``.m.rule.contains_user_name``,
  ``.m.rule.roomnotif``): ``.m.rule.is_user_mention`` and
  ``.m.rule.is_room_mention`` read the mentions instead.

Keys are dotted paths into the event (``content.m\\.mentions.user_ids``: a
backslash escapes a dot or a backslash). Globs are matched without regular
expressions, in time linear in the value times the pattern, whatever a
hostile body or pattern holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = ["Outcome", "PushContext", "evaluate", "glob_match", "outcome", "split_key"]

LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.contains_user_name", ".m.rule.roomnotif"})
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,9})$")


@dataclass(frozen=True)
class PushContext:
    """What the conditions need besides the event: the user it is judged for and the room around it."""

    user_id: str
    display_name: str | None
    member_count: int
    sender_power: int
    #: the ``notifications`` map of the room's power levels (``room`` is 50 when absent)
    notification_levels: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What a rule's actions ask for."""

    notify: bool
    highlight: bool
    tweaks: dict[str, Any]


def split_key(key: str) -> tuple[str, ...]:
    """A condition key's path: split at dots not escaped by a backslash (``\\.`` a dot, ``\\\\`` a backslash)."""
    return _split_key(key)


@lru_cache(maxsize=1024)
def _split_key(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        char = key[i]
        if char == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


_MISSING = object()


def _lookup(event: dict[str, Any], key: str) -> Any:
    value: Any = event
    for part in split_key(key):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _is_word(char: str) -> bool:
    return char == "_" or ("0" <= char <= "9") or ("a" <= char <= "z") or ("A" <= char <= "Z")


def _segment_at(segment: str, value: str, at: int) -> bool:
    """Whether ``segment`` (``?`` any one character) matches ``value`` at ``at``."""
    if at + len(segment) > len(value):
        return False
    if "?" not in segment:
        return value.startswith(segment, at)
    return all(p == "?" or p == value[at + k] for k, p in enumerate(segment))


def _find_segment(segment: str, value: str, start: int) -> int:
    """Leftmost position >= ``start`` where ``segment`` matches, or -1."""
    if "?" not in segment:
        return value.find(segment, start)
    for at in range(start, len(value) - len(segment) + 1):
        if _segment_at(segment, value, at):
            return at
    return -1


@lru_cache(maxsize=1024)
def _segments(pattern: str, literal: bool) -> tuple[str, ...]:
    lowered = pattern.lower()
    if literal:
        return (lowered.replace("?", "\x00"),) if "?" in lowered else (lowered,)
    return tuple(lowered.split("*"))


def glob_match(pattern: str, value: str, *, words: bool = False, literal: bool = False) -> bool:
    """Whether ``pattern`` matches ``value`` case-insensitively: as a whole, or (``words``) any part of it that
    starts and ends at word boundaries. ``literal``: ``*`` and ``?`` are plain characters (display names)."""
    segments = _segments(pattern, literal)
    text = value.lower()
    if literal and "?" in pattern:
        text = text.replace("?", "\x00")  # a literal '?' then only matches a '?'
    if not words:
        return _whole(segments, text)
    return _within_words(segments, text)


def _place_rest(segments: tuple[str, ...], text: str, cursor: int, end_ok: Any) -> bool:
    """Place the middle segments leftmost from ``cursor`` and the last so that ``end_ok(end)`` holds."""
    for segment in segments[1:-1]:
        found = _find_segment(segment, text, cursor)
        if found < 0:
            return False
        cursor = found + len(segment)
    last = segments[-1]
    at = cursor
    while at <= len(text) - len(last):
        found = _find_segment(last, text, at) if last else at
        if found < 0:
            return False
        if end_ok(found + len(last)):
            return True
        at = found + 1
    return False


def _whole(segments: tuple[str, ...], text: str) -> bool:
    if len(segments) == 1:
        return len(text) == len(segments[0]) and _segment_at(segments[0], text, 0)
    first = segments[0]
    if not _segment_at(first, text, 0):
        return False
    return _place_rest(segments, text, len(first), lambda end: end == len(text))


def _within_words(segments: tuple[str, ...], text: str) -> bool:
    def boundary_before(at: int) -> bool:
        return at == 0 or not _is_word(text[at - 1])

    def boundary_after(end: int) -> bool:
        return end == len(text) or not _is_word(text[end])

    first = segments[0]
    if len(segments) == 1:
        at = _find_segment(first, text, 0)
        while at >= 0:
            if boundary_before(at) and boundary_after(at + len(first)):
                return True
            at = _find_segment(first, text, at + 1)
        return False
    # With a star, the earliest start that fits is the best one: what follows it can be placed from there if
    # from anywhere later, so one attempt decides (linear, not quadratic, in the body).
    at = _find_segment(first, text, 0) if first else 0
    while at >= 0 and not boundary_before(at):
        at = _find_segment(first, text, at + 1)
    if at < 0:
        return False
    return _place_rest(segments, text, at + len(first), boundary_after)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def _member_count(spec: Any, count: int) -> bool:
    if not isinstance(spec, str):
        return False
    found = _MEMBER_COUNT.match(spec)
    if found is None:
        return False
    op, number = found.group(1) or "==", int(found.group(2))
    return {"==": count == number, "<": count < number, ">": count > number, "<=": count <= number,
            ">=": count >= number}[op]  # fmt: skip


def condition_holds(condition: Any, event: dict[str, Any], ctx: PushContext) -> bool:
    """Whether one condition holds for ``event`` as ``ctx.user_id`` sees it (False for an unknown kind)."""
    if not isinstance(condition, dict):
        return False
    kind = condition.get("kind")
    if kind == "event_match":
        key, pattern = condition.get("key"), condition.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        value = _lookup(event, key)
        return isinstance(value, str) and glob_match(pattern, value, words=key == "content.body")
    if kind in ("event_property_is", "event_property_contains"):
        key = condition.get("key")
        if not isinstance(key, str) or "value" not in condition:
            return False
        value = _lookup(event, key)
        if kind == "event_property_is":
            return value is not _MISSING and _same_json(value, condition["value"])
        return isinstance(value, list) and any(_same_json(item, condition["value"]) for item in value)
    if kind == "contains_display_name":
        body = _lookup(event, "content.body")
        name = ctx.display_name
        return isinstance(body, str) and bool(name) and glob_match(name or "", body, words=True, literal=True)
    if kind == "room_member_count":
        return _member_count(condition.get("is"), ctx.member_count)
    if kind == "sender_notification_permission":
        key = condition.get("key")
        if not isinstance(key, str):
            return False
        needed = ctx.notification_levels.get(key, 50)
        if isinstance(needed, bool) or not isinstance(needed, int):
            needed = 50
        return ctx.sender_power >= needed
    return False


def _memo_key(condition: Any) -> tuple[Any, ...] | None:
    """A key for a condition whose answer depends on the event and room only (None: it depends on the user)."""
    if not isinstance(condition, dict):
        return None
    kind = condition.get("kind")
    if kind == "event_match":
        return (kind, condition.get("key"), condition.get("pattern"))
    if kind in ("event_property_is", "event_property_contains"):
        value = condition.get("value")
        return (kind, condition.get("key"), type(value).__name__, value if not isinstance(value, (list, dict)) else None)
    if kind == "room_member_count":
        return (kind, condition.get("is"))
    if kind == "sender_notification_permission":
        return (kind, condition.get("key"))
    return None


def evaluate(
    rules: list[dict[str, Any]], event: dict[str, Any], ctx: PushContext, memo: dict[tuple[Any, ...], bool] | None = None
) -> list[Any] | None:
    """The actions of the first enabled rule of ``rules`` (in order) matching ``event``, or None.

    ``event`` is the event in client format (``type``, ``sender``, ``content``, ``state_key`` …). ``memo``: a
    dict shared by the evaluations of one event for the users of one room, which then judge each condition that
    does not depend on the user once (``room_member_count`` and ``sender_notification_permission`` depend on
    the room and sender only, so the users must share ``member_count``, ``sender_power`` and the levels).
    """
    content = event.get("content")
    mentions = isinstance(content, dict) and "m.mentions" in content
    for rule in rules:
        if not rule.get("enabled", True):
            continue
        if mentions and rule.get("rule_id") in LEGACY_MENTION_RULES:
            continue
        for condition in rule.get("conditions", []):
            key = _memo_key(condition) if memo is not None else None
            if key is None:
                holds = condition_holds(condition, event, ctx)
            else:
                assert memo is not None
                found = memo.get(key)
                if found is None:
                    found = memo[key] = condition_holds(condition, event, ctx)
                holds = found
            if not holds:
                break
        else:
            actions = rule.get("actions", [])
            return list(actions) if isinstance(actions, list) else []
    return None


def outcome(actions: list[Any] | None) -> Outcome:
    """What ``actions`` ask for: notify (``notify``; ``dont_notify`` and ``coalesce`` are no-ops), highlight (the
    ``highlight`` tweak, true when it has no value) and the other tweaks."""
    notify, highlight = False, False
    tweaks: dict[str, Any] = {}
    for action in actions or []:
        if action == "notify":
            notify = True
        elif isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            value = action.get("value", True) if name == "highlight" else action.get("value")
            if name == "highlight":
                highlight = value is True
            tweaks[name] = value
    return Outcome(notify, highlight and notify, tweaks)
