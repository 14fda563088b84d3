"""``lowband status``: a gateway's health summary as tables in the terminal (docs/status.md).

The summary comes from the gateway's data dir (``DATA_DIR/status.json``, which
the running gateway rewrites every 5 s) or from its admin API
(``GET /_lowband/admin/v1/status`` with an admin's access token). Either is
remote input here: it is read with a size bound, checked for its shape, and
every field is shown through helpers that turn a value of the wrong type into
"?" and strip control characters, so a truncated or hostile file gives one
line of error or a table with question marks, never a traceback or escape
sequences on the terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import EXIT_BAD_INPUT, UsageError

#: the most of a snapshot or an API answer read (a summary of 1,000 devices is about 1.5 MB)
MAX_SUMMARY_BYTES = 8 * 1024 * 1024
#: a snapshot older than this is said to be stale (the gateway rewrites it every 5 s)
STALE_AFTER_S = 15.0
#: refusals shown in the table (``--json`` has the whole ring)
REFUSALS_SHOWN = 15
#: rows shown per table at most (``--json`` has them all)
ROWS_SHOWN = 500
_TEXT_MAX = 60
_HEALTH_STYLE = {"ok": "green", "late": "yellow", "silent": "bold red", "never": "dim"}

_EPILOG = """\
where the summary comes from (one of):
  --data-dir D        read D/status.json, which a running gateway rewrites every 5 s
                      (and once more when it stops); an old file is reported as stale
  --url URL           ask a running gateway's admin API (GET /_lowband/admin/v1/status)
                      with an admin's access token from --token-file F or LOWBAND_ADMIN_TOKEN

what it shows:
  devices             health (ok, late: no frame for 1.5x its reading interval or 2 min,
                      silent: 5x or 10 min, never), last seen, link, RSSI/SNR, battery,
                      duty cycle left, frames in/out, refused frames, last reading
  bridges and peers   MQTT brokers and mappings, federation peers, application services
                      with their queues
  BLE sensors         health, last seen, RSSI, readings, refused advertisements, last
                      reading (with [ble] enabled or sensors added by lowband ble add)
  recent refusals     frames, messages and advertisements refused, newest first

exit status:
  0   the summary was shown (a stale snapshot too, with a warning)
  2   usage error, no snapshot or an unreadable one, gateway unreachable or token refused

examples:
  lowband status --data-dir /var/lib/lowband
  lowband status --data-dir /var/lib/lowband --watch 5
  LOWBAND_ADMIN_TOKEN=syt_... lowband status --url https://gw.example:8448 --json
