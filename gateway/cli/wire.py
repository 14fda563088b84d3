"""``lowband wire``: encode and decode the wire profiles from the shell.

Contract (checks outside the test suite rely on it):

* ``lowband wire encode --profile msc3079 FILE.json`` prints the CBOR as
  lowercase hex on one line; ``lowband wire decode --profile msc3079 HEX``
  prints the JSON on one line. ``--profile compact --context FILE`` does the
  same for the compact profile.
* Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import binascii
import json
import sys
from typing import Any

from lowband.codecs import compact, msc3079
from lowband.codecs.context import Context, default_context, load_context
from lowband.codecs.errors import WireError
from lowband.gateway.cli.main import UsageError

#: Largest JSON file ``wire encode`` reads.
MAX_JSON_BYTES = msc3079.MAX_DOCUMENT_BYTES


def register(subparsers: Any) -> None:
    """Add ``wire`` and its subcommands."""
    wire = subparsers.add_parser(
        "wire",
        help="encode and decode the wire formats (MSC3079 CBOR, compact profile)",
        description="Convert between Matrix JSON and the CBOR wire profiles.",
    )
    sub = wire.add_subparsers(dest="wire_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            choices=("msc3079", "compact"),
            required=True,
            help="msc3079: CBOR with the MSC3079 v1 integer keys; compact: the link profile (with a context table)",
        )
        p.add_argument(
            "--context",
            metavar="FILE",
            help="context table JSON file (compact profile only; default: the example table shipped with "
            "Lowband, version 1, rooms !sensors:gw.example and !alerts:gw.example)",
        )
        p.add_argument(
            "--ref-ts",
            type=int,
            metavar="MS",
            help="reference time in ms for compact timestamps (default: the context's epoch_ms)",
        )

    enc = sub.add_parser(
        "encode",
        help="JSON file → hex",
        description="Read a JSON document (a room event or a client-server body) and print its CBOR as hex.",
    )
    common(enc)
    enc.add_argument("file", metavar="FILE.json", help="JSON input file, or - for standard input")
    enc.set_defaults(handler=run_encode)

    dec = sub.add_parser(
        "decode",
        help="hex → JSON",
        description="Decode hex-encoded CBOR in the given profile and print the JSON on one line.",
    )
    common(dec)
    dec.add_argument("hex", metavar="HEX", help="the bytes as hex (spaces allowed), or - for standard input")
    dec.set_defaults(handler=run_decode)
    register_demo(sub)


def _context(args: argparse.Namespace) -> Context | None:
    if args.profile != "compact":
        if args.context:
            raise UsageError("--context only applies to --profile compact")
        return None
    if not args.context:
        return default_context()
    return load_context(args.context)


def _read_limited(stream: Any, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise WireError(f"{what} is larger than {limit} bytes")
    return data if isinstance(data, bytes) else data.encode()


def _refuse_constant(name: str) -> Any:
    raise WireError(f"JSON constant {name} is not allowed")


def parse_json(raw: bytes) -> Any:
    """Parse JSON text strictly: no NaN/Infinity, bounded nesting; WireError."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise WireError("JSON nesting is too deep") from None
    except UnicodeDecodeError:
        raise WireError("JSON input is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def run_encode(args: argparse.Namespace) -> int:
    """Handler of ``wire encode``."""
    ctx = _context(args)
    if args.file == "-":
        raw = _read_limited(sys.stdin.buffer, MAX_JSON_BYTES, "JSON input")
    else:
        try:
            with open(args.file, "rb") as f:
                raw = _read_limited(f, MAX_JSON_BYTES, f"JSON file {args.file}")
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    document = parse_json(raw)
    if ctx is None:
        data = msc3079.encode(document)
    else:
        data = compact.encode(document, ctx, args.ref_ts)
    print(data.hex())
    return 0


def run_decode(args: argparse.Namespace) -> int:
    """Handler of ``wire decode``."""
    ctx = _context(args)
    limit = msc3079.MAX_DOCUMENT_BYTES if ctx is None else compact.MAX_MESSAGE_BYTES
    text = args.hex
    if text == "-":
        text = _read_limited(sys.stdin.buffer, 2 * limit + 1024, "hex input").decode("ascii", "replace")
    text = "".join(text.split())
    if len(text) > 2 * limit:
        raise WireError(f"input of {len(text) // 2} bytes exceeds the limit of {limit} bytes")
    if not text:
        raise WireError("no hex input")
    if len(text) % 2:
        raise WireError("truncated hex: odd number of digits")
    try:
        data = binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise WireError("invalid hex: only 0-9 and a-f are allowed") from None
    document = msc3079.decode(data) if ctx is None else compact.decode(data, ctx, args.ref_ts)
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    return 0


def register_demo(sub: Any) -> None:
    """Add ``wire demo`` (kept separate so the contract commands stay together)."""
    demo = sub.add_parser(
        "demo",
        help="show one reading's way from device to room, byte by byte",
        description=(
            "Walk the reference telemetry reading through the compact profile, "
            "serial framing and LoRa fragmentation, and back, printing each step."
        ),
    )
    demo.add_argument("--mtu", type=int, default=11, help="fragment size for the fragmentation step (default 11)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``wire demo``: every step printed, and checked on the way back."""
    from lowband.codecs import fragment, framing
    from lowband.gateway.bench import wire as bench_wire

    ctx = bench_wire.REFERENCE_CONTEXT
    event = bench_wire.reference_events()["telemetry"]
    packed = compact.encode(event, ctx, bench_wire.NOW_MS)
    frame = framing.encode_frame(packed)
    pieces = fragment.fragment(frame, msg_id=1, mtu=args.mtu)
    print("1. the room event the gateway stores for one reading:")
    print("   " + json.dumps(event, ensure_ascii=False))
    print(f"   as HTTP+JSON request: {len(bench_wire.http_request(event))} bytes; "
          f"as MSC3079 CBOR: {len(msc3079.encode(event))} bytes")
    print(f"2. compact profile ({len(packed)} bytes): {packed.hex(' ')}")
    print(f"3. serial frame, COBS + CRC-16 + delimiter ({len(frame)} bytes): {frame.hex(' ')}")
    print(f"4. split for a {args.mtu}-byte MTU into {len(pieces)} fragments:")
    for piece in pieces:
        print(f"   {piece.hex(' ')}")
    reassembler = fragment.Reassembler()
    whole = None
    for piece in reversed(pieces):  # arrival order does not matter
        whole = reassembler.feed("demo", piece, now=0.0) or whole
    decoder = framing.FrameDecoder()
    # Line noise, then the lead 0x00 a sender puts before a frame after an idle line.
    received = decoder.feed(b"\x13\x37 line noise" + b"\x00" + (whole or b""))
    back = compact.decode(received[0], ctx, bench_wire.NOW_MS) if received else None
    ok = back == event
    print(f"5. reassembled out of order, line noise before the frame skipped, expanded: "
          f"{'identical to step 1' if ok else 'DIFFERENT'}")
    return 0 if ok else 1
