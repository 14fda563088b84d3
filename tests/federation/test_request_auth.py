"""X-Matrix request signing and server key documents: pure, with fixed keys and byte-level checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowband.gateway.matrix.canonical_json import encode_canonical_json
from lowband.gateway.matrix.request_auth import (
    AuthHeaderError,
    authorization_header,
    parse_authorization,
    request_json,
    verify_request,
)
from lowband.gateway.matrix.server_keys import SEVEN_DAYS_MS, KeyResponseError, key_document, parse_key_document
from lowband.gateway.matrix.signing import SignatureError, SigningKey, encode_base64, sign_json

ORIGIN = SigningKey.from_seed(bytes(range(32)), "k1")
OTHER = SigningKey.from_seed(bytes(range(1, 33)), "k2")
URI = "/_matrix/federation/v1/send/txn1?x=%2F"
BODY = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"typing": True}}]}


def test_a_header_we_make_verifies_and_names_everything():
    header = authorization_header("put", URI, "a.example:8448", "b.example", ORIGIN, BODY)
    assert header.startswith('X-Matrix origin="a.example:8448",destination="b.example",key="ed25519:k1",sig="')
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key) == ("a.example:8448", "b.example", "ed25519:k1")
    verify_request(auth, "PUT", URI, "b.example", BODY, ORIGIN.verify_key_bytes)


def test_the_signature_covers_the_method_uri_destination_and_body():
    auth = parse_authorization(authorization_header("PUT", URI, "a", "b", ORIGIN, BODY))
    for method, uri, body in (("POST", URI, BODY), ("PUT", URI + "&y=1", BODY), ("PUT", URI, {**BODY, "pdus": [1]}),
                              ("PUT", URI, None)):  # fmt: skip
        with pytest.raises(SignatureError):
            verify_request(auth, method, uri, "b", body, ORIGIN.verify_key_bytes)
    with pytest.raises(SignatureError):
        verify_request(auth, "PUT", URI, "b", BODY, OTHER.verify_key_bytes)
    with pytest.raises(AuthHeaderError):
        verify_request(auth, "PUT", URI, "c", BODY, ORIGIN.verify_key_bytes)


def test_the_signed_object_is_the_specs():
    # What the sender signs, spelled out: the signature must be the one over exactly this object.
    signed = sign_json({"method": "GET", "uri": "/_matrix/key/v2/server", "origin": "a", "destination": "b"}, "a", ORIGIN)
    header = authorization_header("GET", "/_matrix/key/v2/server", "a", "b", ORIGIN)
    assert parse_authorization(header).sig == signed["signatures"]["a"]["ed25519:k1"]
    assert request_json("get", "/x", "a", "b") == {"method": "GET", "uri": "/x", "origin": "a", "destination": "b"}


@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix origin=a.example:8448,key="ed25519:k1",sig=c2ln,destination=b',  # bare values, colons bare
        'x-matrix  Origin="a.example:8448", KEY="ed25519:k1" ,\tSig="c2ln", destination="b", extra="?"',
        'X-Matrix origin="a.ex\\ample:8448",key="ed25519:k1",sig="c2ln",destination="b"',  # escape undone
    ],
)
def test_lenient_parsing_as_the_spec_asks(header):
    auth = parse_authorization(header)
    assert (auth.origin, auth.key, auth.sig, auth.destination) == ("a.example:8448", "ed25519:k1", "c2ln", "b")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer abc", "not X-Matrix"),
        ('X-Matrix origin="a",key="ed25519:k1"', "lacks sig"),
        ('X-Matrix origin="a,key="ed25519:k1",sig="x"', "malformed"),
        ("X-Matrix " + "a=b," * 2000, "too long"),
        ('X-Matrix origin="",key="k",sig="s"', "lacks origin"),
    ],
)
def test_unusable_headers_are_one_documented_error(header, message):
    with pytest.raises(AuthHeaderError, match=message):
        parse_authorization(header)


def test_a_missing_destination_is_accepted_for_old_servers():
    signed = sign_json(request_json("GET", "/x", "a", "b"), "a", ORIGIN)
    auth = parse_authorization(f'X-Matrix origin=a,key=ed25519:k1,sig={signed["signatures"]["a"]["ed25519:k1"]}')
    assert auth.destination is None
    verify_request(auth, "GET", "/x", "b", None, ORIGIN.verify_key_bytes)


def test_our_key_document_parses_and_carries_old_keys():
    doc = key_document("a.example", ORIGIN, 1_000_000, {"ed25519:old": (OTHER.verify_key_bytes, 500)})
    keys = parse_key_document(doc, "a.example")
    assert keys.verify_keys == {"ed25519:k1": ORIGIN.verify_key_bytes}
    assert keys.key("ed25519:old") == OTHER.verify_key_bytes and keys.key("ed25519:none") is None
    assert keys.key_valid_until("ed25519:k1", fetched_ts=0) == 1_000_000
    assert keys.key_valid_until("ed25519:k1", fetched_ts=-SEVEN_DAYS_MS) == 0  # capped at seven days after fetching
    assert keys.key_valid_until("ed25519:old", fetched_ts=0) == 500


def _doc(**changes):
    doc = {"server_name": "a", "verify_keys": {"ed25519:k1": {"key": ORIGIN.public_key_base64}}, "old_verify_keys": {},
           "valid_until_ts": 5}  # fmt: skip
    doc.update(changes)
    return sign_json(doc, "a", ORIGIN)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a JSON object"),
        (_doc(server_name="evil"), "about 'evil'"),
        (_doc(valid_until_ts="5"), "valid_until_ts"),
        (_doc(verify_keys={"ed25519:k1": {"key": encode_base64(b"short")}}), "not 32"),
        (_doc(verify_keys={"rsa:k1": {"key": ORIGIN.public_key_base64}}), "is not ed25519"),
        (_doc(verify_keys={"ed25519:k 1": {"key": ORIGIN.public_key_base64}}), "is not ed25519"),
        (_doc(verify_keys={"ed25519:k1": {"key": "!!"}}), "not base64"),
        (_doc(old_verify_keys={"ed25519:o": {"key": ORIGIN.public_key_base64}}), "expired_ts"),
        (_doc(verify_keys={f"ed25519:k{i}": {"key": ORIGIN.public_key_base64} for i in range(40)}), "more than"),
        (sign_json({"server_name": "a", "verify_keys": {"ed25519:k1": {"key": ORIGIN.public_key_base64}},
                    "valid_until_ts": 5}, "a", OTHER), "not signed by any"),  # fmt: skip
        ({**_doc(), "valid_until_ts": 6}, "does not verify"),
    ],
)
def test_bad_key_documents_are_refused(doc, message):
    with pytest.raises(KeyResponseError, match=message):
        parse_key_document(doc, "a")


def test_the_transaction_example_of_the_docs_is_what_the_code_signs():
    # docs/federation.md "On the wire": the key from seed bytes 0..31, its header and signed bytes
    key = SigningKey.from_seed(bytes(range(32)), "a_1")
    body = {"origin": "127.0.0.1:8448", "origin_server_ts": 1764849600000, "pdus": [],
            "edus": [{"edu_type": "m.typing", "content": {"room_id": "!r:127.0.0.1:8448",
                                                           "user_id": "@alice:127.0.0.1:8448", "typing": True}}]}  # fmt: skip
    uri = "/_matrix/federation/v1/send/a_1.3"
    docs = (Path(__file__).parents[2] / "docs" / "federation.md").read_text()
    header = authorization_header("PUT", uri, "127.0.0.1:8448", "192.168.1.20:8448", key, body)
    signed_bytes = encode_canonical_json(request_json("PUT", uri, "127.0.0.1:8448", "192.168.1.20:8448", body))
    assert f"Authorization: {header}\n" in docs
    assert signed_bytes.decode() + "\n" in docs
    assert json.dumps(body, separators=(",", ":")) in docs  # the body as sent
    assert encode_base64(key.verify_key_bytes) in docs
