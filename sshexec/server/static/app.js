// sshexec serve: makes the server-rendered pages live. Plain JavaScript, no build step.
// Everything received is put in the page with textContent, never as HTML.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const opts = { method, credentials: "same-origin", headers: { "Accept": "application/json" } };
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = csrf();
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body || {});
  }
  const res = await fetch(url, opts);
  if (res.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); throw new Error("logged out"); }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || res.statusText));
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

const when = (epoch) => epoch ? new Date(epoch * 1000).toLocaleString() : "";
const took = (s) => (s == null ? "" : s.toFixed(1) + " s");
const statusBadge = (s) => el("span", { class: "status " + s, text: s });

function showTimes(root) {
  for (const t of (root || document).querySelectorAll(".time[data-epoch]")) t.textContent = when(parseFloat(t.dataset.epoch));
}

// -- ANSI colours: SGR sequences become classes; every other control sequence is dropped -----------------
const CSI = /\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]/g;

function ansiSpans(text, state) {
  const out = [];
  let last = 0, m;
  const push = (s) => {
    if (!s) return;
    const cls = [];
    if (state.fg != null) cls.push("fg" + state.fg);
    if (state.bg != null) cls.push("bg" + state.bg);
    if (state.bold) cls.push("b");
    if (state.dim) cls.push("dim");
    if (state.italic) cls.push("i");
    if (state.underline) cls.push("u");
    out.push(cls.length ? el("span", { class: cls.join(" "), text: s }) : document.createTextNode(s));
  };
  CSI.lastIndex = 0;
  while ((m = CSI.exec(text)) !== null) {
    push(text.slice(last, m.index));
    last = CSI.lastIndex;
    if (m[2] !== "m") continue;
    const codes = (m[1] || "0").split(";").map((x) => parseInt(x || "0", 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { for (const k of Object.keys(state)) delete state[k]; }
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) { state.bold = false; state.dim = false; }
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) state.fg = c - 30;
      else if (c >= 90 && c <= 97) state.fg = c - 90 + 8;
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = c - 40;
      else if (c >= 100 && c <= 107) state.bg = c - 100 + 8;
      else if (c === 49) state.bg = null;
      else if (c === 38 || c === 48) i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 1; // 256 / true colour: not shown
    }
  }
  push(text.slice(last));
  return out;
}

// A stored log line: "WORKER/STEP | text" (stdout) or "WORKER/STEP ! text" (stderr).
const PREFIX = /^(\S+\/\S+) ([|!]) ?/;
const colours = {}; // one ANSI state per source, as a terminal would keep it

function logLine(line) {
  const m = PREFIX.exec(line);
  const row = el("div", { class: "line" + (m && m[2] === "!" ? " stderr" : "") });
  let text = line;
  if (m) {
    row.append(el("span", { class: "src", text: m[1] }), el("span", { class: "fd", text: m[2] === "!" ? " ! " : " | " }));
    text = line.slice(m[0].length);
  }
  const key = m ? m[1] : "";
  colours[key] = colours[key] || {};
  for (const node of ansiSpans(text, colours[key])) row.append(node);
  return row;
}

// -- pages ----------------------------------------------------------------------------------------------
function runsPage() {
  const body = document.querySelector("#runs tbody");
  async function refresh() {
    try {
      const data = await api("GET", "/api/runs?limit=50");
      const rows = data.runs.map((r) =>
        el("tr", { "data-run": r.id },
          el("td", {}, el("a", { href: "/runs/" + encodeURIComponent(r.id), text: r.id })),
          el("td", { text: r.runbook }), el("td", { text: when(r.started) }), el("td", { text: r.started_by || "" }),
          el("td", { text: took(r.duration) }), el("td", {}, statusBadge(r.status)), el("td", { text: r.message || "" })));
      body.replaceChildren(...rows);
    } catch (e) { /* the next refresh tries again */ }
  }
  setInterval(refresh, 1000);
}

