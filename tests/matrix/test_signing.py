"""Signing keys, base64 and signed JSON, with the spec's test vectors."""

from __future__ import annotations

import os
import stat

import pytest

from lowband.gateway.matrix.signing import (
    SignatureError,
    SigningKey,
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    sign_json,
    verify_json,
)

# Appendices, "Cryptographic Test Vectors".
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_SERVER = "domain"
SPEC_EMPTY_SIG = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
SPEC_DATA_SIG = "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"


@pytest.fixture(scope="module")
def spec_key() -> SigningKey:
    return SigningKey.from_seed(decode_base64(SPEC_SEED), "1")


# -- base64 -------------------------------------------------------------------

# Appendices, "Unpadded Base64".
@pytest.mark.parametrize(
    "raw, encoded",
    [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"), (b"fooba", "Zm9vYmE"),
     (b"foobar", "Zm9vYmFy")],
)
def test_unpadded_base64_spec_examples(raw, encoded):
    assert encode_base64(raw) == encoded
    assert decode_base64(encoded) == raw


def test_decode_accepts_padding_and_urlsafe_encoding_differs():
    assert decode_base64("Zg==") == b"f"
    assert decode_base64("Zm8=") == b"fo"
    raw = bytes([0xFB, 0xFF, 0xBF])
    assert encode_base64(raw) == "+/+/"
    assert encode_base64_urlsafe(raw) == "-_-_"
    assert encode_base64_urlsafe(b"f") == "Zg"


@pytest.mark.parametrize("junk", ["Z", "Zg=", "Zg===", "Z=g", "Zm9v!", "Zm 9v", "-_-_", "é", "Zm9vY"])
def test_decode_rejects_junk(junk):
    with pytest.raises(ValueError):
        decode_base64(junk)


# -- spec vectors ----------------------------------------------------------------


def test_spec_vector_empty_object(spec_key):
    assert spec_key.key_id == "ed25519:1"
    signed = sign_json({}, SPEC_SERVER, spec_key)
    assert signed == {"signatures": {"domain": {"ed25519:1": SPEC_EMPTY_SIG}}}
    verify_json(signed, SPEC_SERVER, "ed25519:1", spec_key.verify_key_bytes)


def test_spec_vector_object_with_data(spec_key):
    signed = sign_json({"one": 1, "two": "Two"}, SPEC_SERVER, spec_key)
    assert signed == {"one": 1, "two": "Two", "signatures": {"domain": {"ed25519:1": SPEC_DATA_SIG}}}
    verify_json(signed, SPEC_SERVER, "ed25519:1", spec_key.verify_key_bytes)


# -- round trips and tampering ---------------------------------------------------


def test_round_trip_keeps_unsigned_and_other_signatures(spec_key):
    other = SigningKey.generate()
    obj = {"a": [1, 2], "unsigned": {"age": 5}, "signatures": {"elsewhere": {"ed25519:x": "c2ln"}}}
    signed = sign_json(obj, "here", other)
    assert "here" not in obj["signatures"]  # input untouched
    assert signed["unsigned"] == {"age": 5}
    assert signed["signatures"]["elsewhere"] == {"ed25519:x": "c2ln"}
    verify_json(signed, "here", other.key_id, other.verify_key_bytes)
    # unsigned is not covered: changing it keeps the signature valid
    verify_json({**signed, "unsigned": {"age": 99}}, "here", other.key_id, other.verify_key_bytes)
    # a second signature by the same server is added beside the first
    both = sign_json(signed, "here", spec_key)
    assert set(both["signatures"]["here"]) == {other.key_id, "ed25519:1"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda o: o.__setitem__("a", [1, 3]),
        lambda o: o.__setitem__("extra", True),
        lambda o: o.pop("a"),
        lambda o: o["signatures"]["here"].__setitem__("ed25519:k", "!!notbase64"),
        lambda o: o["signatures"]["here"].__setitem__("ed25519:k", encode_base64(bytes(64))),
        lambda o: o["signatures"].pop("here"),
        lambda o: o.pop("signatures"),
    ],
    ids=["changed", "added", "removed", "junk-signature", "zero-signature", "no-server", "no-signatures"],
)
def test_tampered_objects_fail(tamper):
    key = SigningKey.from_seed(bytes(range(32)), "k")
    signed = sign_json({"a": [1, 2]}, "here", key)
    signed["signatures"] = {"here": dict(signed["signatures"]["here"])}
    tamper(signed)
    with pytest.raises(SignatureError):
        verify_json(signed, "here", "ed25519:k", key.verify_key_bytes)


