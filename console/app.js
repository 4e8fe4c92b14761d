/*
 * salt-deploy web console: a single page on salt-api (rest_cherrypy).
 *
 * - logs in through Salt's eauth (POST /login) and sends the token as X-Auth-Token on every
 *   request (never as a cookie: the session cookie /login sets is dropped at once);
 * - runs only deploy.* runners: synchronous views with client "runner", releases and
 *   rollbacks with client "runner_async" (a master job: closing the tab does not stop it);
 * - reads the master's event bus from /events (fetch with the header, parsed as
 *   server-sent events) and shows deploy/<project>/<env>/... and the run's progress;
 * - every value from the server is put into the page as text (textContent, text nodes,
 *   SVG attributes), never as HTML.
 */
"use strict";

const state = {
  token: null,
  user: null,
  perms: [],
  projects: {},
  project: null,
  env: null,
  refs: null,
  cluster: null,
  history: [],
  run: null,          // the live run shown: {jid, kind, nodes: {}, batches: {}, done}
  stream: null,       // AbortController of the /events stream
};

// ------------------------------------------------------------------ DOM helpers (text only)

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = String(value);
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function show(id, visible) { $(id).hidden = !visible; }

function notice(text, isError) {
  const p = $("notice");
  p.textContent = text || "";
  p.className = isError ? "notice error" : "notice";
}

function fmtTime(iso) {
  if (!iso) return "";
  return String(iso).replace("T", " ").replace(/\+00:00$/, " UTC");
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function post(path, body, auth = true) {
  const headers = { "Accept": "application/json", "Content-Type": "application/json" };
  if (auth) headers["X-Auth-Token"] = state.token;
  let resp;
  try {
    resp = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, "salt-api cannot be reached");
  }
  if (!resp.ok) throw new ApiError(resp.status, `HTTP ${resp.status}`);
  return resp.json();
}

/* One runner call: client "runner" (waits) or "runner_async" (returns {jid, tag}). */
async function runner(fun, kwarg, client = "runner") {
  try {
    const data = await post("/", [{ client, fun, kwarg: kwarg || {} }]);
    return data.return[0];
  } catch (err) {
    if (err.status === 401) await refused(fun);
    throw err;
  }
}

/* A 401 is either an expired session (back to the login page) or a function the user may not run. */
async function refused(fun) {
  let alive = false;
  try {
    await post("/", [{ client: "runner", fun: "deploy.projects", kwarg: {} }]);
    alive = true;
  } catch (err) { /* the session is gone */ }
  if (!alive) {
    logout("Your session has expired: log in again.");
    throw new ApiError(401, "session expired");
  }
  throw new ApiError(403, `refused by the server: ${state.user} may not run ${fun}`);
}

function failed(ret) {
  return ret && typeof ret === "object" && (ret.retcode || ret.result === "refused" || ret.result === "failure");
}

// ------------------------------------------------------------------ login

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const username = $("login-user").value;
  const password = $("login-password").value;
  const eauth = $("login-eauth").value;
  try {
    const data = await post("/login", { username, password, eauth }, false);
    const ret = data.return[0];
    // the token goes in the X-Auth-Token header only: drop the session cookie /login set
    document.cookie = "session_id=; Max-Age=0; Path=/";
    state.token = ret.token;
    state.user = ret.user;
    state.perms = ret.perms || [];
    sessionStorage.setItem("deploy-console", JSON.stringify({ token: state.token, user: state.user }));
    $("login-password").value = "";
    await start();
  } catch (err) {
    // one message for a wrong user, a wrong password or any other refusal
    $("login-error").textContent = err.status === 0 ? err.message : "Login failed.";
  }
}

function logout(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  if (state.token && !message) {
    fetch("/logout", { method: "POST", headers: { "X-Auth-Token": state.token, "Accept": "application/json" },
                       credentials: "omit" }).catch(() => {});
  }
  state.token = null;
  sessionStorage.removeItem("deploy-console");
  show("app", false);
  show("whoami", false);
  show("logout", false);
  show("login-page", true);
  $("login-error").textContent = message || "";
}

