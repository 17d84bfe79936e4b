// Run: the live DAG, counts per state, duration and critical path. Loads the run once,
// then follows /api/runs/{id}/events (SSE) and changes only the affected nodes.
import { api, events, h, rows, stateName, stateBadge, toMs, fmtDuration, setStatus } from "./app.js";
import { drawDag, criticalPath } from "./dag.js";
import { openTask, closeTask } from "./task.js";

const STATES = ["pending", "ready", "assigned", "running", "succeeded", "failed", "retry_wait",
  "skipped", "cancelled", "upstream_failed", "recovering", "mapped"];
const TERMINAL_RUN = new Set(["succeeded", "failed", "cancelled"]);
// The critical path depends on durations, so it is recomputed at most this often.
const CRITICAL_EVERY_MS = 2000;

export async function runPage(main, [runId]) {
  const t0 = performance.now();
  const doc = await api(`/api/runs/${encodeURIComponent(runId)}`);
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
    const s = stateName(ev.state);
    if (s === t.state) return;
    t.state = s;
    dag.setState(t.name, s);
    critDirty = true;
  }
  /**
   * Count tasks per state from the tasks themselves, once per message: one source, so the
   * figures cannot drift from the nodes (10,000 tasks take well under a millisecond).
   */
  function recount() {
    for (const s of STATES) counts[s] = 0;
    for (const t of tasks) counts[t.state] = (counts[t.state] || 0) + 1;
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
  const timer = setInterval(() => {
    tick();
    if (critDirty || !TERMINAL_RUN.has(state)) { critDirty = false; updateCritical(); }
  }, CRITICAL_EVERY_MS);
  const durTimer = setInterval(tick, 1000);

  // EventSource retries a dropped connection by itself, but gives up for good on an HTTP
  // error (a coordinator that is still starting answers 503): then open a new one, backing
  // off. The first `tasks` message of every stream holds every task, so whatever changed
  // while the page was cut off is caught up at once.
  let source = null, ended = false, retryTimer = null, backoffMs = 500;
  function connect() {
    source = events(`/api/runs/${encodeURIComponent(runId)}/events`);
    const parse = (msg) => { try { return JSON.parse(msg.data); } catch { return null; } };
    source.addEventListener("run", (msg) => { const r = parse(msg); if (r) applyRun(r); });
    source.addEventListener("tasks", (msg) => {
      for (const t of rows(parse(msg))) applyTask(t);
      recount();
      // A state change moves the critical path at once; durations alone wait for the timer.
      if (critDirty && Date.now() - critAt >= CRITICAL_EVERY_MS / 4) { critDirty = false; updateCritical(); }
    });
    source.addEventListener("end", (msg) => {
      const r = parse(msg);
      if (r) applyRun(r);
      ended = true;
      source.close(); // the run is over; EventSource would otherwise reconnect
      dagEl.dataset.stream = "ended";
      updateCritical();
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
  }
  connect();

  return () => {
    ended = true;
    source.close();
    clearTimeout(retryTimer);
    clearInterval(timer);
    clearInterval(durTimer);
    closeTask();
  };
}
