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
  run: null,          // the live run shown: {id, jobs, kind, nodes: {}, batches: {}, done}
  countdown: null,    // the timer of a timed pause's countdown
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
    sessionStorage.setItem("deploy-console", JSON.stringify({ token: state.token, user: state.user,
                                                            perms: state.perms }));
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
  const h = (lock && lock.holder) || {};
  if (lock && lock.alive && h.jid && !h.paused) {  // a paused run waits for approval (renderApproval)
    watchRun(h.jid, h.kind || "run", `${h.kind || "run"} running since ${fmtTime(h.since)} ` +
             `(${h.user || "?"}@${h.host || "?"}, jid ${h.jid})`, h.run || h.jid);
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
    box.className = h.paused ? "lock paused" : lock.alive ? "lock held" : "lock stale";
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
  renderApproval(lock && lock.holder);
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
    const ref = $("ref").value;
    const [ret, diff] = await Promise.all([
      runner("deploy.release", { project: state.project, env: state.env, ref, test: true }),
      runner("deploy.changes", { project: state.project, env: state.env, ref })
        .catch((err) => ({ result: "refused", error: err.message })),
    ]);
    if (failed(ret)) { notice(`preview: ${ret.error}`, true); return; }
    showChanges(diff);
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

/* What the release changes (deploy.changes): per group of nodes on one commit, the commits and the
   config files whose keys change (names only). */
function showChanges(diff) {
  const box = clear($("plan-changes"));
  if (!diff || failed(diff)) {
    box.append(el("p", { class: "muted" }, `changes: ${(diff && diff.error) || "unknown"}`));
    return;
  }
  for (const group of diff.groups || []) {
    const from = group.from ? String(group.from).slice(0, 10) : "no release";
    const section = el("div", { class: "changes-group", "data-nodes": group.nodes.join(",") },
      el("h4", {}, `${group.nodes.join(", ")} (now ${from})`));
    const commits = group.commits || [], reverted = group.reverted || [];
    if (group.unknown) section.append(el("p", { class: "muted" }, "their commit is not in the repository"));
    else if (!commits.length && !reverted.length) section.append(el("p", { class: "muted" }, "no new commits"));
    const list = (rows, cls) => el("ul", { class: cls }, ...rows.map((c) =>
      el("li", {}, el("code", {}, c.short || String(c.id).slice(0, 10)), ` ${c.subject} (${c.author})`)));
    if (commits.length) section.append(el("p", {}, `${commits.length} commit(s) to bring:`), list(commits, "commits"));
    if (reverted.length) section.append(el("p", { class: "error" }, `${reverted.length} commit(s) to take away:`),
                                        list(reverted, "reverted"));
    for (const c of group.config || []) {
      const parts = [["added", c.added], ["removed", c.removed], ["changed", c.changed]]
        .filter(([, keys]) => (keys || []).length).map(([what, keys]) => `${what}: ${keys.join(", ")}`);
      section.append(el("p", { class: "config-change", "data-file": c.file },
                        `config ${c.file}${c.new ? " (new)" : ""}${c.gone ? " (gone)" : ""}: ${parts.join("; ") || "changed"}`));
    }
    box.append(section);
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
    const run = state.run;
    if ((fun === "deploy.promote" || fun === "deploy.abort") && run && run.project === state.project &&
        run.env === state.env) {
      run.jobs.add(ret.jid);  // the paused run goes on under its own id: the same live view
      return;
    }
    watchRun(ret.jid, fun.split(".")[1], title);
  } catch (err) {
    notice(`${fun}: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ live view
//
// Built from the fields of the structured events deploy/<project>/<env>/<type> (contract v1, docs/events.md),
// never from the text of a progress line: `message` is only shown in the progress log, as it came.

const DONE_STATES = { ok: "success", failed: "failure", paused: "paused", aborted: "aborted" };

function watchRun(jid, kind, title, id) {
  const current = state.run;
  if (current && (current.id === jid || current.jobs.has(jid) || (id && current.id === id))) return;
  if (current && !current.done && current.project === state.project && current.env === state.env &&
      (current.id === null || !current.jobs.size)) {
    current.jobs.add(jid);  // the run's start event came before runner_async answered: same run
    $("live-title").textContent = title;
    return;
  }
  newRun(id || null, kind, title).jobs.add(jid);
}

function newRun(id, kind, title) {
  state.run = { id, jobs: new Set(), kind, nodes: {}, batches: {}, nodeBatch: {}, done: false,
                project: state.project, env: state.env };
  $("live-title").textContent = title;
  setRunState("running");
  clear($("live-stages"));
  clear($("live-nodes").tBodies[0]);
  clear($("live-analysis"));
  $("live-log").textContent = "";
  show("live", true);
  return state.run;
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
    const label = stage === "preprod" || stage === "prepare" ? stage : `${stage} ${batch}${of ? "/" + of : ""}`;
    const box = el("div", { class: "batch", "data-batch": key },
                   el("span", { class: "batch-label" }, label), el("span", { class: "batch-nodes" }),
                   el("span", { class: "batch-time" }));
    if (stage === "prepare") $("live-stages").prepend(box);
    else $("live-stages").append(box);
    run.batches[key] = box;
  }
  return run.batches[key];
}

function nodeRow(node) {
  const run = state.run;
  if (!run.nodes[node]) {
    const cells = ["node", "batch", "result", "release", "seconds", "message"].map((name) => el("td", { class: name }));
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
  box.querySelector(".batch-nodes").textContent = nodes.join(", ");
  for (const node of nodes) {
    state.run.nodeBatch[node] = `${stage}#${batch}`;
    cell(nodeRow(node), "batch", stage === "preprod" ? "preprod" : `${stage} ${batch}`);
  }
}

function logLine(text) {
  if (typeof text === "string" && text) $("live-log").append(document.createTextNode(text + "\n"));
}

/* A node's result: the contract's ok | failed | skipped (an older runner: true | false | null). */
function nodeResult(value) {
  if (value === "ok" || value === true) return "ok";
  if (value === "skipped" || value === null) return "skipped";
  return "failed";
}

function showFigures(holder, title, figures, verdict, reasons) {
  const rows = [];
  for (const side of ["new", "old"]) {
    const fig = (figures || {})[side];
    if (!fig || typeof fig !== "object") continue;
    const parts = Object.entries(fig).filter(([, v]) => v === null || typeof v !== "object")
      .map(([k, v]) => `${k} ${v === null ? "-" : v}`);
    rows.push(el("li", { "data-side": side }, `${side}: ${parts.join(", ")}`));
  }
  holder.append(el("div", { class: `analysis ${verdict || ""}` },
                   el("b", {}, title), verdict ? ` ${verdict}` : "",
                   (reasons || []).length ? el("div", { class: "muted" }, reasons.join("; ")) : null,
                   el("ul", {}, ...rows)));
}

const EVENT_HANDLERS = {
  plan(run, data) {
    if (data.preprod) assignBatch("preprod", 1, 1, [data.preprod]);
    for (const stage of data.stages || []) {
      (stage.batches || []).forEach((nodes, i) => assignBatch(stage.name, i + 1, stage.batches.length, nodes));
    }
  },
  prepare(run, data) {
    const box = batchBox("prepare", "", "");
    box.querySelector(".batch-nodes").textContent = `${data.ready ?? "?"}/${data.total ?? "?"} ready`;
    if (data.done) box.className = data.ready === data.total ? "batch ok" : "batch fail";
    else box.className = "batch running";
  },
  batch(run, data) {
    const box = batchBox(data.stage, data.batch, data.of);
    if (data.nodes) assignBatch(data.stage, data.batch, data.of, data.nodes);
    if (data.phase === "out") {
      box.className = "batch running";
      return;
    }
    const failedNodes = (data.nodes || []).filter((n) => run.nodes[n] && run.nodes[n].className === "failed");
    box.className = failedNodes.length ? "batch fail" : "batch ok";
    const seconds = data.out_seconds ?? data.seconds;
    box.querySelector(".batch-time").textContent = seconds === undefined || seconds === null ? "" : ` ${seconds}s`;
  },
  stage(run, data) {
    if (data.stage === "preprod" && data.phase !== "start") {
      batchBox("preprod", 1, 1).className = data.result === "failed" ? "batch fail" : "batch ok";
    }
  },
  node(run, data) {
    const row = nodeRow(data.node);
    const result = nodeResult(data.result);
    row.className = result;
    cell(row, "result", result === "failed" ? "FAILED" : result);
    if (data.stage && !run.nodeBatch[data.node]) cell(row, "batch", data.stage);
    cell(row, "release", data.new ? `${data.old || "-"} → ${data.new}` : (data.release || ""));
    cell(row, "seconds", data.seconds === undefined || data.seconds === null ? "" : `${data.seconds}s`);
    cell(row, "message", data.error || "");
  },
  analysis(run, data) {
    if (data.phase && data.phase !== "end") return;
    const where = `analysis of stage ${data.stage}` + (data.batch ? ` batch ${data.batch}` : "");
    showFigures($("live-analysis"), where, data.figures || { new: data.new, old: data.old }, data.verdict,
                data.reasons);
  },
  hook(run, data) {
    // a hook phase on its node: the steps' line is in the log; a failure also shows on the node's row
    if (data.node && data.result === "failed") cell(nodeRow(data.node), "message", data.error || "");
  },
  pause(run, data) {
    if (data.seconds === null || data.seconds === undefined) {
      closeRun(run, "paused");
    } else {
      setRunState("waiting");
    }
    refreshLock();
  },
  promote(run) { run.done = false; setRunState("running"); refreshLock(); },
  abort(run) { run.done = false; setRunState("aborting"); refreshLock(); },
  rollback(run, data) {
    $("live-title").textContent = `${data.emergency ? "emergency " : ""}rollback to ${data.target || data.to || "?"}`;
  },
  done(run, data) {
    closeRun(run, DONE_STATES[data.result] || "failure");
    if (data.error) logLine(`error: ${data.error}`);
  },
  // the events of a runner older than contract v1
  success(run) { closeRun(run, "success"); },
  failure(run, data) {
    closeRun(run, data.result === "aborted" ? "aborted" : "failure");
    if (data.error) logLine(`error: ${data.error}`);
  },
};

const OPENING = new Set(["start", "promote", "abort"]);

/* deploy/<project>/<env>/<type>: the run's id is the field `run` (the runner job's jid). */
function onDeployEvent(type, data) {
  let run = state.run;
  const id = data.run || null;
  const other = run && id && run.id && id !== run.id;
  if (!run || ((run.done || other) && OPENING.has(type))) {
    if (!OPENING.has(type)) return;  // the rest of a run this page did not see start
    if (!(run && run.id === id)) {
      run = newRun(id, data.kind, `${data.kind || "run"}${data.mode === "emergency" ? " (emergency)" : ""} ` +
                   `${data.ref || data.release || ""}`.trim());
    }
  } else if (other) {
    return;  // another run's late event
  }
  if (run.id === null && id) run.id = id;
  logLine(data.message);
  const handler = EVENT_HANDLERS[type];
  if (handler) handler(run, data);
}

function closeRun(run, how) {
  run.done = true;
  setRunState(how);
  refreshAfterRun();
}

async function refreshAfterRun() {
  await loadProjects();
  await loadHistory();
  await loadNodes();
}

// ------------------------------------------------------------------ approvals: a paused run

function allowed(fun) {
  for (const perm of state.perms || []) {
    if (perm === "@runner" || perm === "@runners") return true;  // every runner function
    const rules = perm && typeof perm === "object" ? perm["@runner"] || perm["@runners"] || [] : [];
    for (const rule of Array.isArray(rules) ? rules : []) {
      const pattern = typeof rule === "string" ? rule : Object.keys(rule || {})[0];
      try {
        if (pattern && new RegExp(`^(?:${pattern})`).test(fun)) return true;
      } catch (err) { /* a rule this browser cannot read allows nothing here */ }
    }
  }
  return false;
}

function renderApproval(holder) {
  const box = clear($("approval"));
  if (state.countdown) { clearInterval(state.countdown); state.countdown = null; }
  const paused = holder && holder.paused;
  const waiting = holder && holder.waiting;
  if (!paused && !waiting) { show("approval", false); return; }
  const info = paused || waiting;
  const stage = info.stage;
  const nextStage = paused && paused.plan && paused.plan.stages && paused.plan.stages[paused.next] ?
    paused.plan.stages[paused.next].name : null;
  box.append(el("h2", {}, paused ? "Waiting for approval" : "Pausing"),
             el("p", { id: "approval-what" },
                `${paused ? paused.release || "a release" : "the running release"} paused after stage ${stage}` +
                (nextStage ? `, next: stage ${nextStage}` : "") +
                `; started by ${holder.user || "?"}@${holder.host || "?"}` +
                (paused ? `, paused since ${fmtTime(paused.since)}` : "")));
  if (waiting && waiting.seconds) {
    const deadline = Date.parse(waiting.since) + waiting.seconds * 1000;
    const countdown = el("p", { id: "approval-countdown" });
    const tick = () => {
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      countdown.textContent = `goes on by itself in ${left}s`;
    };
    tick();
    state.countdown = setInterval(tick, 1000);
    box.append(countdown);
  }
  const switched = Object.entries((paused || {}).switched || {}).sort();
  if (switched.length) {
    box.append(el("p", {}, "switched (and where Abort puts them back):"),
               el("ul", { id: "approval-switched" },
                  ...switched.map(([node, old]) => el("li", { "data-node": node }, `${node} (was ${old})`))));
  }
  const analyses = (((paused || {}).timings || {}).analysis || []).filter((a) => a.stage === stage);
  for (const a of analyses) {
    showFigures(box, `analysis of stage ${a.stage}` + (a.batch ? ` batch ${a.batch}` : ""),
                a.figures || { new: a.new, old: a.old }, a.verdict, a.reasons);
  }
  const buttons = [];
  if (allowed("deploy.promote")) {
    buttons.push(el("button", { type: "button", id: "promote", class: "primary", onclick: () => gate("promote") },
                    nextStage ? `Promote: go on with stage ${nextStage}` : "Promote"));
  }
  if (allowed("deploy.abort")) {
    buttons.push(el("button", { type: "button", id: "abort", class: "danger", onclick: () => gate("abort") },
                    "Abort: put the switched nodes back"));
  }
  if (buttons.length) box.append(el("p", {}, ...buttons));
  else box.append(el("p", { class: "muted", id: "approval-readonly" }, "you may watch this run, not promote or abort it"));
  show("approval", true);
}

async function gate(action) {
  const ok = await confirmDialog(
    action === "promote" ? `Promote the paused release of ${state.project}/${state.env}?`
                         : `Abort the paused release of ${state.project}/${state.env} and put its nodes back?`,
    [], action === "promote" ? "Promote" : "Abort");
  if (!ok) return;
  await launch(`deploy.${action}`, { project: state.project, env: state.env }, action);
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
  const parts = tag.split("/");  // salt/run/<jid>/ret: the return of a job this page started
  if (run && parts.length === 4 && parts[0] === "salt" && parts[1] === "run" && parts[3] === "ret" &&
      run.jobs.has(parts[2]) && data.return && typeof data.return === "object") {
    onReturn(run, data.return);
  }
}

const RETURN_STATES = { success: "success", failure: "failure", paused: "paused", aborted: "aborted",
                        interrupted: "failure" };

/* The job's return: a run refused before it started (e.g. the lock) sends no deploy/... event, and a
   node whose event this page missed (a stream reconnect) is filled in from the summary. */
function onReturn(run, ret) {
  if (ret.result === "refused") {
    notice(`refused: ${ret.error}`, true);
    if (run.done) return;
    logLine(`refused: ${ret.error}`);
    closeRun(run, "failure");
    return;
  }
  if (ret.result === "requested") {  // a promote or abort handed to a run waiting in its timed pause
    notice(ret.comment || `${ret.action} requested`);
    return;
  }
  for (const [node, info] of Object.entries(ret.nodes || {})) {
    const row = nodeRow(node);
    if (row.className || !info || !info.result) continue;
    const result = info.result === "ok" ? "ok" : info.result === "refused" ? "skipped" : "failed";
    row.className = result;
    cell(row, "result", result === "failed" ? "FAILED" : result);
    cell(row, "release", info.new ? `${info.old || "-"} → ${info.new}` : "");
    cell(row, "message", info.error || "");
  }
  if (!run.done && RETURN_STATES[ret.result]) {
    if (ret.error) logLine(`error: ${ret.error}`);
    closeRun(run, RETURN_STATES[ret.result]);
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
    state.perms = saved.perms || [];
    start();
  } else {
    logout();
  }
});
