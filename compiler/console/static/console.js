// The fleet console's pages. Every value from the server goes into the page with textContent
// or setAttribute, never as HTML: a device id like <img src=x onerror=...> shows as text.
"use strict";

const me = { user: null, role: null, csrf: null };

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function clock(epoch) {
  if (typeof epoch !== "number") return "-";
  return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
}

function when(epoch) {
  if (typeof epoch !== "number") return "-";
  return new Date(epoch * 1000).toLocaleString([], { hour12: false });
}

function num(value, digits) {
  if (typeof value !== "number" || !isFinite(value)) return "-";
  return value.toFixed(digits);
}

function percent(value) {
  return typeof value === "number" ? (value * 100).toFixed(2) + "%" : "-";
}

function bytes(value) {
  if (typeof value !== "number") return "-";
  if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(2) + " MB";
  if (Math.abs(value) >= 1e3) return (value / 1e3).toFixed(1) + " kB";
  return value + " B";
}

async function request(method, url, body) {
  const init = { method: method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["X-CSRF-Token"] = me.csrf || "";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(url, init);
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("log in first");
  }
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function status(text, bad) {
  const node = document.getElementById("action-status");
  if (!node) return;
  node.textContent = text;
  node.className = bad ? "error" : "muted";
}

async function loadMe() {
  const data = await request("GET", "/api/me");
  Object.assign(me, data);
  const user = document.getElementById("user");
  if (user) user.textContent = me.user + " (" + me.role + ")";
  document.body.classList.toggle("viewer", me.role !== "operator");
  // the buttons start disabled in the HTML; only an operator's are enabled (the server
  // refuses a viewer's actions anyway)
  document.querySelectorAll("button[data-cmd], button[data-action]").forEach((button) => {
    button.disabled = me.role !== "operator";
    button.title = me.role === "operator" ? "" : "needs the operator role";
  });
}

function setupLogout() {
  const button = document.getElementById("logout");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await request("POST", "/logout");
    } finally {
      window.location.assign("/login");
    }
  });
}

function showBanner(broker) {
  const banner = document.getElementById("banner");
  if (!banner || !broker) return;
  if (broker.connected) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  let text = "broker connection lost since " + clock(broker.since) + "; figures below are as of then";
  if (broker.detail) text += " (" + broker.detail + ")";
  banner.textContent = text;
  banner.hidden = false;
}

// --- fleet page ------------------------------------------------------------------------------

const FLEET_FIELDS = [
  ["device", null], ["health", null], ["age_s", 0], ["model", null], ["deployment", null],
  ["groups", null], ["fps", 1], ["p99_ms", 1], ["error_rate", "%"], ["queued", 0],
  ["dropped", 0], ["cpu_percent", 1], ["rss_mb", 0], ["temp_c", 1],
];
const HEALTH_ORDER = { offline: 0, stale: 1, unknown: 2, online: 3 };

const fleet = { rows: new Map(), sort: "device", descending: false, filter: "", skew: 0 };

function cellText(row, field, digits) {
  const value = row[field];
  if (field === "groups") return (value || []).join(", ") || "-";
  if (digits === "%") return percent(value);
  if (typeof digits === "number") return num(value, digits);
  return value === null || value === undefined || value === "" ? "-" : value;
}

function fleetRow(row) {
  const tr = el("tr", { "data-device": row.device, class: "health-" + row.health });
  for (const [field, digits] of FLEET_FIELDS) {
    const td = el("td", { "data-field": field, class: typeof digits === "number" || digits === "%" ? "num" : null });
    if (field === "device") {
      td.appendChild(el("a", { href: "/devices/" + encodeURIComponent(row.device) }, row.device));
    } else {
      td.textContent = cellText(row, field, digits);
    }
    tr.appendChild(td);
  }
  return tr;
}

function sortKey(row, field) {
  const value = row[field];
  if (field === "health") return HEALTH_ORDER[value] ?? 9;
  if (field === "groups") return (value || []).join(",");
  return value === null || value === undefined ? null : value;
}

function compareRows(a, b) {
  const x = sortKey(a, fleet.sort), y = sortKey(b, fleet.sort);
  if (x === y) return a.device < b.device ? -1 : 1;
  if (x === null) return 1; // missing values last, whichever the direction
  if (y === null) return -1;
  const order = x < y ? -1 : 1;
  return fleet.descending ? -order : order;
}

