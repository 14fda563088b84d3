"""``lowband bench NAME --plot FILE.png``: a benchmark's result drawn beside its anchor.

One drawing routine serves every benchmark. What a benchmark's figure shows
is data, in :data:`DESCRIPTIONS`: panels of bar groups, each bar reading one
value out of the result dict (:func:`at`), each group with at most one
anchor bar (Synapse, raw Mosquitto, HTTP+JSON, time on air, a heap budget…).
Every measured bar of a group is labelled with its value and its ratio to
that anchor; a bar whose value is missing (``--only lowband``, a side that
failed, no E2EE client) is drawn as "not measured", so a run without its
anchor still plots and says so.

matplotlib is imported only when a figure is drawn (it is the optional
``lowband[plot]`` extra), with the Agg canvas and no pyplot: no global
state, no display. :func:`require_matplotlib` tells the CLI early whether
it is there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Getter = Callable[[dict[str, Any]], float | None]
Role = Literal["measured", "anchor", "reference"]

NOT_MEASURED = "not measured"
ANCHOR_NOT_MEASURED = "anchor not measured"
INSTALL_HINT = "pip install 'lowband[plot]'"

# Colours per role, the same in every figure: ours in blues, the anchor grey, references hatched gold; a
# second bar of the same role in a group takes the next shade.
_COLOURS: dict[Role, tuple[str, ...]] = {
    "measured": ("#1f6fb4", "#6baed6", "#08306b"),
    "anchor": ("#8c8c8c",),
    "reference": ("#d9a441", "#f2d28b"),
}


class PlotUnavailable(Exception):
    """matplotlib cannot be imported; the message says how to install it."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` (with the install command) when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed ({exc}): {INSTALL_HINT}") from None


# --------------------------------------------------------------------------------------------- descriptions


def at(*path: str, scale: float = 1.0) -> Getter:
    """A getter of the number at ``path`` in a result dict, times ``scale``; None when absent or not a number."""

    def get(result: dict[str, Any]) -> float | None:
        value: Any = result
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value) * scale

    return get


def plus(getter: Getter, amount: float) -> Getter:
    """``getter``'s value plus ``amount`` (None stays None): a target such as "time on air + 250 ms"."""

    def get(result: dict[str, Any]) -> float | None:
        value = getter(result)
        return None if value is None else value + amount

    return get


def times(getter: Getter, factor: float) -> Getter:
    """``getter``'s value times ``factor`` (None stays None): a target such as "70 % of raw"."""

    def get(result: dict[str, Any]) -> float | None:
        value = getter(result)
        return None if value is None else value * factor

    return get


@dataclass(frozen=True)
class Bar:
    """One bar: its legend label, where its value is, and its role.

    A ``measured`` bar is labelled with its ratio to the group's ``anchor``
    bar; a ``reference`` bar (another published figure, a target) is drawn
    for comparison without a ratio.
    """

    label: str
    value: Getter
    role: Role = "measured"
    short: str = ""  # the anchor's name in ratio labels, when ``label`` is long

    def name(self) -> str:
        """The name ratio labels use for this bar."""
        return self.short or self.label


@dataclass(frozen=True)
class Group:
    """Bars side by side at one position on the x axis, under ``label``."""

    label: str
    bars: tuple[Bar, ...]

    def anchor(self) -> Bar | None:
        """The group's anchor bar, if it has one."""
        return next((bar for bar in self.bars if bar.role == "anchor"), None)


@dataclass(frozen=True)
class Panel:
    """One set of axes: a title, the unit of its y axis, its groups, and which way is better."""

    title: str
    unit: str
    groups: tuple[Group, ...]
    better: Literal["higher", "lower", ""] = ""


@dataclass(frozen=True)
class Description:
    """What one benchmark's figure shows: panels, the anchor named in the title, and notes under the panels."""

    title: str
    anchor: str
    panels: tuple[Panel, ...]
    notes: Callable[[dict[str, Any]], list[str]] = field(default=lambda result: [])


def versus(label: str, ours: Getter, theirs: Getter, ours_label: str = "Lowband", theirs_label: str = "Synapse") -> Group:
    """A group of our measured bar beside the anchor's."""
    return Group(label, (Bar(ours_label, ours), Bar(theirs_label, theirs, "anchor")))


def _sides(key: str, ours: tuple[str, ...] = ("lowband",), theirs: tuple[str, ...] = ("synapse",)) -> tuple[Getter, Getter]:
    return at(*ours, key), at(*theirs, key)


