"use strict";
// The command-center page: a plain API client with the same bearer credentials and grants as
// any app. Charts are uPlot, the map is Leaflet (both served by the hub, see
// docs/decisions/0025-dashboard-charts-and-map.md). Times are the district's (`[hub]
// utc_offset`, from /dashboard/config.json), never the browser's zone.

const LEVELS = { red: 0, orange: 1, yellow: 2, blue: 3 };
const LEVEL_COLOURS = { blue: "#3b82f6", yellow: "#eab308", orange: "#f97316", red: "#ef4444" };
const STATE_COLOURS = { online: "#22c55e", offline: "#64748b" };
const SERIES_COLOURS = ["#38bdf8", "#a78bfa", "#f472b6", "#facc15", "#34d399", "#fb923c", "#60a5fa"];
// Raw points up to this range; beyond, `step` aggregates, about CHART_BUCKETS of them.
const RAW_MAX_MS = 2 * 3600e3;
const CHART_BUCKETS = 720;
const RATE_WINDOW_MS = 10e3;
const RIVER_RANGE_MS = 3600e3;

const dash = window.dash = {
  auth: null, offsetMin: 480, tileUrl: null,
  quantities: new Map(), devices: new Map(), alerts: new Map(), rules: [],
  charts: new Map(), markers: new Map(), pulses: new Map(), map: null,
  arrivals: [], streamSince: 0, total: 0, drawer: null, pending: new Map(),
};
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: dash.auth } });
  if (!r.ok) {
    let detail = r.statusText;
    try { const j = await r.json(); detail = `${j.error}: ${j.detail}`; } catch (_) {}
    throw new Error(`${r.status} ${detail}`);
  }
  return r;
}

// ---- District time and values ----

/** `HH:MM:SS` (or `YYYY-MM-DD HH:MM:SS`) of epoch ms in district time. */
function fmtTime(ms, withDate = false) {
  if (ms == null || Number.isNaN(ms)) return "";
  const iso = new Date(ms + dash.offsetMin * 60e3).toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 19)}` : iso.slice(11, 19);
}
const toMs = (t) => (typeof t === "number" ? t : Date.parse(t));
function tzLabel() {
  const m = Math.abs(dash.offsetMin), sign = dash.offsetMin < 0 ? "-" : "+";
  return `UTC${sign}${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
}

/** A value as the quantities table says to show it: rounded to its decimals, enum states named. */
function fmtNum(q, v) {
  const info = dash.quantities.get(q);
  if (v == null) return "";
  if (typeof v !== "number") return String(v);
  if (info && info.kind === "enum" && info.states) return info.states[v] ?? String(v);
  if (info && info.kind === "bool") return v ? "true" : "false";
  return v.toFixed(info ? info.decimals : 2);
}
function unitOf(q, fallback) {
  const u = (dash.quantities.get(q) || {}).unit || fallback || "";
  return ["1", "bool", "enum", ""].includes(u) ? "" : u;
}
function fmtValue(q, v) {
  if (!v) return "";
  const u = unitOf(q, v.unit);
  return `<span class="${esc(v.quality || "")}">${esc(fmtNum(q, v.value))}${u ? " " + esc(u) : ""}</span>`;
}

// ---- Live rate ----

function noteArrival() {
  const now = Date.now();
  dash.arrivals.push(now);
  dash.total++;
  document.body.dataset.updates = dash.total;
}
function renderRate() {
  const now = Date.now();
  while (dash.arrivals.length && dash.arrivals[0] < now - RATE_WINDOW_MS) dash.arrivals.shift();
  const live = $("live");
  if (!dash.streamSince) { $("rate").textContent = "–"; live.className = ""; live.title = "stream disconnected"; return; }
  // Over the window, or over the time connected when that is shorter.
  const span = Math.max(1000, Math.min(RATE_WINDOW_MS, now - dash.streamSince));
  const rate = dash.arrivals.length * 1000 / span;
  $("rate").textContent = rate >= 10 ? rate.toFixed(0) : rate.toFixed(1);
  live.className = dash.arrivals.length ? "on" : "stale";
  live.title = dash.arrivals.length ? "live" : "connected, nothing for 10 s";
}
function renderClock() {
  $("clock").textContent = fmtTime(Date.now());
  $("tz").textContent = tzLabel();
}

// ---- State helpers ----