// ------------------------------------------------------------------ pages

async function start() {
  show("login-page", false);
  show("app", true);
  $("whoami").textContent = `${state.user}`;
  show("whoami", true);
  show("logout", true);
  openStream();
  await loadProjects();
}

async function loadProjects() {
  let projects;
  try {
    projects = await runner("deploy.projects");
  } catch (err) {
    notice(err.message, true);
    return;
  }
  state.projects = projects || {};
  const nav = clear($("projects"));
  for (const [project, conf] of Object.entries(state.projects)) {
    nav.append(el("h2", {}, project));
    const list = el("ul");
    for (const env of Object.keys(conf.envs || {})) {
      const link = el("a", { href: "#", "data-project": project, "data-env": env,
                             class: project === state.project && env === state.env ? "selected" : "",
                             onclick: (e) => { e.preventDefault(); selectEnv(project, env); } }, env);
      list.append(el("li", {}, link));
    }
    nav.append(list);
  }
  const first = Object.keys(state.projects)[0];
  if (!state.project && first) {
    const env = Object.keys(state.projects[first].envs || {})[0];
    if (env) await selectEnv(first, env);
  } else if (state.project) {
    renderLock();
  }
}

async function selectEnv(project, env) {
  state.project = project;
  state.env = env;
  for (const a of document.querySelectorAll("#projects a")) {
    a.classList.toggle("selected", a.dataset.project === project && a.dataset.env === env);
  }
  $("env-title").textContent = `${project} / ${env}`;
  show("plan", false);
  notice("");
  await refreshLock();
  const lock = envConf().lock;
  if (lock && lock.alive && lock.holder && lock.holder.jid) {
    watchRun(lock.holder.jid, lock.holder.kind || "run", `running since ${fmtTime(lock.holder.since)} ` +
             `(${lock.holder.user || "?"}@${lock.holder.host || "?"}, jid ${lock.holder.jid})`);
  }
  await Promise.all([loadHistory().then(loadNodes), loadRefs()]);
}

function envConf() {
  return ((state.projects[state.project] || {}).envs || {})[state.env] || {};
}

// the env's lock as it is now (deploy.lock_status: read-only, allowed to viewers), then drawn
async function refreshLock() {
  const conf = envConf();
  try {
    const ret = await runner("deploy.lock_status", { project: state.project, env: state.env });
    if (ret && !failed(ret)) {
      conf.lock = ret.locked ? { holder: ret.holder, alive: ret.alive } : null;
      conf.detached = ret.detached || [];
    }
  } catch (err) {
    // keep what deploy.projects said
  }
  renderLock();
}

function renderLock() {
  const box = clear($("lock"));
  const conf = envConf();
  const lock = conf.lock;
  if (!lock) {
    box.className = "lock free";
    box.append("unlocked");
  } else {
    const h = lock.holder || {};
    box.className = lock.alive ? "lock held" : "lock stale";
    box.append(`locked: ${h.kind || "a run"} by ${h.user || "?"} from ${h.host || "?"} since ${fmtTime(h.since)}` +
               ` (jid ${h.jid || "?"})` + (lock.alive ? "" : ": its run is gone (stale lock)"));
    if (!lock.alive) {
      box.append(" ", el("button", { type: "button", id: "unlock", onclick: unlock },
                         "Unlock and restore the LB"));
    }
  }
  if ((conf.detached || []).length) {
    box.append(el("div", {}, `out of the LB by an interrupted run: ${conf.detached.join(", ")}`));
  }
}

async function unlock() {
  try {
    const ret = await runner("deploy.unlock", { project: state.project, env: state.env });
    if (failed(ret)) notice(`unlock: ${ret.error}`, true);
    else notice(`unlock: ${ret.result || "nothing to do"}` + ((ret.warnings || []).length ? ` (${ret.warnings.join("; ")})` : ""));
  } catch (err) {
    notice(`unlock: ${err.message}`, true);
  }
  await loadProjects();
}

