"""``lowband coap``: one request to the gateway's CoAP API (MSC3079), by hand.

Contract (used by checks outside the test suite; keep it stable):

* ``lowband coap [--url coap://HOST:PORT] METHOD PATH [--body JSON]``
  sends one request and prints the answer's body as JSON on stdout (CBOR
  decoded, MSC3079 integer keys expanded) and the CoAP code (``2.05``) on
  stderr; ``-v`` adds the bytes each way.
* PATH is an MSC3079 path code with its parameters (``0``,
  ``9/!room:example/m.room.message/txn1``) or a full path
  (``/_matrix/client/r0/sync``); a full path is sent as its code when it
  has one.
* Exit status: 0 for a 2.xx answer, 1 for a 4.xx/5.xx answer (the body is
  still printed), 2 for bad input (URL, JSON body, key file, options), 3
  when the gateway did not answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import EXIT_BAD_INPUT, UsageError

EXIT_OK, EXIT_ERROR_ANSWER, EXIT_NO_ANSWER = 0, 1, 3
DEFAULT_URL = "coap://127.0.0.1:5683"

_EPILOG = """\
PATH: an MSC3079 path code and its parameters separated by "/" (0 = /versions,
1 = login, 7 = sync, 9/ROOM/TYPE/TXN = send …), or a full /_matrix/... path.

exit status:
  0  the gateway answered 2.xx (the body is printed on stdout as JSON)
  1  the gateway answered 4.xx or 5.xx (its error body is printed the same way)
  2  bad input: URL, JSON body, key file, options
  3  no answer: nothing came back in --timeout seconds (or the port is closed)

examples:
  lowband coap GET 0
  lowband coap --user alice --password pw GET 7 --query timeout=0
  lowband coap --token syt_... PUT 9/'!room:example'/m.room.message/t1 --body '{"msgtype":"m.text","body":"hi"}'
  lowband coap --url coap://127.0.0.1:5684 --key alice.key --compact GET 7
"""


def register(subparsers: Any) -> None:
    """Add ``coap``."""
    parser = subparsers.add_parser(
        "coap",
        help="send one request to the CoAP API (MSC3079) and print the answer as JSON",
        description="Send one request to the gateway's low-bandwidth CoAP API (MSC3079: CBOR with integer keys, "
        "path codes) and print the answer as JSON (stdout) and its CoAP code (stderr).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", metavar="METHOD", type=str.upper, choices=("GET", "POST", "PUT", "DELETE"),
                        help="GET, POST, PUT or DELETE")  # fmt: skip
    parser.add_argument("path", metavar="PATH", help="path code and parameters (9/ROOM/TYPE/TXN) or a full path")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's CoAP address (default {DEFAULT_URL}; "
                        "the [coap] secure_bind port with --key)")  # fmt: skip
    parser.add_argument("--key", metavar="FILE", help="a client key file (lowband coap-client add): talk through a "
                        "Noise session on the secure port")  # fmt: skip
    parser.add_argument(
        "--compact", action="store_true", help="negotiate compact mode (Lowband's extension of MSC3079)"
    )
    parser.add_argument("--token", help="access token to send (option 256)")
    parser.add_argument("--user", help="log in as this user first (with --password)")
    parser.add_argument("--password", help="password for --user")
    parser.add_argument("--body", metavar="JSON", help="request body as JSON (sent as MSC3079 CBOR)")
    parser.add_argument("--query", metavar="K=V", action="append", default=[], help="a query parameter (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the bytes sent and received")
    parser.set_defaults(handler=run)


def _parse_body(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--body is not JSON: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Handler of ``coap``: see the module docstring for output and exit status."""
    from lowband.gateway.coap import client as coap_client

    body = _parse_body(args.body)
    if args.token and (args.user or args.password):
        raise UsageError("give either --token or --user with --password, not both")
    if bool(args.user) != bool(args.password):
        raise UsageError("--user and --password go together")
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    for item in args.query:
        if "=" not in item:
            raise UsageError(f"--query {item!r}: expected K=V")
    try:
        coap_client.parse_url(args.url)
    except coap_client.BadUrl as exc:
        raise UsageError(str(exc)) from None
    key_file = Path(args.key) if args.key else None
    try:
        return asyncio.run(_exchange(args, body, key_file))
    except coap_client.NoAnswer as exc:
        sys.stderr.write(f"lowband: no answer: {exc}\n")
        return EXIT_NO_ANSWER
    except (coap_client.KeyFileError, coap_client.BadUrl) as exc:
        raise UsageError(str(exc)) from None
    except coap_client.CoapClientError as exc:
        sys.stderr.write(f"lowband: error: {exc}\n")
        return EXIT_ERROR_ANSWER


async def _exchange(args: argparse.Namespace, body: Any, key_file: Path | None) -> int:
    from lowband.codecs.coap import code_text
    from lowband.gateway.coap.client import CoapClient

    client = await CoapClient.connect(args.url, key_file=key_file, compact=args.compact, timeout=args.timeout)
    try:
        if args.token:
            client.token = args.token
        if args.user:
            code, answer = await client.login(args.user, args.password)
            if code >> 5 != 2:
                sys.stderr.write(f"lowband: login failed: {code_text(code)} {json.dumps(answer)}\n")
                return EXIT_ERROR_ANSWER
        out_before, in_before = client.bytes_out, client.bytes_in
        code, answer = await client.request(args.method, args.path, body, query=args.query)
        print(json.dumps(answer, ensure_ascii=False, indent=2) if not isinstance(answer, str) else answer)
        sys.stdout.flush()
        sys.stderr.write(f"{code_text(code)}\n")
        if args.verbose:
            sys.stderr.write(f"bytes: {client.bytes_out - out_before} sent, {client.bytes_in - in_before} received "
                             f"(this request; {client.bytes_out} / {client.bytes_in} on the connection)\n")  # fmt: skip
    finally:
        await client.close()
    return EXIT_OK if code >> 5 == 2 else EXIT_ERROR_ANSWER


__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR_ANSWER", "EXIT_NO_ANSWER", "EXIT_OK", "register", "run"]