const isOnline = (d) => (d.twin ? d.twin.online : d.online);
function openAlerts(deviceId) {
  return [...dash.alerts.values()].filter((a) => a.state !== "cleared" && (!deviceId || a.device === deviceId));
}
function worstLevel(deviceId) {
  let best = null;
  for (const a of openAlerts(deviceId)) if (best == null || LEVELS[a.level] < LEVELS[best]) best = a.level;
  return best;
}
/** Rules watching this quantity of this device: their thresholds are drawn on its charts. */
function thresholds(device, quantity) {
  const out = [];
  for (const r of dash.rules) {
    if (r.quantity !== quantity) continue;
    if (r.device && r.device !== device.id) continue;
    if (r.kind && r.kind !== "*" && r.kind !== device.kind) continue;
    if (r.dept && r.dept !== device.dept) continue;
    for (const k of ["above", "below"]) if (typeof r[k] === "number") out.push({ value: r[k], level: r.level, rule: r.id });
  }
  if (!out.length) {
    // Without a grant to read the rules, the thresholds alerts crossed still say where the lines are.
    for (const a of dash.alerts.values()) {
      if (a.quantity === quantity && a.kind === device.kind && typeof a.threshold === "number"
          && !out.some((t) => t.rule === a.rule)) out.push({ value: a.threshold, level: a.level, rule: a.rule });
    }
  }
  return out;
}
/** Alert episodes of a device's quantity, [start, end] in ms (end: now while open). */
function episodes(deviceId, quantity) {
  return [...dash.alerts.values()].filter((a) => a.device === deviceId && a.quantity === quantity).map((a) => ({
    from: toMs(a.raised_at || a.ts),
    to: a.state === "cleared" ? toMs(a.cleared_at || a.ts) : Date.now(),
    level: a.level,
  }));
}

// ---- Charts ----

/** The query for `range` ending now: raw points for short ranges, `step` averages for long ones. */
function seriesQuery(device, quantity, rangeMs, raw) {
  const to = Date.now(), from = to - rangeMs;
  const p = new URLSearchParams({ device, quantity, from: String(from), to: String(to) });
  if (!raw && rangeMs > RAW_MAX_MS) {
    p.set("step", `${Math.max(1, Math.round(rangeMs / CHART_BUCKETS / 1000))}s`);
    p.set("agg", "avg");
  }
  return `/api/v1/series?${p}`;
}

async function fetchSeries(device, quantity, rangeMs) {
  let url = seriesQuery(device, quantity, rangeMs, false);
  let ans = await (await api(url)).json();
  // A young hub has few buckets in a long range: its raw points are few too, and show more.
  if (url.includes("step=") && ans.points.length < 60) {
    url = seriesQuery(device, quantity, rangeMs, true);
    ans = await (await api(url)).json();
  }
  return { url, points: ans.points, unit: ans.unit };
}

/** Axis labels in district time: seconds when the ticks are closer than a minute apart. */
function axisTimes(u, splits) {
  const close = splits.length > 1 && splits[1] - splits[0] < 60;
  return splits.map((s) => (close ? fmtTime(s * 1000) : fmtTime(s * 1000).slice(0, 5)));
}

/** Draws rule thresholds as dashed lines and alert episodes as shaded bands. */
function overlay(spec) {
  return (u) => {
    const ctx = u.ctx, { left, top, width, height } = u.bbox;
    ctx.save();
    for (const e of spec.episodes()) {
      const x0 = Math.max(left, u.valToPos(e.from / 1000, "x", true));
      const x1 = Math.min(left + width, u.valToPos(e.to / 1000, "x", true));
      if (x1 <= x0) continue;
      ctx.fillStyle = LEVEL_COLOURS[e.level] + "33";
      ctx.fillRect(x0, top, x1 - x0, height);
    }
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.font = `${11 * devicePixelRatio}px system-ui`;
    for (const t of spec.thresholds()) {
      const y = u.valToPos(t.value, "y", true);
      if (y < top || y > top + height) continue;
      ctx.strokeStyle = LEVEL_COLOURS[t.level] || "#94a3b8";
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      ctx.textAlign = "right";
      ctx.fillText(`${t.rule} ${t.value}`, left + width - 4 * devicePixelRatio, y - 3 * devicePixelRatio);
    }
    ctx.restore();
  };
}

function xRange(u, min, max) {
  if (min == null || max == null) { const now = Date.now() / 1000; return [now - 60, now]; }
  return max - min < 60 ? [max - 60, max + 1] : [min, max];
}

/** Keeps the thresholds in view: a level 0.6 m under its warning line must look like that. */
function yRange(spec) {
  return (u, min, max) => {
    const vals = spec.thresholds().map((t) => t.value);
    let lo = Math.min(min ?? Infinity, ...vals), hi = Math.max(max ?? -Infinity, ...vals);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1;
    return [lo - pad, hi + pad];
  };
}

/**
 * A chart of one or more devices' `quantity` over `rangeMs`, extended live from the stream.
 * Registered in `dash.charts` under `key` with the query it was drawn from, so that what it
 * shows can be checked against the API.
 */