function matches(row) {
  if (!fleet.filter) return true;
  const haystack = [row.device, row.model || "", ...(row.groups || [])].join(" ").toLowerCase();
  return haystack.includes(fleet.filter);
}

function renderFleet() {
  const body = document.querySelector("#fleet tbody");
  const rows = [...fleet.rows.values()].filter(matches).sort(compareRows);
  clear(body);
  for (const row of rows) body.appendChild(fleetRow(row));
  document.getElementById("empty").hidden = fleet.rows.size > 0;
  document.querySelectorAll("th[data-sort]").forEach((th) => {
    const on = th.getAttribute("data-sort") === fleet.sort;
    th.classList.toggle("sorted", on);
    th.setAttribute("aria-sort", on ? (fleet.descending ? "descending" : "ascending") : "none");
  });
}

// The server's clock minus the browser's: ages count on between events from seen_at.
function syncClock(now) {
  fleet.skew = now - Date.now() / 1000;
}

function tickAges() {
  const now = Date.now() / 1000 + fleet.skew;
  for (const row of fleet.rows.values()) {
    if (row.seen_at === null || row.seen_at === undefined) continue;
    row.age_s = Math.max(now - row.seen_at, 0);
    const td = document.querySelector('#fleet tr[data-device="' + CSS.escape(row.device) + '"] td[data-field="age_s"]');
    if (td) td.textContent = num(row.age_s, 0);
  }
}

function showCounts(counts) {
  for (const [health, count] of Object.entries(counts || {})) {
    const node = document.querySelector('#counts [data-count="' + CSS.escape(health) + '"]');
    if (node) node.textContent = String(count);
  }
}

function fleetPage() {
  document.querySelectorAll("th[data-sort]").forEach((th) => {
    th.addEventListener("click", () => {
      const field = th.getAttribute("data-sort");
      fleet.descending = fleet.sort === field ? !fleet.descending : false;
      fleet.sort = field;
      renderFleet();
    });
  });
  document.getElementById("filter").addEventListener("input", (event) => {
    fleet.filter = event.target.value.trim().toLowerCase();
    renderFleet();
  });
  window.setInterval(tickAges, 1000);
  const source = new EventSource("/api/stream");
  const state = document.getElementById("stream-state");
  source.addEventListener("fleet", (event) => {
    const data = JSON.parse(event.data);
    fleet.rows = new Map(data.devices.map((row) => [row.device, row]));
    syncClock(data.now);
    showBanner(data.broker);
    showCounts(data.counts);
    renderFleet();
    state.textContent = "live";
  });
  source.addEventListener("rows", (event) => {
    const data = JSON.parse(event.data);
    for (const row of data.rows) fleet.rows.set(row.device, row);
    for (const id of data.removed) fleet.rows.delete(id);
    syncClock(data.now);
    showBanner(data.broker);
    showCounts(data.counts);
    renderFleet();
  });
  source.addEventListener("error", () => {
    state.textContent = "reconnecting to the console…";
    loadMe().catch(() => {}); // a lapsed session goes to the login page
  });
}

// --- device page -----------------------------------------------------------------------------

const COMMANDS = {
  ping: { cmd: "ping" },
  snapshot: { cmd: "snapshot" },
  rollback: { cmd: "rollback", args: { reason: "from the console" } },
  restart: { cmd: "restart" },
  "shadow-promote": { cmd: "shadow", args: { action: "promote" } },
  "shadow-stop": { cmd: "shadow", args: { action: "stop" } },
};

function deviceId() {
  return decodeURIComponent(window.location.pathname.split("/")[2] || "");
}

