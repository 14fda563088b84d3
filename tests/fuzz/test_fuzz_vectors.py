"""Regression vectors: every input a fuzzer once crashed on, fed to its target's property function.

The files live in tests/fuzz/vectors/<target>/, one input per file, named
for what they broke. The property functions are plain Python: this test
needs no atheris and runs each vector once. The tests at the end show that
the property functions do catch a decoder that breaks its contract.
"""

from __future__ import annotations

import decimal
from pathlib import Path

import pytest

from lowband.codecs import cbor
from lowband.gateway.bridges.mqtt import payload
from lowband.gateway.fuzz import codec_targets, mqtt_target, registry
from lowband.gateway.fuzz.target import PropertyViolation

VECTORS = Path(__file__).parent / "vectors"
CASES = sorted((path.parent.name, path) for path in VECTORS.glob("*/*") if path.is_file())


def test_every_vector_folder_names_a_target():
    assert CASES, "no regression vectors found"
    assert {target for target, _ in CASES} <= set(registry.TARGETS)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_vector_holds_its_property(name, path):
    registry.load(name).check(path.read_bytes())


@pytest.mark.parametrize("name", registry.visible())
def test_seeds_hold_their_property(name):
    target = registry.load(name)
    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        target.check(seed)
    assert len(seeds[0]) <= target.max_len


def test_a_wrong_round_trip_is_caught(monkeypatch):
    real = cbor.loads

    def off_by_one(data, **kwargs):
        value = real(data, **kwargs)
        return value + 1 if isinstance(value, int) else value

    monkeypatch.setattr(cbor, "loads", off_by_one)
    with pytest.raises(PropertyViolation):
        codec_targets.check_cbor(cbor.dumps(5))


def test_an_unexpected_exception_escapes(monkeypatch):
    def overflowing(*args, **kwargs):
        raise decimal.Overflow("what 1e1000000 raised before issue 15")

    monkeypatch.setattr(mqtt_target, "translate", overflowing)
    with pytest.raises(decimal.Overflow):
        mqtt_target.check_mqtt_payload(b"\0\0\0\0" + b"1e1000000")
    monkeypatch.setattr(mqtt_target, "translate", payload.translate)
    mqtt_target.check_mqtt_payload(b"\0\0\0\0" + b"1e1000000")
