// Run: the live DAG, counts per state, duration and critical path. Loads the run once,
// then follows /api/runs/{id}/events (SSE) and changes only the affected nodes.
import { api, events, h, stateName, stateBadge, toMs, fmtDuration, listOf, setStatus } from "./app.js";
import { drawDag, criticalPath, layers } from "./dag.js";
import { openTask } from "./task.js";

const STATES = ["pending", "ready", "assigned", "running", "succeeded", "failed", "retry_wait",
  "skipped", "cancelled", "upstream_failed", "recovering"];
const TERMINAL_RUN = new Set(["succeeded", "failed", "cancelled"]);
// The critical path depends on durations, so it is recomputed at most this often.
const CRITICAL_EVERY_MS = 2000;

/** One task from the API in the page's shape; tolerant of absent fields. */
function normTask(t) {
  return {
    ...t,
    name: t.name ?? t.task ?? t.task_id,
    deps: t.deps ?? t.depends_on ?? t.upstream ?? [],
    state: stateName(t.state),
  };
}

export async function runPage(main, [runId]) {
  const t0 = performance.now();
  const run = await api(`/api/runs/${encodeURIComponent(runId)}`);
  const tasks = listOf(run, "tasks").map(normTask);
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
  const { order } = layers(tasks);
  const started = toMs(run.started_at || run.submitted_at);
  let finished = toMs(run.finished_at);
  let state = stateName(run.state);

  function updateCritical() {
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
  updateCritical();
  tick();
  dagEl.setAttribute("data-ready", "1");
  dagEl.setAttribute("data-load-ms", String(Math.round(performance.now() - t0)));
  setStatus(`${tasks.length} tasks drawn in ${Math.round(performance.now() - t0)} ms`);

  /** Apply one task event: counts, the node's data-state, and the record the panel reads. */
  function applyTask(ev) {
    const name = ev.task ?? ev.name ?? ev.task_id;
    const t = byName.get(name);
    if (!t || ev.state === undefined) return;
    const s = stateName(ev.state);
    for (const k of ["started_at", "finished_at", "worker", "worker_id", "attempt", "error"]) {
      if (ev[k] !== undefined) t[k] = ev[k];
    }
    if (s === t.state) return;
    counts[t.state]--;
    counts[s] = (counts[s] || 0) + 1;
    countCells.get(t.state)?.replaceChildren(String(counts[t.state]));
    countCells.get(s)?.replaceChildren(String(counts[s]));
    t.state = s;
    dag.setState(name, s);
    if (s === "running" && !t.started_at) t.started_at = Date.now();
    if ((s === "succeeded" || s === "failed") && !t.finished_at) t.finished_at = Date.now();
    critDirty = true;
  }
  function applyRun(ev) {
    state = stateName(ev.state);
    runState.replaceChildren(stateBadge(state));
    if (TERMINAL_RUN.has(state)) finished = toMs(ev.finished_at) ?? Date.now();
  }

  let critDirty = false;
  const timer = setInterval(() => {
    tick();
    if (critDirty || !TERMINAL_RUN.has(state)) { critDirty = false; updateCritical(); }
  }, CRITICAL_EVERY_MS);
  const durTimer = setInterval(tick, 1000);

  const source = events(`/api/runs/${encodeURIComponent(runId)}/events`);
  const onMessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    // One message may batch several events.
    for (const e of Array.isArray(ev) ? ev : (ev.events ?? [ev])) {
      const kind = e.type ?? e.kind ?? msg.type;
      if (kind === "run" || (e.task === undefined && e.name === undefined && e.task_id === undefined)) applyRun(e);
      else applyTask(e);
    }
  };
  source.onmessage = onMessage;
  for (const kind of ["task", "run", "snapshot"]) source.addEventListener(kind, onMessage);
  source.onerror = () => setStatus("event stream interrupted; reconnecting");
  source.onopen = () => setStatus(`live: ${tasks.length} tasks`);

  return () => { source.close(); clearInterval(timer); clearInterval(durTimer); };
}
