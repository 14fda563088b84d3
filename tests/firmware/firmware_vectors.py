"""Check the firmware codec (firmware/lbwire) against the shared vectors.

Runs unchanged under CPython and the MicroPython unix port:

    python tests/firmware/firmware_vectors.py FIRMWARE_DIR DATA_DIR
    micropython -X heapsize=64k tests/firmware/firmware_vectors.py FIRMWARE_DIR DATA_DIR

FIRMWARE_DIR holds the lbwire package as .py sources or as .mpy files from
mpy-cross. Compiling the sources on the device needs about 60 KB of heap
for cbor.py alone, so a 64 KB heap needs the .mpy form (which is also what
mip installs and what freezing does); the sources need about 96 KB.

Prints one line per failing vector, a note for each vector file that is
missing, and ends with "N passed, M failed"; exits 1 if M > 0 (2 on a
usage error).
"""

import sys

try:
    import gc
except ImportError:  # pragma: no cover - both runtimes have gc
    gc = None

from binascii import hexlify, unhexlify
import json


def _hex(b):
    return hexlify(bytes(b)).decode()


def _join(folder, name):
    # MicroPython has no os.path.
    if folder.endswith("/"):
        return folder + name
    return folder + "/" + name


def _load(path):
    """The parsed JSON file at path, or None if it cannot be opened."""
    try:
        f = open(path, "r")
    except OSError:
        return None
    try:
        return json.load(f)
    finally:
        f.close()


_WS = " \t\r\n"


def _stream(path, each):
    """Call each(vector) for every element of the file's "vectors" array
    (each=None: only read the other fields).

    The file is read in small chunks and only one vector is parsed at a
    time: a whole vector file parsed at once does not fit a 64 KB heap next
    to the codec. Returns the other top-level fields as a dict, or None if
    the file cannot be opened. Raises ValueError if there is no "vectors"
    array or the JSON is cut short.
    """
    try:
        f = open(path, "r")
    except OSError:
        return None
    head = ""  # text before the array (phase 0), kept for the skeleton
    tail = []  # text after the array (phase 2)
    parts = []  # pieces of the element being read (phase 1)
    phase = 0
    depth = 0
    in_str = False
    escape = False
    try:
        while True:
            chunk = f.read(256)
            if not chunk:
                break
            i = 0
            if phase == 0:
                head += chunk
                key = head.find('"vectors"')
                if key < 0:
                    continue
                j = key + 9
                while j < len(head) and head[j] in _WS:
                    j += 1
                if j < len(head) and head[j] != ":":
                    raise ValueError('"vectors" is not a key')
                j += 1
                while j < len(head) and head[j] in _WS:
                    j += 1
                if j >= len(head):
                    continue  # the "[" is in the next chunk
                if head[j] != "[":
                    raise ValueError('"vectors" is not an array')
                chunk = head[j + 1:]
                head = head[:j + 1]
                phase = 1
            if phase == 1:
                start = -1 if depth == 0 else 0
                n = len(chunk)
                while i < n:
                    c = chunk[i]
                    i += 1
                    if in_str:
                        if escape:
                            escape = False
                        elif c == "\\":
                            escape = True
                        elif c == '"':
                            in_str = False
                        continue
                    if depth == 0:
                        if c in _WS or c == ",":
                            continue
                        if c == "]":
                            phase = 2
                            break
                        if c != "{":
                            raise ValueError("vectors must be objects")
                        start = i - 1
                    if c == '"':
                        in_str = True
                    elif c == "{" or c == "[":
                        depth += 1
                    elif c == "}" or c == "]":
                        depth -= 1
                        if depth == 0:
                            if each is not None:
                                parts.append(chunk[start:i])
                                text = "".join(parts)
                                parts = []
                                each(json.loads(text))
                                text = None
                                _collect()
                            start = -1
                if phase == 1 and depth > 0 and each is not None:
                    parts.append(chunk[start:])
            if phase == 2:
                tail.append(chunk[i:])
    finally:
        f.close()
    if phase != 2:
        raise ValueError("no complete \"vectors\" array")
    return json.loads(head + "]" + "".join(tail))


def _collect():
    if gc is not None:
        gc.collect()


class RX:
    """Receive objects made once per phase, right after the import, and
    reused for every vector -- as a device does. Made later, on a heap
    fragmented by parsed JSON, they may not fit a 64 KB heap."""

    decoder = None
    reassembler = None


def _use(module):
    """Import lbwire.<module> alone (plus what it imports)."""
    __import__("lbwire." + module)
    lbwire = sys.modules["lbwire"]
    if module == "frame":
        RX.decoder = lbwire.frame.Decoder()
    elif module == "frag":
        RX.reassembler = lbwire.frag.Reassembler()


def _unload():
    """Forget every lbwire submodule so its bytecode can be collected.

    A board freezes or loads only the features it needs; holding all four
    modules at once as RAM bytecode next to the vector data does not fit a
    64 KB heap.
    """
    RX.decoder = RX.reassembler = None
    lbwire = sys.modules["lbwire"]
    for key in list(sys.modules):
        if key.startswith("lbwire."):
            del sys.modules[key]
            try:
                delattr(lbwire, key[7:])
            except AttributeError:
                pass
    _collect()


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, label, check, vector, *extra):
        name = vector.get("name")
        try:
            problem = check(vector, *extra)
        except Exception as e:  # a crash is one more failure, named
            problem = "raised %s: %s" % (type(e).__name__, e)
        if problem:
            self.failed += 1
            print("FAIL %s %r: %s" % (label, name, problem))
        else:
            self.passed += 1