async function loadNodes() {
  $("cluster").textContent = "listing the releases on every node …";
  let ret;
  try {
    ret = await runner("deploy.releases", { project: state.project, env: state.env });
  } catch (err) {
    $("cluster").textContent = err.message;
    return;
  }
  if (failed(ret)) {
    $("cluster").textContent = `deploy.releases: ${ret.error}`;
    return;
  }
  const body = clear($("nodes").tBodies[0]);
  const cluster = ret.cluster || {};
  state.cluster = cluster;
  const lastLb = {};
  for (const rec of state.history) {
    for (const [node, info] of Object.entries(rec.nodes || {})) if (info && info.lb) lastLb[node] = info.lb;
  }
  const differ = new Set(cluster.differ || []);
  for (const [node, releases] of Object.entries(ret.nodes || {}).sort()) {
    const cur = releases.find((r) => r.current) || {};
    const row = el("tr", { class: differ.has(node) ? "differs" : "" },
      el("td", {}, node),
      el("td", {}, cur.name || "none", differ.has(node) ? el("span", { class: "badge" }, " differs from the majority") : null),
      el("td", { class: `status-${cur.status || "none"}` }, cur.status || ""),
      el("td", {}, cur.committer || ""),
      el("td", {}, lastLb[node] || ""),
      el("td", {}, releases.map((r) => `${r.version || r.name} (${r.status})`).join(", ")));
    body.append(row);
  }
  $("cluster").textContent = `majority: ${cluster.majority || "none"}; nodes that differ: ` +
    `${(cluster.differ || []).join(", ") || "none"}; rollback target: ${cluster.rollback_target || "none"}`;
  $("rollback-target").textContent = cluster.rollback_target || "none";
}

async function loadRefs() {
  const select = clear($("ref"));
  $("ref-info").textContent = "";
  let ret;
  try {
    ret = await runner("deploy.refs", { project: state.project });
  } catch (err) {
    $("ref-info").textContent = err.message;
    return;
  }
  if (failed(ret)) { $("ref-info").textContent = ret.error; return; }
  state.refs = ret;
  const branch = envConf().branch;
  for (const [kind, label] of [["branches", "branches"], ["tags", "tags"]]) {
    const group = el("optgroup", { label });
    for (const ref of ret[kind] || []) {
      const option = el("option", { value: ref.name }, `${ref.name} — ${ref.subject} (${ref.committer})`);
      if (kind === "branches" && ref.name === branch) option.selected = true;
      group.append(option);
    }
    select.append(group);
  }
  showRefInfo();
}

function showRefInfo() {
  const name = $("ref").value;
  const all = [...((state.refs || {}).branches || []), ...((state.refs || {}).tags || [])];
  const ref = all.find((r) => r.name === name);
  $("ref-info").textContent = ref ? `${ref.commit.slice(0, 10)} by ${ref.committer}, ${fmtTime(ref.date)}: ${ref.subject}` : "";
}