def test_wrong_key_server_or_algorithm_fails(spec_key):
    signed = sign_json({"x": 1}, "here", spec_key)
    with pytest.raises(SignatureError):
        verify_json(signed, "here", "ed25519:1", SigningKey.generate().verify_key_bytes)
    with pytest.raises(SignatureError):
        verify_json(signed, "there", "ed25519:1", spec_key.verify_key_bytes)
    with pytest.raises(SignatureError):
        verify_json(signed, "here", "curve25519:1", spec_key.verify_key_bytes)
    with pytest.raises(SignatureError):
        verify_json(signed, "here", "ed25519:1", b"short")


# -- keys and key files ------------------------------------------------------


def test_generated_key_shape():
    key = SigningKey.generate()
    assert key.key_id.startswith("ed25519:a_") and len(key.version) == 6
    assert len(key.verify_key_bytes) == 32
    assert decode_base64(key.public_key_base64) == key.verify_key_bytes
    assert len(key.sign(b"x")) == 64
    assert SigningKey.generate("v9").key_id == "ed25519:v9"
    assert "seed" not in repr(key) and key.public_key_base64 in repr(key)


@pytest.mark.parametrize("seed, version", [(b"short", "v"), (bytes(32), ""), (bytes(32), "a b"), (bytes(32), "x:y")])
def test_bad_seed_or_version(seed, version):
    with pytest.raises(ValueError):
        SigningKey.from_seed(seed, version)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_and_load(tmp_path, spec_key):
    path = tmp_path / "signing.key"
    spec_key.save(path)
    algorithm, version, seed = path.read_text().split()
    # The spec's seed text has non-zero trailing bits, so we write "...XA0".
    assert (algorithm, version, decode_base64(seed)) == ("ed25519", "1", decode_base64(SPEC_SEED))
    assert path.read_text().endswith("\n") and "=" not in seed
    assert _mode(path) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.key_id == "ed25519:1" and loaded.verify_key_bytes == spec_key.verify_key_bytes
    # saving again replaces atomically and leaves no temporary files behind
    other = SigningKey.generate()
    other.save(path)
    assert SigningKey.load(path).verify_key_bytes == other.verify_key_bytes
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]


def test_save_ignores_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        SigningKey.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


def test_load_or_create(tmp_path):
    path = tmp_path / "k"
    first = SigningKey.load_or_create(path)
    assert path.exists() and _mode(path) == 0o600
    again = SigningKey.load_or_create(path)
    assert again.key_id == first.key_id and again.verify_key_bytes == first.verify_key_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


@pytest.mark.parametrize(
    "content", ["", "\n\n", "ed25519 1\n", "curve25519 1 " + SPEC_SEED, "ed25519 1 not*base64", "ed25519 1 Zm9v"]
)
def test_load_rejects_bad_files(tmp_path, content):
    path = tmp_path / "k"
    path.write_text(content)
    with pytest.raises(ValueError):
        SigningKey.load(path)


def test_load_accepts_padded_seed_and_blank_lines(tmp_path):
    path = tmp_path / "k"
    path.write_text(f"\ned25519 1 {SPEC_SEED}=\n")
    assert SigningKey.load(path).key_id == "ed25519:1"