async function makeChart(key, el, { devices, quantity, rangeMs, height, width, title }) {
  const spec = {
    key, devices, quantity, rangeMs, queries: [], fetched: [],
    thresholds: () => devices.length ? thresholds(devices[0], quantity) : [],
    episodes: () => devices.flatMap((d) => episodes(d.id, quantity)),
  };
  // Readings that arrive while the series is fetched are kept and merged after: the query may
  // have run just before they were stored.
  spec.early = [];
  const old = dash.charts.get(key);
  if (old && old.plot) old.plot.destroy();
  dash.charts.set(key, spec);
  const answers = await Promise.all(devices.map((d) => fetchSeries(d.id, quantity, rangeMs).catch(() => ({ url: null, points: [] }))));
  spec.queries = answers.map((a) => a.url);
  spec.fetched = answers.map((a) => a.points.length);
  // One x axis for all series: the union of timestamps, gaps as null.
  const xs = [...new Set(answers.flatMap((a) => a.points.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const data = [xs.map((x) => x / 1000)];
  for (const a of answers) {
    const ys = new Array(xs.length).fill(null);
    for (const [t, v] of a.points) ys[index.get(t)] = v;
    data.push(ys);
  }
  const unit = unitOf(quantity);
  const opts = {
    width: width || el.clientWidth || 600,
    height: height || 160,
    title,
    cursor: { drag: { x: true, y: false } },
    legend: { show: devices.length > 1 },
    // At least a minute across, so one reading or a few seconds of them still read as times.
    scales: { x: { time: true, range: xRange }, y: { range: yRange(spec) } },
    axes: [
      { stroke: "#8aa0b3", grid: { stroke: "#263442" }, ticks: { stroke: "#263442" }, values: axisTimes, space: 80 },
      { stroke: "#8aa0b3", grid: { stroke: "#263442" }, ticks: { stroke: "#263442" }, size: 78,
        values: (u, s) => s.map((v) => fmtNum(quantity, v) + (unit ? ` ${unit}` : "")) },
    ],
    series: [
      { value: (u, v) => (v == null ? "" : fmtTime(v * 1000)) },
      ...devices.map((d, i) => ({
        label: d.id, stroke: SERIES_COLOURS[i % SERIES_COLOURS.length], width: 1.5, spanGaps: true,
        value: (u, v) => (v == null ? "–" : `${fmtNum(quantity, v)}${unit ? " " + unit : ""}`),
      })),
    ],
    hooks: { draw: [overlay(spec)] },
  };
  el.innerHTML = "";
  spec.data = data;
  for (const [col, x, v] of spec.early) insertPoint(spec, col, x, v);
  spec.early = null;
  spec.plot = new uPlot(opts, data, el);
  if (dash.charts.get(key) !== spec) { spec.plot.destroy(); return spec; }
  minuteWide(spec);
  return spec;
}

/** A single reading gets no span from uPlot's own ranging: show the minute up to it. */
function minuteWide(c) {
  const xs = c.data[0];
  if (xs.length && xs[xs.length - 1] - xs[0] < 60) c.plot.setScale("x", { min: xs[xs.length - 1] - 60, max: xs[xs.length - 1] + 1 });
}

/** Puts a reading into a chart's arrays in time order (series of several devices interleave). */
function insertPoint(c, col, x, value) {
  const xs = c.data[0];
  let lo = 0, hi = xs.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  if (lo < xs.length && xs[lo] === x) { c.data[col + 1][lo] = value; return; }
  c.data.forEach((s, i) => s.splice(lo, 0, i === 0 ? x : i === col + 1 ? value : null));
}

/** A live reading for every chart showing that device and quantity. */
function extendCharts(deviceId, quantity, tsMs, value) {
  for (const c of dash.charts.values()) {
    if (c.quantity !== quantity || typeof value !== "number") continue;
    const col = c.devices.findIndex((d) => d.id === deviceId);
    if (col < 0) continue;
    if (c.early) { c.early.push([col, tsMs / 1000, value]); continue; }
    if (!c.data) continue;
    insertPoint(c, col, tsMs / 1000, value);
    c.dirty = true;
  }
}
function redrawCharts() {
  const cutoff = (c) => (Date.now() - c.rangeMs) / 1000;
  for (const c of dash.charts.values()) {
    if (!c.plot || (!c.dirty && !c.overlayDirty)) continue;
    // Drop what slid out of the range, keeping the points fetched countable for checks.
    while (c.data[0].length && c.data[0][0] < cutoff(c) && c.data[0].length > 2) {
      c.data.forEach((s) => s.shift());
      c.fetched = c.fetched.map((n) => Math.max(0, n - 1));
      c.trimmed = (c.trimmed || 0) + 1;
    }
    c.plot.setData(c.data);
    minuteWide(c);
    c.dirty = c.overlayDirty = false;
  }
}

async function renderRiver() {
  const gauges = [...dash.devices.values()].filter((d) => d.kind === "water_level").sort((a, b) => a.id.localeCompare(b.id));
  if (!gauges.length) { $("river-panel").hidden = true; return; }
  const el = $("river");
  const h = $("river-panel").clientHeight - 90;
  $("river-range").textContent = `last ${RIVER_RANGE_MS / 3600e3} h, ${tzLabel()}`;
  await makeChart("river", el, { devices: gauges, quantity: "water_level", rangeMs: RIVER_RANGE_MS, height: Math.max(160, h), width: el.clientWidth });
}

// ---- Map ----

const GEO_STYLES = {
  outline: { color: "#475569", weight: 1.5, dashArray: "6 6", fillColor: "#1e293b", fillOpacity: 0.25 },
  river: { color: "#0ea5e9", weight: 10, opacity: 0.55, lineCap: "round" },
  street: { color: "#94a3b8", weight: 5, opacity: 0.45 },
  station: { color: "#38bdf8", weight: 1, fillColor: "#38bdf8", fillOpacity: 0.12 },
  pumping_station: { color: "#fb923c", weight: 1, fillColor: "#fb923c", fillOpacity: 0.15 },
};

async function initMap() {
  const map = dash.map = L.map("map", { zoomSnap: 0.25, attributionControl: false, preferCanvas: false });
  if (dash.tileUrl) L.tileLayer(dash.tileUrl, { maxZoom: 19, opacity: 0.5 }).addTo(map);
  let bounds = null;
  try {
    const gj = await (await fetch("/dashboard/district.geojson")).json();
    if (gj.features && gj.features.length) {
      const layer = L.geoJSON(gj, {
        style: (f) => GEO_STYLES[f.properties && f.properties.kind] || { color: "#94a3b8", weight: 1 },
        interactive: false,
        onEachFeature: (f, l) => {
          const k = f.properties && f.properties.kind, name = f.properties && f.properties.name;
          if (name && (k === "street" || k === "river")) {
            l.bindTooltip(esc(name), { permanent: true, direction: "center", className: k === "river" ? "river-label" : "street-label" });
          }
        },
      }).addTo(map);
      bounds = layer.getBounds();
    }
  } catch (_) { /* devices alone */ }
  const pts = [...dash.devices.values()].filter((d) => d.lat != null && d.lon != null).map((d) => [d.lat, d.lon]);
  if (!bounds && pts.length) bounds = L.latLngBounds(pts);
  if (bounds) map.fitBounds(bounds, { padding: [10, 10] });
  else map.setView([0, 0], 2);
  $("legend").innerHTML = [["online", STATE_COLOURS.online], ["offline", STATE_COLOURS.offline],
    ...Object.entries(LEVEL_COLOURS).reverse().map(([l, c]) => [`${l} alert`, c])]
    .map(([n, c]) => `<span><i style="background:${c}"></i>${n}</span>`).join("");
}

function renderMarkers() {
  if (!dash.map) return;
  for (const d of dash.devices.values()) {
    if (d.lat == null || d.lon == null) continue;
    const level = worstLevel(d.id);
    const colour = level ? LEVEL_COLOURS[level] : isOnline(d) ? STATE_COLOURS.online : STATE_COLOURS.offline;
    let m = dash.markers.get(d.id);
    if (!m) {
      m = L.circleMarker([d.lat, d.lon], { radius: d.kind === "camera" ? 7 : 5, weight: d.kind === "camera" ? 2 : 1, fillOpacity: 0.9 })
        .bindTooltip(`${esc(d.id)} · ${esc(d.name || d.kind)}`, { className: "dev-tip" })
        .addTo(dash.map);
      if (d.kind === "camera") m.on("click", () => cameraPopup(d, m));
      else m.on("click", () => openDrawer(d.id));
      dash.markers.set(d.id, m);
    }
    m.setStyle({ color: d.kind === "camera" ? "#f472b6" : "#0b1218", fillColor: colour });
    // Alerting devices pulse, faster the higher the level.
    const p = dash.pulses.get(d.id);
    if (level && (!p || p.level !== level)) {
      if (p) p.marker.remove();
      const size = 34 + (3 - LEVELS[level]) * 6;
      const marker = L.marker([d.lat, d.lon], { interactive: false, keyboard: false,
        // Leaflet positions the icon by its transform: the animation scales an inner element.
        icon: L.divIcon({ className: "pulse-host", html: `<div class="pulse ${level}"></div>`, iconSize: [size, size] }) }).addTo(dash.map);
      dash.pulses.set(d.id, { level, marker });
    } else if (!level && p) {
      p.marker.remove();
      dash.pulses.delete(d.id);
    }
  }
}

async function cameraPopup(d, marker) {
  const box = document.createElement("div");
  box.innerHTML = `<b>${esc(d.name || d.id)}</b> <span class="dim">${esc(d.id)}</span><div class="dim">loading snapshot…</div>`;
  const open = document.createElement("button");
  open.textContent = "details";
  open.addEventListener("click", () => openDrawer(d.id));
  box.appendChild(open);
  marker.bindPopup(box, { maxWidth: 360 }).openPopup();
  try {
    const blob = await (await api(`/api/v1/cameras/${encodeURIComponent(d.id)}/snapshot`)).blob();
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    box.children[2].replaceWith(img);
    marker.getPopup().update();
  } catch (e) { box.children[2].textContent = `no snapshot (${e.message})`; }
}

// ---- Tables ----

function latestSummary(d) {
  const rep = (d.twin && d.twin.reported) || {};
  return Object.entries(rep).slice(0, 3).map(([q, v]) => `${esc(q)} ${fmtValue(q, v)}`).join(" · ");
}

function renderDevices() {
  const rows = [...dash.devices.values()].sort((a, b) => a.id.localeCompare(b.id));
  $("devices").innerHTML = rows.map((d) => {
    const online = isOnline(d);
    return `<tr data-device="${esc(d.id)}"><td title="${esc(d.name)}">${esc(d.id)}</td><td>${esc(d.kind)}</td><td>${esc(d.dept)}</td>
      <td class="${online ? "on" : "off"}">${online ? "online" : "offline"}</td><td>${latestSummary(d)}</td></tr>`;
  }).join("");
  $("n-dev").textContent = rows.length;
  $("n-on").textContent = rows.filter(isOnline).length;
  renderMarkers();
}

function renderAlerts() {
  const rows = openAlerts().sort((a, b) => LEVELS[a.level] - LEVELS[b.level] || toMs(b.raised_at || b.ts) - toMs(a.raised_at || a.ts));
  $("alerts").innerHTML = rows.map((a) => `<tr data-device="${esc(a.device)}" data-alert="${esc(a.id)}"><td><span class="lvl ${esc(a.level)}">${esc(a.level)}</span></td>
    <td>${esc(a.rule)}</td><td>${esc(a.device)}</td><td class="num">${a.value == null ? "" : esc(fmtNum(a.quantity, a.value))}</td>
    <td>${esc(fmtTime(toMs(a.raised_at || a.ts)))}</td>
    <td class="state">${a.state === "active" ? `<button data-ack="${esc(a.id)}">ack</button>` : esc(a.state)}</td></tr>`).join("");
  $("n-alerts").textContent = rows.length;
  for (const c of dash.charts.values()) c.overlayDirty = true;
  renderMarkers();
}

async function renderCameras() {
  let cams = [];
  try { cams = await (await api("/api/v1/cameras")).json(); } catch (_) { return; }
  $("cams").innerHTML = cams.map((c) => `<div class="cam" data-device="${esc(c.id)}"><img id="img-${esc(c.id)}" alt="">
    <div><span id="dot-${esc(c.id)}" class="${c.online ? "on" : "off"}" title="${c.online ? "online" : "offline"}">${c.online ? "●" : "○"}</span>
    ${esc(c.name || c.id)}</div></div>`).join("");
  for (const c of cams) refreshSnapshot(c.id);
  renderCameraEvents();
}

// A camera's twin carries its online state: keep the dot current between catalog refreshes.
function cameraOnline(id, online) {
  const dot = document.getElementById(`dot-${id}`);
  if (dot) { dot.className = online ? "on" : "off"; dot.textContent = online ? "●" : "○"; dot.title = online ? "online" : "offline"; }
}

let eventsPending = false;
async function renderCameraEvents() {
  if (eventsPending) return;
  eventsPending = true;
  try {
    const events = await (await api("/api/v1/events?limit=8")).json();
    $("cam-events").innerHTML = events.map((e) => `<tr data-event="${esc(e.id)}">
      <td>${esc(fmtTime(toMs(e.start)))}</td><td>${esc(e.camera)}</td><td>${esc(e.type)}</td>
      <td class="num">${esc((Math.round(e.score * 100) / 100).toFixed(2))}</td><td>${e.end ? "ended" : "ongoing"}</td></tr>`).join("");
  } catch (_) { /* shown at the next event */ }
  eventsPending = false;
}

async function refreshSnapshot(id) {
  try {
    const blob = await (await api(`/api/v1/cameras/${encodeURIComponent(id)}/snapshot`)).blob();
    const img = document.getElementById(`img-${id}`);
    if (img) { const old = img.src; img.src = URL.createObjectURL(blob); if (old.startsWith("blob:")) URL.revokeObjectURL(old); }
  } catch (_) { /* no snapshot yet */ }
}

// ---- The device drawer ----

async function openDrawer(id) {
  const d = dash.devices.get(id);
  if (!d) return;
  dash.drawer = { id, rangeMs: 24 * 3600e3 };
  $("drawer").hidden = false;
  $("d-title").textContent = `${d.id}${d.name ? " · " + d.name : ""}`;
  $("d-sub").textContent = `${d.kind}${d.dept ? " · " + d.dept : ""}${d.lat != null ? ` · ${d.lat.toFixed(5)}, ${d.lon.toFixed(5)}` : ""}`;
  try {
    const full = await (await api(`/api/v1/devices/${encodeURIComponent(id)}`)).json();
    if (full.twin && (!d.twin || !d.twin.version || d.twin.version <= full.twin.version)) d.twin = full.twin;
    d.controls = full.controls || [];
  } catch (e) { $("d-sub").textContent += ` · ${e.message}`; }
  if (!dash.drawer || dash.drawer.id !== id) return;
  renderDrawerTwin(); renderDrawerAlerts(); renderControls();
  $("d-ranges").innerHTML = [[15 * 60e3, "15 min"], [3600e3, "1 h"], [24 * 3600e3, "24 h"]]
    .map(([ms, l]) => `<button data-range="${ms}" class="${ms === dash.drawer.rangeMs ? "active" : ""}">${l}</button>`).join("");
  await renderDrawerCharts();
}

function closeDrawer() {
  $("drawer").hidden = true;
  for (const k of [...dash.charts.keys()]) if (k.startsWith("drawer:")) { const c = dash.charts.get(k); if (c.plot) c.plot.destroy(); dash.charts.delete(k); }
  dash.drawer = null;
}

function renderDrawerTwin() {
  const d = dash.drawer && dash.devices.get(dash.drawer.id);
  if (!d) return;
  const t = d.twin || {};
  const rep = t.reported || {}, des = t.desired || {}, delta = t.delta || {};
  const names = [...new Set([...Object.keys(rep), ...Object.keys(des)])].sort();
  $("d-version").textContent = `version ${t.version ?? "–"} · ${isOnline(d) ? "online" : "offline"}${t.updated_at ? " · updated " + fmtTime(toMs(t.updated_at)) : ""}`;
  $("d-twin").innerHTML = names.map((q) => {
    const v = rep[q];
    const want = q in des ? `${esc(fmtNum(q, des[q]))}${q in delta ? ' <span class="uncertain">(pending)</span>' : ""}` : "";
    return `<tr data-q="${esc(q)}"><td>${esc(q)}</td><td class="num">${fmtValue(q, v)}</td><td class="${esc(v && v.quality || "")}">${esc(v && v.quality || (v ? "good" : ""))}</td>
      <td>${v && v.ts ? esc(fmtTime(toMs(v.ts))) : ""}</td><td>${want}</td></tr>`;
  }).join("") || `<tr><td colspan="5" class="dim">no reported state yet</td></tr>`;
  renderProgress();
}

function renderDrawerAlerts() {
  if (!dash.drawer) return;
  const list = openAlerts(dash.drawer.id).sort((a, b) => LEVELS[a.level] - LEVELS[b.level]);
  $("d-alerts").innerHTML = list.map((a) => `<div class="d-alert" data-alert="${esc(a.id)}"><span class="lvl ${esc(a.level)}">${esc(a.level)}</span>
    <span>${esc(a.message || a.rule)}</span><span class="dim">${esc(a.state)} · ${esc(fmtTime(toMs(a.raised_at || a.ts)))}</span>
    ${a.state === "active" ? `<button data-ack="${esc(a.id)}">ack</button>` : ""}<button data-cap="${esc(a.id)}">CAP</button></div>`).join("")
    || `<span class="dim">none</span>`;
}

function renderControls() {
  const d = dash.drawer && dash.devices.get(dash.drawer.id);
  if (!d) return;
  const ctls = d.controls || [];
  $("d-controls").innerHTML = ctls.map((c) => {
    const rep = d.twin && d.twin.reported && d.twin.reported[c.quantity];
    const cur = rep && typeof rep.value === "number" ? rep.value : (c.min ?? 0);
    const unit = unitOf(c.quantity, c.unit);
    return `<div class="ctl" data-control="${esc(c.quantity)}"><label>${esc(c.quantity)}</label>
      <input type="range" min="${c.min ?? 0}" max="${c.max ?? 100}" step="1" value="${cur}">
      <input type="number" min="${c.min ?? 0}" max="${c.max ?? 100}" step="1" value="${cur}"> ${esc(unit)}
      <button data-set="${esc(c.quantity)}">set</button></div>
      <div class="progress" id="progress-${esc(c.quantity)}"></div>`;
  }).join("") || `<span class="dim">nothing writable on this device</span>`;
  renderProgress();
}

/**
 * A command's progress: pending while the twin's delta holds the desired value, reported once
 * the device's reported value matches (the delta is gone and the version moved on).
 */
function renderProgress() {
  const d = dash.drawer && dash.devices.get(dash.drawer.id);
  if (!d) return;
  for (const [key, p] of dash.pending) {
    const [dev, q] = key.split("/");
    if (dev !== d.id) continue;
    const el = document.getElementById(`progress-${q}`);
    if (!el) continue;
    const t = d.twin || {}, rep = t.reported && t.reported[q];
    const unit = unitOf(q);
    if (p.error) { el.className = "progress failed"; el.textContent = `failed: ${p.error}`; continue; }
    const reported = rep && typeof rep.value === "number" && Math.abs(rep.value - p.value) < 1e-6
      && !(t.delta && q in t.delta) && (t.version ?? 0) >= p.version;
    if (reported) {
      p.doneAt = p.doneAt || toMs(rep.ts) || Date.now();
      el.className = "progress done";
      el.textContent = `reported ${fmtNum(q, rep.value)} ${unit} at ${fmtTime(p.doneAt)} (twin version ${t.version}) · requested ${fmtTime(p.at)}`;
    } else {
      el.className = "progress pending";
      el.textContent = `pending: desired ${fmtNum(q, p.value)} ${unit} since ${fmtTime(p.at)} (twin version ${p.version}), device reports ${rep ? fmtNum(q, rep.value) + " " + unit : "nothing yet"}`;
    }
  }
}

async function setDesired(q, value) {
  const d = dash.devices.get(dash.drawer.id);
  const key = `${d.id}/${q}`;
  dash.pending.set(key, { value, at: Date.now(), version: (d.twin && d.twin.version) || 0 });
  try {
    const twin = await (await api(`/api/v1/devices/${encodeURIComponent(d.id)}/desired`, {
      method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ [q]: value }),
    })).json();
    dash.pending.get(key).version = twin.version;
    if (!d.twin || (twin.version ?? 0) >= (d.twin.version ?? 0)) d.twin = twin;
  } catch (e) { dash.pending.get(key).error = e.message; }
  renderDrawerTwin();
}

async function renderDrawerCharts() {
  const d = dash.drawer && dash.devices.get(dash.drawer.id);
  if (!d) return;
  for (const k of [...dash.charts.keys()]) if (k.startsWith("drawer:")) { const c = dash.charts.get(k); if (c.plot) c.plot.destroy(); dash.charts.delete(k); }
  const box = $("d-charts");
  const rep = (d.twin && d.twin.reported) || {};
  const qs = Object.keys(rep).filter((q) => (dash.quantities.get(q) || {}).kind === "number").sort();
  box.innerHTML = qs.map((q) => `<div class="chart" id="chart-${esc(q)}"></div>`).join("") || `<span class="dim">no numeric readings</span>`;
  const id = d.id;
  for (const q of qs) {
    if (!dash.drawer || dash.drawer.id !== id) return;
    const unit = unitOf(q);
    await makeChart(`drawer:${q}`, document.getElementById(`chart-${q}`), {
      devices: [d], quantity: q, rangeMs: dash.drawer.rangeMs, height: 150, width: box.clientWidth,
      title: `${q}${unit ? " (" + unit + ")" : ""}`,
    });
  }
}

// ---- The stream ----

function onEvent(type, data) {
  noteArrival();
  if (type === "feed") {
    const d = dash.devices.get(data.device);
    if (d) {
      d.twin = d.twin || { reported: {}, online: true };
      d.twin.reported = d.twin.reported || {};
      const ts = toMs(data.ts);
      for (const [q, v] of Object.entries(data.values || {})) {
        d.twin.reported[q] = { ...v, ts: data.ts };
        extendCharts(d.id, q, ts, v.value);
      }
    }
  } else if (type === "twin") {
    const d = dash.devices.get(data.device);
    if (d && (!d.twin || !d.twin.version || (data.version ?? 0) >= d.twin.version)) d.twin = data;
    if (d && d.kind === "camera") cameraOnline(d.id, data.online);
    if (dash.drawer && data.device === dash.drawer.id) renderDrawerTwin();
  } else if (type === "alert") {
    dash.alerts.set(data.id, { ...(dash.alerts.get(data.id) || {}), ...data });
    renderAlerts();
    if (dash.drawer && data.device === dash.drawer.id) renderDrawerAlerts();
  } else if (type === "event") {
    if (data.snapshot) refreshSnapshot(data.camera);
    renderCameraEvents();
  }
}

// Server-sent events read through fetch, so the bearer header can be sent (EventSource cannot).
async function stream() {
  for (;;) {
    try {
      const r = await api("/api/v1/stream", { headers: { Accept: "text/event-stream" } });
      dash.streamSince = Date.now();
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) type = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data) { try { onEvent(type, JSON.parse(data)); } catch (e) { console.warn("event", e); } }
        }
      }
    } catch (e) { console.warn("stream", e); }
    dash.streamSince = 0;
    renderRate();
    await new Promise((res) => setTimeout(res, 2000));
  }
}

