// Run: the live DAG, counts per state, duration and critical path. Loads the run once,
// then follows /api/runs/{id}/events (SSE) and changes only the affected nodes.
import { api, events, h, rows, stateName, stateBadge, toMs, fmtDuration, setStatus } from "./app.js";
import { drawDag, criticalPath } from "./dag.js";
import { openTask, closeTask } from "./task.js";

const STATES = ["pending", "ready", "assigned", "running", "succeeded", "failed", "retry_wait",
  "skipped", "cancelled", "upstream_failed", "recovering", "held", "mapped"];
const TERMINAL_RUN = new Set(["succeeded", "failed", "cancelled"]);
// The critical path depends on durations, so it is recomputed at most this often.
const CRITICAL_EVERY_MS = 2000;

/**
 * Open the run's event stream and wait for its first message, the run with every task: one
 * snapshot per page load. A stream that fails first (a sign-in is needed, no such run, a
 * coordinator still starting) falls back to the run detail, whose errors the page can read.
 */
function openWithSnapshot(runId) {
  const source = events(`/api/runs/${encodeURIComponent(runId)}/events`);
  return new Promise((resolve) => {
    const onSnapshot = (msg) => {
      source.removeEventListener("snapshot", onSnapshot);
      source.onerror = null;
      let doc = null;
      try { doc = JSON.parse(msg.data); } catch { /* fall back below */ }
      if (doc) resolve({ source, doc });
      else { source.close(); resolve({ source: null, doc: null }); }
    };
    source.addEventListener("snapshot", onSnapshot);
    source.onerror = () => { source.close(); resolve({ source: null, doc: null }); };
  });
}

