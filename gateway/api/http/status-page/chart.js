// A small SVG line plot, written for the status page: one series of (time, value) points with its
// axes, time ticks, value ticks and a tooltip that follows the pointer or the arrow keys.
//
//   const plot = new LinePlot(container, {label: "temperature", unit: "Cel"});
//   plot.update(points, fromMs, toMs);   // points: [{t: ms, v: number}], sorted by t
//
// The SVG is drawn at the container's width in CSS pixels (redrawn when that changes), so its labels
// stay readable from a phone to a wide screen. The SVG element is focusable (one tab stop per plot): Left/Right move between points, Home/End go
// to the first and last. Every point is a <circle class="point">; the SVG carries data-points (their
// number) and an aria-label summing up the series, for people and tests alike.

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 180; // CSS pixels; the width follows the container, so text keeps its size on a phone
const MIN_WIDTH = 200;
const PAD = { left: 52, right: 12, top: 12, bottom: 28 };

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TIME_STEPS = [MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR,
  6 * HOUR, 12 * HOUR, DAY, 2 * DAY];

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

/** About `count` round steps (1, 2 or 5 times a power of ten) covering [low, high]: {low, high, step}. */
export function niceScale(low, high, count = 4) {
  if (!(high > low)) {
    const pad = Math.abs(low) > 0 ? Math.abs(low) * 0.05 : 1;
    low -= pad;
    high += pad;
  }
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return { low: Math.floor(low / step) * step, high: Math.ceil(high / step) * step, step };
}

/** Time ticks between `from` and `to` (ms): a step from TIME_STEPS giving at most `count` ticks, on local
 * wall-clock boundaries for steps up to an hour, on UTC multiples above. */
export function timeTicks(from, to, count = 5) {
  const span = to - from;
  const step = TIME_STEPS.find((s) => span / s <= count) ?? Math.ceil(span / count / DAY) * DAY;
  const offset = new Date(from).getTimezoneOffset() * MINUTE;
  const ticks = [];
  let t = Math.ceil((from - offset) / step) * step + offset;
  if (step >= DAY) t = Math.ceil(from / step) * step;
  for (; t <= to; t += step) ticks.push(t);
  return { ticks, step };
}

function formatTime(t, step) {
  const d = new Date(t);
  if (step >= DAY) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  const hm = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return step >= 6 * HOUR && d.getHours() === 0 ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) : hm;
}

export function formatValue(v) {
  if (!Number.isFinite(v)) return String(v);
  const abs = Math.abs(v);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return v.toExponential(2);
  return String(Math.round(v * 1000) / 1000);
}

let plotIds = 0;

