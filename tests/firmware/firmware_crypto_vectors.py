"""Check the firmware link crypto (firmware/lbcrypto) against link_vectors.json.

Runs unchanged under CPython and the MicroPython unix port:

    python tests/firmware/firmware_crypto_vectors.py FIRMWARE_DIR DATA_DIR
    micropython -X heapsize=64k tests/firmware/firmware_crypto_vectors.py FIRMWARE_DIR DATA_DIR

FIRMWARE_DIR holds the lbcrypto package as .py sources or as .mpy files
from mpy-cross (compiling aes_modes.py on the target needs about 34 KB of
heap, so a 64 KB heap takes the .mpy form). Besides link_vectors.json it
checks published vectors written out below: RFC 7748 sections 5.2 and 6.1
(X25519), the GCM specification's AES-256 test cases 13, 14 and 16
(McGrew and Viega) and RFC 3610 packet vector 1 (CCM, M = 8, L = 2).

The code is kept terse on purpose: MicroPython compiles this file on the
target, and every line of it costs heap while it does.

On CPython, which has no cryptolib, install_host_cryptolib() first
registers a stand-in built on the `cryptography` package
(tests/firmware/test_firmware_crypto.py uses it too).

Prints one line per failing check, a timing line (and on MicroPython a heap
line), and ends with "N passed, M failed"; exits 1 if M > 0, 2 on a usage
error or a missing link_vectors.json.
"""

import sys
import gc
import hashlib
import json
from binascii import hexlify, unhexlify

try:
    from time import ticks_diff, ticks_us
except ImportError:  # CPython
    from time import perf_counter_ns

    def ticks_us():
        return perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b


def install_host_cryptolib():
    """Make `import cryptolib` work on CPython: aes(key, 1) is AES-ECB from `cryptography`.

    lbcrypto.aes_modes uses only aes(key, 1).encrypt(src, dst). Does
    nothing where a cryptolib exists (MicroPython).
    """
    try:
        import cryptolib  # noqa: F401
        return
    except ImportError:
        pass
    import types
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class aes:
        def __init__(self, key, mode):
            assert mode == 1, "host stand-in: ECB only"
            self.encryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

        def encrypt(self, src, dst):
            dst[:] = self.encryptor.update(bytes(src))

    sys.modules["cryptolib"] = module = types.ModuleType("cryptolib")
    module.aes = aes


def _hex(b):
    return hexlify(bytes(b)).decode()


def _eq(what, got, want):
    """None if got (bytes) is the hex string want, else the problem."""
    got = _hex(got)
    return None if got == want else "%s is %s, expected %s" % (what, got, want)


def _refused(call, *args):
    """None if call(*args) raises ValueError, else the problem."""
    try:
        call(*args)
    except ValueError:
        return None
    return "accepted, expected ValueError"


class T:
    """Tally of checks and the timings the report quotes."""

    passed = failed = 0
    x25519 = handshake = seal = None


def run(label, check, *args):
    try:
        problem = check(*args)
    except Exception as e:  # a crash is one more failure, named
        problem = "raised %s: %s" % (type(e).__name__, e)
    if problem:
        T.failed += 1
        print("FAIL %s: %s" % (label, problem))
    else:
        T.passed += 1
    gc.collect()


# ------------------------------------------------------------- published vectors

