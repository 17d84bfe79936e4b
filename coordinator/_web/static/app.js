// The dashboard shell: a hash router, the API client (with the token when auth is on)
// and small helpers the pages share. Pages are thin clients of /api/ (docs/api.md).

/**
 * Ask for a token (the coordinator answered 401) and log in with it: POST /api/login sets
 * an HttpOnly cookie that every later call, the event streams included, carries
 * (EventSource cannot send an Authorization header). Resolves once a login succeeded.
 */
async function login(message) {
  const dialog = document.getElementById("login");
  const input = document.getElementById("token");
  document.getElementById("login-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  const resp = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: input.value.trim() }),
  });
  input.value = "";
  if (!resp.ok) return login("That token was refused.");
}

let loggingIn = null; // one login dialog at a time, however many calls got a 401

/** GET a JSON document from the API; on 401 asks for a token, logs in and tries again. */
export async function api(path) {
  for (;;) {
    const resp = await fetch(path, { credentials: "same-origin" });
    if (resp.status === 401) {
      loggingIn ||= login("").finally(() => { loggingIn = null; });
      await loggingIn;
      continue;
    }
    if (!resp.ok) {
      let body = {};
      try { body = await resp.json(); } catch { /* not JSON */ }
      // An HA follower names the leader's dashboard; the message passes it on.
      const leader = body.leader_dashboard_url ? ` (the leader's dashboard: ${body.leader_dashboard_url})` : "";
      throw new Error(`${path}: HTTP ${resp.status} ${body.error || resp.statusText}${leader}`);
    }
    return resp.json();
  }
}

/** An EventSource on ``path``; the login cookie authenticates it. */
export function events(path) {
  return new EventSource(path, { withCredentials: true });
}

/**
 * Parallel arrays ({name: [...], state: [...]}) as one object per index: the API sends a
 * 10,000-task run that way because it is several times smaller than a list of objects.
 */
export function rows(columns) {
  const names = Object.keys(columns || {});
  const n = names.length ? Math.max(...names.map((k) => (columns[k] || []).length)) : 0;
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const r = {};
    for (const k of names) r[k] = columns[k][i];
    out[i] = r;
  }
  return out;
}

/** Lower-case state name without the enum prefix: "TASK_RUNNING"/"RUN_RUNNING" -> "running". */
export function stateName(s) {
  if (s === undefined || s === null || s === "") return "unknown";
  return String(s).toLowerCase().replace(/^(task_|run_)(state_)?/, "");
}

/** Milliseconds since the epoch from seconds, milliseconds or an ISO string; null when absent. */
export function toMs(t) {
  if (t === undefined || t === null || t === "" || t === 0) return null;
  if (typeof t === "number") return t < 1e11 ? t * 1000 : t;
  const n = Number(t);
  if (!Number.isNaN(n)) return toMs(n);
  const d = Date.parse(t);
  return Number.isNaN(d) ? null : d;
}

/** "1h 02m", "3.2 s", "-" for a duration in milliseconds. */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "-";
  if (ms < 60e3) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(s % 60).padStart(2, "0")}s`;
}

export function fmtTime(t) {
  const ms = toMs(t);
  return ms === null ? "-" : new Date(ms).toLocaleString();
}

export function fmtBytes(b) {
  if (b === undefined || b === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Element builder: h("td", {class: "x"}, "text", child). Strings become text (never HTML). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A coloured state badge; ``kind`` "w" marks worker and circuit states (their own palette). */
export function stateBadge(s, kind = "") {
  const name = stateName(s);
  return h("span", { class: kind ? `state ${kind}` : "state", "data-state": name }, name);
}

/** A list from a response that is either the list or an object holding it under ``key``. */
export function listOf(doc, key) {
  if (Array.isArray(doc)) return doc;
  return (doc && Array.isArray(doc[key])) ? doc[key] : [];
}

export function setStatus(text) {
  document.getElementById("status").textContent = text;
}

// --------------------------------------------------------------------------- router

const routes = [
  [/^\/?$/, () => import("./runs.js").then((m) => m.runsPage)],
  [/^\/runs$/, () => import("./runs.js").then((m) => m.runsPage)],
  [/^\/runs\/([^/]+)$/, () => import("./run.js").then((m) => m.runPage)],
  [/^\/workers$/, () => import("./workers.js").then((m) => m.workersPage)],
  [/^\/circuits$/, () => import("./tables.js").then((m) => m.circuitsPage)],
  [/^\/alerts$/, () => import("./tables.js").then((m) => m.alertsPage)],
];

let cleanup = null; // the current page's stop function: closes its streams and timers

async function route() {
  const [path, query] = (location.hash.slice(1) || "/runs").split("?");
  if (cleanup) { cleanup(); cleanup = null; }
  document.getElementById("panel").hidden = true;
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", path.startsWith(`/${a.dataset.page}`));
  }
  for (const [re, load] of routes) {
    const m = path.match(re);
    if (!m) continue;
    const page = await load();
    const params = new URLSearchParams(query || "");
    try {
      cleanup = await page(main, m.slice(1).map((p) => p && decodeURIComponent(p)), params) || null;
    } catch (err) {
      main.append(h("p", { class: "error", id: "page-error" }, String(err.message || err)));
    }
    return;
  }
  main.append(h("p", { class: "error" }, `No page at ${path}`));
}

addEventListener("hashchange", route);
route();