"""


def register(subparsers: Any) -> None:
    """Add ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show a gateway's health: devices, bridges, peers, recent refusals",
        description="Show a gateway's health summary as tables: from its data dir or from its admin API.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", metavar="DIR", help="the gateway's data dir: read DIR/status.json")
    source.add_argument(
        "--url", metavar="URL", help="the gateway's base URL (client listener), e.g. http://127.0.0.1:8008"
    )
    parser.add_argument("--token-file", metavar="FILE",
                        help="file holding an admin's access token (with --url; else LOWBAND_ADMIN_TOKEN)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one JSON line each time")  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the summary once (or every ``--watch`` seconds) and show it; UsageError when there is none."""
    if args.token_file and not args.url:
        raise UsageError("--token-file goes with --url (a data dir needs no token)")
    if args.watch is not None and not 0.5 <= args.watch <= 3600:
        raise UsageError("--watch SECONDS must be between 0.5 and 3600")
    fetch = _fetcher(args)
    if args.watch is None:
        summary = fetch()
        if args.json:
            sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        else:
            _console().print(render(summary, time.time(), from_file=args.data_dir is not None))
        return 0
    return _watch(fetch, args.watch, args.json, from_file=args.data_dir is not None)


def _fetcher(args: argparse.Namespace) -> Any:
    if args.data_dir is not None:
        data_dir = Path(args.data_dir)
        return lambda: read_snapshot(data_dir)
    token = _token(args.token_file)
    url = status_url(args.url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        sys.stderr.write(f"lowband: warning: the admin token goes to {parts.hostname} over plain http; use https://\n")
    return lambda: fetch_status(url, token)


def _watch(fetch: Any, seconds: float, as_json: bool, from_file: bool) -> int:
    """Show the summary every ``seconds`` until Ctrl-C; a failed fetch is shown in its place and retried."""
    from rich.live import Live
    from rich.text import Text

    if as_json:
        try:
            while True:
                try:
                    sys.stdout.write(json.dumps(fetch(), sort_keys=True) + "\n")
                except UsageError as exc:
                    sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
                sys.stdout.flush()
                time.sleep(seconds)
        except KeyboardInterrupt:
            return 0
    console = _console()
    first = fetch()  # nothing to show at all: one error line and status 2, not an empty screen
    try:
        with Live(render(first, time.time(), from_file), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(seconds)
                try:
                    live.update(render(fetch(), time.time(), from_file), refresh=True)
                except UsageError as exc:
                    live.update(Text(f"{exc} (retrying every {seconds:g} s)", style="bold red"), refresh=True)
    except KeyboardInterrupt:
        return 0


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a file): wide enough that a device row is one line, unless COLUMNS says otherwise.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, width=wide)


# ------------------------------------------------------------------ reading


def read_snapshot(data_dir: Path) -> dict[str, Any]:
    """The summary in ``data_dir/status.json``; UsageError saying what is wrong (missing, too big, malformed)."""
    from lowband.gateway.api.http.status import SNAPSHOT_NAME

    path = data_dir / SNAPSHOT_NAME
    if not data_dir.is_dir():
        raise UsageError(f"no data dir {data_dir}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if not (data_dir / "server_name").exists():
            raise UsageError(f"{data_dir} is not a Lowband data dir (no server_name file)") from None
        raise UsageError(f"no status snapshot in {data_dir} yet: a running gateway writes {path} every 5 s; "
                         f"start one with `lowband serve --data-dir {data_dir}`") from None  # fmt: skip
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise UsageError(f"{path} is not a regular file")
        data = file.read(MAX_SUMMARY_BYTES + 1)
    return parse_summary(data, str(path))


def status_url(base: str) -> str:
    """The status endpoint under ``base`` (a gateway's base URL, or the endpoint's own URL); UsageError if not http(s)."""
    from lowband.gateway.api.http.status import STATUS_PATH

    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--url {base!r} must start with http:// or https://")
    base = base.rstrip("/")
    return base if base.endswith(STATUS_PATH) else base + STATUS_PATH


def _token(token_file: str | None) -> str:
    if token_file is not None:
        try:
            with open(token_file, "rb") as file:
                raw = file.read(4096)
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        token = raw.decode("utf-8", "replace").strip()
        where = f"the token file {token_file}"
    else:
        token = os.environ.get("LOWBAND_ADMIN_TOKEN", "").strip()
        where = "LOWBAND_ADMIN_TOKEN"
        if not token:
            raise UsageError("--url needs an admin's access token: --token-file FILE, or LOWBAND_ADMIN_TOKEN")
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(f"{where} does not hold one access token")
    return token


def fetch_status(url: str, token: str, timeout: float = 10.0) -> dict[str, Any]:
    """The summary from a running gateway's admin API; UsageError when it cannot be had (unreachable, refused)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_SUMMARY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _matrix_error(exc.read(4096))
        hint = {401: ": the token is missing or unknown", 403: ": the token's user is not a server admin",
                404: ": not a Lowband gateway, or one older than the status endpoint"}.get(exc.code, "")  # fmt: skip
        raise UsageError(f"{url} answered {exc.code}{detail}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"cannot reach {url}: {reason}") from None
    return parse_summary(data, url)


def _matrix_error(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    code = parsed.get("errcode") if isinstance(parsed, dict) else None
    return f" {clean(code)}" if isinstance(code, str) else ""


def parse_summary(data: bytes, where: str) -> dict[str, Any]:
    """The summary in ``data`` (read from ``where``); UsageError if too long, not JSON or not shaped like one."""
    if len(data) > MAX_SUMMARY_BYTES:
        raise UsageError(f"{where} is larger than {MAX_SUMMARY_BYTES // 1024 // 1024} MiB: not a status summary")
    if not data.strip():
        raise UsageError(f"{where} is empty: not a status summary")
    try:
        summary = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{where} is not valid JSON ({str(exc)[:80]}): truncated or not a status summary") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{where} is not a status summary (a JSON object is expected)")
    for key, kind in (("generated_at_ms", int), ("devices", list), ("server_name", str)):
        value = summary.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageError(f"{where} is not a status summary ({key!r} is missing or of the wrong type)")
    if not 0 <= summary["generated_at_ms"] < 10**15:
        raise UsageError(f"{where} is not a status summary ('generated_at_ms' is not a time)")
    return summary


# ------------------------------------------------------------------ showing


def clean(value: Any, limit: int = _TEXT_MAX) -> str:
    """``value`` as one short printable line: control and format characters become "?", long text is cut."""
    text = value if isinstance(value, str) else "?" if value is None else str(value)
    text = "".join("?" if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> float | None:
    """A finite number as a float, else None (a string, a bool, NaN, an integer too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a list (other items skipped), at most :data:`ROWS_SHOWN`."""
    return [item for item in value if isinstance(item, dict)][:ROWS_SHOWN] if isinstance(value, list) else []


def ago(ts_ms: Any, now: float) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago`` for a Unix time in ms; "never" for None, "?" if not one."""
    if ts_ms is None:
        return "never"
    when = _num(ts_ms)
    if when is None:
        return "?"
    seconds = now - when / 1000
    if seconds < 1:
        return "just now"
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit != "min" else 1):
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _count(value: Any) -> str:
    number = _num(value)
    return "—" if value is None else "?" if number is None else clean(f"{number:.0f}", 16)


def _sum(value: Any) -> Any:
    if isinstance(value, dict):
        numbers = [_num(v) for v in value.values()]
        return None if None in numbers else sum(n for n in numbers if n is not None)
    return value


def _battery(value: Any) -> str:
    if not isinstance(value, dict):
        return "—" if value is None else "?"
    number, unit = _num(value.get("value")), value.get("unit")
    if number is None:
        return "?"
    return f"{number:.2f} V" if unit == "V" else f"{number:.0f} %" if unit == "%" else f"{number:g} {clean(unit, 8)}"


def _radio(device: dict[str, Any]) -> str:
    rssi, snr = _num(device.get("rssi_dbm")), _num(device.get("snr_db"))
    if rssi is None and snr is None:
        return "—"
    parts = [f"{rssi:.0f} dBm" if rssi is not None else "—"]
    if snr is not None:
        parts.append(f"{snr:.1f} dB")
    return " / ".join(parts)


def _share(value: Any) -> str:
    number = _num(value)
    return "—" if value is None else "?" if number is None else f"{100 * number:.0f} %"


def _reading(value: Any) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("values"), dict):
        return "—" if value is None else "?"
    units = _obj(value.get("units"))
    parts = []
    for name, number in list(value["values"].items())[:6]:
        unit = units.get(name)
        shown = f"{number:g}" if _num(number) is not None else clean(number, 12)
        parts.append(f"{clean(name, 16)} {shown}{' ' + clean(unit, 8) if isinstance(unit, str) else ''}")
    return clean(", ".join(parts), 70)


def freshness(summary: dict[str, Any], now: float) -> str | None:
    """A warning when a snapshot is stale (its gateway stopped or is not running), else None."""
    stopped = _num(summary.get("stopped_at_ms"))
    if stopped is not None:
        return f"gateway stopped {_duration(max(0.0, now - stopped / 1000))} ago: this is its last snapshot"
    age = now - summary["generated_at_ms"] / 1000
    if age > STALE_AFTER_S:
        return f"gateway not running? snapshot from {_duration(age)} ago (a running gateway rewrites it every 5 s)"
    return None


def render(summary: dict[str, Any], now: float, from_file: bool = True) -> Any:
    """The summary as rich renderables (a header, the tables, a stale warning first when there is one)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    warning = freshness(summary, now) if from_file else None
    if warning:
        parts.append(Text(f"WARNING: {warning}", style="bold yellow"))
    process = _obj(summary.get("process"))
    rss = _num(process.get("rss_bytes"))
    uptime = _num(process.get("uptime_s"))
    header = Text()
    header.append(f"gateway {clean(summary['server_name'])}", style="bold")
    header.append(f" (lowband {clean(summary.get('version'), 20)})")
    if uptime is not None:
        header.append(f", up {_duration(uptime)}")
    header.append(f", as of {ago(summary['generated_at_ms'], now)}")
    if rss is not None:
        header.append(f", RSS {rss / 1e6:.0f} MB")
    if _num(process.get("cpu_s")) is not None:
        header.append(f", CPU {process['cpu_s']:.1f} s")
    workers = _obj(summary.get("workers"))
    if _num(workers.get("configured")) is not None:  # lowband serve --workers N (docs/scaling.md)
        header.append(f", reader workers {_count(workers.get('running'))}/{_count(workers.get('configured'))}"
                      f" ({_count(workers.get('restarts'))} restarted)")  # fmt: skip
    upkeep = _obj(summary.get("store_upkeep"))
    if _num(upkeep.get("rounds")) is not None:  # PostgreSQL with autovacuum off (docs/storage.md)
        failures = _num(upkeep.get("failures"))
        header.append(f", store upkeep {_count(upkeep.get('vacuums'))} vacuums, {_count(upkeep.get('analyses'))}"
                      f" analyses" + (f", {_count(failures)} failed rounds" if failures else ""))  # fmt: skip
    parts.append(header)

    listed = summary["devices"]
    healths = [d.get("health") for d in listed if isinstance(d, dict)]
    tally = ", ".join(f"{healths.count(h)} {h}" for h in _HEALTH_STYLE if h in healths)
    devices = Table(title=f"devices ({len(listed)}{': ' + tally if tally else ''})", title_justify="left")
    for column in ("device", "health", "last seen", "link", "RSSI / SNR", "battery", "duty left", "frames in/out",
                   "refused", "last reading"):  # fmt: skip
        devices.add_column(column, overflow="fold")
    for device in _dicts(summary["devices"]):
        health = clean(device.get("health"), 10)
        frames = f"{_count(device.get('frames_in'))}/{_count(device.get('frames_out'))}"
        devices.add_row(Text(clean(device.get("name"), 32), style="bold"),
                        Text(health, style=_HEALTH_STYLE.get(health, "")), Text(ago(device.get("last_seen_ms"), now)),
                        Text(clean(device.get("link"), 64)), Text(_radio(device)), Text(_battery(device.get("battery"))),
                        Text(_share(device.get("duty_cycle_left"))), Text(frames),
                        Text(_count(_sum(device.get("refused")))), Text(_reading(device.get("last_reading"))))  # fmt: skip
    if not devices.row_count:
        devices.add_row(Text("no device provisioned (lowband device add)", style="dim"), *[""] * 9)
    parts.append(devices)
    if len(listed) > devices.row_count:
        parts.append(Text(f"… {len(listed) - devices.row_count} more (lowband status --json lists them all)"))

    ble = summary.get("ble")
    if ble is not None:
        parts.append(_ble_table(_obj(ble), now))

    queues = Table(title="bridges and peers", title_justify="left")
    for column in ("kind", "name", "state", "queue / behind", "in flight", "failures", "last success"):
        queues.add_column(column)
    mqtt = _obj(summary.get("mqtt"))
    for broker in _dicts(mqtt.get("brokers")):
        connected = broker.get("connected")
        state = "connected" if connected is True else "disconnected" if connected is False else "?"
        queues.add_row("mqtt broker", Text(clean(broker.get("name"))), Text(f"{state} {clean(broker.get('broker'))}",
                       style="green" if connected is True else "red"), "", "", "", "")  # fmt: skip
    for mapping in _dicts(mqtt.get("mappings")):
        figures = (f"in {_count(mapping.get('received'))}, posted {_count(mapping.get('posted'))}, "
                   f"out {_count(mapping.get('published'))}, refused {_count(mapping.get('refused'))}")  # fmt: skip
        queues.add_row("mqtt mapping", Text(clean(mapping.get("name"))), Text(figures),
                       Text(_count(mapping.get("queued"))), "", "", "")  # fmt: skip
    for kind, key, rows in (("federation", "destination", summary.get("federation")),
                            ("appservice", "id", summary.get("appservices"))):  # fmt: skip
        for row in _dicts(rows):
            failures = _num(row.get("failures"))
            queues.add_row(kind, Text(clean(row.get(key))), Text("failing" if failures else "ok",
                           style="red" if failures else "green"), Text(_count(row.get("behind"))),
                           Text("yes" if row.get("in_flight") is True else "no"), Text(_count(row.get("failures"))),
                           Text(ago(row.get("last_success_ms"), now) if row.get("last_success_ms") is not None
                                or kind == "appservice" else "—"))  # federation does not keep it  # fmt: skip
    if queues.row_count:
        parts.append(queues)

    refusals = _dicts(summary.get("refusals"))
    table = Table(title=f"recent refusals ({len(refusals)}, newest first)", title_justify="left")
    for column in ("when", "component", "source", "kind", "count"):
        table.add_column(column)
    for entry in refusals[:REFUSALS_SHOWN]:
        table.add_row(Text(ago(entry.get("ts_ms"), now)), Text(clean(entry.get("component"), 12)),
                      Text(clean(entry.get("source"))), Text(clean(entry.get("kind"), 32)),
                      Text(_count(entry.get("count"))))  # fmt: skip
    if not refusals:
        table.add_row(Text("none", style="dim"), "", "", "", "")
    parts.append(table)
    return Group(*parts)


def _ble_table(ble: dict[str, Any], now: float) -> Any:
    """The BLE sensors table, its title naming the scanner's state (summary ``ble``)."""
    from rich.table import Table
    from rich.text import Text

    found = ble.get("sensors")
    listed: list[Any] = found if isinstance(found, list) else []
    healths = [s.get("health") for s in listed if isinstance(s, dict)]
    tally = ", ".join(f"{healths.count(h)} {h}" for h in _HEALTH_STYLE if h in healths)
    scanner = _obj(ble.get("scanner"))
    mode = clean(scanner.get("mode_in_use") or scanner.get("mode"), 12)
    where = f" on {clean(scanner.get('adapter'), 16)}" if isinstance(scanner.get("adapter"), str) else ""
    state = f"scanner {clean(scanner.get('state'), 16)}, {mode}{where}"
    if isinstance(scanner.get("last_error"), str) and scanner["last_error"]:
        state += f" ({clean(scanner['last_error'], 60)})"
    unknown = _count(ble.get("unknown_devices"))
    title = (f"BLE sensors ({len(listed)}{': ' + tally if tally else ''}) · {state}, {unknown} unknown "
             f"device{'' if unknown == '1' else 's'} in range, {_count(ble.get('dropped'))} dropped")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for column in ("sensor", "health", "last seen", "RSSI", "readings", "refused", "last reading"):
        table.add_column(column, overflow="fold")
    for sensor in _dicts(listed):
        health = clean(sensor.get("health"), 10)
        rssi = _num(sensor.get("rssi_dbm"))
        gatt = sensor.get("gatt")
        name = Text(clean(sensor.get("name"), 32), style="bold")
        if isinstance(gatt, dict):
            name.append(" (GATT, connected)" if gatt.get("connected") is True else " (GATT, not connected)",
                        style="" if gatt.get("connected") is True else "red")  # fmt: skip
        table.add_row(name, Text(health, style=_HEALTH_STYLE.get(health, "")), Text(ago(sensor.get("last_seen_ms"), now)),
                      Text("—" if sensor.get("rssi_dbm") is None else "?" if rssi is None else f"{rssi:.0f} dBm"),
                      Text(_count(sensor.get("readings"))), Text(_refused(sensor.get("refused"))),
                      Text(_reading(sensor.get("last_reading"))))  # fmt: skip
    if not table.row_count:
        table.add_row(Text("no BLE sensor configured (lowband ble add)", style="dim"), *[""] * 6)
    return table


def _refused(value: Any) -> str:
    """A refusal count with its kinds: ``3 (replay 2, downgrade 1)``."""
    total = _count(_sum(value))
    if not isinstance(value, dict) or not value or total in ("0", "?"):
        return total
    kinds = ", ".join(f"{clean(k, 20)} {_count(n)}" for k, n in list(value.items())[:4])
    return f"{total} ({kinds})"


__all__ = ["EXIT_BAD_INPUT", "fetch_status", "parse_summary", "read_snapshot", "register", "render", "run"]
