// The Lowband status page: Matrix login, the admin status summary, device readings and their plots,
// kept live by the gateway's event stream. Everything it loads comes from the gateway that serves it.
//
// Flow: sign in (POST /_matrix/client/v3/login) -> GET /_lowband/admin/v1/status with the token
// (403: not a server admin, the session is logged out again) -> the readings of each device and BLE
// sensor for the chosen range -> GET /_lowband/admin/v1/events read with fetch() (the token in the
// Authorization header, never in a URL), which pushes `status` every few seconds and `reading` as a
// board or a BLE sensor sends.

import { LinePlot, formatValue } from "./chart.js";

const ADMIN = "/_lowband/admin/v1";
const CLIENT = "/_matrix/client/v3";
const TOKEN_KEY = "lowband-status-token";
const RECONNECT_MS = 3000;
const ANNOUNCE_EVERY_MS = 15000;

const $ = (id) => document.getElementById(id);

// The two kinds of cards: link devices and BLE sensors. Each card is one entry of its kind's map:
// name -> {kind, name, card, plots: Map(series -> LinePlot), series: Map(series -> [{t, v}]), units, lastReading}
const KINDS = {
  device: { list: "devices", cards: new Map(), readings: (name) => `${ADMIN}/devices/${encodeURIComponent(name)}/readings` },
  ble: { list: "ble-sensors", cards: new Map(), readings: (name) => `${ADMIN}/ble/${encodeURIComponent(name)}/readings` },
};

function* allCards() {
  for (const kind of Object.values(KINDS)) yield* kind.cards.values();
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  status: null,
  stream: null, // AbortController of the live stream
  lastAnnounce: 0,
};

class HttpError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) throw new HttpError(response.status, parsed);
  return parsed;
}

function setConnection(text) {
  $("connection").textContent = text;
}

function announce(text, force = false) {
  const now = Date.now();
  if (!force && now - state.lastAnnounce < ANNOUNCE_EVERY_MS) return;
  state.lastAnnounce = now;
  $("announce").textContent = text;
}

// ------------------------------------------------------------------ sign in, sign out

function showLogin(message = "") {
  $("dashboard").hidden = true;
  $("login-section").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = message;
  $("server-name").textContent = "";
  setConnection("Not signed in");
}

async function login(event) {
  event.preventDefault();
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  if (!user || !password) {
    $("login-error").textContent = "Enter a Matrix user and its password.";
    return;
  }
  $("login-submit").disabled = true;
  $("login-error").textContent = "";
  try {
    state.token = null;
    const done = await api("POST", `${CLIENT}/login`, {
      type: "m.login.password", identifier: { type: "m.id.user", user }, password,
      initial_device_display_name: "Lowband status page",
    });
    state.token = done.access_token;
    $("login-password").value = "";
    await begin(true);
  } catch (err) {
    const known = { 403: "Wrong user name or password.", 429: "Too many attempts; wait a moment and try again." };
    $("login-error").textContent = err instanceof HttpError ? (known[err.status] || err.message) : `Cannot reach the gateway (${err.message}).`;
  } finally {
    $("login-submit").disabled = false;
  }
}