async function loadHistory() {
  let records, stats;
  try {
    [records, stats] = await Promise.all([
      runner("deploy.history", { project: state.project, env: state.env, limit: 200 }),
      runner("deploy.stats", { project: state.project, env: state.env }),
    ]);
  } catch (err) {
    notice(err.message, true);
    return;
  }
  state.history = Array.isArray(records) ? records : [];
  const body = clear($("history").tBodies[0]);
  for (const rec of [...state.history].reverse().slice(0, 30)) {
    const nodes = Object.entries(rec.nodes || {}).sort().map(([node, info]) =>
      el("div", { class: info.result === "failed" ? "fail" : "" },
         `${node}: ${info.old || "-"} → ${info.new || "-"} ${info.result || ""}` +
         (info.out_of_lb !== undefined ? `, ${info.out_of_lb}s out of LB` : "") +
         (info.error ? `: ${info.error}` : "")));
    body.append(el("tr", { class: `result-${rec.result}` },
      el("td", {}, fmtTime(rec.started)),
      el("td", {}, rec.kind === "rollback" ? `rollback (${rec.mode || "normal"})` : (rec.kind || "")),
      el("td", {}, `${rec.user || "?"}@${rec.host || "?"}` + (rec.by ? ` (by ${rec.by})` : "")),
      el("td", {}, rec.ref || ""),
      el("td", {}, rec.release || rec.to || ""),
      el("td", { class: `result ${rec.result}` }, rec.result || "", rec.error ? el("div", { class: "fail" }, rec.error) : null),
      el("td", {}, rec.seconds === undefined || rec.seconds === null ? "" : String(rec.seconds)),
      el("td", {}, el("details", {}, el("summary", {}, `${Object.keys(rec.nodes || {}).length} nodes`), ...nodes))));
  }
  if (stats && stats.releases) {
    const r = stats.releases, b = stats.rollbacks, m = stats.mean_seconds || {};
    $("stats-totals").textContent =
      `releases: ${r.success} succeeded, ${r.failure} failed, ${r.interrupted} interrupted; ` +
      `rollbacks: ${b.normal} normal, ${b.emergency} emergency, ${b.failure} failed, ${b.interrupted} interrupted; ` +
      `mean duration: release ${m.release ?? "-"}s, rollback ${m.rollback ?? "-"}s`;
  }
  drawChart(state.history);
}

// ------------------------------------------------------------------ statistics chart (plain SVG)

const SERIES = [
  ["release success", "c-success"],
  ["release failure", "c-failure"],
  ["rollback", "c-rollback"],
];

function drawChart(records) {
  const days = new Map();
  for (const rec of records) {
    const day = String(rec.started || rec.finished || "").slice(0, 10);
    if (!day) continue;
    const counts = days.get(day) || [0, 0, 0];
    if (rec.kind === "rollback" || String(rec.kind || "").startsWith("rollback")) counts[2] += 1;
    else if (rec.result === "success") counts[0] += 1;
    else counts[1] += 1;
    days.set(day, counts);
  }
  const NS = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  };
  const entries = [...days.entries()].sort().slice(-14);
  const max = Math.max(1, ...entries.map(([, c]) => c[0] + c[1] + c[2]));
  const barW = 36, gap = 16, h = 140, top = 10, left = 30;
  const width = Math.max(left + entries.length * (barW + gap) + 10, left + SERIES.length * 140);
  const svg = svgEl("svg", { width, height: h + 60, id: "stats-chart", role: "img",
                             "aria-label": "releases and rollbacks per day" });
  svg.append(svgEl("line", { x1: left - 4, y1: top + h, x2: width, y2: top + h, class: "axis" }));
  svg.append(svgEl("text", { x: 2, y: top + 10, class: "label" }, max));
  entries.forEach(([day, counts], i) => {
    const x = left + i * (barW + gap);
    let y = top + h;
    counts.forEach((count, s) => {
      if (!count) return;
      const bh = (count / max) * h;
      y -= bh;
      const rect = svgEl("rect", { x, y, width: barW, height: bh, class: `bar ${SERIES[s][1]}`,
                                   "data-series": SERIES[s][0], "data-count": count });
      rect.append(svgEl("title", {}, `${day}: ${count} ${SERIES[s][0]}`));
      svg.append(rect);
    });
    svg.append(svgEl("text", { x, y: top + h + 14, class: "label" }, day.slice(5)));
  });
  SERIES.forEach(([name, cls], s) => {
    svg.append(svgEl("rect", { x: left + s * 140, y: top + h + 28, width: 12, height: 12, class: `bar ${cls}` }));
    svg.append(svgEl("text", { x: left + s * 140 + 16, y: top + h + 39, class: "label" }, name));
  });
  clear($("chart")).append(svg);
}

// ------------------------------------------------------------------ release and rollback

