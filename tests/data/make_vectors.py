"""Writes compact_vectors.json and msc3079_vectors.json from the reference codecs.

The vector files are the contract between gateway and firmware: run this only
when deliberately changing that contract (and bump the context version), then
review the diff byte by byte. Usage: python tests/data/make_vectors.py
"""

import json
from pathlib import Path

from lowband.codecs import compact, msc3079
from lowband.codecs.context import load_context

HERE = Path(__file__).parent
CTX = load_context(HERE / "context_v1.json")
E = CTX.epoch_ms


def message(content, ts=E, room="!sensors:gw.example", sender="@dev.kitchen:gw.example", **extra):
    event = {"type": "m.room.message", "room_id": room, "sender": sender, "origin_server_ts": ts, "content": content}
    event.update(extra)
    return event


def telemetry(values, age=0, room=0, sender=0):
    form = compact.CompactForm(kind=compact.KIND_TELEMETRY, room=room, sender=sender, age=age, values=values)
    return compact.expand(form, CTX, E)


COMPACT_CASES = [
    ("telemetry_reference", telemetry([(0, 215), (1, 40), (2, 370)])),
    ("telemetry_backlog_second_room", telemetry([(0, -45)], age=90, room=1)),
    ("telemetry_other_sender_large_values", telemetry([(1, 100), (2, -123456)], age=3600, sender=1)),
    ("text_reference", message({"msgtype": "m.text", "body": "temp 21.5 C"})),
    ("text_unicode_room_and_sender",
     message({"msgtype": "m.text", "body": "K\u00fcche \U0001F321 ok"}, ts=E - 5000,
             room="!alerts:gw.example", sender="@alice:gw.example")),
    ("text_empty_body", message({"msgtype": "m.text", "body": ""})),
    ("generic_event_with_ids", message({"msgtype": "m.text", "body": "hello"}, event_id="$abc", unsigned={"age": 5})),
    ("generic_reaction",
     {"type": "m.reaction", "room_id": "!sensors:gw.example", "sender": "@alice:gw.example", "origin_server_ts": E + 250,
      "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "\U0001F44D"}}}),
    ("generic_member_state",
     {"type": "m.room.member", "state_key": "@dev.kitchen:gw.example", "room_id": "!sensors:gw.example",
      "sender": "@dev.kitchen:gw.example", "origin_server_ts": E, "content": {"membership": "join"}}),
    ("generic_unknown_room_and_floats",
     message({"msgtype": "m.text", "body": "x", "ratio": 0.5, "big": 1.0e300, "neg": -1, "list": [None, True, False]},
             room="!elsewhere:other.example")),
    ("generic_plain_body", {"msgtype": "m.notice", "body": "not an event"}),
]

MSC3079_CASES = [
    ("msc3079_hello_world",
     {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "Hello World"}, "sender": "@alice:localhost",
      "room_id": "!foo:localhost", "unsigned": {"bool_value": True, "null_value": None}}),
    ("sync_fragment",
     {"next_batch": "s72595_4483_1934", "rooms": {"join": {"!foo:localhost": {"timeline": {"events": [
         {"type": "m.room.message", "event_id": "$1", "origin_server_ts": 1432735824653,
          "content": {"body": "hi", "msgtype": "m.text"}}], "limited": False, "prev_batch": "t34"}}}}}),
    ("login_request",
     {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret",
      "initial_device_display_name": "board"}),
    ("numeric_string_key_stays_string", {"8": "not origin_server_ts", "custom_key": [1, -2, 3.25]}),
    ("error_response", {"errcode": "M_FORBIDDEN", "error": "You are not invited to this room."}),
]


def form_json(form):
    out = {"kind": form.kind}
    if form.kind in (compact.KIND_TELEMETRY, compact.KIND_TEXT):
        out.update(room=form.room, sender=form.sender, age=form.age)
        if form.kind == compact.KIND_TELEMETRY:
            out["values"] = [list(v) for v in form.values]
        else:
            out["body"] = form.body
    return out


def write(name, doc):
    with open(HERE / name, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    vectors = []
    for name, event in COMPACT_CASES:
        data = compact.encode(event, CTX, E)
        assert compact.decode(data, CTX, E) == event, name
        vectors.append({"name": name, "ref_ts": E, "event": event, "compact": data.hex(),
                        "form": form_json(compact.decode_form(data, CTX))})
    write("compact_vectors.json", {"context": "context_v1.json", "vectors": vectors})
    write("msc3079_vectors.json", {"table": "MSC3079 v1", "vectors": [
        {"name": name, "json": doc, "cbor": msc3079.encode(doc).hex()} for name, doc in MSC3079_CASES]})


if __name__ == "__main__":
    main()