function compact(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function eventText(event) {
  const rest = Object.entries(event)
    .filter(([key]) => !["device", "boot_id", "at", "kind", "event"].includes(key))
    .map(([key, value]) => key + " " + compact(value));
  return (event.kind || event.event || "event") + (rest.length ? ": " + rest.join(", ") : "");
}

function fillList(id, items, render) {
  const list = document.getElementById(id);
  clear(list);
  for (const item of items) list.appendChild(render(item));
  if (!items.length) list.appendChild(el("li", { class: "muted" }, "none yet"));
}

function showFacts(detail) {
  const row = detail.row;
  const facts = document.getElementById("facts");
  clear(facts);
  const pairs = [
    ["State", row.state], ["Model", row.model], ["Deployment", row.deployment],
    ["Groups", (row.groups || []).join(", ")], ["Seen", clock(row.seen_at)],
    ["Age", row.age_s === null ? "-" : num(row.age_s, 0) + " s"], ["FPS", num(row.fps, 1)],
    ["p99", num(row.p99_ms, 1) + " ms"], ["Errors", percent(row.error_rate)],
    ["CPU", num(row.cpu_percent, 1) + " %"], ["Temp", num(row.temp_c, 1) + " °C"],
  ];
  for (const [name, value] of pairs) {
    facts.appendChild(el("dt", {}, name));
    facts.appendChild(el("dd", {}, value === null || value === undefined || value === "" ? "-" : value));
  }
}

function showDevice(detail) {
  const row = detail.row;
  const health = document.getElementById("health");
  health.textContent = row.health;
  health.className = "health health-" + row.health;
  showFacts(detail);
  const image = document.getElementById("snapshot");
  if (detail.snapshot) {
    if (image.getAttribute("src") !== detail.snapshot.url) image.setAttribute("src", detail.snapshot.url);
    image.hidden = false;
    document.getElementById("snapshot-none").textContent = "taken " + when(detail.snapshot.at);
  }
  const shadow = document.getElementById("shadow");
  shadow.textContent = detail.shadow
    ? "state " + (detail.shadow.state || "-") + ", agreement " + num(detail.shadow.agreement, 3) +
      " (lower bound " + num(detail.shadow.agreement_lower, 3) + ") over " + (detail.shadow.frames ?? "-") + " frames"
    : "No shadow model.";
  fillList("events", detail.events, (event) => {
    const li = el("li");
    li.appendChild(el("time", {}, clock(event.at)));
    li.appendChild(document.createTextNode(" " + eventText(event)));
    return li;
  });
  const seen = new Set();
  const replies = detail.replies.filter((reply) => !seen.has(reply.id) && seen.add(reply.id));
  fillList("replies", replies, (reply) => {
    const li = el("li", { "data-command": reply.id, class: "reply-" + reply.state });
    li.appendChild(el("time", {}, clock(reply.at)));
    const said = reply.reason || compact(reply.result);
    li.appendChild(document.createTextNode(" " + reply.state + (said ? ": " + said : "") + " (" + reply.id.slice(0, 8) + ")"));
    return li;
  });
  fillList("results", detail.results, (result) => {
    const li = el("li");
    li.appendChild(el("time", {}, clock(result.captured_at)));
    const label = result.label ?? compact(result.detections || result.outputs || "");
    li.appendChild(document.createTextNode(" " + label + (typeof result.score === "number" ? " " + num(result.score, 3) : "")));
    return li;
  });
  if (detail.results_error) status("results: " + detail.results_error, true);
}

function devicePage() {
  const id = deviceId();
  document.getElementById("device-id").textContent = id;
  document.title = "Edgewise console: " + id;
  document.querySelectorAll("button[data-cmd]").forEach((button) => {
    button.addEventListener("click", async () => {
      const command = COMMANDS[button.getAttribute("data-cmd")];
      status("sending " + button.textContent.toLowerCase() + "…");
      try {
        const sent = await request("POST", "/api/devices/" + encodeURIComponent(id) + "/commands", command);
        status("sent " + command.cmd + " (" + sent.id.slice(0, 8) + "); the reply shows below");
      } catch (error) {
        status(error.message, true);
      }
    });
  });
  const source = new EventSource("/api/devices/" + encodeURIComponent(id) + "/stream");
  source.addEventListener("device", (event) => showDevice(JSON.parse(event.data)));
  source.addEventListener("broker", (event) => showBanner(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    request("GET", "/api/devices/" + encodeURIComponent(id))
      .catch((error) => status(error.message, true));
  });
}

// --- rollouts page ---------------------------------------------------------------------------

const rollouts = { selected: null, list: [] };

function evidenceView(rollout) {
  const box = document.getElementById("evidence");
  clear(box);
  const facts = el("dl", { class: "facts" });
  const pairs = [
    ["Package", rollout.name + " " + rollout.version], ["Target", rollout.target],
    ["State", rollout.state], ["Wave", rollout.wave + " of " + rollout.waves],
    ["Reason", rollout.reason || "-"], ["Created", when(rollout.created_at)],
    ["Updated", when(rollout.updated_at)],
  ];
  for (const [name, value] of pairs) {
    facts.appendChild(el("dt", {}, name));
    facts.appendChild(el("dd", {}, value));
  }
  box.appendChild(facts);
  const waves = el("table", { class: "waves" });
  const head = el("tr");
  for (const name of ["Wave", "Size", "Devices", "States"]) head.appendChild(el("th", {}, name));
  waves.appendChild(head);
  for (const wave of rollout.per_wave || []) {
    const tr = el("tr", { class: wave.wave === rollout.wave ? "current" : null });
    const states = Object.entries(wave.states).map(([s, n]) => s + " " + n).join(", ");
    for (const value of [wave.wave, wave.size, wave.devices, states || "-"]) tr.appendChild(el("td", {}, value));
    waves.appendChild(tr);
  }
  box.appendChild(waves);
  const evidence = rollout.evidence || {};
  if (Object.keys(evidence).length) {
    box.appendChild(el("h3", {}, "Evidence"));
    box.appendChild(el("pre", {}, JSON.stringify(evidence, null, 2)));
  }
}

function renderRollouts() {
  const body = document.querySelector("#rollouts tbody");
  clear(body);
  for (const r of rollouts.list) {
    const tr = el("tr", { "data-rollout": r.id, class: "state-" + r.state + (r.id === rollouts.selected ? " selected" : "") });
    const cells = [
      ["id", r.id], ["package", r.name + " " + r.version], ["target", r.target],
      ["state", r.state], ["wave", r.wave + "/" + r.waves], ["reason", r.reason || ""],
      ["updated", when(r.updated_at)],
    ];
    for (const [field, value] of cells) tr.appendChild(el("td", { "data-field": field }, value));
    tr.addEventListener("click", () => {
      rollouts.selected = r.id;
      renderRollouts();
    });
    body.appendChild(tr);
  }
  const chosen = rollouts.list.find((r) => r.id === rollouts.selected);
  document.getElementById("selected-title").textContent = chosen ? "Rollout " + chosen.id : "Select a rollout";
  if (chosen) evidenceView(chosen);
  document.getElementById("rollouts-note").textContent = rollouts.list.length ? "" : "No rollouts.";
}

async function loadRollouts() {
  try {
    rollouts.list = (await request("GET", "/api/rollouts")).rollouts;
    if (!rollouts.selected && rollouts.list.length) rollouts.selected = rollouts.list[0].id;
    renderRollouts();
  } catch (error) {
    document.getElementById("rollouts-note").textContent = error.message;
  }
}

function rolloutsPage() {
  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      const action = button.getAttribute("data-action");
      if (!rollouts.selected) return status("select a rollout first", true);
      const reasonBox = document.getElementById("abort-reason");
      const reason = action === "abort" ? reasonBox.value.trim() : "";
      if (action === "abort" && !reason) {
        reasonBox.focus();
        return status("write why you abort, then press Abort again", true);
      }
      try {
        const url = "/api/rollouts/" + encodeURIComponent(rollouts.selected) + "/" + action;
        status((await request("POST", url, { reason: reason })).message);
        reasonBox.value = "";
      } catch (error) {
        status(error.message, true);
      }
      loadRollouts();
    });
  });
  loadRollouts();
  window.setInterval(loadRollouts, 5000);
}