// The list carries no twins: fetch them a few at a time; the stream keeps them current after.
async function loadTwins(ids) {
  const queue = [...ids];
  const worker = async () => {
    for (let id; (id = queue.shift()) !== undefined;) {
      try {
        const d = await (await api(`/api/v1/devices/${encodeURIComponent(id)}`)).json();
        const known = dash.devices.get(id);
        // A twin from the stream may be newer than the one fetched.
        if (known && d.twin && (!known.twin || !known.twin.version || known.twin.version < d.twin.version)) known.twin = d.twin;
        if (known) known.controls = d.controls || [];
      } catch (_) { /* shown without its latest values */ }
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
  renderDevices();
}

async function start() {
  const devices = await (await api("/api/v1/devices")).json();
  dash.devices = new Map(devices.map((d) => [d.id, d]));
  try {
    const cfg = await (await fetch("/dashboard/config.json")).json();
    if (typeof cfg.utc_offset_minutes === "number") dash.offsetMin = cfg.utc_offset_minutes;
    dash.tileUrl = cfg.tile_url || null;
  } catch (_) { /* the default, China Standard Time */ }
  try { dash.quantities = new Map((await (await api("/api/v1/quantities")).json()).map((q) => [q.name, q])); } catch (_) {}
  try { dash.rules = (await (await api("/api/v1/rules")).json()).rules || []; } catch (_) { /* no grant: thresholds from alerts */ }
  try { for (const a of await (await api("/api/v1/alerts")).json()) dash.alerts.set(a.id, a); } catch (_) {}
  $("login").style.display = "none";
  renderClock();
  await initMap();
  renderDevices(); renderAlerts(); renderCameras();
  loadTwins(devices.map((d) => d.id));
  stream();
  renderRiver().catch((e) => console.warn("river", e));
  setInterval(() => { renderClock(); renderRate(); renderDevices(); renderDrawerTwin(); }, 1000);
  setInterval(redrawCharts, 1000);
  setInterval(renderCameras, 15000);
  document.body.dataset.ready = "1";
}

// ---- Events ----

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  dash.auth = `Bearer ${$("app").value}:${$("secret").value}`;
  try {
    await start();
    $("who").textContent = $("app").value;
    sessionStorage.setItem("auth", dash.auth);
  } catch (err) { $("err").textContent = err.message; }
});