def _side_by_side(label: str, key: str, ours: tuple[str, ...] = ("lowband",)) -> Group:
    mine, theirs = _sides(key, ours)
    return versus(label, mine, theirs)


def _counts(result: dict[str, Any], sides: dict[str, dict[str, Any] | None], keys: tuple[str, ...]) -> list[str]:
    """'Lowband: lost 0, duplicated 0' for each side that has the keys."""
    lines = []
    for name, figures in sides.items():
        if not isinstance(figures, dict):
            continue
        if "error" in figures:
            lines.append(f"{name} failed: {str(figures['error'])[:120]}")
            continue
        parts = [f"{key.replace('_', ' ')} {figures[key]}" for key in keys if figures.get(key) is not None]
        if parts:
            lines.append(f"{name}: " + ", ".join(parts))
    return lines


def _wire_notes(result: dict[str, Any]) -> list[str]:
    frame = result.get("compact_frame_bytes")
    return [f"compact telemetry in a serial frame (COBS + CRC-16, before encryption): {frame} B"] if frame else []


def _link_anchor_reading(result: dict[str, Any]) -> float | None:
    """LoRaWAN's bytes for the same reading: its overhead plus our compact payload."""
    from lowband.gateway.bench.link import READING  # the payload both carry

    overhead = at("anchors", "lorawan_overhead_bytes")(result)
    return None if overhead is None else overhead + len(READING)


def _link_notes(result: dict[str, Any]) -> list[str]:
    lines = []
    if result.get("goodput_bps") is not None:
        lines.append(f"goodput at 100 bps: {result['goodput_bps']} bit/s of compact payload (simulated line)")
    lora, per_hour = result.get("lora_airtime_ms") or {}, result.get("lora_readings_per_hour_at_1pct") or {}
    if lora:
        lines.append("LoRa airtime at 125 kHz: " + ", ".join(
            f"{sf.upper()} {ms} ms ({per_hour.get(sf, '?')} readings/h at 1 % duty cycle)" for sf, ms in lora.items()))  # fmt: skip
    return lines


def _firmware_notes(result: dict[str, Any]) -> list[str]:
    return ["no anchor firmware is measured; the heap is compared with the 64 KiB budget of DESIGN.md",
            "CPU times on the unix port (a 64-bit desktop), not a board"]  # fmt: skip


def _mqtt_notes(result: dict[str, Any]) -> list[str]:
    return _counts(result, {"Lowband": result}, ("sent", "lost", "duplicated"))


def _server_notes(keys: tuple[str, ...]) -> Callable[[dict[str, Any]], list[str]]:
    def notes(result: dict[str, Any]) -> list[str]:
        lines = _counts(result, {"Lowband": result.get("lowband"), "Synapse": result.get("synapse")}, keys)
        versions = [f"{name} {result[side]['version']}" for name, side in (("Lowband", "lowband"), ("Synapse", "synapse"))
                    if isinstance(result.get(side), dict) and result[side].get("version")]  # fmt: skip
        return lines + ([" vs ".join(versions)] if versions else [])

    return notes


def _federation_notes(result: dict[str, Any]) -> list[str]:
    ours: dict[str, Any] | None = {k: result[k] for k in ("servers", "lost", "duplicated") if k in result} or None
    theirs = result.get("synapse")
    lines = _counts(result, {"Lowband": ours, "Synapse": theirs}, ("servers", "lost", "duplicated"))
    if isinstance(theirs, dict) and theirs.get("version"):
        lines.append(f"Synapse {theirs['version']}")
    return lines


_TOP = ()  # federation: our figures are at the top level of its result


def _flat(engine: str, key: str) -> Getter:
    """storage: the p50 of ``key`` at the largest stored-event count over the smallest, on ``engine``."""

    def get(result: dict[str, Any]) -> float | None:
        by_size = result.get("flatness", {}).get(engine) or {}
        if not by_size:
            return None
        return at(max(by_size, key=int), f"{key}_p50")(by_size)

    return get


def _storage_notes(result: dict[str, Any]) -> list[str]:
    sizes = ", ".join(f"{n:,}" for n in result.get("events", []))
    sends = result.get("sends_per_s", {})
    reads = result.get("reads_per_s") or {}
    first = (f"latency at {sizes} stored events; 1, 2, 4 gateway processes on PostgreSQL: sends/s (8 senders) "
             f"{', '.join(str(sends.get(p)) for p in ('1', '2', '4'))}; /messages pages/s "
             f"{', '.join(str(reads.get(p)) for p in ('1', '2', '4'))}")
    notes = [first]
    if result.get("postgres_skipped"):
        notes.append(f"PostgreSQL not measured: {result['postgres_skipped']}")
    return notes

