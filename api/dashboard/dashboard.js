// The timerhook dashboard: polls /dashboard/state every second and draws it. Plain browser
// JavaScript, no build step and no library: charts are SVG drawn here. Text from the server
// is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// The admin API key, once the API asks for one (kept for this browser tab only).
const KEY_STORE = "timerhook.key";
const savedKey = () => sessionStorage.getItem(KEY_STORE);

// One place for every call to the API: it adds the key when there is one.
async function api(path, options = {}) {
  const key = savedKey();
  const response = await fetch(path, {
    ...options,
    headers: {
      Accept: "application/json",
      ...(key ? { Authorization: `Bearer ${key}` } : {}),
      ...(options.headers || {}),
    },
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error((body && (body.detail || body.title)) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- formatting ----------------------------------------------------------------------------

const number = new Intl.NumberFormat();
const fmtInt = (n) => number.format(n);

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

// HH:MM:SS by default; "minutes" drops the seconds, "hours" says the day too.
function fmtTime(ms, detail = "seconds") {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (detail === "hours") return `${DAYS[d.getDay()]} ${hm}`;
  return detail === "minutes" ? hm : `${hm}:${pad(d.getSeconds())}`;
}

function fmtDate(text) {
  return text ? new Date(text).toLocaleString() : "–";
}

// -- DOM helpers ---------------------------------------------------------------------------

function node(tag, attrs = {}, text) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined && text !== null) el.textContent = String(text);
  return el;
}

function svgNode(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  parent.appendChild(el);
  return el;
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function fillRows(tbody, rows, columns, emptyText) {
  clear(tbody);
  if (rows.length === 0) {
    const tr = node("tr");
    tr.appendChild(node("td", { colspan: String(columns), class: "empty" }, emptyText));
    tbody.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = node("tr");
    for (const cell of cells) tr.appendChild(cell);
    tbody.appendChild(tr);
  }
}

// -- charts --------------------------------------------------------------------------------

const H = 140;
const BOTTOM = 16;

function frame(svg) {
  clear(svg);
  const width = Math.max(200, Math.round(svg.clientWidth || 600));
  svg.setAttribute("viewBox", `0 0 ${width} ${H}`);
  svgNode("line", { x1: 0, y1: H - BOTTOM, x2: width, y2: H - BOTTOM, class: "axis" }, svg);
  return width;
}

function tick(svg, x, y, text, anchor = "start") {
  const t = svgNode("text", { x, y, class: "tick", "text-anchor": anchor }, svg);
  t.textContent = text;
}

// A bar per value; labels[i] names bar i (shown on hover), the first and last under the axis.
function bars(svg, values, labels) {
  const width = frame(svg);
  const max = Math.max(1, ...values);
  const slot = width / values.length;
  values.forEach((v, i) => {
    if (v <= 0) return;
    const h = Math.max(1, (v / max) * (H - BOTTOM - 14));
    const rect = svgNode("rect", {
      x: i * slot + 0.5, y: H - BOTTOM - h, width: Math.max(1, slot - 1), height: h, class: "bar",
    }, svg);
    svgNode("title", {}, rect).textContent = `${labels[i]}: ${fmtInt(v)}`;
  });
  tick(svg, 2, 11, `max ${fmtInt(max)}`);
  tick(svg, 2, H - 3, labels[0]);
  tick(svg, width - 2, H - 3, labels[labels.length - 1], "end");
  svg.dataset.total = String(values.reduce((a, b) => a + b, 0));
}

// One line per series (null values break the line), over shared x positions.
function lines(svg, series, labels, unit) {
  const width = frame(svg);
  let max = 0;
  for (const s of series) for (const v of s) if (v !== null && v > max) max = v;
  max = max > 0 ? max * 1.1 : 1;
  const n = labels.length;
  const x = (i) => (n <= 1 ? 0 : (i / (n - 1)) * width);
  const y = (v) => H - BOTTOM - (v / max) * (H - BOTTOM - 14);
  series.forEach((s, k) => {
    let d = "";
    let pen = false;
    s.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      const alone = !pen && (i + 1 >= s.length || s[i + 1] === null);
      if (alone) svgNode("circle", { cx: x(i), cy: y(v), r: 2, class: `dot${k}` }, svg);
      pen = true;
    });
    if (d) svgNode("path", { d, class: `s${k}` }, svg);
  });
  tick(svg, 2, 11, `${max < 10 ? max.toFixed(2) : fmtInt(Math.round(max))} ${unit}`);
  if (n) {
    tick(svg, 2, H - 3, labels[0]);
    tick(svg, width - 2, H - 3, labels[n - 1], "end");
  }
}

// Sparse histogram steps -> one value per step from the current one, count + 1 values.
function spread(steps, nowMs, step, count) {
  const start = Math.floor(nowMs / 1000 / step) * step;
  const values = new Array(count + 1).fill(0);
  const detail = step < 60 ? "seconds" : step < 3600 ? "minutes" : "hours";
  const labels = values.map((_, i) => fmtTime((start + i * step) * 1000, detail));
  for (const s of steps) {
    const i = Math.floor((Date.parse(s.at) / 1000 - start) / step);
    if (i >= 0 && i < values.length) values[i] += s.pending;
  }
  return { values, labels };
}

// -- drawing the state ---------------------------------------------------------------------

function drawBacklog(id, steps, nowMs, step, count) {
  const { values, labels } = spread(steps, nowMs, step, count);
  bars($(id), values, labels);
  $(`${id}-total`).textContent = `${fmtInt(values.reduce((a, b) => a + b, 0))} pending`;
}

function drawDispatchers(list) {
  fillRows($("dispatchers").tBodies[0], list.map((d) => {
    const state = node("td");
    state.appendChild(node("span", { class: `dot ${d.state}` }));
    state.appendChild(document.createTextNode(d.state));
    return [
      node("td", { class: "mono", title: `${d.host}, pid ${d.pid}` }, d.id), state,
      node("td", { class: "num" }, fmtAge(d.heartbeat_age_seconds)),
      node("td", { class: "num" }, fmtInt(d.in_flight)),
      node("td", { class: "num" }, fmtInt(d.sent_total)),
      node("td", { class: "num" }, fmtInt(d.failed_total)),
    ];
  }), 6, "No dispatcher is running.");
}

function drawCaps(caps) {
  fillRows($("caps").tBodies[0], caps.map((c) => [
    node("td", {}, c.scope),
    node("td", { class: "num" }, c.per_minute ? fmtInt(c.per_minute) : "none"),
    node("td", { class: "num" }, c.per_minute ? c.tokens.toFixed(1) : "–"),
  ]), 3, "No cap is set.");
}

function drawDead(dead) {
  fillRows($("dead").tBodies[0], dead.map((t) => {
    const action = node("td");
    const button = node("button", { type: "button", class: "requeue", "data-id": t.id }, "Requeue");
    button.addEventListener("click", () => requeue(t.id, button));
    action.appendChild(button);
    return [
      node("td", { class: "mono" }, t.id), node("td", {}, t.target),
      node("td", { class: "num" }, t.attempts), node("td", {}, fmtDate(t.finished_at)),
      node("td", { class: "wrap" }, t.last_error || ""), action,
    ];
  }), 6, "No dead letters.");
}

function draw(state) {
  const nowMs = Date.parse(state.now);
  $("pending").textContent = fmtInt(state.pending);
  $("overdue").textContent = fmtInt(state.overdue);
  $("oldest").textContent = fmtAge(state.oldest_overdue_age_seconds);
  $("in-flight").textContent = fmtInt(state.in_flight);
  $("dead-count").textContent = fmtInt(state.dead_letters);
  $("delivered").textContent = fmtInt(state.delivered_total);
  drawBacklog("backlog-minute", state.backlog.minute, nowMs, 1, 60);
  drawBacklog("backlog-hour", state.backlog.hour, nowMs, 60, 60);
  drawBacklog("backlog-day", state.backlog.day, nowMs, 3600, 24);
  const labels = state.history.map((p) => fmtTime(Date.parse(p.at)));
  lines($("rate-chart"), [
    state.history.map((p) => p.sent_per_second),
    state.history.map((p) => p.failed_per_second),
  ], labels, "/s");
  lines($("lateness-chart"), [
    state.history.map((p) => p.lateness_p50_ms),
    state.history.map((p) => p.lateness_p99_ms),
  ], labels, "ms");
  drawDispatchers(state.dispatchers);
  drawCaps(state.caps);
  drawDead(state.dead);
}

// -- actions -------------------------------------------------------------------------------

async function requeue(id, button) {
  button.disabled = true;
  try {
    await api(`/timer/${encodeURIComponent(id)}/requeue`, { method: "POST" });
    $("dead-message").textContent = `Requeued ${id}: due now.`;
  } catch (error) {
    $("dead-message").textContent = `Could not requeue ${id}: ${error.message}`;
    button.disabled = false;
  }
  refresh();
}

function field(dl, name, value) {
  dl.appendChild(node("dt", {}, name));
  dl.appendChild(node("dd", {}, value === null || value === undefined ? "–" : value));
}

async function lookup(event) {
  event.preventDefault();
  const out = $("lookup-result");
  const id = $("lookup-id").value.trim();
  clear(out);
  if (!id) return;
  let timer;
  let attempts;
  try {
    timer = await api(`/timer/${encodeURIComponent(id)}`);
    attempts = await api(`/timer/${encodeURIComponent(id)}/attempts`);
  } catch (error) {
    out.appendChild(node("p", { class: "message" }, error.message));
    return;
  }
  const dl = node("dl", { id: "lookup-fields" });
  field(dl, "Status", timer.status);
  field(dl, "Why it waits", timer.waiting_on || (timer.status === "pending" ? "nothing: it goes when due" : null));
  field(dl, "Due", fmtDate(timer.due_at));
  field(dl, "Time left", `${timer.time_left} s`);
  field(dl, "Next attempt", fmtDate(timer.next_attempt_at));
  field(dl, "Attempts", `${timer.attempts} (at most ${timer.max_attempts} per round)`);
  field(dl, "Priority", timer.priority);
  field(dl, "Resources", timer.resources ? timer.resources.join(", ") : null);
  field(dl, "URL", timer.url);
  field(dl, "Request id", timer.request_id);
  out.appendChild(dl);
  const table = node("table", { id: "lookup-attempts" });
  const head = node("tr");
  for (const h of ["#", "At", "Status", "Latency", "Error", "Dispatcher"]) head.appendChild(node("th", {}, h));
  table.appendChild(node("thead")).appendChild(head);
  const body = node("tbody");
  table.appendChild(body);
  fillRows(body, attempts.attempts.map((a) => [
    node("td", { class: "num" }, a.attempt), node("td", {}, fmtDate(a.at)),
    node("td", {}, a.status_code === null ? "no answer" : a.status_code),
    node("td", { class: "num" }, a.latency_ms === null ? "–" : `${a.latency_ms.toFixed(1)} ms`),
    node("td", { class: "wrap" }, a.error || ""), node("td", { class: "mono" }, a.dispatcher),
  ]), 6, "No attempt yet.");
  const wrap = node("div", { class: "scroll" });
  wrap.appendChild(table);
  out.appendChild(wrap);
}

// -- polling -------------------------------------------------------------------------------

let timer = null;

async function refresh() {
  clearTimeout(timer);
  const status = $("status");
  try {
    draw(await api("/dashboard/state"));
    status.textContent = `live, updated ${fmtTime(Date.now())}`;
    status.classList.remove("error");
  } catch (error) {
    status.textContent = `cannot read the state: ${error.message}`;
    status.classList.add("error");
    if (error.status === 401 || error.status === 403) {
      askForKey(error.message);
      return; // polling resumes once a key is given
    }
  }
  timer = setTimeout(refresh, POLL_MS);
}

// Keys are in use: ask for an admin key (see `timerhook keys create --admin`).
function askForKey(why) {
  $("key-why").textContent = why;
  $("key-form").hidden = false;
  $("key-input").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("lookup").addEventListener("submit", lookup);
  $("key-form").addEventListener("submit", useKey);
  refresh();
});