export async function runPage(main, [runId]) {
  const t0 = performance.now();
  let { source, doc } = await openWithSnapshot(runId);
  if (!doc) doc = await api(`/api/runs/${encodeURIComponent(runId)}`);
  const fetchedMs = performance.now() - t0;
  const run = doc.run || {};
  const tasks = rows(doc.tasks);
  for (const t of tasks) {
    t.deps = (t.depends_on || []).map((i) => tasks[i]?.name).filter((n) => n !== undefined);
    t.state = stateName(t.state);
  }
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const t of tasks) counts[t.state] = (counts[t.state] || 0) + 1;

  const runState = h("span", {}, stateBadge(run.state));
  const duration = h("span", { id: "run-duration" }, "-");
  const countsEl = h("div", { class: "legend", id: "counts" });
  const critEl = h("span", { id: "critical" });
  const dagEl = h("div", { class: "dag", id: "dag" });
  main.append(
    h("h2", {}, `Run ${run.run_id || runId}`, " ", h("span", { class: "muted" }, run.pipeline || "")),
    h("div", { class: "summary" },
      h("span", {}, "State ", runState), h("span", {}, "Duration ", duration),
      h("span", {}, `Tasks ${tasks.length}`), h("span", {}, "Critical path ", critEl)),
    countsEl, dagEl);

  const countCells = new Map();
  for (const s of STATES) {
    const n = h("span", { "data-count": s }, String(counts[s] || 0));
    countCells.set(s, n);
    countsEl.append(h("span", {}, h("i", { "data-state": s }), `${s} `, n));
  }
  const dag = drawDag(dagEl, tasks, (name) => openTask(runId, name, byName.get(name)));
  const { order } = dag;
  const started = toMs(run.created_at);
  let finished = toMs(run.finished_at);
  let state = stateName(run.state);

  let critAt = 0;
  function updateCritical() {
    critAt = Date.now();
    const path = criticalPath(tasks, order);
    dag.markCritical(path);
    let ms = 0;
    for (const n of path) {
      const t = byName.get(n), s = toMs(t.started_at);
      if (s !== null) ms += (toMs(t.finished_at) ?? Date.now()) - s;
    }
    critEl.textContent = `${path.size} tasks, ${fmtDuration(ms)}`;
  }
  function tick() {
    duration.textContent = started ? fmtDuration((finished || Date.now()) - started) : "-";
  }
  if (Array.isArray(doc.critical_path)) {
    dag.markCritical(new Set(doc.critical_path));
    critEl.textContent = `${doc.critical_path.length} tasks, ${fmtDuration((doc.critical_path_s || 0) * 1000)}`;
  } else {
    updateCritical();
  }
  tick();
  dagEl.setAttribute("data-ready", "1");
  // Load figures for the browser test's report: fetch (server and JSON) and the whole load.
  dagEl.setAttribute("data-fetch-ms", String(Math.round(fetchedMs)));
  dagEl.setAttribute("data-load-ms", String(Math.round(performance.now() - t0)));
  setStatus(`${tasks.length} tasks drawn in ${Math.round(performance.now() - t0)} ms`);

  /** Apply one changed task (a row of a `tasks` event): its node and the record the panel reads. */
  function applyTask(ev) {
    const t = byName.get(ev.name);
    if (!t || ev.state === undefined) return;
    for (const k of ["started_at", "finished_at", "worker", "attempt", "error_type", "error_message"]) {
      if (ev[k] !== undefined) t[k] = ev[k];
    }
    if (moveTask(t, stateName(ev.state))) critDirty = true;
  }
  /**
   * Every state change goes through here: the node, and the counts by one each way, so the
   * figures cannot drift from the nodes and no message recounts 10,000 tasks.
   */
  function moveTask(t, s) {
    if (s === t.state) return false;
    counts[t.state] -= 1;
    counts[s] = (counts[s] || 0) + 1;
    t.state = s;
    dag.setState(t.name, s);
    return true;
  }
  /** Show the counts (moveTask keeps them), once per message. */
  function recount() {
    for (const [s, cell] of countCells) {
      const text = String(counts[s] || 0);
      if (cell.textContent !== text) cell.textContent = text;
    }
  }
  /** A `run` event: the run's state (task counts come from the tasks, see recount). */
  function applyRun(r) {
    state = stateName(r.state);
    runState.replaceChildren(stateBadge(r.state));
    if (r.finished_at) finished = toMs(r.finished_at);
    tick();
  }

  let critDirty = false;
  // A big run's changes carry no times: the server sends its critical path (`critical`).
  const serverCritical = !dag.detailed;
  const timer = setInterval(() => {
    tick();
    if (!serverCritical && (critDirty || !TERMINAL_RUN.has(state))) { critDirty = false; updateCritical(); }
  }, CRITICAL_EVERY_MS);
  function showCritical(d) {
    dag.markCritical(new Set(d.critical_path));
    critEl.textContent = `${d.critical_path.length} tasks, ${fmtDuration((d.critical_path_s || 0) * 1000)}`;
  }
  // A big run's changes name tasks by index into the stream's snapshot, states by number.
  let streamNames = doc.tasks?.name || [];
  let stateNames = doc.task_states || {};
  function applyIndexed(d) {
    for (let k = 0; k < d.index.length; k++) {
      const t = byName.get(streamNames[d.index[k]]);
      const s = stateNames[d.state[k]];
      if (!t || s === undefined) continue;
      moveTask(t, stateName(s));
    }
  }
  const durTimer = setInterval(tick, 1000);

  // EventSource retries a dropped connection by itself, but gives up for good on an HTTP
  // error (a coordinator that is still starting answers 503): then open a new one, backing
  // off. The first message of every stream (`snapshot`) holds every task, so whatever
  // changed while the page was cut off is caught up at once.
  let ended = false, retryTimer = null, backoffMs = 500;
  function connect(opened = null) {
    source = opened || events(`/api/runs/${encodeURIComponent(runId)}/events`);
    const parse = (msg) => { try { return JSON.parse(msg.data); } catch { return null; } };
    // A reconnected stream starts with a fresh snapshot: whatever changed meanwhile.
    source.addEventListener("snapshot", (msg) => {
      const d = parse(msg);
      if (!d) return;
      streamNames = d.tasks?.name || [];
      stateNames = d.task_states || {};
      for (const t of rows(d.tasks)) applyTask(t);
      recount();
      if (d.run) applyRun(d.run);
    });
    source.addEventListener("critical", (msg) => { const d = parse(msg); if (d) showCritical(d); });
    source.addEventListener("run", (msg) => { const r = parse(msg); if (r) applyRun(r); });
    source.addEventListener("tasks", (msg) => {
      const d = parse(msg);
      if (d && Array.isArray(d.index)) applyIndexed(d);
      else for (const t of rows(d)) applyTask(t);
      recount();
      // A state change moves the critical path at once; durations alone wait for the timer.
      if (!serverCritical && critDirty && Date.now() - critAt >= CRITICAL_EVERY_MS / 4) { critDirty = false; updateCritical(); }
    });
    source.addEventListener("end", (msg) => {
      const r = parse(msg);
      if (r) applyRun(r);
      ended = true;
      source.close(); // the run is over; EventSource would otherwise reconnect
      dagEl.dataset.stream = "ended";
      if (!serverCritical) updateCritical();
      setStatus(`run ${state}`);
    });
    source.onerror = () => {
      if (ended) return;
      dagEl.dataset.stream = "interrupted";
      setStatus("event stream interrupted; reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        retryTimer = setTimeout(connect, backoffMs);
        backoffMs = Math.min(backoffMs * 2, 10_000);
      }
    };
    source.onopen = () => {
      backoffMs = 500;
      dagEl.dataset.stream = "live";
      setStatus(`live: ${tasks.length} tasks`);
    };
    if (opened) source.onopen(); // already open: its snapshot drew the page
  }
  connect(source);

  return () => {
    ended = true;
    source.close();
    clearTimeout(retryTimer);
    clearInterval(timer);
    clearInterval(durTimer);
    closeTask();
  };
}
