// Runs: a table of runs with state and pipeline filters, kept live by polling /api/runs.
import { api, h, stateBadge, stateName, listOf, fmtTime, fmtDuration, toMs, setStatus } from "./app.js";

const POLL_MS = 2000;

export async function runsPage(main, _args, params) {
  const stateSel = h("select", { id: "filter-state" },
    ["", "pending", "running", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: params.get("state") === s }, s || "any state")));
  const pipeInput = h("input", { id: "filter-pipeline", placeholder: "pipeline", value: params.get("pipeline") || "" });
  const body = h("tbody");
  main.append(
    h("h2", {}, "Runs"),
    h("div", { class: "filters" }, h("label", {}, "State ", stateSel), h("label", {}, "Pipeline ", pipeInput)),
    h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["Run", "Pipeline", "State", "Tasks", "Started", "Duration"].map((t) => h("th", {}, t)))),
      body));

  let timer = null;
  let stopped = false;
  async function refresh() {
    const q = new URLSearchParams();
    if (stateSel.value) q.set("state", stateSel.value);
    if (pipeInput.value.trim()) q.set("pipeline", pipeInput.value.trim());
    try {
      const runs = listOf(await api(`/api/runs?${q}`), "runs")
        // Filter here as well, so a server that ignores a filter still shows the right rows.
        .filter((r) => !stateSel.value || stateName(r.state) === stateSel.value)
        .filter((r) => !pipeInput.value.trim() || String(r.pipeline || "").includes(pipeInput.value.trim()));
      body.replaceChildren(...runs.map(row));
      if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No runs.")));
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus(String(err.message || err));
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }
  function refilter() {
    clearTimeout(timer);
    refresh();
  }
  stateSel.addEventListener("change", refilter);
  pipeInput.addEventListener("input", refilter);
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(r) {
  const id = r.run_id || r.id;
  const started = toMs(r.started_at || r.submitted_at);
  const ended = toMs(r.finished_at || r.ended_at);
  const counts = r.counts || r.task_counts || {};
  const total = r.total_tasks ?? r.tasks ?? Object.values(counts).reduce((a, b) => a + b, 0);
  const done = counts.succeeded ?? counts.SUCCEEDED ?? r.succeeded_tasks;
  return h("tr", { "data-run": id },
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(id)}` }, id)),
    h("td", {}, r.pipeline || r.pipeline_name || ""),
    h("td", {}, stateBadge(r.state)),
    h("td", {}, done !== undefined ? `${done}/${total}` : (total || "")),
    h("td", {}, fmtTime(started)),
    h("td", {}, started ? fmtDuration((ended || Date.now()) - started) : "-"));
}
