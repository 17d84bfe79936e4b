// Workers: slots, resources, labels, state, and CPU / memory sparklines (inline SVG).
// The coordinator keeps each worker's last heartbeats' figures (`samples`), so a page that
// has just opened already draws a history; each poll redraws from the newest samples.
import { api, h, stateBadge, listOf, fmtBytes, setStatus } from "./app.js";

const POLL_MS = 2000;

/** A polyline sparkline of ``values`` scaled to ``max`` (or the data's own maximum). */
export function sparkline(values, max, cls) {
  const W = 120, H = 24;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", `spark ${cls}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const nums = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  svg.setAttribute("data-points", nums.length);
  if (nums.length) {
    const top = max || Math.max(...nums, 1e-9);
    const step = nums.length > 1 ? W / (nums.length - 1) : 0;
    const pts = nums.map((v, i) => `${(i * step).toFixed(1)},${(H - 1 - (Math.min(v, top) / top) * (H - 2)).toFixed(1)}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(line);
  }
  return svg;
}

export async function workersPage(main) {
  const body = h("tbody");
  main.append(h("h2", {}, "Workers"),
    h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["Worker", "State", "Slots", "Resources", "Labels", "CPU", "Memory"].map((t) => h("th", {}, t)))),
      body));
  let timer = null, stopped = false;
  async function refresh() {
    try {
      const workers = listOf(await api("/api/workers"), "workers");
      body.replaceChildren(...workers.map((w) => {
        const m = w.metrics || {};
        const samples = w.samples || {};
        const res = w.resources || {};
        const resText = [
          res.cpu_cores !== undefined ? `${res.cpu_cores} cores` : null,
          res.memory_bytes ? fmtBytes(res.memory_bytes) : null,
          res.gpu ? `gpu ${res.gpu}` : null,
          ...Object.entries(res.custom || {}).map(([k, v]) => `${k}=${v}`),
        ].filter(Boolean).join(", ");
        return h("tr", { "data-worker": w.worker_id, "data-state": w.state },
          h("td", { title: w.host || "" }, w.name || w.worker_id),
          h("td", {}, stateBadge(w.state, "w")),
          h("td", {}, `${w.running ?? 0}/${w.slots ?? "?"}`),
          h("td", {}, resText || "-"),
          h("td", {}, Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
          h("td", {}, sparkline(samples.cpu_percent || [], 100, "cpu"), " ",
            typeof m.cpu_percent === "number" ? `${m.cpu_percent.toFixed(0)}%` : ""),
          h("td", {}, sparkline(samples.memory_used_bytes || [], res.memory_bytes, "mem"), " ",
            m.memory_used_bytes !== undefined ? fmtBytes(m.memory_used_bytes) : ""));
      }));
      if (!workers.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No workers.")));
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus(String(err.message || err));
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