#: benchmark name → what its figure shows. A benchmark without an entry cannot be plotted (the CLI says so).
# fmt: off
DESCRIPTIONS: dict[str, Description] = {
    "wire": Description(
        "bytes per event in each encoding", "the HTTP+JSON request a Matrix client sends",
        (Panel("bytes per event", "bytes", tuple(
            Group(label, (Bar("HTTP+JSON", at(event, "http_json"), "anchor"), Bar("MSC3079 CBOR", at(event, "msc3079")),
                          Bar("compact", at(event, "compact"))))
            for event, label in (("telemetry", "telemetry (3 values)"), ("text_message", "text message"))), "lower"),),
        _wire_notes,
    ),
    "link": Description(
        "the device link at 100 bps", "LoRaWAN, EDHOC and time on air",
        (
            Panel("one reading on the air", "bytes", (Group("encrypted reading", (
                Bar("Lowband, serial frame", at("reading_on_air_bytes")),
                Bar("Lowband, LoRa packet", at("reading_lora_bytes")),
                Bar("LoRaWAN (13 B + payload, 32-bit MIC)", _link_anchor_reading, "anchor", "LoRaWAN"))),), "lower"),
            Panel("mutual-auth handshake", "bytes", (Group("handshake", (
                Bar("Lowband (Noise KK)", at("handshake_bytes")),
                Bar("EDHOC static-DH", at("anchors", "edhoc_static_dh_bytes"), "anchor", "EDHOC"),
                Bar("Noise XX", at("anchors", "noise_xx_handshake_bytes"), "reference"))),), "lower"),
            Panel("reading → client /sync", "ms", (Group("median latency", (
                Bar("Lowband", at("latency_ms_p50")),
                Bar("time on air", at("airtime_ms"), "anchor"),
                Bar("target: air + 250 ms", plus(at("airtime_ms"), 250.0), "reference"))),), "lower"),
        ),
        _link_notes,
    ),
    "firmware": Description(
        "the device stack on the MicroPython unix port", "the 64 KiB heap budget",
        (
            Panel("heap the whole device job needs", "KiB", (Group("heap", (
                Bar("Lowband, smallest heap", at("heap_peak_bytes", scale=1 / 1024)),
                Bar("budget (-X heapsize)", at("heapsize_bytes", scale=1 / 1024), "anchor", "budget"))),), "lower"),
            Panel("firmware size", "KiB", (Group(".mpy files", (Bar("Lowband", at("mpy_bytes", scale=1 / 1024)),)),), "lower"),
            Panel("CPU time, device side", "ms", (
                Group("handshake", (Bar("Lowband", at("handshake_ms")),)),
                Group("one reading", (Bar("Lowband", at("reading_ms")),)),
            ), "lower"),
        ),
        _firmware_notes,
    ),
    "mqtt": Description(
        "MQTT → room, QoS 1, durable", "raw Mosquitto QoS 1 pub→sub, same run",
        (Panel("messages per second", "msg/s", (Group("QoS 1", (
            Bar("Lowband, MQTT → room", at("events_per_s")),
            Bar("raw Mosquitto pub→sub", at("raw_per_s"), "anchor", "raw"),
            Bar("target: 70 % of raw", times(at("raw_per_s"), 0.7), "reference"))),), "higher"),),
        _mqtt_notes,
    ),
    "homeserver": Description(
        "HTTP client API", "Synapse, same run",
        (
            Panel("sends per second", "sends/s", (
                _side_by_side("1 sender", "sends_per_s"), _side_by_side("8 senders", "sends_per_s_8"),
                _side_by_side("encrypted", "e2ee_sends_per_s")), "higher"),
            Panel("latency, median", "ms", (
                _side_by_side("send → /sync", "sync_latency_ms"), _side_by_side("send → decrypted", "e2ee_latency_ms")),
                "lower"),
            Panel("memory (RSS)", "MiB", (_side_by_side("idle", "rss_idle_mb"), _side_by_side("after load", "rss_load_mb")),
                  "lower"),
        ),
        _server_notes(("rate_limited",)),
    ),
    "appservice": Description(
        "events pushed to a bridge", "Synapse pushing to the same bridge, same run",
        (
            Panel("events pushed per second", "events/s", (_side_by_side("burst", "push_events_per_s"),), "higher"),
            Panel("send → bridge", "ms", (
                _side_by_side("median", "push_latency_ms"), _side_by_side("p99", "push_latency_ms_p99")), "lower"),
            Panel("memory (RSS)", "MiB", (_side_by_side("idle", "rss_idle_mb"), _side_by_side("after load", "rss_load_mb")),
                  "lower"),
        ),
        _server_notes(("lost", "duplicated")),
    ),
    "federation": Description(
        "a room replicated across gateways", "Synapse to Synapse, same run",
        (
            Panel("events replicated per second", "events/s", (_side_by_side("replication", "events_per_s", _TOP),),
                  "higher"),
            Panel("send → remote /sync, median", "ms", (_side_by_side("latency", "latency_ms_p50", _TOP),), "lower"),
            Panel("catch-up after missed events", "s", (
                _side_by_side("1,000 missed", "catch_up_1k_s", _TOP),
                _side_by_side("100,000 missed", "catch_up_100k_s", _TOP)), "lower"),
            Panel("memory (RSS) after replication", "MiB", (_side_by_side("largest server", "rss_mb", _TOP),), "lower"),
        ),
        _federation_notes,
    ),
    "storage": Description(
        "bytes on disk per event, latency as the store grows", "Synapse on the same database engine, same run",
        tuple(
            Panel(title, "bytes", (
                versus("SQLite", at(key, "sqlite"), at(key, "synapse_sqlite")),
                versus("PostgreSQL", at(key, "postgres"), at(key, "synapse_postgres"))), "lower")
            for key, title in (("bytes_per_event", "bytes on disk per telemetry event"),
                               ("bytes_per_text", "bytes on disk per text message"))
        ) + (
            Panel("p50 at the largest stored count / the smallest", "×", tuple(
                Group(label, (Bar("SQLite", _flat("sqlite", key)), Bar("PostgreSQL", _flat("postgres", key)),
                              Bar("flat", lambda result: 1.0, "reference")))
                for key, label in (("send", "send"), ("sync", "→ /sync"), ("initial_sync", "initial /sync"),
                                   ("messages_newest", "/messages, new"), ("messages_deep", "/messages, deep"))),
                "lower"),
        ),
        _storage_notes,
    ),
    "ble": Description(
        "BLE advertisements → room events", "the same adverts through the decoder alone",
        (
            Panel("adverts per second, flood", "adverts/s", (Group("flood", (
                Bar("Lowband, advert → room event", at("adverts_per_s")),
                Bar("decoder alone", at("decode_only_per_s"), "anchor", "decoder"))),), "higher"),
            Panel("advert → room event, paced", "ms", (
                Group("median", (Bar("Lowband", at("latency_ms_p50")),)),
                Group("p99", (Bar("Lowband", at("latency_ms_p99")),)),
            ), "lower"),
        ),
        lambda result: _counts(result, {"Lowband": result}, ("sensors", "events", "lost", "duplicated")),
    ),
    "coap": Description(
        "the low-bandwidth client API: bytes on the wire", "the same operation in HTTP/1.1+JSON",
        (
            Panel("request + response", "bytes", tuple(
                Group(label, (Bar("HTTP/1.1+JSON", at(phase, "http_json"), "anchor", "HTTP"), Bar("MSC3079", at(phase, "msc3079")),
                              Bar("compact (Noise)", at(phase, "compact"))))
                for phase, label in (("login", "login"), ("send", "send a text message"), ("sync_5", "sync, 5 messages"))),
                "lower"),
            Panel("10 idle minutes", "bytes", (Group("idle 10 min", (
                Bar("HTTP/1.1+JSON", at("idle_10min", "http_json"), "anchor", "HTTP"), Bar("MSC3079", at("idle_10min", "msc3079")),
                Bar("compact (Noise)", at("idle_10min", "compact")),
                Bar("target: 20 B", lambda result: 20.0, "reference"))),), "lower"),
        ),
        lambda result: [f"a compact send at 100 bps: {result['send_100bps_ms']:,.0f} ms"]
        if isinstance(result.get("send_100bps_ms"), (int, float)) else [],
    ),
}
# fmt: on