export class LinePlot {
  constructor(container, { label, unit = "" }) {
    this.label = label;
    this.unit = unit;
    this.points = [];
    this.focusIndex = -1;
    this.id = `plot-${++plotIds}`;
    this.container = container;
    this.width = 600;
    this.svg = el("svg", {
      viewBox: `0 0 ${this.width} ${HEIGHT}`, class: "plot", role: "img", tabindex: 0, "data-points": 0,
      "aria-describedby": `${this.id}-tip`,
    }, container);
    this.grid = el("g", { class: "grid" }, this.svg);
    this.axes = el("g", { class: "axes" }, this.svg);
    this.line = el("polyline", { class: "line", fill: "none" }, this.svg);
    this.dots = el("g", { class: "dots" }, this.svg);
    this.cursor = el("circle", { class: "cursor", r: 6, visibility: "hidden" }, this.svg);
    this.tip = document.createElement("p");
    this.tip.className = "tip";
    this.tip.id = `${this.id}-tip`;
    this.tip.hidden = true;
    container.appendChild(this.tip);
    this.svg.addEventListener("pointermove", (e) => this.pointAt(e));
    this.svg.addEventListener("pointerleave", () => { if (document.activeElement !== this.svg) this.show(-1); });
    this.svg.addEventListener("keydown", (e) => this.key(e));
    this.svg.addEventListener("focus", () => this.show(this.focusIndex >= 0 ? this.focusIndex : this.points.length - 1));
    this.svg.addEventListener("blur", () => this.show(-1));
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => {
        if (this.from !== undefined && Math.round(this.container.clientWidth) !== this.width) this.update(this.all, this.from, this.to);
      }).observe(container);
    }
  }

  /** Draw `points` ([{t, v}] sorted by t) on a time axis from `from` to `to` (ms). */
  update(points, from, to) {
    this.all = points;
    this.width = Math.max(MIN_WIDTH, Math.round(this.container.clientWidth || 600));
    this.svg.setAttribute("viewBox", `0 0 ${this.width} ${HEIGHT}`);
    this.svg.setAttribute("width", this.width);
    this.svg.setAttribute("height", HEIGHT);
    this.points = points.filter((p) => p.t >= from && p.t <= to && Number.isFinite(p.v));
    this.from = from;
    this.to = to;
    const values = this.points.map((p) => p.v);
    const y = niceScale(values.length ? Math.min(...values) : 0, values.length ? Math.max(...values) : 1);
    this.y = y;
    for (const g of [this.grid, this.axes, this.dots]) g.replaceChildren();
    const left = PAD.left, right = this.width - PAD.right, top = PAD.top, bottom = HEIGHT - PAD.bottom;
    el("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axis" }, this.axes);
    el("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axis" }, this.axes);
    for (let v = y.low; v <= y.high + y.step / 2; v += y.step) {
      const py = this.py(v);
      el("line", { x1: left, y1: py, x2: right, y2: py }, this.grid);
      const text = el("text", { x: left - 6, y: py + 4, "text-anchor": "end" }, this.axes);
      text.textContent = formatValue(v);
    }
    const { ticks, step } = timeTicks(from, to, Math.max(2, Math.floor((this.width - PAD.left) / 90)));
    for (const t of ticks) {
      const px = this.px(t);
      el("line", { x1: px, y1: bottom, x2: px, y2: bottom + 4, class: "axis" }, this.axes);
      const text = el("text", { x: px, y: HEIGHT - 8, "text-anchor": "middle" }, this.axes);
      text.textContent = formatTime(t, step);
    }
    const coords = this.points.map((p) => `${this.px(p.t).toFixed(1)},${this.py(p.v).toFixed(1)}`);
    this.line.setAttribute("points", coords.join(" "));
    for (const p of this.points) el("circle", { class: "point", cx: this.px(p.t), cy: this.py(p.v), r: 2.5 }, this.dots);
    this.svg.setAttribute("data-points", this.points.length);
    const unit = this.unit ? ` ${this.unit}` : "";
    const last = this.points[this.points.length - 1];
    this.svg.setAttribute("aria-label", this.points.length
      ? `${this.label}: ${this.points.length} readings from ${formatValue(Math.min(...values))} to ` +
        `${formatValue(Math.max(...values))}${unit}, latest ${formatValue(last.v)}${unit}; ` +
        "use the arrow keys to read each point"
      : `${this.label}: no readings in this range`);
    if (this.focusIndex >= this.points.length) this.focusIndex = this.points.length - 1;
    this.show(document.activeElement === this.svg ? this.focusIndex : -1);
  }

  px(t) {
    const span = Math.max(1, this.to - this.from);
    return PAD.left + ((t - this.from) / span) * (this.width - PAD.left - PAD.right);
  }

  py(v) {
    const span = this.y.high - this.y.low || 1;
    return HEIGHT - PAD.bottom - ((v - this.y.low) / span) * (HEIGHT - PAD.top - PAD.bottom);
  }

  pointAt(event) {
    if (!this.points.length) return;
    const box = this.svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * this.width;
    let best = 0;
    for (let i = 1; i < this.points.length; i++) {
      if (Math.abs(this.px(this.points[i].t) - x) < Math.abs(this.px(this.points[best].t) - x)) best = i;
    }
    this.show(best);
  }

  key(event) {
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowDown: -1, ArrowUp: 1 };
    if (!this.points.length) return;
    let index = this.focusIndex < 0 ? this.points.length - 1 : this.focusIndex;
    if (event.key in moves) index = Math.min(this.points.length - 1, Math.max(0, index + moves[event.key]));
    else if (event.key === "Home") index = 0;
    else if (event.key === "End") index = this.points.length - 1;
    else return;
    event.preventDefault();
    this.show(index);
  }

  show(index) {
    this.focusIndex = index;
    const p = this.points[index];
    if (!p) {
      this.cursor.setAttribute("visibility", "hidden");
      this.tip.hidden = true;
      return;
    }
    this.cursor.setAttribute("cx", this.px(p.t));
    this.cursor.setAttribute("cy", this.py(p.v));
    this.cursor.setAttribute("visibility", "visible");
    this.tip.hidden = false;
    const when = new Date(p.t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    this.tip.textContent = `${this.label} ${formatValue(p.v)}${this.unit ? " " + this.unit : ""} at ${when} ` +
      `(point ${index + 1} of ${this.points.length})`;
  }
}
