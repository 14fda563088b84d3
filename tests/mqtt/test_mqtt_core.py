"""The MQTT bridge's pure parts: config, routing, payloads, ingestion bookkeeping, discovery.

No broker and no event loop here; ``test_mqtt_bridge.py`` runs the same
rules against a real Mosquitto.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs.compact import SENML_KEY
from lowband.gateway.bridges.mqtt import discovery
from lowband.gateway.bridges.mqtt.config import FieldSpec, InboundMapping, OutboundMapping, parse_mqtt_config
from lowband.gateway.bridges.mqtt.ingest import AckSequencer, Deduper, EchoGuard, PendingRow, TokenBucket
from lowband.gateway.bridges.mqtt.payload import (
    Refusal,
    Translated,
    device_name,
    localpart_for,
    mantissa_scale,
    match_topic,
    outbound_message,
    payload_digest,
    route,
    translate,
)
from lowband.gateway.config import ConfigError, load_config

BROKER = {"name": "home", "host": "127.0.0.1"}
NOW_MS = 1_700_000_000_123


def mapping(**kwargs) -> InboundMapping:
    values = {"name": "z2m", "broker": "home", "topic": "zigbee2mqtt/+", "room": "#sensors:gw"}
    values.update(kwargs)
    return InboundMapping(**values)


def config(**top) -> dict:
    raw = {"brokers": [dict(BROKER)], "inbound": [{"name": "z2m", "topic": "zigbee2mqtt/+", "room": "#sensors:gw"}]}
    raw.update(top)
    return raw


# ------------------------------------------------------------------ config


def test_config_defaults_and_placeholders():
    cfg = parse_mqtt_config(config(), "gw.example")
    assert cfg is not None
    broker = cfg.brokers[0]
    assert (broker.port, broker.protocol, broker.receive_maximum) == (1883, "auto", 1000)
    assert broker.client_id == "lowband-gw-example-home"
    assert cfg.status_topic == "lowband/gw.example/status"
    only = cfg.inbound[0]
    assert (only.broker, only.qos, only.payload, only.sender, only.retained) == ("home", 1, "auto", "wildcard", True)
    assert cfg.payload_limit(only) == 65536
    assert (only.qos0_queue, cfg.new_users_burst, cfg.new_users_per_hour, cfg.room_admins) == (1000, 100, 60.0, ())
    assert parse_mqtt_config(None, "gw") is None


def test_config_in_the_gateway_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(
        '[mqtt]\nbot = "bridge"\n[[mqtt.brokers]]\nname = "home"\nhost = "broker.lan"\ntls = true\n'
        '[[mqtt.inbound]]\nname = "z2m"\ntopic = "zigbee2mqtt/+"\nroom = "#sensors:gw"\n'
        '[mqtt.inbound.fields]\ntemperature = { u = "Cel" }\n'
    )
    raw = load_config(path).components["mqtt"]
    cfg = parse_mqtt_config(raw, "gw")
    assert cfg.bot == "bridge" and cfg.brokers[0].port == 8883
    assert cfg.inbound[0].fields == {"temperature": FieldSpec("temperature", "Cel")}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"brokers": []}, "mqtt.brokers"),
        (config(colour="red"), "mqtt.colour"),
        (config(brokers=[{"name": "home"}]), "mqtt.brokers[0].host"),
        (config(brokers=[{**BROKER, "port": 0}]), "mqtt.brokers[0].port"),
        (config(brokers=[{**BROKER, "port": "1883"}]), "mqtt.brokers[0].port"),
        (config(brokers=[{**BROKER, "protocol": "4"}]), "mqtt.brokers[0].protocol"),
        (config(brokers=[{**BROKER, "ca_file": "ca.pem"}]), "mqtt.brokers[0]"),
        (config(brokers=[{**BROKER, "password": "x"}]), "mqtt.brokers[0]"),
        (config(brokers=[{**BROKER, "password_file": "/nonexistent/pw"}]), "mqtt.brokers[0].password_file"),
        (config(brokers=[BROKER, BROKER]), "mqtt.brokers"),
        (config(inbound=[{"name": "a", "topic": "a/b#", "room": "#r:gw"}]), "mqtt.inbound[0].topic"),
        (config(inbound=[{"name": "a", "topic": "a/+b", "room": "#r:gw"}]), "mqtt.inbound[0].topic"),
        (config(inbound=[{"name": "a", "topic": "a/#/b", "room": "#r:gw"}]), "mqtt.inbound[0].topic"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "r"}]), "mqtt.inbound[0].room"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "qos": 2}]), "mqtt.inbound[0].qos"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "payload": "xml"}]), "mqtt.inbound[0].payload"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "broker": "away"}]), "mqtt.inbound[0].broker"),
        (config(inbound=[{"name": "A b", "topic": "a", "room": "#r:gw"}]), "mqtt.inbound[0].name"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "rate_per_s": 0}]), "mqtt.inbound[0].rate_per_s"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "retained": "yes"}]), "mqtt.inbound[0].retained"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "fields": {"t": {"n": "bad name"}}}]),
         "mqtt.inbound[0].fields.t.n"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "only_fields": True}]), "mqtt.inbound[0].only_fields"),
        (config(inbound=[], outbound=[]), "mqtt"),
        (config(outbound=[{"name": "o", "room": "#r:gw", "topic": "a/+"}]), "mqtt.outbound[0].topic"),
        (config(outbound=[{"name": "o", "room": "#r:gw", "topic": "a/{room}"}]), "mqtt.outbound[0].topic"),
        (config(outbound=[{"name": "o", "room": "#r:gw", "topic": "a/{device}", "format": "state"}]), "mqtt.outbound[0].topic"),
        (config(outbound=[{"name": "z2m", "room": "#r:gw", "topic": "a"}]), "name"),
        (config(bot="Bad Bot"), "mqtt.bot"),
        (config(max_payload_bytes=0), "mqtt.max_payload_bytes"),
        (config(room_admins=["alice"]), "mqtt.room_admins"),
        (config(room_admins="@alice:gw"), "mqtt.room_admins"),
        (config(new_users_per_hour=0), "mqtt.new_users_per_hour"),
        (config(new_users_burst=-1), "mqtt.new_users_burst"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r:gw", "qos0_queue": 0}]), "mqtt.inbound[0].qos0_queue"),
        (config(inbound=[{"name": "a", "topic": "a", "room": "#r\tx:gw"}]), "mqtt.inbound[0].room"),
        ("not a table", "mqtt"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_mqtt_config(raw, "gw")
    assert key in str(err.value)


def test_reserved_localparts_for_registration():
    from lowband.gateway.bridges.mqtt.config import reservations
    from lowband.gateway.homeserver.accounts import ReservedNamespaces

    def reserved(components, localpart):
        return ReservedNamespaces(reservations(components)).owner_of(localpart) is not None

    assert reserved({"mqtt": config()}, "mqtt") and reserved({"mqtt": config()}, "mqtt_kitchen")
    assert not reserved({"mqtt": config()}, "alice") and not reserved({}, "mqtt")
    assert reserved({"mqtt": config(bot="bridge", user_prefix="z2m.")}, "z2m.lamp")
    assert not reserved({"mqtt": config(bot="bridge", user_prefix="z2m.")}, "mqtt")


def test_several_brokers_need_explicit_broker():
    raw = config(brokers=[BROKER, {"name": "plant", "host": "10.0.0.2"}])
    with pytest.raises(ConfigError, match=r"mqtt.inbound\[0\].broker is required"):
        parse_mqtt_config(raw, "gw")
    raw["inbound"][0]["broker"] = "plant"
    assert parse_mqtt_config(raw, "gw").inbound[0].broker == "plant"


# ------------------------------------------------------------------ topics


@pytest.mark.parametrize(
    ("flt", "topic", "captured"),
    [
        ("a/b", "a/b", ()),
        ("a/b", "a/c", None),
        ("a/+", "a/b", ("b",)),
        ("a/+", "a/b/c", None),
        ("a/+/c", "a/x/c", ("x",)),
        ("a/#", "a", ("",)),
        ("a/#", "a/b/c", ("b/c",)),
        ("#", "x/y", ("x/y",)),
        ("+/+", "a/b", ("a", "b")),
        ("#", "$SYS/broker", None),
        ("+/x", "$SYS/x", None),
        ("$SYS/#", "$SYS/broker/uptime", ("broker/uptime",)),
        ("a/+", "a/", ("",)),
    ],
)  # fmt: skip
def test_match_topic(flt, topic, captured):
    assert match_topic(flt, topic) == captured


def test_route_takes_the_first_match_and_honours_excludes():
    a = mapping(name="a", topic="z/#", exclude=("z/bridge/#",))
    b = mapping(name="b", topic="z/bridge/state")
    assert route([a, b], "z/kitchen") == (a, ("kitchen",))
    assert route([a, b], "z/bridge/state") == (b, ())
    assert route([a, b], "other") is None


def test_device_names_and_localparts():
    assert device_name(mapping(), ("kitchen",)) == "kitchen"
    assert device_name(mapping(topic="t/#"), ("a/b",)) == "a.b"
    assert device_name(mapping(sender="mapping"), ("kitchen",)) == "z2m"
    assert device_name(mapping(topic="fixed"), ()) == "z2m"
    assert localpart_for("mqtt_", "kitchen") == "mqtt_kitchen"
    upper, lower = localpart_for("mqtt_", "Kitchen"), localpart_for("mqtt_", "kitchen")
    assert upper != lower and upper.startswith("mqtt_kitchen-")
    assert localpart_for("mqtt_", "Living Room").startswith("mqtt_living_room-")


# ------------------------------------------------------------------ payloads


def test_json_object_becomes_telemetry_content():
    body = b'{"temperature": 21.50, "humidity": 40, "state": "ON", "occupancy": false, "color": {"x": 0.3}, "list": [1]}'
    got = translate(body, mapping(fields={"temperature": FieldSpec("temperature", "Cel")}), "zigbee2mqtt/kitchen", NOW_MS)
    assert isinstance(got, Translated) and got.kind == "object"
    content = got.content
    assert content["msgtype"] == "m.notice"
    assert content["body"] == "temperature 21.5 Cel, humidity 40, state ON, occupancy false, color.x 0.3"
    assert content[SENML_KEY] == [
        {"n": "temperature", "bt": NOW_MS // 1000, "u": "Cel", "v": 215, "scale_": -1},
        {"n": "humidity", "v": 40},
        {"n": "state", "vs": "ON"},
        {"n": "occupancy", "vb": False},
        {"n": "color.x", "v": 3, "scale_": -1},
    ]
    assert content["org.lowband.mqtt"] == {"topic": "zigbee2mqtt/kitchen"}
    assert got.paths[-1] == ("color.x", "color.x")


def test_only_fields_and_renames():
    m = mapping(fields={"temperature": FieldSpec("temp", "Cel")}, only_fields=True)
    got = translate(b'{"temperature": -3, "linkquality": 120}', m, "zigbee2mqtt/porch", NOW_MS)
    assert got.content[SENML_KEY] == [{"n": "temp", "bt": NOW_MS // 1000, "u": "Cel", "v": -3}]
    assert got.content["body"] == "temp -3 Cel"
    assert translate(b'{"linkquality": 120}', m, "zigbee2mqtt/porch", NOW_MS) == Refusal("no_values", "no field could be bridged")


@pytest.mark.parametrize(
    ("kind", "payload", "records", "body"),
    [
        ("auto", b"21.5", [{"n": "temperature", "v": 215, "scale_": -1}], "temperature 21.5"),
        ("auto", b" 7 ", [{"n": "temperature", "v": 7}], "temperature 7"),
        ("auto", b"ON", [{"n": "temperature", "vs": "ON"}], "temperature ON"),
        ("auto", b'"ON"', [{"n": "temperature", "vs": "ON"}], "temperature ON"),
        ("auto", b"true", [{"n": "temperature", "vb": True}], "temperature true"),
        ("auto", b"1e3", [{"n": "temperature", "v": 1000}], "temperature 1000"),
        ("auto", b"[1, 2]", [{"n": "temperature", "vs": "[1, 2]"}], "temperature [1, 2]"),
        ("number", b"-0.050", [{"n": "temperature", "v": -5, "scale_": -2}], "temperature -0.05"),
        ("text", b"21.5", [{"n": "temperature", "vs": "21.5"}], "temperature 21.5"),
        ("binary", b"\x00\xff\xfe", [{"n": "temperature", "vd": "AP_-"}], "temperature (3 bytes)"),
    ],
)  # fmt: skip
def test_single_values_are_named_after_the_last_topic_level(kind, payload, records, body):
    got = translate(payload, mapping(topic="home/+/temperature", payload=kind), "home/kitchen/temperature", NOW_MS)
    assert isinstance(got, Translated), got
    first = got.content[SENML_KEY][0]
    assert first.pop("bt") == NOW_MS // 1000
    assert got.content[SENML_KEY] == records
    assert got.content["body"] == body


def test_senml_pack_is_resolved():
    pack = b'[{"bn": "urn:dev:ow:10e2073a01080063:", "bu": "Cel", "n": "temp", "v": 23.1}, {"n": "hum", "u": "%RH", "v": 40}]'
    got = translate(pack, mapping(), "zigbee2mqtt/x", NOW_MS)
    assert got.kind == "pack"
    names = [r["n"] for r in got.content[SENML_KEY]]
    assert names == ["urn:dev:ow:10e2073a01080063:temp", "urn:dev:ow:10e2073a01080063:hum"]
    assert got.content[SENML_KEY][0]["u"] == "Cel" and got.content[SENML_KEY][1]["u"] == "%RH"
    assert got.content["body"].endswith("hum 40 %RH")


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("auto", b"", "empty"),
        ("json", b"", "empty"),
        ("auto", b"\xff\xfe temperature", "invalid_utf8"),
        ("text", b"caf\xc3", "invalid_utf8"),
        ("json", b"{not json", "malformed_json"),
        ("json", b"NaN", "malformed_json"),
        ("json", b"[1, 2]", "malformed_senml"),
        ("json", b'[{"n": "a", "v": "x"}]', "malformed_senml"),
        ("json", b'[{"n": "a b", "v": 1}]', "malformed_senml"),
        ("number", b"twelve", "not_a_number"),
        ("number", b"inf", "not_a_number"),
        ("auto", b"null", "no_values"),
        ("auto", b"{}", "no_values"),
        ("auto", b'{"big": 123456789012345678901234567890123}', "no_values"),
        ("json", b"[" * 100_000, "malformed_json"),
        # exponents past decimal's context limits (they raised decimal.Overflow and stalled the broker's acks)
        ("number", b"1e1000000", "no_values"),
        ("number", b"1e-1000000", "no_values"),
        ("auto", b'{"v": 1e1000000}', "no_values"),
        ("auto", b'{"v": -1E+999999999}', "no_values"),
        ("auto", b'[{"n": "a", "v": 1e1000000}]', "no_values"),
        ("number", b"1.0000000000000000000000000001", "no_values"),  # more digits than 2**53 has: not rounded
    ],
)  # fmt: skip
def test_refusals_are_values(kind, payload, reason):
    got = translate(payload, mapping(payload=kind), "zigbee2mqtt/x", NOW_MS)
    assert isinstance(got, Refusal) and got.reason == reason


def test_retained_messages_are_marked():
    got = translate(b"1", mapping(), "zigbee2mqtt/x", NOW_MS, retained=True)
    assert got.content["org.lowband.mqtt"] == {"topic": "zigbee2mqtt/x", "retained": True}


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_mantissa_scale_is_exact(value):
    pair = mantissa_scale(value)
    if pair is not None:
        mantissa, scale = pair
        assert Decimal(mantissa).scaleb(scale) == value
        assert abs(mantissa) <= 2**53 - 1


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from(["auto", "json", "text", "number", "binary"]))
def test_translate_never_raises_and_yields_canonical_content(payload, kind):
    from lowband.gateway.matrix.canonical_json import encode_canonical_json

    got = translate(payload, mapping(payload=kind), "zigbee2mqtt/x", NOW_MS)
    if isinstance(got, Translated):
        try:
            encode_canonical_json(got.content)
        except ValueError as exc:  # only a lone surrogate from a JSON escape can get here
            assert "surrogate" in str(exc)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=20))
def test_any_json_document_translates_or_is_refused(document):  # fmt: skip
    payload = json.dumps(document).encode()
    got = translate(payload, mapping(payload="json"), "zigbee2mqtt/x", NOW_MS)
    assert isinstance(got, (Translated, Refusal))


# ------------------------------------------------------------------ outbound


def out(**kwargs) -> OutboundMapping:
    values = {"name": "cmd", "broker": "home", "room": "#sensors:gw", "topic": "zigbee2mqtt/{device}/set"}
    values.update(kwargs)
    return OutboundMapping(**values)


def test_outbound_body_with_device():
    got = outbound_message(out(), "m.room.message", "@alice:gw", {"msgtype": "m.text", "body": 'lamp {"state": "ON"}'})
    assert got == ("zigbee2mqtt/lamp/set", b'{"state": "ON"}')
    assert outbound_message(out(), "m.room.message", "@alice:gw", {"msgtype": "m.text", "body": "lamp"}).reason == "no_device"
    bad = outbound_message(out(), "m.room.message", "@alice:gw", {"msgtype": "m.text", "body": "a/b on"})
    assert bad.reason == "bad_device"
    assert outbound_message(out(), "m.room.member", "@alice:gw", {"membership": "join"}).reason == "not_a_message"
    assert outbound_message(out(), "m.room.message", "@alice:gw", {"msgtype": "m.notice", "body": "x y"}).reason == "msgtype"
    edit = {"msgtype": "m.text", "body": "* lamp on", "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}
    assert outbound_message(out(), "m.room.message", "@alice:gw", edit).reason == "edit"


@pytest.mark.parametrize("sender", ["@a+b:gw", "@home#1:gw", "@nul\x00:gw", "@" + "x" * 129 + ":gw"])
def test_a_sender_that_cannot_be_a_topic_level_is_skipped_not_retried(sender):
    # paho refuses to publish to a topic with a wildcard: the publish never completed and the outbound
    # cursor stayed on that event, across restarts, so nothing after it was published.
    got = outbound_message(out(topic="chat/{sender}"), "m.room.message", sender, {"msgtype": "m.text", "body": "hi"})
    assert isinstance(got, Refusal) and got.reason == "bad_sender"
    # the same user is fine where the topic does not name the sender
    assert outbound_message(out(topic="chat/all"), "m.room.message", sender, {"msgtype": "m.text", "body": "hi"}) == (
        "chat/all", b"hi")
    assert outbound_message(out(topic="chat/{sender}"), "m.room.message", "@a.b:gw",
                            {"msgtype": "m.text", "body": "hi"}) == ("chat/a.b", b"hi")  # fmt: skip


@pytest.mark.parametrize("device", ["a+b", "x#", "nul\x00", "d" * 129])
def test_a_device_that_cannot_be_a_topic_level_is_refused(device):
    got = outbound_message(out(), "m.room.message", "@alice:gw", {"msgtype": "m.text", "body": f"{device} on"})
    assert isinstance(got, Refusal) and got.reason == "bad_device"


def test_outbound_fixed_topic_and_content_format():
    got = outbound_message(out(topic="house/say"), "m.room.message", "@alice:gw", {"msgtype": "m.text", "body": "hi"})
    assert got == ("house/say", b"hi")
    got = outbound_message(out(topic="house/say", format="content"), "m.room.message", "@alice:gw",
                           {"msgtype": "m.text", "body": "hi"})  # fmt: skip
    assert json.loads(got[1]) == {"msgtype": "m.text", "body": "hi"}


def test_outbound_state_and_senml():
    content = {"msgtype": "m.notice", "body": "temperature 21.5 Cel",
               SENML_KEY: [{"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 215, "scale_": -1},
                           {"n": "door", "vb": True}, {"n": "mode", "vs": "eco"}]}  # fmt: skip
    state = out(topic="lowband/gw/{sender}/state", format="state", msgtypes=("m.notice",))
    topic, payload = outbound_message(state, "m.room.message", "@dev.kitchen:gw", content)
    assert topic == "lowband/gw/dev.kitchen/state"
    assert json.loads(payload, parse_float=Decimal) == {"temperature": Decimal("21.5"), "door": True, "mode": "eco"}
    senml = out(topic="s/{sender}", format="senml", msgtypes=("m.notice",))
    topic, payload = outbound_message(senml, "m.room.message", "@dev.kitchen:gw", content)
    assert json.loads(payload)[0] == {"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 21.5}
    plain = {"msgtype": "m.notice", "body": "hello"}
    assert outbound_message(state, "m.room.message", "@dev.kitchen:gw", plain).reason == "no_telemetry"


# ------------------------------------------------------------------ ingestion


def test_token_bucket_delays_instead_of_dropping():
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    wait = bucket.take(0.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0


def test_acks_go_out_in_arrival_order():
    seq = AckSequencer()
    seq.connected(1)
    a, b, c = (seq.received(1, mid) for mid in (7, 8, 9))
    assert seq.complete(b) == []
    assert [t.mid for t in seq.complete(a)] == [7, 8]
    assert [t.mid for t in seq.complete(c)] == [9]
    old = seq.received(1, 10)
    assert seq.connected(2) == [old]
    assert seq.complete(old) == []  # an older connection's ticket is never acknowledged
    assert len(seq) == 0


def test_deduper_matches_only_redeliveries_from_an_earlier_connection():
    digest = payload_digest(b"21.5")
    dedup = Deduper(run_id="r")
    first, new = dedup.assign("t", digest, 5, dup=False, gen=1, now_ms=0)
    assert new and first.txn_id == "r.1"
    # The same payload again on the same connection is a new message, even flagged DUP.
    second, new = dedup.assign("t", digest, 5, dup=True, gen=1, now_ms=0)
    assert new and second.txn_id != first.txn_id
    # After a reconnect, a DUP with the same packet id takes the first row, then the second.
    assert dedup.assign("t", digest, 5, dup=True, gen=2, now_ms=0) == (first, False)
    assert dedup.assign("t", digest, 5, dup=True, gen=2, now_ms=0) == (second, False)
    # Not DUP: never matched, whatever the rows say.
    third, new = dedup.assign("t", digest, 5, dup=False, gen=3, now_ms=0)
    assert new
    # Another packet id or payload is another message.
    assert dedup.assign("t", digest, 6, dup=True, gen=3, now_ms=0)[1]
    assert dedup.assign("t", payload_digest(b"21.6"), 5, dup=True, gen=3, now_ms=0)[1]
    assert dedup.release(first) and not dedup.release(first)


def test_deduper_rows_from_disk_match_after_a_restart():
    row = PendingRow("old.1", "t", payload_digest(b"x"), 3, gen=0)
    dedup = Deduper([row])
    assert dedup.assign("t", payload_digest(b"x"), 3, dup=True, gen=1, now_ms=0) == (row, False)
    assert dedup.older_than(2) == [row]


def test_echo_guard_matches_each_publish_once_and_expires():
    guard = EchoGuard(ttl_s=10)
    digest = payload_digest(b"on")
    guard.published("lamp/set", digest, now=0)
    assert not guard.is_echo("lamp/get", digest, now=1)
    assert guard.is_echo("lamp/set", digest, now=1)
    assert not guard.is_echo("lamp/set", digest, now=1)
    guard.published("lamp/set", digest, now=0)
    assert not guard.is_echo("lamp/set", digest, now=11)


# ------------------------------------------------------------------ discovery

# Keys of Home Assistant's MQTT discovery (single-component payloads,
# https://www.home-assistant.io/integrations/mqtt/ and the sensor and
# binary_sensor platforms) that these payloads use.
HA_SENSOR_KEYS = {
    "name", "unique_id", "object_id", "state_topic", "value_template", "unit_of_measurement", "device_class",
    "state_class", "availability_topic", "payload_available", "payload_not_available", "device", "origin",
    "payload_on", "payload_off",
}  # fmt: skip
HA_DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version", "via_device"}
HA_SENSOR_CLASSES = {"temperature", "humidity", "pressure", "illuminance", "voltage", "current", "power", "energy",
                     "battery", "signal_strength", "frequency", "distance", "duration"}  # fmt: skip


def check_ha_config(topic: str, payload: bytes, prefix: str = "homeassistant") -> dict:
    """Validate a discovery message the way Home Assistant reads it; returns the config."""
    assert topic.startswith(prefix + "/"), topic
    parts = topic[len(prefix) + 1 :].split("/")  # <component>/<node_id>/<object_id>/config
    assert parts[-1] == "config" and len(parts) == 4, topic
    assert parts[0] in ("sensor", "binary_sensor")
    assert all(p and set(p) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for p in parts[1:3])
    config = json.loads(payload)
    assert set(config) <= HA_SENSOR_KEYS, set(config) - HA_SENSOR_KEYS
    assert {"name", "unique_id", "state_topic", "device", "origin"} <= set(config)
    assert set(config["device"]) <= HA_DEVICE_KEYS and config["device"]["identifiers"]
    assert config["origin"]["name"] == "Lowband"
    if "device_class" in config:
        assert config["device_class"] in HA_SENSOR_CLASSES | {"connectivity"}
    if parts[0] == "binary_sensor":
        assert {"payload_on", "payload_off"} <= set(config)
    return config


def test_discovery_payloads():
    origin = discovery.Origin("gw.example", "lowband/gw.example/status", "homeassistant")
    topic, payload = discovery.gateway_config(origin)
    assert topic == "homeassistant/binary_sensor/lowband_gw_example/status/config"
    cfg = check_ha_config(topic, payload)
    assert cfg["device_class"] == "connectivity" and cfg["state_topic"] == "lowband/gw.example/status"

    topic, payload = discovery.reading_config(origin, device="kitchen", device_name="kitchen", reading="temperature",
                                              state_topic="zigbee2mqtt/kitchen", json_path="temperature", unit="Cel")  # fmt: skip
    cfg = check_ha_config(topic, payload)
    assert topic == "homeassistant/sensor/lowband_gw_example/kitchen_temperature/config"
    assert cfg["unit_of_measurement"] == "°C" and cfg["device_class"] == "temperature"
    assert cfg["value_template"] == '{{ value_json["temperature"] }}'
    assert cfg["availability_topic"] == "lowband/gw.example/status"
    assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
    assert cfg["device"]["via_device"] == "lowband_gw_example"

    topic, payload = discovery.reading_config(origin, device="porch", device_name="porch", reading="color.x",
                                              state_topic="z/porch", json_path="color.x", kind="number")  # fmt: skip
    assert check_ha_config(topic, payload)["value_template"] == '{{ value_json["color"]["x"] }}'
    topic, payload = discovery.reading_config(origin, device="door", device_name="door", reading="contact",
                                              state_topic="z/door", json_path=None, kind="bool")  # fmt: skip
    assert topic.startswith("homeassistant/binary_sensor/") and check_ha_config(topic, payload)


def test_binary_payload_round_trip_in_vd():
    data = bytes(range(256))
    got = translate(data, mapping(payload="binary"), "zigbee2mqtt/blob", NOW_MS)
    vd = got.content[SENML_KEY][0]["vd"]
    assert "=" not in vd and base64.urlsafe_b64decode(vd + "=" * (-len(vd) % 4)) == data


def test_rows_go_only_when_the_broker_has_processed_their_puback():
    dedup = Deduper(run_id="r")
    a, _ = dedup.assign("t", payload_digest(b"a"), 1, dup=False, gen=1, now_ms=0)
    b, _ = dedup.assign("t", payload_digest(b"b"), 2, dup=False, gen=1, now_ms=0)
    dedup.acked(a, 1, 1)
    dedup.acked(b, 1, 2)
    # A barrier written after PUBACK 1 settles a only.
    assert dedup.confirm(1, 1, purge_older=False) == [a]
    # The connection dropped before b's PUBACK was confirmed: its redelivery finds the row.
    assert dedup.assign("t", payload_digest(b"b"), 2, dup=True, gen=2, now_ms=0) == (b, False)
    assert dedup.confirm(2, 5, purge_older=False) == []  # acknowledged on gen 1, redelivered on gen 2: not yet
    dedup.acked(b, 2, 6)
    assert dedup.confirm(2, 6, purge_older=False) == [b]
    # Rows of an old connection nobody claimed go with the first settled barrier of a new one.
    c = PendingRow("old.9", "t", payload_digest(b"c"), 3, gen=0)
    dedup = Deduper([c])
    assert dedup.confirm(1, 0, purge_older=False) == []
    assert dedup.confirm(1, 0, purge_older=True) == [c]


def test_the_documented_zigbee2mqtt_example(tmp_path):
    """docs/mqtt.md: the example config loads, and the example payload gives the example event."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent.parent / "docs" / "mqtt.md").read_text()
    toml_text = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    path = tmp_path / "gw.toml"
    path.write_text(toml_text.replace("/etc/lowband/mqtt-password", str(tmp_path / "pw")))
    (tmp_path / "pw").write_text("s3cret\n")
    gateway_config = load_config(path)
    cfg = parse_mqtt_config(gateway_config.components["mqtt"], gateway_config.server_name)
    assert cfg.brokers[0].password == "s3cret"
    z2m = cfg.inbound[0]
    assert route(list(cfg.inbound), "zigbee2mqtt/bridge/state") is None
    event = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))
    payload = b'{"temperature": 21.53, "humidity": 48, "battery": 97, "linkquality": 120}'
    got = translate(payload, z2m, "zigbee2mqtt/kitchen_sensor", 1_700_000_000_000)
    assert got.content == event
    assert device_name(z2m, ("kitchen_sensor",)) == "kitchen_sensor"