async function ack(id) {
  try {
    const a = await (await api(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, { method: "POST" })).json();
    dash.alerts.set(a.id, { ...(dash.alerts.get(a.id) || {}), ...a });
    renderAlerts(); renderDrawerAlerts();
  } catch (err) { alert(err.message); }
}

// The CAP document needs the bearer header: fetched, then shown from a blob.
async function showCap(id) {
  try {
    const blob = await (await api(`/api/v1/alerts/${encodeURIComponent(id)}/cap`)).blob();
    window.open(URL.createObjectURL(new Blob([blob], { type: "text/xml" })), "_blank");
  } catch (err) { alert(err.message); }
}

document.addEventListener("click", (e) => {
  const t = e.target.closest("[data-ack],[data-cap],[data-set],[data-range],[data-device]");
  if (!t) return;
  if (t.dataset.ack) { e.stopPropagation(); ack(t.dataset.ack); }
  else if (t.dataset.cap) showCap(t.dataset.cap);
  else if (t.dataset.set) {
    const v = Number(t.closest(".ctl").querySelector("input[type=number]").value);
    setDesired(t.dataset.set, v);
  } else if (t.dataset.range) { dash.drawer.rangeMs = Number(t.dataset.range); openDrawer(dash.drawer.id); }
  else if (t.dataset.device && !t.closest("#drawer")) openDrawer(t.dataset.device);
});
// Slider and number box move together.
$("d-controls").addEventListener("input", (e) => {
  const row = e.target.closest(".ctl");
  if (!row) return;
  for (const i of row.querySelectorAll("input")) if (i !== e.target) i.value = e.target.value;
});
$("d-close").addEventListener("click", closeDrawer);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDrawer(); });

// Credentials may be given in the fragment (#app=ID&secret=S) by `sim demo`, never sent to the server in a URL.
const frag = new URLSearchParams(location.hash.slice(1));
if (frag.get("app")) { $("app").value = frag.get("app"); $("secret").value = frag.get("secret") || ""; history.replaceState(null, "", location.pathname); $("login-form").requestSubmit(); }
else if (sessionStorage.getItem("auth")) { dash.auth = sessionStorage.getItem("auth"); start().catch(() => { $("login").style.display = "flex"; }); }
