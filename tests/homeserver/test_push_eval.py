"""Push rule evaluation in memory (``homeserver/push_eval.py``, ``push_rules.py``): vectors per condition kind,
the spec's default rules for typical events, and the edits of a user's rules."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lowband.gateway.homeserver import push_rules
from lowband.gateway.homeserver.push_eval import PushContext, evaluate, glob_match, outcome, split_key
from lowband.gateway.matrix.errors import MatrixError

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def ctx(**changes: Any) -> PushContext:
    base: dict[str, Any] = {"user_id": ALICE, "display_name": "Alice Liddell", "member_count": 5, "sender_power": 0,
                            "notification_levels": {}}  # fmt: skip
    base.update(changes)
    return PushContext(**base)


def message(body: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": BOB, "room_id": "!r:example.org",
            "content": {"msgtype": "m.text", "body": body, **content}}  # fmt: skip


def judge(event: dict[str, Any], context: PushContext | None = None, doc: dict[str, Any] | None = None) -> tuple[
        str | None, bool, bool]:  # fmt: skip
    """(rule that decided, notify, highlight) with the default rules (and ``doc``) of Alice."""
    rules = push_rules.ordered_rules(ALICE, doc)
    context = context or ctx()
    for rule in rules:  # which rule decides, for the assertions' messages
        if evaluate([rule], event, context) is not None:
            found = outcome(evaluate([rule], event, context))
            return rule["rule_id"], found.notify, found.highlight
    return None, False, False


GLOBS = [
    # pattern, value, words, expected
    ("m.room.message", "m.room.message", False, True),
    ("m.room.message", "M.ROOM.MESSAGE", False, True),  # case-insensitive
    ("m.room.*", "m.room.member", False, True),
    ("m.room.*", "xm.room.member", False, False),  # whole value
    ("m.?oom", "m.room", False, True),
    ("m.?oom", "m.oom", False, False),
    ("*", "", False, True),
    ("a*b*c", "aXXbYYc", False, True),
    ("a*b*c", "aXXcYYb", False, False),
    ("", "", False, True),
    ("alice", "hi alice!", True, True),  # content.body: within word boundaries
    ("alice", "malice", True, False),
    ("alice", "alice_x", True, False),  # _ is a word character
    ("alice", "x-alice-y", True, True),
    ("@room", "hi @room", True, True),
    ("@room", "x@room", True, False),
    ("ali*", "hello alistair there", True, True),
    ("a*e", "hello apple pie", True, True),
    ("a*z", "hello apple pie", True, False),
    ("cake*lie", "the cake is a lie", True, True),
    ("cake*lie", "the cake is a lier", True, False),
]


@pytest.mark.parametrize(("pattern", "value", "words", "expected"), GLOBS)
def test_glob_vectors(pattern: str, value: str, words: bool, expected: bool) -> None:
    assert glob_match(pattern, value, words=words) is expected


def test_glob_cost_is_bounded_on_hostile_input() -> None:
    body = "a " * 30_000 + "b"
    start = time.perf_counter()
    for pattern in ("a*a*a*a*a*c", "a*?*?*?*c", "*a*a*a*a*c*"):
        assert not glob_match(pattern, body, words=True)
        assert not glob_match(pattern, body)
    assert time.perf_counter() - start < 2.0  # a backtracking regex takes minutes here


def test_literal_display_names_are_not_globs() -> None:
    assert glob_match("A*B", "hey a*b!", words=True, literal=True)
    assert not glob_match("A*B", "hey axxb!", words=True, literal=True)
    assert not glob_match("w?", "hey wx", words=True, literal=True)


def test_keys_split_at_unescaped_dots() -> None:
    assert split_key("content.m\\.mentions.user_ids") == ("content", "m.mentions", "user_ids")
    assert split_key("content.a\\\\.b") == ("content", "a\\", "b")
    assert split_key("type") == ("type",)


def test_conditions() -> None:
    event = message("hi", **{"m.mentions": {"user_ids": [ALICE], "room": True}, "flag": True, "n": 1})
    c = ctx()
    rule = lambda *conds: [{"rule_id": "x", "enabled": True, "conditions": list(conds), "actions": ["notify"]}]
    holds = lambda *conds: evaluate(rule(*conds), event, c) is not None
    assert holds({"kind": "event_property_is", "key": "content.flag", "value": True})
    assert not holds({"kind": "event_property_is", "key": "content.n", "value": True})  # 1 is not true
    assert not holds({"kind": "event_property_is", "key": "content.flag", "value": 1})
    assert holds({"kind": "event_property_is", "key": "content.n", "value": 1})
    assert not holds({"kind": "event_property_is", "key": "content.missing", "value": None})
    assert holds({"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": ALICE})
    assert not holds({"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": BOB})
    assert not holds({"kind": "event_match", "key": "content.n", "pattern": "*"})  # not a string
    assert not holds({"kind": "event_match", "key": "content.nothing", "pattern": "*"})
    for spec, expected in (("5", True), ("==5", True), ("<5", False), ("<=5", True), (">4", True), (">=6", False),
                           ("5x", False), ("", False)):  # fmt: skip
        assert holds({"kind": "room_member_count", "is": spec}) is expected, spec
    assert not holds({"kind": "sender_notification_permission", "key": "room"})  # 0 < 50
    assert evaluate(rule({"kind": "sender_notification_permission", "key": "room"}), event, ctx(sender_power=50))
    assert not evaluate(rule({"kind": "sender_notification_permission", "key": "room"}), event,
                        ctx(sender_power=50, notification_levels={"room": 75}))  # fmt: skip
    assert not holds({"kind": "something_new"})  # an unknown kind never matches
    assert holds()  # no conditions: always
    assert not holds({"kind": "contains_display_name"})
    assert evaluate(rule({"kind": "contains_display_name"}), message("ping alice liddell?"), c)
    assert not evaluate(rule({"kind": "contains_display_name"}), message("ping alice"), ctx(display_name=""))


def test_default_rules_decide_as_the_spec_says() -> None:
    many = ctx(member_count=5)
    assert judge(message("hello"), many) == (".m.rule.message", True, False)
    assert judge(message("hello"), ctx(member_count=2)) == (".m.rule.room_one_to_one", True, False)
    assert judge(message("hello", msgtype="m.notice")) == (".m.rule.suppress_notices", False, False)
    assert judge(message("hey alice, look")) == (".m.rule.contains_user_name", True, True)
    assert judge(message("Alice Liddell: look")) == (".m.rule.contains_display_name", True, True)
    mention = message("hey", **{"m.mentions": {"user_ids": [ALICE]}})
    assert judge(mention) == (".m.rule.is_user_mention", True, True)
    # m.mentions turns the legacy rules off: a body naming alice no longer highlights
    assert judge(message("hey alice", **{"m.mentions": {}})) == (".m.rule.message", True, False)
    room = message("everyone", **{"m.mentions": {"room": True}})
    assert judge(room, ctx(sender_power=50)) == (".m.rule.is_room_mention", True, True)
    assert judge(room, ctx(sender_power=0)) == (".m.rule.message", True, False)
    assert judge(message("@room wake up"), ctx(sender_power=100)) == (".m.rule.roomnotif", True, True)
    invite = {"type": "m.room.member", "sender": BOB, "state_key": ALICE, "content": {"membership": "invite"}}
    assert judge(invite) == (".m.rule.invite_for_me", True, False)
    assert judge(dict(invite, content={"membership": "join"}))[0] == ".m.rule.member_event"
    assert judge({"type": "m.reaction", "sender": BOB, "content": {}})[:2] == (".m.rule.reaction", False)
    edit = message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert judge(edit)[:2] == (".m.rule.suppress_edits", False)
    assert (
        judge({"type": "m.room.encrypted", "sender": BOB, "content": {}}, ctx(member_count=2))[0]
        == ".m.rule.encrypted_room_one_to_one"
    )
    tomb = {"type": "m.room.tombstone", "sender": BOB, "state_key": "", "content": {}}
    assert judge(tomb) == (".m.rule.tombstone", True, True)
    call = {"type": "m.call.invite", "sender": BOB, "content": {}}
    assert judge(call) == (".m.rule.call", True, False)
    assert judge({"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {}}) == (None, False, False)


def test_user_rules_edits_and_order() -> None:
    doc = None
    mute = push_rules.check_new_rule("room", "!r:example.org", {"actions": []})
    doc = push_rules.put_rule(ALICE, doc, "room", mute, None, None)
    assert judge(message("hello"), doc=doc)[:2] == ("!r:example.org", False)
    assert judge(message("hey alice"), doc=doc)[0] == ".m.rule.contains_user_name"  # content comes before room
    # the master rule, enabled, silences everything
    master = push_rules.set_attribute(ALICE, doc, "override", ".m.rule.master", "enabled", True)
    assert judge(message("hey alice"), doc=master) == (".m.rule.master", False, False)
    # ordering: new rules go first; before/after place them
    for name in ("one", "two"):
        rule = push_rules.check_new_rule("override", name, {"actions": ["notify"], "conditions": []})
        doc = push_rules.put_rule(ALICE, doc, "override", rule, None, None)
    three = push_rules.check_new_rule("override", "three", {"actions": ["notify"]})
    doc = push_rules.put_rule(ALICE, doc, "override", three, None, "two")
    ids = [r["rule_id"] for r in push_rules.ruleset(ALICE, doc)["override"]]
    assert ids[:4] == [".m.rule.master", "two", "three", "one"]
    doc = push_rules.put_rule(ALICE, doc, "override", three, "two", None)
    assert [r["rule_id"] for r in push_rules.ruleset(ALICE, doc)["override"]][1:4] == ["three", "two", "one"]
    with pytest.raises(MatrixError) as refused:
        push_rules.put_rule(ALICE, doc, "override", three, ".m.rule.master", None)
    assert (refused.value.status, refused.value.errcode) == (400, "M_UNKNOWN")
    with pytest.raises(MatrixError) as refused:
        push_rules.delete_rule(ALICE, doc, "override", ".m.rule.master")
    assert refused.value.errcode == "M_UNKNOWN"
    with pytest.raises(MatrixError) as refused:
        push_rules.delete_rule(ALICE, doc, "override", "nope")
    assert (refused.value.status, refused.value.errcode) == (404, "M_NOT_FOUND")
    for kind, rule_id, body in (("override", ".mine", {"actions": []}), ("override", "a/b", {"actions": []}),
                                ("room", "not-a-room", {"actions": []}), ("sender", "bob", {"actions": []}),
                                ("override", "x", {"actions": ["explode"]}),
                                ("override", "x", {"actions": [], "conditions": [{"kind": "event_match"}]}),
                                ("override", "x", {"actions": [{"set_tweak": "highlight", "value": "yes"}]})):  # fmt: skip
        with pytest.raises(MatrixError) as refused:
            push_rules.check_new_rule(kind, rule_id, body)
        assert refused.value.errcode == "M_INVALID_PARAM", (kind, rule_id, body)
    with pytest.raises(MatrixError) as refused:
        push_rules.check_new_rule("content", "x", {"actions": []})
    assert refused.value.errcode == "M_MISSING_PARAM"


def test_the_default_ruleset_has_what_matrix_js_sdk_expects() -> None:
    rules = push_rules.ruleset(ALICE, None)
    override = [r["rule_id"] for r in rules["override"]]
    assert override == [".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
                        ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
                        ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
                        ".org.matrix.msc3786.rule.room.server_acl", ".m.rule.suppress_edits"]  # fmt: skip
    assert [r["rule_id"] for r in rules["underride"]] == [
        ".m.rule.call", ".org.matrix.msc3914.rule.room.call", ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"]  # fmt: skip
    assert rules["content"][0]["pattern"] == "alice"
    assert all(r["default"] for kind in rules.values() for r in kind)


def test_a_memo_shared_by_the_users_of_one_event_changes_no_answer() -> None:
    users = [ALICE, BOB, "@carol:example.org"]
    events = [
        message("hey alice and bob"),
        message("hi", **{"m.mentions": {"user_ids": [BOB]}}),
        {"type": "m.room.member", "sender": ALICE, "state_key": BOB, "content": {"membership": "invite"}},
        message("@room now"),
    ]
    for event in events:
        memo: dict[tuple[Any, ...], bool] = {}
        for user in users:
            rules = push_rules.ordered_rules(user, None)
            context = ctx(user_id=user, display_name=None, sender_power=100)
            assert evaluate(rules, event, context, memo) == evaluate(rules, event, context), (event, user)