_ALICE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
_ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
_BOB = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
_BOB_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
_NINE = "09" + "00" * 31
# (scalar, u, X25519(scalar, u)): section 5.2's two vectors and the
# iteration k = u = 9 once, then section 6.1's key pairs and shared secret.
X25519 = (
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
    (_NINE, _NINE, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
    (_ALICE, _NINE, _ALICE_PUB),
    (_BOB, _NINE, _BOB_PUB),
    (_ALICE, _BOB_PUB, _SHARED),
    (_BOB, _ALICE_PUB, _SHARED),
)

_K16 = "feffe9928665731c6d6a8f9467308308" * 2
# (mode, name, key, nonce, aad, plaintext, ciphertext || tag)
AEAD = (
    ("gcm", "13", "00" * 32, "00" * 12, "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("gcm", "14", "00" * 32, "00" * 12, "", "00" * 16,
     "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
    ("gcm", "16", _K16, "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
     "76fc6ece0f4e1768cddf8853bb2d551b"),
    ("ccm8", "rfc3610 #1", "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", "00000003020100a0a1a2a3a4a5",
     "0001020304050607", "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e",
     "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0"),
)


def check_x25519(k, u, want):
    from lbcrypto import x25519

    t0 = ticks_us()
    got = x25519.scalarmult(unhexlify(k), unhexlify(u))
    took = ticks_diff(ticks_us(), t0)
    T.x25519 = took if T.x25519 is None else min(T.x25519, took)
    return _eq("X25519", got, want)


def check_aead(mode, name, key, nonce, aad, pt, want):
    from lbcrypto import aes_modes

    seal = getattr(aes_modes, mode + "_encrypt")
    open_ = getattr(aes_modes, mode + "_decrypt")
    key, nonce, aad, pt = unhexlify(key), unhexlify(nonce), unhexlify(aad), unhexlify(pt)
    got = seal(key, nonce, aad, pt)
    return (_eq("encrypt", got, want) or _eq("decrypt", open_(key, nonce, aad, got), _hex(pt))
            or _refused(open_, key, nonce, aad + b"x", got)
            or _refused(open_, key, nonce, aad, got[:-1] + bytes((got[-1] ^ 1,))))


# ------------------------------------------------------------- link_vectors.json


def check_key(entry):
    from lbcrypto import x25519

    private = hashlib.sha256(entry["label"].encode()).digest()
    return (_eq("SHA-256(label)", private, entry["private"])
            or _eq("public key", x25519.public_key(private), entry["public"]))


def _trace(doc, step, field):
    for entry in doc["handshake"]["trace"]:
        if entry["step"].startswith(step):
            return entry[field]


def _initiator(doc, epoch):
    from lbcrypto import noise_kk

    keys = doc["keys"]
    return noise_kk.Initiator(
        unhexlify(keys["device_static"]["private"]), unhexlify(keys["device_static"]["public"]),
        unhexlify(keys["gateway_static"]["public"]), doc["address"], epoch,
        unhexlify(keys["device_ephemeral"]["private"]))


def check_handshake(doc):
    from lbcrypto import noise_kk

    hs = doc["handshake"]
    problem = _eq("prologue", noise_kk.prologue(doc["address"], doc["epoch"]), hs["prologue"])
    if problem:
        return problem
    t0 = ticks_us()
    ini = _initiator(doc, doc["epoch"])
    h0 = ini.h
    msg1 = ini.message1()
    took = ticks_diff(ticks_us(), t0)
    frame = bytes((int(hs["hs1"]["header"], 16), doc["address"])) + msg1
    problem = (_eq("h after the pre-messages", h0, _trace(doc, "MixHash(gateway static", "h"))
               or _eq("message 1", msg1, hs["hs1"]["noise_message"])
               or _eq("HS1 frame", frame, hs["hs1"]["frame"])
               or _eq("ck after message 1", ini.ck, _trace(doc, "MixKey(ss", "ck"))
               or _eq("k after message 1", ini.k, _trace(doc, "MixKey(ss", "k"))
               or _eq("h after message 1", ini.h, _trace(doc, "MixHash(tag of empty payload 1", "h")))
    if problem:
        return problem
    # Damaged copies of message 2 are refused and leave the handshake
    # waiting for the genuine one.
    m2 = unhexlify(hs["hs2"]["noise_message"])
    for bad in (bytes((m2[0] ^ 1,)) + m2[1:], m2[:-1] + bytes((m2[-1] ^ 1,)), m2[:-1],
                bytes(32) + m2[32:]):
        problem = _refused(ini.finish, bad)
        if problem:
            return "damaged message 2 %s: %s" % (_hex(bad), problem)
    t0 = ticks_us()
    k_up, k_down = ini.finish(m2)
    T.handshake = took + ticks_diff(ticks_us(), t0)
    if ini.ck is not None or ini.k is not None:
        return "chaining key and cipher key kept after the handshake"
    try:
        ini.finish(m2)
        return "a second finish() was accepted"
    except RuntimeError:
        pass
    return (_eq("k_up", k_up, hs["k_up"]) or _eq("k_down", k_down, hs["k_down"])
            or _eq("handshake hash", ini.h, hs["handshake_hash"]))


def check_epoch_binding(doc):
    # The same keys proposing the next epoch: the HS2 made for the
    # vector's epoch must fail.
    ini = _initiator(doc, (doc["epoch"] + 1) % 8)
    if _hex(ini.message1()) == doc["handshake"]["hs1"]["noise_message"]:
        return "message 1 does not depend on the epoch"
    return _refused(ini.finish, unhexlify(doc["handshake"]["hs2"]["noise_message"]))


def check_data(v, keys):
    from lbcrypto import link_aead

    key, d, c = keys[v["key"]], v["direction"], v["counter"]
    aad = bytes((int(v["header"], 16), v["address"], c & 0xFF)) + unhexlify(v["ack"] or "")
    pt = unhexlify(v["plaintext"])
    t0 = ticks_us()
    sealed = link_aead.seal(key, d, c, aad, pt)
    if v["name"] == "uplink_reading":
        T.seal = ticks_diff(ticks_us(), t0)
    return (_eq("aad", aad, v["aad"]) or _eq("nonce", link_aead.nonce(d, c), v["nonce"])
            or _eq("seal", sealed, v["ciphertext_tag"]) or _eq("frame", aad + sealed, v["frame"])
            or _eq("open", link_aead.open(key, d, c, aad, sealed), v["plaintext"])
            or _refused(link_aead.open, key, 1 - d, c, aad, sealed))


def check_reject(v, keys):
    # A gateway in state highest = -1 receives the frame: the clear bytes
    # up to seq (and the ack byte if the ACK bit says so) are the aad.
    from lbcrypto import link_aead

    f = unhexlify(v["frame"])
    n = 4 if f[0] & 0x10 else 3
    c = link_aead.counter_from_seq(-1, f[2])
    return _refused(link_aead.open, keys["k_up"], link_aead.UP, c, f[:n], f[n:])


def check_counter(v):
    from lbcrypto import link_aead

    got = link_aead.counter_from_seq(v["highest"], v["low_byte"])
    return None if got == v["counter"] else "gave %d, expected %d" % (got, v["counter"])


# ------------------------------------------------------------- main


def run_link(doc):
    for name, entry in doc["keys"].items():
        run("key " + name, check_key, entry)
    run("handshake", check_handshake, doc)
    run("handshake epoch binding", check_epoch_binding, doc)
    hs = doc["handshake"]
    keys = {"k_up": unhexlify(hs["k_up"]), "k_down": unhexlify(hs["k_down"])}
    for v in doc["data"]:
        run("data " + v["name"], check_data, v, keys)
    for v in doc["rejects"]:
        run("reject " + v["name"], check_reject, v, keys)
    for v in doc["counter_reconstruction"]:
        run("counter %d/%d" % (v["highest"], v["low_byte"]), check_counter, v)


def main(argv):
    if len(argv) != 3:
        print("usage: firmware_crypto_vectors.py FIRMWARE_DIR DATA_DIR")
        return 2
    install_host_cryptolib()
    sys.path.insert(0, argv[1])
    import lbcrypto  # noqa: F401  -- a wrong FIRMWARE_DIR fails here

    for v in X25519:
        run("rfc7748 " + v[0][:8] + " " + v[1][:8], check_x25519, *v)
    for v in AEAD:
        run(v[0] + " " + v[1], check_aead, *v)
    path = argv[2] + "/link_vectors.json"
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError:
        print("FAIL: %s not found" % path)
        return 2
    # Parsed, the file takes ~43 KB of a 64-bit unix port's heap; the parts
    # this script does not check go at once.
    doc.pop("comment", None)
    doc.pop("replay_window", None)
    gc.collect()
    run_link(doc)
    doc = None
    gc.collect()
    print("time (%s): x25519 %s us, handshake %s us, seal of the reading %s us"
          % (sys.implementation.name, T.x25519, T.handshake, T.seal))
    if sys.implementation.name == "micropython":
        print("heap: %d bytes free, %d in use after the run" % (gc.mem_free(), gc.mem_alloc()))
    print("%d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
