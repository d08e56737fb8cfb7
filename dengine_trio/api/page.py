"""The live cluster page the health port serves at ``GET /``: one self-contained HTML document
(inline CSS and JS, no CDN, no build step).

The browser polls, every second, ``GET /status`` and ``GET /metrics`` of every node's health
port and shows who leads, each node's role, term, commit and applied index, lag and health,
and the cluster's KV writes and reads per second over the last five minutes as an inline SVG
chart. Rates come from the ``dengine_http_requests_total`` counters of ``/metrics``, summed
over the nodes and averaged over 5 s (reads: ``GET /kv/<key>`` answered 200 or 404; writes:
``POST /kv`` and ``DELETE /kv/<key>`` answered 200); a node without metrics counts none.

Which nodes: the ``endpoints`` query parameter (health-port URLs, comma separated), else the
members of this node's ``/status``, each at its Raft host and at this page's port shifted by
the difference of node ids (the layout of ``make start-cluster`` and of the mission: node
``n`` on health port ``10000 + n``). The other nodes are other origins: their ``/status`` and
``/metrics`` answer with ``Access-Control-Allow-Origin: *`` (see :mod:`dengine_trio.api.health`).
"""

from __future__ import annotations

__all__ = ["CLUSTER_PAGE", "CLUSTER_PAGE_CSP"]

CLUSTER_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src http: https:; img-src data:; base-uri 'none'; form-action 'self'"
)
"""The page's Content-Security-Policy: its own inline code, and fetches to any node."""