# ------------------------------------------------------------------------------------------------- drawing


def fmt_value(value: float) -> str:
    """A value as the figure writes it: thousands separated, three significant digits below 100."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def fmt_ratio(value: float, anchor: float) -> str | None:
    """value / anchor as ``"0.05×"`` (the anchor's name is added by the caller); None when the anchor is 0."""
    if anchor == 0:
        return None
    r = value / anchor
    return f"{r:#.3g}×" if r < 100 else f"{r:,.0f}×"  # "1.00×", not "1×", beside a near tie


def missing_anchor(description: Description, result: dict[str, Any]) -> bool:
    """True when some group's anchor has no value in ``result`` (e.g. ``--only lowband``)."""
    return any(
        (anchor := group.anchor()) is not None and anchor.value(result) is None
        for panel in description.panels for group in panel.groups
    )  # fmt: skip


def build_figure(name: str, result: dict[str, Any]) -> Figure:
    """Benchmark ``name``'s ``result`` as a matplotlib figure on the Agg canvas (not saved).

    Raises KeyError for a benchmark without a description and
    :class:`PlotUnavailable` when matplotlib is missing.
    """
    description = DESCRIPTIONS[name]
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = description.panels
    figure = Figure(figsize=(max(4.6 * len(panels), 6.0), 5.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel, result)
    figure.suptitle(f"lowband bench {name}: {description.title}\nanchor: {description.anchor}", fontsize=12)
    notes = description.notes(result)
    if missing_anchor(description, result):
        notes = [f"{ANCHOR_NOT_MEASURED}: bars marked '{NOT_MEASURED}' had no value in this run"] + notes
    if notes:
        figure.supxlabel("\n".join(notes), fontsize=8.5, ha="left", x=0.01)
    return figure


def _draw_panel(ax: Axes, panel: Panel, result: dict[str, Any]) -> None:
    top = max((v for g in panel.groups for b in g.bars if (v := b.value(result)) is not None), default=0.0) or 1.0
    legend: dict[str, Any] = {}
    for x, group in enumerate(panel.groups):
        anchor_bar = group.anchor()
        anchor = anchor_bar.value(result) if anchor_bar is not None else None
        width = 0.8 / len(group.bars)
        for i, bar in enumerate(group.bars):
            pos = x - 0.4 + width * (i + 0.5)
            value = bar.value(result)
            shades = _COLOURS[bar.role]
            colour = shades[sum(1 for b in group.bars[:i] if b.role == bar.role) % len(shades)]
            drawn = ax.bar(pos, value if value is not None else 0.0, width * 0.92, color=colour,
                           hatch="//" if bar.role == "reference" else None, edgecolor="white", label=bar.label)  # fmt: skip
            legend.setdefault(bar.label, drawn)
            if value is None:
                text = ANCHOR_NOT_MEASURED if bar.role == "anchor" else NOT_MEASURED
                ax.text(pos, top * 0.02, text, rotation=90, ha="center", va="bottom", fontsize=8, color="#b22222")
                continue
            label = fmt_value(value)
            if bar.role == "measured" and anchor is not None:
                ratio = fmt_ratio(value, anchor)
                if ratio is not None:
                    label += f"\n{ratio} {anchor_bar.name() if anchor_bar else ''}".rstrip()
            ax.text(pos, value + top * 0.015, label, ha="center", va="bottom", fontsize=8,
                    fontweight="bold" if bar.role == "measured" else "normal")  # fmt: skip
    ax.set_xticks(range(len(panel.groups)), [g.label for g in panel.groups], fontsize=9)
    ax.set_ylabel(panel.unit)
    ax.set_ylim(0, top * 1.25)
    better = f" ({panel.better} is better)" if panel.better else ""
    ax.set_title(panel.title + better, fontsize=10)
    # Under the axes, where no bar or label can be hidden by it.
    ax.legend(list(legend.values()), list(legend), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09),
              frameon=False, ncols=min(len(legend), 2))  # fmt: skip
    ax.spines[["top", "right"]].set_visible(False)


def save(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as PNG; OSError when the file cannot be written."""
    figure.savefig(path, format="png")


def write_plot(name: str, result: dict[str, Any], path: Path) -> None:
    """Draw benchmark ``name``'s ``result`` and write it to ``path`` (PNG)."""
    save(build_figure(name, result), path)


def check_writable(path: Path) -> None:
    """Raise OSError with a one-line reason unless a PNG can be written at ``path``.

    Run before a benchmark so a long run does not end without its plot. It
    really creates (and removes) a file beside ``path``: permission bits
    alone say nothing for root, and a read-only mount refuses root too.
    """
    import tempfile

    if path.is_dir():
        raise OSError(f"{path} is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OSError(f"the directory {parent} does not exist")
    if path.exists():
        with open(path, "ab"):
            pass
        return
    with tempfile.NamedTemporaryFile(dir=parent, prefix=".lowband-plot-", suffix=".png"):
        pass
