// The swarmpull dashboard: one stream of server-sent events, drawn with the DOM and SVG.
// Everything shown comes from other machines (peer ids, labels, URLs): it is set as
// text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY = 900;
let history = [];
let stream = null;

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}
const rate = (n) => (n === null || n === undefined ? "-" : `${bytes(n)}/s`);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function show(part) {
  $("login").hidden = part !== "login";
  $("board").hidden = part !== "board";
  $("logout").hidden = part !== "board";
}

async function start() {
  const resp = await fetch("api/state", { credentials: "same-origin" });
  if (resp.status === 401) { show("login"); $("status").textContent = "log in"; return; }
  if (!resp.ok) { $("status").textContent = `dashboard unavailable (${resp.status})`; return; }
  const body = await resp.json();
  history = body.history || [];
  show("board");
  if (body.state) draw(body.state);
  drawCharts();
  connect();
}

function connect() {
  if (stream) stream.close();
  stream = new EventSource("api/stream");
  stream.addEventListener("history", (e) => { history = JSON.parse(e.data); drawCharts(); });
  stream.addEventListener("state", (e) => draw(JSON.parse(e.data)));
  stream.addEventListener("point", (e) => {
    history.push(JSON.parse(e.data));
    if (history.length > HISTORY) history.shift();
    drawCharts();
  });
  stream.addEventListener("bye", () => { $("status").textContent = "the supernode is stopping"; });
  stream.onerror = async () => {
    $("status").textContent = "reconnecting…";
    const check = await fetch("api/state", { credentials: "same-origin" }).catch(() => null);
    if (check && check.status === 401) { stream.close(); show("login"); }
  };
}

function draw(view) {
  const when = new Date(view.at * 1000).toLocaleTimeString();
  $("status").textContent = `live, ${when}${view.partial ? " (other replicas unreachable)" : ""}`;
  $("replicas").textContent = `${view.replicas.length} replica${view.replicas.length === 1 ? "" : "s"}`;
  $("c-nodes").textContent = view.peers;
  $("c-peers").textContent = bytes(view.totals.from_peers);
  $("r-peers").textContent = rate(view.rates.from_peers);
  $("c-seed").textContent = bytes(view.totals.from_seed);
  $("r-seed").textContent = rate(view.rates.from_seed);
  $("c-registry").textContent = bytes(view.totals.registry);
  $("r-registry").textContent = rate(view.rates.registry);
  const received = view.saved.received;
  $("c-saved").textContent = bytes(view.saved.bytes);
  $("c-saved-note").textContent = received > 0
    ? `${(100 * view.saved.bytes / received).toFixed(1)}% of the ${bytes(received)} the nodes received did not come from the registry`
    : "nothing received yet";
  drawTasks(view.tasks);
  drawNodes(view.nodes, view.peers);
}

function drawTasks(tasks) {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const t of tasks) {
    const row = body.insertRow();
    row.dataset.task = t.id;
    const name = cell(row, t.digest ? t.digest.slice(0, 19) : t.id.slice(0, 24), "id");
    name.title = t.url || t.id;
    cell(row, bytes(t.size), "num");
    cell(row, t.error ? `${t.state}: ${t.error}` : t.state);
    cell(row, t.pieces ? `${t.seeded}/${t.pieces}` : "-", "num");
    const done = cell(row, "", "num done");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${t.members ? (100 * t.done) / t.members : 0}%`;
    bar.appendChild(fill);
    done.appendChild(bar);
    done.appendChild(document.createTextNode(`${t.done}/${t.members}`));
    cell(row, t.downloading ?? "-", "num");
    cell(row, t.waiting ?? "-", "num");
    cell(row, rate(t.bytes_per_second), "num");
    cell(row, t.pieces_per_second.toFixed(1), "num");
  }
}

function drawNodes(nodes, peers) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  if (!nodes) { $("nodes-note").textContent = "(waiting for the next update)"; return; }
  const shown = nodes.slice(0, 500);
  $("nodes-note").textContent = shown.length < peers ? `(${shown.length} of ${peers} shown)` : "";
  for (const n of shown) {
    const row = body.insertRow();
    cell(row, n.id, "id");
    cell(row, n.zone || "-");
    cell(row, n.rack || "-");
    const state = cell(row, "");
    const badge = document.createElement("span");
    badge.className = `badge ${["active", "degraded", "quarantined"].includes(n.state) ? n.state : ""}`;
    badge.textContent = n.state;
    state.appendChild(badge);
    cell(row, n.channel ? "open" : "-", "channel");
    cell(row, `${n.tasks_done}/${n.tasks}`, "num");
    cell(row, bytes(n.down), "num");
    cell(row, bytes(n.up), "num");
    cell(row, rate(n.down_rate), "num");
    cell(row, rate(n.up_rate), "num");
    cell(row, (n.parents || []).join(", ") || "-", "id");
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// One chart: series of [t, value] on a shared time axis, y from 0 to the largest value.
function chart(target, series, format) {
  const W = 600, H = 180, left = 64, bottom = 18;
  target.replaceChildren();
  const points = history.length;
  target.dataset.points = String(points);
  if (points < 2) return;
  const t0 = history[0].t, t1 = history[points - 1].t;
  const top = Math.max(1, ...series.flatMap((s) => history.map((p) => p[s.key] || 0)));
  const x = (t) => left + ((W - left - 4) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => H - bottom - ((H - bottom - 6) * v) / top;
  target.appendChild(svg("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  target.appendChild(svg("line", { class: "axis", x1: left, y1: 6, x2: W, y2: 6 }));
  const label = (text, attrs) => { const el = svg("text", attrs); el.textContent = text; target.appendChild(el); };
  label(format(top), { x: 2, y: 16 });
  label(format(0), { x: 2, y: H - bottom });
  label(`${Math.round(t1 - t0)} s`, { x: W - 40, y: H - 4 });
  for (const s of series) {
    const coords = history.map((p) => `${x(p.t).toFixed(1)},${y(p[s.key] || 0).toFixed(1)}`).join(" ");
    target.appendChild(svg("polyline", { class: s.cls, points: coords }));
  }
}

function drawCharts() {
  chart($("chart-rates"), [
    { key: "from_peers", cls: "peers" },
    { key: "from_seed", cls: "seed" },
    { key: "registry", cls: "registry" },
  ], rate);
  chart($("chart-done"), [
    { key: "members", cls: "members" },
    { key: "done", cls: "done" },
  ], (v) => String(Math.round(v)));
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const resp = await fetch("login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  if (resp.ok) { $("login-error").hidden = true; start(); return; }
  $("login-error").textContent = resp.status === 401 ? "wrong token" : `login failed (${resp.status})`;
  $("login-error").hidden = false;
});

$("logout").addEventListener("click", async () => {
  if (stream) stream.close();
  await fetch("logout", { method: "POST", credentials: "same-origin" });
  show("login");
});

start();