# ------------------------------------------------------------- framing


def check_frame(v):
    from lbwire import frame

    payload = unhexlify(v["payload"])
    want = unhexlify(v["frame"])
    got = frame.encode(payload)
    if got != want:
        return "encode gave %s, expected %s" % (_hex(got), _hex(want))
    got = frame.encode(payload, lead=True)
    if got != b"\x00" + want:
        return "encode(lead=True) gave %s" % _hex(got)
    buf = bytearray(frame.encoded_size(len(payload)))
    n = frame.encode_into(buf, payload)
    if bytes(buf[:n]) != want:
        return "encode_into gave %s" % _hex(buf[:n])
    dec = RX.decoder
    dec.reset()
    ok = dec.ok
    out = dec.feed(want)
    if out != [payload] or dec.ok != ok + 1:
        return "decode gave %r" % ([_hex(p) for p in out],)
    # The same frame behind line noise, fed byte by byte.
    errors = dec.errors
    out = dec.feed(b"\x13\x37\x00")
    for i in range(len(want)):
        out += dec.feed(want[i:i + 1])
    if out != [payload] or dec.errors != errors + 1:
        return "byte-wise decode after noise gave %r" % ([_hex(p) for p in out],)
    return None


# ------------------------------------------------------------- fragmentation


def _reassemble(hexes, backwards):
    # The vector's fragments are decoded one at a time: 128 fragment
    # objects at once next to the parsed vector crowd a 64 KB heap.
    r = RX.reassembler
    count = len(hexes)
    result = None
    for k in range(count):
        got = r.add(unhexlify(hexes[count - 1 - k if backwards else k]), 1000 + k)
        if got is not None:
            if result is not None or k != count - 1:
                return "complete before the last fragment"
            result = got
    return result


def check_fragment(v):
    from lbwire import frag

    payload = unhexlify(v["payload"])
    want = v["fragments"]
    got = frag.fragment(payload, v["msg_id"], v["mtu"])
    if len(got) != len(want):
        return "fragment gave %d fragments, expected %d" % (len(got), len(want))
    for i in range(len(got)):
        if got[i] != unhexlify(want[i]):
            return "fragment %d is %s, expected %s" % (i, _hex(got[i]), want[i])
    got = None
    _collect()
    for backwards in (False, True):
        out = _reassemble(want, backwards)
        if out != payload:
            return "%s reassembly gave %s" % (
                "reversed" if backwards else "in-order",
                out if out is None or isinstance(out, str) else _hex(out))
    return None


# ------------------------------------------------------------- compact


def check_compact(v, version):
    from lbwire import compact

    data = unhexlify(v["compact"])
    form = v["form"]
    msg = compact.decode(data, version)
    kind, room, sender, age, payload = msg
    if kind != form["kind"]:
        return "decoded kind %d, expected %d" % (kind, form["kind"])
    if kind in (1, 2):
        if (room, sender, age) != (form["room"], form["sender"], form["age"]):
            return "decoded room/sender/age %r, expected %r" % (
                (room, sender, age), (form["room"], form["sender"], form["age"]))
    if kind == 1:
        values = [[ch, m] for ch, m in payload]
        if values != form["values"]:
            return "decoded values %r, expected %r" % (values, form["values"])
    elif kind == 2 and payload != form["body"]:
        return "decoded body %r, expected %r" % (payload, form["body"])
    again = compact.encode(version, msg)
    if again != data:
        return "re-encoded to %s, expected %s" % (_hex(again), _hex(data))
    if kind == 1:
        buf = bytearray(64)
        mask = 0
        for ch, _ in payload:
            mask |= 1 << ch
        n = compact.encode_telemetry_into(
            buf, version, age, mask, [m for _, m in payload], room, sender)
        if bytes(buf[:n]) != data:
            return "encode_telemetry_into gave %s" % _hex(buf[:n])
    try:
        compact.decode(data, version + 1)
    except ValueError:
        pass
    else:
        return "accepted under context version %d" % (version + 1)
    return None


# ------------------------------------------------------------- main


def main(argv):
    if len(argv) != 3:
        print("usage: firmware_vectors.py FIRMWARE_DIR DATA_DIR")
        return 2
    sys.path.insert(0, argv[1])
    data_dir = argv[2]
    import lbwire  # noqa: F401  -- a wrong FIRMWARE_DIR fails here

    tally = Tally()

    for name, label, module, check in (
        ("framing_vectors.json", "framing", "frame", check_frame),
        ("fragment_vectors.json", "fragment", "frag", check_fragment),
    ):
        _use(module)
        doc = _stream(_join(data_dir, name), lambda v: tally.run(label, check, v))
        if doc is None:
            print("skip: %s not found" % name)
        _unload()

    # The context version is needed before the first vector, so the small
    # top-level fields are read in a first pass that parses no vector.
    path = _join(data_dir, "compact_vectors.json")
    doc = _stream(path, None)
    if doc is None:
        print("skip: compact_vectors.json not found")
    else:
        ctx = _load(_join(data_dir, doc.get("context", "context_v1.json")))
        if ctx is None:
            print("FAIL compact: context file %r not found" % doc.get("context"))
            tally.failed += 1
        else:
            version = ctx["version"]
            ctx = doc = None
            _use("compact")
            _stream(path, lambda v: tally.run("compact", check_compact, v, version))
            _unload()

    if sys.implementation.name == "micropython":
        print("heap: %d bytes free, %d in use after the run" % (gc.mem_free(), gc.mem_alloc()))
    print("%d passed, %d failed" % (tally.passed, tally.failed))
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