async function preview(event) {
  event.preventDefault();
  show("plan", false);
  notice("computing the plan (test=True) …");
  try {
    const ret = await runner("deploy.release", { project: state.project, env: state.env, ref: $("ref").value, test: true });
    if (failed(ret)) { notice(`preview: ${ret.error}`, true); return; }
    $("plan-release").textContent = ret.release;
    const list = clear($("plan-lines"));
    for (const line of ret.plan || []) list.append(el("li", {}, line));
    $("plan-down").textContent = (ret.down || []).length ? `not connected: ${ret.down.join(", ")}` : "";
    $("confirm-release").textContent = `Release ${ret.release}`;
    state.planned = { ref: $("ref").value, release: ret.release };
    show("plan", true);
    notice("");
  } catch (err) {
    notice(`preview: ${err.message}`, true);
  }
}

async function confirmRelease() {
  const planned = state.planned;
  show("plan", false);
  if (!planned) return;
  await launch("deploy.release", { project: state.project, env: state.env, ref: planned.ref },
               `release ${planned.release}`);
}

async function askRollback(emergency) {
  notice("finding the rollback target (test=True) …");
  let ret;
  try {
    ret = await runner("deploy.rollback", { project: state.project, env: state.env, emergency, test: true });
  } catch (err) {
    notice(`rollback: ${err.message}`, true);
    return;
  }
  if (failed(ret)) { notice(`rollback: ${ret.error}`, true); return; }
  notice("");
  const what = emergency ? "Emergency rollback (every node at once, no load balancer drain)" : "Roll back (batch by batch through the load balancer)";
  const ok = await confirmDialog(`${what} of ${state.project}/${state.env} to ${ret.target}?`,
                                 Array.isArray(ret.plan) ? ret.plan : [], emergency ? "Emergency rollback" : "Roll back");
  if (!ok) return;
  await launch("deploy.rollback", { project: state.project, env: state.env, to: ret.target, emergency },
               `${emergency ? "emergency " : ""}rollback to ${ret.target}`);
}

function confirmDialog(text, lines, label) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  const list = clear($("confirm-lines"));
  for (const line of lines) list.append(el("li", {}, line));
  $("confirm-ok").textContent = label;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