function runPage() {
  const id = document.body.dataset.run;
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  const cancel = document.getElementById("cancel");
  let carry = "";
  let poller = null;

  function append(text, final) {
    text = carry + text;
    const lines = text.split("\n");
    carry = final ? "" : lines.pop();
    if (final && lines[lines.length - 1] === "") lines.pop();
    const frag = document.createDocumentFragment();
    for (const line of lines) frag.append(logLine(line));
    log.append(frag);
    if (follow.checked) log.scrollTop = log.scrollHeight;
  }

  function showRun(run) {
    const badge = document.getElementById("run-status");
    badge.textContent = run.status;
    badge.className = "status " + run.status;
    document.body.dataset.status = run.status;
    document.getElementById("run-exit").textContent = run.exit_code == null ? "–" : run.exit_code;
    document.getElementById("run-message").textContent = run.message || "";
    document.querySelector("#steps tbody").replaceChildren(...run.steps.map((s) =>
      el("tr", {}, el("td", { text: s.step }), el("td", { text: s.worker }), el("td", {}, statusBadge(s.status)),
        el("td", { text: s.exit_code == null ? "–" : s.exit_code }), el("td", { text: took(s.duration) }), el("td", { text: s.message || "" }))));
    const outputs = [];
    for (const s of run.steps) for (const [k, v] of Object.entries(s.outputs)) outputs.push(el("dt", { text: `${s.step}[${s.worker}].${k}` }), el("dd", { text: v }));
    document.getElementById("outputs").replaceChildren(...outputs);
    document.getElementById("artifacts").replaceChildren(...run.artifacts.map((a) =>
      el("li", {}, el("a", { class: "artifact", href: a.url, download: "", text: `${a.worker}/${a.name}` }), " ", el("span", { class: "muted", text: a.size + " bytes" }))));
    if (cancel) cancel.hidden = !["running", "waiting"].includes(run.status);
    showApproval(run.status);
  }

  const ROLES = ["viewer", "operator", "admin"];
  let asked = null;  // the step whose approval is shown
  async function showApproval(status) {
    const box = document.getElementById("approval");
    if (status !== "waiting") { box.hidden = true; return; }
    const a = await api("GET", "/api/runs/" + encodeURIComponent(id) + "/approval").catch(() => null);
    if (!a || a.decision) { box.hidden = true; return; }
    if (asked === a.step && !box.hidden) return;
    asked = a.step;
    document.getElementById("approval-step").textContent = a.step;
    document.getElementById("approval-message").textContent = a.message;
    document.getElementById("approval-role").textContent = a.role;
    document.getElementById("approval-deadline").textContent = when(a.deadline);
    const may = ROLES.indexOf(document.body.dataset.role) >= ROLES.indexOf(a.role);
    document.getElementById("approval-decide").hidden = !may;
    document.getElementById("approval-cannot").hidden = may;
    for (const x of document.querySelectorAll("#approval button")) x.disabled = false;
    box.hidden = false;
  }

  const refresh = () => api("GET", "/api/runs/" + encodeURIComponent(id)).then(showRun).catch(() => {});
  const events = new EventSource("/api/runs/" + encodeURIComponent(id) + "/log");
  events.addEventListener("log", (e) => append(JSON.parse(e.data), false));
  events.addEventListener("end", () => {
    events.close();
    append("", true);
    clearInterval(poller);
    // data-ended: the page holds the run's final state (tests and scripts wait for it).
    refresh().then(() => { document.body.dataset.ended = "1"; });
  });
  // The token or session behind this page has ended (revoked, logged out elsewhere): log in again.
  events.addEventListener("revoked", () => {
    events.close();
    clearInterval(poller);
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
  });
  // Until the run ends, its state is polled: a queued run goes on to running when a node claims it.
  if (["queued", "running", "waiting"].includes(document.body.dataset.status)) poller = setInterval(refresh, 1000);
  for (const [button, decision] of [["approve", "approve"], ["reject", "reject"]]) {
    const b = document.getElementById(button);
    if (!b) continue;
    b.addEventListener("click", async () => {
      const error = document.getElementById("approval-error");
      error.textContent = "";
      for (const x of document.querySelectorAll("#approval button")) x.disabled = true;
      try {
        await api("POST", "/api/runs/" + encodeURIComponent(id) + "/approval", { decision, comment: document.getElementById("approval-comment").value || null });
        document.getElementById("approval").hidden = true;
        refresh();
      } catch (e) {
        error.textContent = e.message;
        for (const x of document.querySelectorAll("#approval button")) x.disabled = false;
      }
    });
  }
  if (cancel) cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    cancel.textContent = "Cancelling…";
    try { await api("POST", "/api/runs/" + encodeURIComponent(id) + "/cancel"); }
    catch (e) { cancel.disabled = false; cancel.textContent = "Cancel run"; alert(e.message); }
  });
}