// --- packages page ---------------------------------------------------------------------------

const DIFF_LABELS = {
  accuracy: "accuracy (top-1)", top1_agreement: "top-1 agreement with fp32",
  size_bytes: "model size", p50_ms: "ORT p50, 1 thread (ms)", p99_ms: "ORT p99, 1 thread (ms)",
  p50_ms_all: "ORT p50, all threads (ms)", params: "parameters", macs: "MACs",
  model_bytes: "package model file", accuracy_drop: "accuracy drop fp32 → int8",
};

function diffRow(body, name, entry, format) {
  const tr = el("tr", { "data-figure": name });
  tr.appendChild(el("td", {}, DIFF_LABELS[name] || name));
  for (const key of ["a", "b"]) tr.appendChild(el("td", { class: "num" }, format(entry[key])));
  const delta = entry.delta;
  const sign = typeof delta === "number" && delta > 0 ? "+" : "";
  tr.appendChild(el("td", { class: "num" }, typeof delta === "number" ? sign + format(delta) : "-"));
  body.appendChild(tr);
}

const DIFF_FORMATS = {
  accuracy: percent, top1_agreement: percent, accuracy_drop: (v) => num(v, 2) + " pts",
  size_bytes: bytes, model_bytes: bytes,
  p50_ms: (v) => num(v, 3), p99_ms: (v) => num(v, 3), p50_ms_all: (v) => num(v, 3),
};