/* Start a release or rollback as a master job; the live view follows it by its events. */
async function launch(fun, kwarg, title) {
  try {
    const ret = await runner(fun, kwarg, "runner_async");
    if (!ret || !ret.jid) { notice(`${fun}: the master did not start the job`, true); return; }
    notice(`${title}: started as master job ${ret.jid}`);
    watchRun(ret.jid, fun.split(".")[1], title);
  } catch (err) {
    notice(`${fun}: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ live view

function watchRun(jid, kind, title) {
  const current = state.run;
  if (current && current.jid === jid) return;
  if (current && !current.done && current.jid === null && current.project === state.project && current.env === state.env) {
    current.jid = jid;  // the run's start event came before runner_async answered: same run
    $("live-title").textContent = title;
    return;
  }
  state.run = { jid, kind, nodes: {}, batches: {}, done: false, project: state.project, env: state.env };
  $("live-title").textContent = title;
  setRunState("running");
  clear($("live-stages"));
  clear($("live-nodes").tBodies[0]);
  $("live-log").textContent = "";
  show("live", true);
}

function setRunState(text) {
  const node = $("live-state");
  node.textContent = text;
  node.className = `state ${text}`;
}

function batchBox(stage, batch, of) {
  const key = `${stage}#${batch}`;
  const run = state.run;
  if (!run.batches[key]) {
    const box = el("div", { class: "batch running", "data-batch": key },
                   el("span", { class: "batch-label" }, stage === "preprod" ? "preprod" : `${stage} ${batch}${of ? "/" + of : ""}`),
                   el("span", { class: "batch-nodes" }));
    if (stage === "prepare") $("live-stages").prepend(box);
    else $("live-stages").append(box);
    run.batches[key] = box;
  }
  return run.batches[key];
}

function nodeRow(node) {
  const run = state.run;
  if (!run.nodes[node]) {
    const cells = ["node", "batch", "result", "release", "switch", "restart", "checks", "message"]
      .map((name) => el("td", { class: name }));
    cells[0].textContent = node;
    const row = el("tr", { "data-node": node }, ...cells);
    $("live-nodes").tBodies[0].append(row);
    run.nodes[node] = row;
  }
  return run.nodes[node];
}

function cell(row, name, text) {
  row.querySelector(`td.${name}`).textContent = text;
}

function assignBatch(stage, batch, of, nodes) {
  const box = batchBox(stage, batch, of);
  const holder = clear(box.querySelector(".batch-nodes"));
  holder.append(nodes.join(", "));
  for (const node of nodes) cell(nodeRow(node), "batch", stage === "preprod" ? "preprod" : `${stage} ${batch}`);
}

/* A progress line: "[  1.2s] rainbow/pro: message". */
function onProgress(line) {
  const run = state.run;
  $("live-log").append(document.createTextNode(line + "\n"));
  const message = line.replace(/^\[[^\]]*\]\s+[^:]+:\s/, "");
  let m = message.match(/^plan: stage (\S+) batch (\d+)\/(\d+): (.+?) \(/);
  if (m) assignBatch(m[1], m[2], m[3], m[4].split(", "));
  m = message.match(/^plan: preprod: (\S+)/) || message.match(/^preprod (\S+): switching/);
  if (m) assignBatch("preprod", 1, 1, [m[1]]);
  m = message.match(/^stage (\S+) batch (\d+)\/(\d+): (.+?) out of the LB/);
  if (m) assignBatch(m[1], m[2], m[3], m[4].split(", "));
  if (run && !run.done && /^(release|rollback) (success|failure) in/.test(message)) {
    // the final line also comes as deploy/<project>/<env>/done
  }
}

/* deploy/<project>/<env>/<type>: the event contract v1 (docs/events.md) */
function onDeployEvent(what, data) {
  const run = state.run;
  if (!run || run.done) {
    if (what === "start") {
      watchRun(null, data.kind, `${data.kind} ${data.mode === "emergency" ? "(emergency) " : ""}` +
               `${data.ref || data.to || ""}`);
    } else {
      return;
    }
  }
  if (what === "node") {
    const row = nodeRow(data.node);
    const ok = data.result === "ok", refusedNode = data.result === "skipped";
    row.className = ok ? "ok" : (refusedNode ? "refused" : "fail");
    cell(row, "result", ok ? "ok" : (refusedNode ? "refused" : "FAILED"));
    cell(row, "release", data.new || data.release || "");
    const times = {};
    const tail = String(data.message || "").split(": ").pop();
    for (const part of tail.split(", ")) {
      const t = part.match(/^(\S+).*? ([0-9.]+)s$/);
      if (t) times[t[1]] = `${t[2]}s`;
    }
    for (const step of ["switch", "restart", "checks"]) cell(row, step, times[step] || "");
    cell(row, "message", data.error || (ok ? "" : data.message || ""));
  } else if (what === "batch" && data.phase === "in" && data.stage) {
    const box = batchBox(data.stage, data.batch);
    const failedNodes = (data.nodes || []).filter((n) => !(data.passed || []).includes(n));
    box.className = failedNodes.length ? "batch fail" : "batch ok";
    box.append(el("span", { class: "batch-time" }, ` ${data.seconds}s`));
    for (const node of data.nodes || []) cell(nodeRow(node), "batch", `${data.stage} ${data.batch}`);
  } else if (what === "stage" && data.stage === "preprod" && data.phase === "end") {
    const box = batchBox("preprod", 1, 1);
    box.className = data.result === "ok" ? "batch ok" : "batch fail";
    box.append(el("span", { class: "batch-time" }, ` ${data.seconds}s`));
  } else if (what === "prepare" && data.done) {
    batchBox("prepare", "", "").className = (data.failed || []).length ? "batch fail" : "batch ok";
    batchBox("prepare", "", "").querySelector(".batch-nodes").textContent =
      `${data.ok} ready` + ((data.failed || []).length ? `, failed: ${data.failed.join(", ")}` : "");
  } else if (what === "done") {
    run.done = true;
    setRunState(data.result === "ok" ? "success" : data.result === "paused" ? "paused" : "failure");
    if (data.error) $("live-log").append(document.createTextNode(`error: ${data.error}\n`));
    refreshAfterRun();
  }
}

async function refreshAfterRun() {
  await loadProjects();
  await loadHistory();
  await loadNodes();
}

// ------------------------------------------------------------------ the event stream (/events)

async function openStream() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let retry = 1000;
  while (state.stream === controller && state.token) {
    try {
      const resp = await fetch("/events", { headers: { "X-Auth-Token": state.token, "Accept": "text/event-stream" },
                                            credentials: "omit", signal: controller.signal });
      if (resp.status === 401) { logout("Your session has expired: log in again."); return; }
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      retry = 1000;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) {
            try { dispatch(JSON.parse(data)); } catch (err) { /* not ours */ }
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    // the stream ended (salt-api ends it when the token expires): check the session, then reconnect
    await new Promise((r) => setTimeout(r, retry));
    retry = Math.min(retry * 2, 10000);
    try { await post("/", [{ client: "runner", fun: "deploy.projects", kwarg: {} }]); } catch (err) {
      if (err.status === 401) { logout("Your session has expired: log in again."); return; }
    }
  }
}

function dispatch(event) {
  const tag = String(event.tag || "");
  const data = event.data || {};
  if (!state.project) return;
  const prefix = `deploy/${state.project}/${state.env}/`;
  if (tag.startsWith(prefix)) {
    onDeployEvent(tag.slice(prefix.length), data);
    return;
  }
  const run = state.run;
  if (run && /^salt\/run\/\d+\/progress$/.test(tag) && typeof data.message === "string" &&
      data.message.replace(/^\[[^\]]*\]\s+/, "").startsWith(`${state.project}/${state.env}: `)) {
    onProgress(data.message);
  } else if (run && tag === `salt/run/${run.jid}/ret` && data.return && typeof data.return === "object") {
    onReturn(run, data.return);
  }
}

/* The job's return: a run refused before it started (e.g. the lock) sends no deploy/... event, and a
   node whose event this page missed (a stream reconnect) is filled in from the summary. */
function onReturn(run, ret) {
  if (ret.result === "refused") {
    if (run.done) return;
    run.done = true;
    setRunState("failure");
    $("live-log").append(document.createTextNode(`refused: ${ret.error}\n`));
    notice(`refused: ${ret.error}`, true);
    refreshAfterRun();
    return;
  }
  for (const [node, info] of Object.entries(ret.nodes || {})) {
    const row = nodeRow(node);
    if (row.className || !info || !info.result) continue;
    const ok = info.result === "ok";
    row.className = ok ? "ok" : (info.result === "refused" ? "refused" : "fail");
    cell(row, "result", ok ? "ok" : info.result === "refused" ? "refused" : "FAILED");
    cell(row, "release", info.new || "");
    cell(row, "message", info.error || "");
  }
  if (!run.done && (ret.result === "success" || ret.result === "failure")) {
    run.done = true;
    setRunState(ret.result);
    if (ret.error) $("live-log").append(document.createTextNode(`error: ${ret.error}\n`));
    refreshAfterRun();
  }
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("release-form").addEventListener("submit", preview);
  $("ref").addEventListener("change", showRefInfo);
  $("confirm-release").addEventListener("click", confirmRelease);
  $("cancel-release").addEventListener("click", () => show("plan", false));
  $("rollback").addEventListener("click", () => askRollback(false));
  $("emergency").addEventListener("click", () => askRollback(true));
  $("refresh").addEventListener("click", () => loadHistory().then(loadNodes));
  const saved = JSON.parse(sessionStorage.getItem("deploy-console") || "null");
  if (saved && saved.token) {
    state.token = saved.token;
    state.user = saved.user;
    start();
  } else {
    logout();
  }
});