async function endSession() {
  stopStream();
  if (state.token) {
    try { await api("POST", `${CLIENT}/logout`, {}); } catch { /* gone already */ }
  }
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

async function logout() {
  await endSession();
  clearDevices();
  showLogin("");
  $("login-user").focus();
}

/** The token works and its account is an admin: show the dashboard. A 403 means it is not one. */
async function begin(fresh) {
  let status;
  try {
    status = await api("GET", `${ADMIN}/status`);
  } catch (err) {
    if (err instanceof HttpError && err.status === 403) {
      await endSession();
      showLogin("This account is not a server admin of this gateway. Sign in with an admin account.");
      return;
    }
    if (err instanceof HttpError && err.status === 401) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(fresh ? "The gateway did not accept the session." : "");
      return;
    }
    throw err;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("login-section").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  renderStatus(status);
  await loadReadings();
  startStream();
  if (fresh) $("main").focus();
}

// ------------------------------------------------------------------ rendering the summary

const dash = "—";

function ago(ms) {
  if (ms == null) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function sum(obj) {
  return obj ? Object.values(obj).reduce((a, b) => a + (Number(b) || 0), 0) : 0;
}

function readingText(reading) {
  if (!reading) return "none yet";
  const units = reading.units || {};
  return Object.entries(reading.values)
    .map(([name, v]) => `${name} ${formatValue(v)}${units[name] ? " " + units[name] : ""}`).join(", ");
}

function deviceFacts(d) {
  const battery = d.battery ? `${formatValue(d.battery.value)} ${d.battery.unit}` : "unknown";
  const link = d.rssi_dbm == null && d.snr_db == null ? "not reported by this link"
    : `RSSI ${d.rssi_dbm == null ? dash : formatValue(d.rssi_dbm) + " dBm"}, SNR ${d.snr_db == null ? dash : formatValue(d.snr_db) + " dB"}`;
  const duty = d.duty_cycle_budget_s == null ? "no duty-cycle limit on this link"
    : d.duty_cycle_left == null ? "unknown" : `${Math.round(d.duty_cycle_left * 100)} % left`;
  const refused = sum(d.refused);
  return [
    ["Last seen", d.last_seen_ms == null ? "never" : ago(d.last_seen_ms)],
    ["Link quality", link],
    ["Battery", battery],
    ["Duty-cycle budget", duty],
    ["Frames in / out", `${d.frames_in ?? dash} / ${d.frames_out ?? dash}`],
    ["Refused frames", refused ? `${refused} (${Object.entries(d.refused).map(([k, n]) => `${k} ${n}`).join(", ")})` : "0"],
    ["Retransmissions", d.retransmissions ?? dash],
    ["Commands waiting", d.commands_pending ?? dash],
    ["Link", d.link || dash],
  ];
}

function bleFacts(s) {
  const refused = sum(s.refused);
  const facts = [
    ["Last seen", s.last_seen_ms == null ? "never" : ago(s.last_seen_ms)],
    ["Signal (RSSI)", s.rssi_dbm == null ? dash : `${formatValue(s.rssi_dbm)} dBm`],
    ["Readings", s.readings ?? dash],
    ["Refused advertisements", refused ? `${refused} (${Object.entries(s.refused).map(([k, n]) => `${k} ${n}`).join(", ")})` : "0"],
    ["Address", s.address || dash],
    ["Format", s.format || dash],
  ];
  if (s.gatt) {
    const error = s.gatt.last_error ? ` (${s.gatt.last_error})` : "";
    facts.push(["GATT connection", s.gatt.connected ? "connected" : `not connected${error}`]);
  }
  return facts;
}

function scannerFacts(b) {
  const sc = b.scanner || {};
  const mode = sc.mode_in_use && sc.mode && sc.mode_in_use !== sc.mode ? `${sc.mode_in_use} (configured ${sc.mode})` : sc.mode_in_use || sc.mode || dash;
  const facts = [
    ["Scanner", sc.state || dash],
    ["Mode", sc.mode_reason ? `${mode}: ${sc.mode_reason}` : mode],
    ["Adapter", sc.adapter || "default"],
    ["Advertisements", b.advertisements ?? dash],
    ["Unknown devices in range", b.unknown_cap == null ? b.unknown_devices ?? dash : `${b.unknown_devices} (at most ${b.unknown_cap} kept)`],
    ["Dropped (queue full)", b.dropped ?? dash],
  ];
  if (sc.last_error) facts.splice(1, 0, ["Scanner error", sc.last_error]);
  return facts;
}

function fillFacts(dl, facts) {
  dl.replaceChildren();
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dl.append(dt, dd);
  }
}

function clearDevices() {
  for (const kind of Object.values(KINDS)) {
    kind.cards.clear();
    $(kind.list).replaceChildren();
  }
}

function cardOf(kind, name) {
  const cards = KINDS[kind].cards;
  let entry = cards.get(name);
  if (entry) return entry;
  const card = document.createElement("li");
  card.className = "device";
  if (kind === "device") card.dataset.device = name;
  else card.dataset.sensor = name;
  const id = `${kind}-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  card.setAttribute("aria-labelledby", id);
  card.innerHTML = `<div class="device-head"><h3 id="${id}"></h3><span class="health"></span></div>
    <p class="last-reading"></p><dl class="facts"></dl><div class="plots"></div>`;
  card.querySelector("h3").textContent = name;
  $(KINDS[kind].list).appendChild(card);
  entry = { kind, name, card, plots: new Map(), series: new Map(), units: {}, lastReading: null };
  cards.set(name, entry);
  return entry;
}

const HEALTH = { ok: "OK", late: "Late", silent: "Silent", never: "Never heard" };

function renderCard(kind, d, facts) {
  const entry = cardOf(kind, d.name);
  const health = entry.card.querySelector(".health");
  health.textContent = HEALTH[d.health] || d.health || "unknown";
  health.className = `health health-${d.health || "unknown"}`;
  const mine = d.last_reading && (!entry.lastReading || d.last_reading.ts_ms >= entry.lastReading.ts_ms);
  if (mine) entry.lastReading = d.last_reading;
  showLastReading(entry);
  fillFacts(entry.card.querySelector(".facts"), facts);
}

/** Show the cards of one kind from the summary's list: new ones added, gone ones removed. */
function renderCards(kind, items, facts) {
  const cards = KINDS[kind].cards;
  const names = new Set(items.map((d) => d.name));
  for (const [name, entry] of cards) {
    if (!names.has(name)) {
      entry.card.remove();
      cards.delete(name);
    }
  }
  for (const d of items) renderCard(kind, d, facts(d));
}

function showLastReading(entry) {
  const r = entry.lastReading;
  const p = entry.card.querySelector(".last-reading");
  p.textContent = `Last reading: ${readingText(r)}${r ? ` (${new Date(r.ts_ms).toLocaleString()})` : ""}`;
}

function table(caption, columns, rows, empty) {
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  if (!rows.length) {
    const p = document.createElement("p");
    p.textContent = empty;
    wrap.appendChild(p);
    return wrap;
  }
  const t = document.createElement("table");
  const cap = t.createCaption();
  cap.textContent = caption;
  const head = t.createTHead().insertRow();
  for (const [, label] of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [key, , format] of columns) {
      const value = row[key];
      tr.insertCell().textContent = format ? format(value, row) : value == null ? dash : String(value);
    }
  }
  wrap.appendChild(t);
  return wrap;
}

const when = (ms) => (ms == null ? "never" : ago(ms));
const yesNo = (v) => (v ? "yes" : "no");

function renderStatus(s) {
  state.status = s;
  if (s.error) {
    setConnection(`Live · ${s.error}`);
    return;
  }
  $("server-name").textContent = s.server_name ? `· ${s.server_name}` : "";
  const devices = s.devices || [];
  $("devices-empty").hidden = devices.length > 0;
  renderCards("device", devices, deviceFacts);
  const ble = s.ble;
  const sensors = (ble && ble.sensors) || [];
  $("ble-off").hidden = Boolean(ble);
  $("ble-empty").hidden = !ble || sensors.length > 0;
  $("ble-scanner").hidden = !ble;
  if (ble) fillFacts($("ble-scanner"), scannerFacts(ble));
  renderCards("ble", sensors, bleFacts);
  redrawPlots();

  const mqtt = s.mqtt;
  $("mqtt").replaceChildren(
    ...(mqtt ? [
      table("MQTT brokers", [["name", "Broker"], ["broker", "Address"], ["connected", "Connected", yesNo]],
        mqtt.brokers || [], "No MQTT broker."),
      table("MQTT mappings", [["name", "Mapping"], ["received", "Received"], ["posted", "Posted to rooms"],
        ["published", "Published"], ["refused", "Refused"], ["dropped", "Dropped"], ["queued", "Queued"]],
      mqtt.mappings || [], "No MQTT mapping."),
    ] : [table("", [], [], "MQTT bridge: not configured.")]),
  );
  $("appservices").replaceChildren(table("Application services", [["id", "Bridge"], ["behind", "Queue (positions behind)"],
    ["in_flight", "In flight", yesNo], ["failures", "Failures"], ["last_success_ms", "Last success", when]],
  s.appservices || [], "No application service is registered."));
  $("federation").replaceChildren(table("Federation peers", [["destination", "Peer"], ["behind", "Queue (positions behind)"],
    ["in_flight", "In flight", yesNo], ["failures", "Failures"], ["last_success_ms", "Last success", when]],
  s.federation || [], "No federation peer."));
  $("refusals").replaceChildren(table("Recent refusals, newest first", [["ts_ms", "When", when], ["component", "Component"],
    ["source", "Source"], ["kind", "Kind"], ["count", "Count"]], s.refusals || [], "Nothing refused recently."));
  const p = s.process || {};
  fillFacts($("process"), [
    ["Version", s.version || dash],
    ["Up for", p.uptime_s == null ? dash : `${Math.round(p.uptime_s / 60)} min`],
    ["Memory (RSS)", p.rss_bytes == null ? dash : `${(p.rss_bytes / 1048576).toFixed(1)} MiB`],
    ["CPU time", p.cpu_s == null ? dash : `${formatValue(p.cpu_s)} s`],
    ["Open files", p.open_fds ?? dash],
  ]);
}

// ------------------------------------------------------------------ readings and plots

function rangeMs() {
  return Number($("range").value);
}

function addReading(entry, reading) {
  for (const [name, v] of Object.entries(reading.values)) {
    if (!entry.series.has(name)) entry.series.set(name, []);
    const points = entry.series.get(name);
    if (points.length && points[points.length - 1].t > reading.ts_ms) {
      points.push({ t: reading.ts_ms, v });
      points.sort((a, b) => a.t - b.t);
    } else {
      points.push({ t: reading.ts_ms, v });
    }
    // A page left open keeps what its range shows, not every reading since it opened.
    const oldest = reading.ts_ms - rangeMs() - 60_000;
    while (points.length && points[0].t < oldest) points.shift();
    if (reading.units && reading.units[name]) entry.units[name] = reading.units[name];
  }
}

function redrawPlots(only = null) {
  for (const entry of allCards()) {
    if (only && only !== entry) continue;
    const name = entry.name;
    // The gateway's clock stamps the readings: a browser whose clock is behind still shows the newest point.
    let to = Date.now();
    for (const points of entry.series.values()) if (points.length) to = Math.max(to, points[points.length - 1].t);
    const from = to - rangeMs();
    const box = entry.card.querySelector(".plots");
    for (const [series, plot] of entry.plots) {
      if (!entry.series.has(series)) plot.update([], from, to); // no longer in this range
    }
    for (const [series, points] of entry.series) {
      let plot = entry.plots.get(series);
      if (!plot) {
        const figure = document.createElement("figure");
        figure.className = "plot-figure";
        const caption = document.createElement("figcaption");
        caption.textContent = `${series}${entry.units[series] ? ` (${entry.units[series]})` : ""}`;
        figure.appendChild(caption);
        box.appendChild(figure);
        plot = new LinePlot(figure, { label: `${name} ${series}`, unit: entry.units[series] || "" });
        plot.svg.dataset.series = series;
        entry.plots.set(series, plot);
      }
      plot.update(points, from, to);
    }
    if (!entry.series.size && !box.querySelector(".no-readings")) {
      const p = document.createElement("p");
      p.className = "no-readings";
      p.textContent = "No readings in this range.";
      box.appendChild(p);
    } else if (entry.series.size) {
      box.querySelector(".no-readings")?.remove();
    }
  }
}

async function loadReadings() {
  const since = Date.now() - rangeMs();
  await Promise.all([...allCards()].map(async (entry) => {
    const name = entry.name;
    try {
      const answer = await api("GET", `${KINDS[entry.kind].readings(name)}?since_ms=${since}&limit=2000`);
      entry.series = new Map();
      for (const r of answer.readings) addReading(entry, r);
      entry.truncated = answer.truncated;
      const latest = answer.readings[answer.readings.length - 1];
      if (latest && (!entry.lastReading || latest.ts_ms >= entry.lastReading.ts_ms)) {
        entry.lastReading = latest;
        showLastReading(entry);
      }
      let note = entry.card.querySelector(".truncated");
      if (answer.truncated && !note) {
        note = document.createElement("p");
        note.className = "truncated";
        note.textContent = "Only the newest readings of this range are shown.";
        entry.card.querySelector(".plots").before(note);
      } else if (!answer.truncated && note) {
        note.remove();
      }
    } catch (err) {
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) throw err;
      console.error(`readings of ${name}: ${err.message}`);
    }
  }));
  redrawPlots();
}

function onReading(reading) {
  const entry = reading.sensor != null ? KINDS.ble.cards.get(reading.sensor) : KINDS.device.cards.get(reading.device);
  if (!entry) return;
  addReading(entry, reading);
  if (!entry.lastReading || reading.ts_ms >= entry.lastReading.ts_ms) {
    entry.lastReading = reading;
    showLastReading(entry);
  }
  redrawPlots(entry);
  const what = entry.kind === "ble" ? `BLE sensor ${entry.name}` : entry.name;
  announce(`New reading from ${what}: ${readingText(reading)}`);
}

// ------------------------------------------------------------------ live stream

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function startStream() {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  readStream(controller).catch(() => {}).finally(() => {
    if (state.stream === controller && !controller.signal.aborted) {
      setConnection("Live updates interrupted; reconnecting…");
      setTimeout(() => {
        if (state.stream === controller) begin(false).catch(() => setTimeout(startStream, RECONNECT_MS));
      }, RECONNECT_MS);
    }
  });
}

async function readStream(controller) {
  const response = await fetch(`${ADMIN}/events`, {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
    signal: controller.signal,
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    state.stream = null;
    await endSession();
    showLogin(response.status === 403 ? "This account is not a server admin of this gateway." : "The session ended; sign in again.");
    return;
  }
  if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
  setConnection("Live");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatch(block);
    }
  }
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;
  let payload;
  try { payload = JSON.parse(data.join("\n")); } catch { return; }
  if (kind === "status") {
    renderStatus(payload);
    setConnection(`Live · updated ${new Date().toLocaleTimeString()}`);
  } else if (kind === "reading") {
    onReading(payload);
  }
}

// ------------------------------------------------------------------ start

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("range").addEventListener("change", () => {
  loadReadings().catch((err) => console.error(err));
  announce(`Plots now show the ${$("range").selectedOptions[0].textContent}.`, true);
});

if (state.token) {
  begin(false).catch((err) => showLogin(`Cannot reach the gateway (${err.message}).`));
} else {
  showLogin();
}