async function showDiff() {
  const a = document.getElementById("diff-a").value, b = document.getElementById("diff-b").value;
  const body = document.querySelector("#diff tbody");
  clear(body);
  if (!a || !b) return;
  try {
    const diff = await request("GET", "/api/packages/diff?a=" + encodeURIComponent(a) + "&b=" + encodeURIComponent(b));
    for (const [name, entry] of Object.entries(diff.figures)) {
      diffRow(body, name, entry, DIFF_FORMATS[name] || ((v) => (typeof v === "number" ? String(v) : "-")));
    }
    for (const [stage, figures] of Object.entries(diff.stages)) {
      body.appendChild(el("tr", { class: "section" })).appendChild(el("th", { colspan: 4 }, stage + " stage"));
      for (const name of ["accuracy", "size_bytes", "p50_ms", "p99_ms"]) {
        if (figures[name]) diffRow(body, name, figures[name], DIFF_FORMATS[name]);
      }
    }
    if (diff.per_class) {
      body.appendChild(el("tr", { class: "section" })).appendChild(el("th", { colspan: 4 }, "per-class accuracy"));
      for (const [label, entry] of Object.entries(diff.per_class)) diffRow(body, label, entry, percent);
    }
  } catch (error) {
    body.appendChild(el("tr")).appendChild(el("td", { colspan: 4, class: "error" }, error.message));
  }
}

// What the devices' probes measured after installing a package (the serve job "feedback"):
// how many reported, their p50 range on the board and the backends they chose.
function onDevices(devices) {
  const entries = Object.values(devices || {});
  if (!entries.length) return "—";
  const p50 = entries.map((d) => d.p50_ms).filter((v) => typeof v === "number");
  const backends = [...new Set(entries.map((d) => d.backend).filter(Boolean))].sort();
  const range = p50.length ? " · p50 " + num(Math.min(...p50), 3) + "–" + num(Math.max(...p50), 3) + " ms" : "";
  return entries.length + (entries.length === 1 ? " device" : " devices") + range + (backends.length ? " · " + backends.join(", ") : "");
}

async function packagesPage() {
  let list = [];
  try {
    list = (await request("GET", "/api/packages")).packages;
  } catch (error) {
    document.getElementById("packages-note").textContent = error.message;
  }
  const body = document.querySelector("#packages tbody");
  for (const p of list) {
    const tr = el("tr", { "data-package": p.id });
    const cells = [p.id, p.created_at, percent(p.accuracy), bytes(p.size_bytes), num(p.p50_ms, 3), num(p.p99_ms, 3)];
    cells.forEach((value, i) => tr.appendChild(el("td", { class: i > 1 ? "num" : null }, value)));
    tr.appendChild(el("td", { "data-field": "devices" }, onDevices(p.devices)));
    body.appendChild(tr);
  }
  if (!list.length && !document.getElementById("packages-note").textContent) {
    document.getElementById("packages-note").textContent = "No packages in the folder.";
  }
  for (const [id, pick] of [["diff-a", list.length - 2], ["diff-b", list.length - 1]]) {
    const select = document.getElementById(id);
    for (const p of list) select.appendChild(el("option", { value: p.id }, p.id));
    if (pick >= 0) select.value = list[pick].id;
    select.addEventListener("change", showDiff);
  }
  showDiff();
}

// --- login page and start --------------------------------------------------------------------

const LOGIN_ERRORS = {
  wrong: "Wrong user name or password.",
  locked: "Too many failed logins for this user: try again in a minute.",
  form: "Fill in both the user name and the password.",
};

function loginPage() {
  const why = new URLSearchParams(window.location.search).get("error");
  const line = document.getElementById("login-error");
  if (why && LOGIN_ERRORS[why]) {
    line.textContent = LOGIN_ERRORS[why];
    line.hidden = false;
  }
}

const PAGES = { fleet: fleetPage, device: devicePage, rollouts: rolloutsPage, packages: packagesPage };

document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.getAttribute("data-page");
  if (page === "login") return loginPage();
  setupLogout();
  try {
    await loadMe();
  } catch (error) {
    return;
  }
  PAGES[page]();
});
