"""The fuzz targets by name, and where each one lives.

Listed by module path and attribute, so naming them imports nothing: the
runner imports a target's module only inside atheris' instrumentation, and
a module imported earlier would give no coverage.
"""

from __future__ import annotations

import importlib

from lowband.gateway.fuzz.target import Target

#: name → (module, attribute). Order is the order of ``lowband fuzz --list``.
TARGETS: dict[str, tuple[str, str]] = {
    "cbor": ("lowband.gateway.fuzz.codec_targets", "CBOR"),
    "compact": ("lowband.gateway.fuzz.codec_targets", "COMPACT"),
    "msc3079": ("lowband.gateway.fuzz.codec_targets", "MSC3079"),
    "coap": ("lowband.gateway.fuzz.codec_targets", "COAP"),
    "framing": ("lowband.gateway.fuzz.stream_targets", "FRAMING"),
    "fragment": ("lowband.gateway.fuzz.stream_targets", "FRAGMENT"),
    "link_frame": ("lowband.gateway.fuzz.stream_targets", "LINK_FRAME"),
    "handshake": ("lowband.gateway.fuzz.link_targets", "HANDSHAKE"),
    "gateway_link": ("lowband.gateway.fuzz.link_targets", "GATEWAY_LINK"),
    "mqtt_payload": ("lowband.gateway.fuzz.mqtt_target", "MQTT_PAYLOAD"),
    "canonical_json": ("lowband.gateway.fuzz.matrix_targets", "CANONICAL_JSON"),
    "http_params": ("lowband.gateway.fuzz.matrix_targets", "HTTP_PARAMS"),
    # For the CLI's own tests: crashes on purpose (not listed).
    "selftest_crash": ("lowband.gateway.fuzz.selftest_target", "SELFTEST_CRASH"),
}


def load(name: str) -> Target:
    """Import and return target ``name``; KeyError for an unknown name."""
    module, attribute = TARGETS[name]
    target: Target = getattr(importlib.import_module(module), attribute)
    return target


def visible() -> list[str]:
    """The names ``lowband fuzz --list`` shows (the hidden self-test left out, without importing it)."""
    return [name for name in TARGETS if not name.startswith("selftest_")]
