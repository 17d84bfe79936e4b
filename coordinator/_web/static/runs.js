// Runs: a table of runs with state and pipeline filters, kept live by polling /api/runs.
import { api, h, stateBadge, stateName, listOf, fmtTime, fmtDuration, setStatus } from "./app.js";

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
        .filter((r) => !pipeInput.value.trim() || r.pipeline === pipeInput.value.trim());
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
  pipeInput.addEventListener("change", refilter); // an exact name: filter once it is typed
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(r) {
  const id = r.run_id;
  const counts = r.counts || {};
  const total = r.total_tasks ?? Object.values(counts).reduce((a, b) => a + b, 0);
  const done = counts.SUCCEEDED ?? 0;
  return h("tr", { "data-run": id, "data-state": stateName(r.state) },
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(id)}` }, id)),
    h("td", {}, r.pipeline || ""),
    h("td", {}, stateBadge(r.state)),
    h("td", { title: Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join(", ") }, `${done}/${total}`),
    h("td", {}, fmtTime(r.created_at)),
    h("td", {}, r.duration_s !== undefined ? fmtDuration(r.duration_s * 1000) : "-"));
}