CLUSTER_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dengine_trio cluster</title>
<style>
  :root { --fg:#1d2430; --muted:#687385; --line:#dde2ea; --bg:#f6f8fb; --ok:#1a7f37;
          --bad:#c62828; --warn:#b26a00; --lead:#0b5cad; --writes:#0b5cad; --reads:#d9730d; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line);
           display: flex; align-items: baseline; gap: 24px; flex-wrap: wrap; }
  h1 { font-size: 18px; margin: 0; }
  #banner { font-size: 16px; font-weight: 600; }
  #banner.ok { color: var(--ok); } #banner.bad { color: var(--bad); }
  main { padding: 16px 24px; max-width: 1200px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
            padding: 12px 16px; margin-bottom: 16px; }
  h2 { font-size: 14px; margin: 0 0 8px; color: var(--muted); font-weight: 600; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
           white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; }
  td.num, th.num { text-align: right; }
  tr.leader td { background: #eef5fd; }
  .role { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
          font-weight: 600; background: #e8ebf0; }
  .role.leader { background: var(--lead); color: #fff; }
  .role.follower { background: #e3f1e6; color: var(--ok); }
  .role.candidate, .role.pre_candidate { background: #fff1db; color: var(--warn); }
  .role.down { background: #fde7e7; color: var(--bad); }
  .health.ok { color: var(--ok); } .health.bad { color: var(--bad); }
  .muted { color: var(--muted); }
  #chart { width: 100%; height: 180px; display: block; }
  .legend span { margin-right: 16px; }
  .legend i { display: inline-block; width: 18px; height: 3px; vertical-align: middle;
              margin-right: 6px; }
  form { display: flex; gap: 8px; margin-top: 8px; }
  input[type=text] { flex: 1; font: inherit; padding: 4px 8px; border: 1px solid var(--line);
                     border-radius: 4px; }
  button { font: inherit; padding: 4px 12px; }
</style>
</head>
<body>
<header>
  <h1>dengine_trio cluster</h1>
  <div id="banner" class="bad">connecting&hellip;</div>
  <div id="updated" class="muted"></div>
</header>
<main>
  <section>
    <h2>Nodes</h2>
    <table>
      <thead><tr>
        <th>Node</th><th>Health endpoint</th><th>Role</th><th class="num">Term</th>
        <th class="num">Leader</th><th class="num">Commit</th><th class="num">Applied</th>
        <th class="num">Lag</th><th class="num">Last contact</th><th>Health</th>
      </tr></thead>
      <tbody id="nodes"></tbody>
    </table>
  </section>
  <section>
    <h2>KV requests per second, whole cluster, last 5 minutes</h2>
    <div class="legend"><span><i style="background:var(--writes)"></i>writes
      <b id="writes-now">-</b>/s</span><span><i style="background:var(--reads)"></i>reads
      <b id="reads-now">-</b>/s</span><span class="muted" id="chart-note"></span></div>
    <svg id="chart" viewBox="0 0 1000 180" preserveAspectRatio="none"
         xmlns="http://www.w3.org/2000/svg"></svg>
  </section>
  <section>
    <h2>Endpoints</h2>
    <div class="muted" id="source"></div>
    <form id="endpoints-form">
      <input type="text" id="endpoints-input" name="endpoints"
             placeholder="http://127.0.0.1:10001,http://127.0.0.1:10002">
      <button type="submit">Use</button>
    </form>
  </section>
</main>
<script>
"use strict";
const POLL_MS = 1000, WINDOW_S = 300, TIMEOUT_MS = 1500, RATE_S = 5;
const SVG = "http://www.w3.org/2000/svg";
let endpoints = [];
const expectedId = {};     // endpoint -> node id, when taken from the members
const last = {};           // endpoint -> {status, error}
const counters = {};       // endpoint -> [{t, reads, writes}], the last RATE_S seconds
const series = [];         // [{t, writes, reads}] cluster rates

function text(el, value) { el.textContent = value; return el; }
function cell(tr, value, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = value === null || value === undefined ? "-" : String(value);
  tr.appendChild(td);
  return td;
}

function splitHost(address) {
  const m = /^\[(.*)\]:(\d+)$/.exec(address) || /^(.*):(\d+)$/.exec(address);
  return m ? m[1] : address;
}

async function fetchWithTimeout(url) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
  try { return await fetch(url, {cache: "no-store", signal: ctrl.signal}); }
  finally { clearTimeout(timer); }
}

async function discover() {
  const param = new URLSearchParams(location.search).get("endpoints");
  if (param) {
    endpoints = param.split(",").map(s => s.trim().replace(/\/+$/, "")).filter(Boolean)
      .map(s => s.includes("://") ? s : "http://" + s);
    text(document.getElementById("source"), "Endpoints from the page address (?endpoints=).");
  } else {
    const own = await (await fetchWithTimeout("/status")).json();
    const port = Number(location.port || (location.protocol === "https:" ? 443 : 80));
    endpoints = own.members.map(m => {
      let url = location.origin;
      if (m.id !== own.node_id) {
        let host = splitHost(m.address);
        if (["0.0.0.0", "::", ""].includes(host)) host = location.hostname;
        if (host.includes(":")) host = "[" + host + "]";
        url = location.protocol + "//" + host + ":" + (port - own.node_id + m.id);
      }
      expectedId[url] = m.id;
      return url;
    });
    text(document.getElementById("source"),
      "Endpoints guessed from node " + own.node_id + "'s members: each at its Raft host, on " +
      "this port shifted by the node id. If yours differ, list them here:");
  }
  document.getElementById("endpoints-input").value = endpoints.join(",");
}

function parseCounters(body) {
  let reads = 0, writes = 0;
  for (const line of body.split("\n")) {
    if (!line.startsWith("dengine_http_requests_total{")) continue;
    const labels = {};
    const close = line.lastIndexOf("}");
    line.slice(line.indexOf("{") + 1, close).replace(/(\w+)="((?:[^"\\]|\\.)*)"/g,
      (_, k, v) => { labels[k] = v; return ""; });
    const value = Number(line.slice(close + 1).trim().split(/\s+/)[0]);
    if (!isFinite(value)) continue;
    const kvKey = labels.route && labels.route.startsWith("/kv/");
    if (labels.method === "GET" && kvKey && (labels.status === "200" || labels.status === "404"))
      reads += value;
    else if (labels.status === "200" && ((labels.method === "POST" && labels.route === "/kv") ||
                                         (labels.method === "DELETE" && kvKey)))
      writes += value;
  }
  return {reads, writes};
}

async function pollOne(endpoint, now) {
  try {
    const r = await fetchWithTimeout(endpoint + "/status");
    if (!r.ok) throw new Error("HTTP " + r.status);
    last[endpoint] = {status: await r.json(), error: null};
  } catch (e) {
    last[endpoint] = {status: null, error: e.name === "AbortError" ? "timed out" : "unreachable"};
    delete counters[endpoint];
    return null;
  }
  try {
    const r = await fetchWithTimeout(endpoint + "/metrics");
    if (!r.ok) return null;
    const c = parseCounters(await r.text());
    let samples = counters[endpoint] || [];
    const latest = samples[samples.length - 1];
    if (latest && (c.reads < latest.reads || c.writes < latest.writes)) samples = [];  // restarted
    samples.push({t: now, reads: c.reads, writes: c.writes});
    // The rate over the last RATE_S seconds: steadier than from one poll to the next.
    while (samples.length > 2 && now - samples[1].t >= RATE_S * 1000) samples.shift();
    counters[endpoint] = samples;
    const first = samples[0], dt = (now - first.t) / 1000;
    return dt > 0 ? {reads: (c.reads - first.reads) / dt, writes: (c.writes - first.writes) / dt}
                  : null;
  } catch (e) { return null; }
}

function health(st) {
  if (st.role === "leader") return st.has_quorum === false ? "no quorum" : "ok";
  if (st.role === "follower")
    return st.leader_contact_recent === false ? "no leader contact" : "ok";
  if (st.role === "stopped") return "stopped";
  return "electing";
}

function render() {
  const statuses = endpoints.map(e => last[e] && last[e].status).filter(Boolean);
  const leaders = statuses.filter(s => s.role === "leader" && s.has_quorum !== false);
  const leader = leaders.sort((a, b) => b.term - a.term)[0] || null;
  const banner = document.getElementById("banner");
  if (leader) {
    banner.className = "ok";
    text(banner, "Leader: node " + leader.node_id + " (term " + leader.term + ")");
  } else {
    banner.className = "bad";
    text(banner, statuses.length ? "No leader" : "No node answers");
  }
  document.body.dataset.leader = leader ? String(leader.node_id) : "";
  const tbody = document.getElementById("nodes");
  tbody.replaceChildren();
  for (const endpoint of endpoints) {
    const entry = last[endpoint] || {status: null, error: "waiting"};
    const st = entry.status;
    const tr = document.createElement("tr");
    tr.dataset.endpoint = endpoint;
    if (!st) {
      tr.dataset.role = "down";
      cell(tr, expectedId[endpoint] === undefined ? "?" : expectedId[endpoint]);
      cell(tr, endpoint, "muted");
      const r = cell(tr, ""); r.appendChild(text(document.createElement("span"), "down"))
        .className = "role down";
      for (let i = 0; i < 6; i++) cell(tr, null, "num");
      cell(tr, entry.error, "health bad");
      tbody.appendChild(tr);
      continue;
    }
    tr.dataset.nodeId = String(st.node_id);
    tr.dataset.role = st.role;
    if (leader && st.node_id === leader.node_id) tr.className = "leader";
    cell(tr, st.node_id);
    cell(tr, endpoint, "muted");
    const roleCell = cell(tr, "");
    const badge = text(document.createElement("span"), st.role);
    badge.className = "role " + st.role;
    roleCell.appendChild(badge);
    cell(tr, st.term, "num");
    cell(tr, st.leader_id, "num");
    cell(tr, st.commit_index, "num");
    cell(tr, st.applied_index, "num");
    cell(tr, leader ? Math.max(0, leader.commit_index - st.applied_index) : null, "num");
    let contact = null;
    if (leader && leader.peers && st.node_id !== leader.node_id) {
      const view = leader.peers[String(st.node_id)];
      if (view && view.last_contact_ms !== null) contact = Math.round(view.last_contact_ms) + " ms";
    }
    cell(tr, contact, "num");
    const h = health(st);
    cell(tr, h, "health " + (h === "ok" ? "ok" : "bad"));
    tbody.appendChild(tr);
  }
  text(document.getElementById("updated"), "updated " + new Date().toLocaleTimeString());
  drawChart();
}

function drawChart() {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 1000, H = 180, now = Date.now();
  const points = series.filter(p => now - p.t <= WINDOW_S * 1000);
  const top = Math.max(1, ...points.map(p => Math.max(p.writes, p.reads))) * 1.15;
  for (const f of [0, 0.5, 1]) {
    const y = H - f * (H - 10);
    const grid = document.createElementNS(SVG, "line");
    grid.setAttribute("x1", 0); grid.setAttribute("x2", W);
    grid.setAttribute("y1", y); grid.setAttribute("y2", y);
    grid.setAttribute("stroke", "#dde2ea"); svg.appendChild(grid);
    if (f > 0) {
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", 4); label.setAttribute("y", y + 12);
      label.setAttribute("font-size", "11"); label.setAttribute("fill", "#687385");
      label.textContent = (top / 1.15 * f).toFixed(top < 10 ? 1 : 0) + "/s";
      svg.appendChild(label);
    }
  }
  for (const [key, color] of [["writes", "#0b5cad"], ["reads", "#d9730d"]]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("id", "line-" + key);
    line.setAttribute("fill", "none"); line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("points", points.map(p =>
      ((W * (1 - (now - p.t) / (WINDOW_S * 1000))).toFixed(1) + "," +
       (H - (p[key] / top) * (H - 10)).toFixed(1))).join(" "));
    svg.appendChild(line);
  }
  const latest = points[points.length - 1];
  text(document.getElementById("writes-now"), latest ? latest.writes.toFixed(1) : "-");
  text(document.getElementById("reads-now"), latest ? latest.reads.toFixed(1) : "-");
  text(document.getElementById("chart-note"), points.length ? "" : "(collecting samples)");
}

async function poll() {
  const now = Date.now();
  const rates = await Promise.all(endpoints.map(e => pollOne(e, now)));
  const got = rates.filter(Boolean);
  if (got.length) {
    series.push({t: now, writes: got.reduce((a, r) => a + r.writes, 0),
                 reads: got.reduce((a, r) => a + r.reads, 0)});
    while (series.length && now - series[0].t > WINDOW_S * 1000) series.shift();
  }
  render();
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

document.getElementById("endpoints-form").addEventListener("submit", ev => {
  ev.preventDefault();
  const value = document.getElementById("endpoints-input").value.trim();
  location.search = value ? "?endpoints=" + encodeURIComponent(value) : "";
});

discover().then(loop).catch(e => {
  text(document.getElementById("banner"), "Cannot read this node's /status: " + e);
});
</script>
</body>
</html>
"""