function workersPage() {
  const body = document.querySelector("#workers tbody");
  const age = document.getElementById("age");
  const button = document.getElementById("refresh");
  const yes = (v) => (v === true ? "yes" : v === false ? "no" : "–");
  const size = (b) => (b == null ? "–" : (b / 2 ** 30).toFixed(1) + " GiB");
  async function load(refresh) {
    age.textContent = refresh ? "now (checking…)" : "…";
    try {
      const r = await api("GET", "/api/workers" + (refresh ? "?refresh=true" : ""));
      age.textContent = Math.round(r.age) + " s ago";
      body.replaceChildren(...r.workers.map((w) =>
        el("tr", {}, el("td", { text: w.worker }), el("td", { text: w.address }), el("td", {}, statusBadge(w.healthy ? "healthy" : "unhealthy")),
          el("td", { text: w.version ? "docker " + w.version : yes(w.docker_cli) }), el("td", { text: w.platform || "–" }),
          el("td", { text: size(w.free_bytes) }), el("td", { text: w.error ? w.error.message : (w.warnings || []).join("; ") }))));
    } catch (e) { age.textContent = "failed: " + e.message; }
  }
  if (button) button.addEventListener("click", () => load(true));
  load(false);
}

function runbooksPage() {
  for (const form of document.querySelectorAll("form.start")) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const vars = {};
      for (const input of form.querySelectorAll("input[name]")) vars[input.name] = input.value;
      const error = form.querySelector(".error");
      const button = form.querySelector("button");
      error.textContent = "";
      button.disabled = true;
      try {
        const r = await api("POST", "/api/runs", { runbook: form.dataset.runbook, vars });
        location.href = "/runs/" + encodeURIComponent(r.run_id);
      } catch (err) { error.textContent = err.message; button.disabled = false; }
    });
  }
}

function nodesPage() {
  const error = document.getElementById("nodes-error");
  for (const button of document.querySelectorAll("button.drain")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api("POST", "/api/nodes/" + encodeURIComponent(button.dataset.node) + "/" + button.dataset.action);
        location.reload();
      } catch (err) { error.textContent = err.message; button.disabled = false; }
    });
  }
  setTimeout(() => location.reload(), 5000);  // last seen, runs: a node checks in every few seconds
}

function schedulesPage() {
  for (const button of document.querySelectorAll("button.remove")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await api("DELETE", "/api/schedules/" + encodeURIComponent(button.dataset.schedule)); location.reload(); }
      catch (err) { button.disabled = false; alert(err.message); }
    });
  }
  const form = document.getElementById("add-schedule");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const error = form.querySelector(".error");
      error.textContent = "";
      const value = (n) => form.querySelector('[name="' + n + '"]').value;
      try { await api("POST", "/api/schedules", { name: value("name"), cron: value("cron"), runbook: value("runbook") }); location.reload(); }
      catch (err) { error.textContent = err.message; }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  showTimes();
  const page = { runs: runsPage, run: runPage, workers: workersPage, runbooks: runbooksPage, nodes: nodesPage, schedules: schedulesPage }[document.body.dataset.page];
  if (page) page();
});
