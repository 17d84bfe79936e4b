// Workers: slots, resources, labels, state, and CPU / memory sparklines (inline SVG).
// The API's history arrays are drawn when present; otherwise the page keeps its own
// samples from each poll, so the sparkline still grows while the page is open.
import { api, h, stateBadge, listOf, fmtBytes, setStatus } from "./app.js";

const POLL_MS = 2000;
const KEEP = 60; // samples per sparkline

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

function history(w, key, fallback) {
  const hist = w[`${key}_history`] ?? w.history?.[key];
  if (Array.isArray(hist)) return hist.map((p) => (typeof p === "number" ? p : p?.value ?? p?.[1]));
  return fallback;
}

export async function workersPage(main) {
  const body = h("tbody");
  main.append(h("h2", {}, "Workers"),
    h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["Worker", "State", "Slots", "Resources", "Labels", "CPU", "Memory"].map((t) => h("th", {}, t)))),
      body));
  const samples = new Map(); // worker -> {cpu: [], mem: []}
  let timer = null, stopped = false;
  async function refresh() {
    try {
      const workers = listOf(await api("/api/workers"), "workers");
      body.replaceChildren(...workers.map((w) => {
        const id = w.worker_id ?? w.id ?? w.name;
        const own = samples.get(id) ?? { cpu: [], mem: [] };
        samples.set(id, own);
        const cpu = w.cpu_percent ?? w.cpu?.percent ?? w.cpu_load;
        const mem = w.memory_used_bytes ?? w.memory?.used_bytes ?? w.rss_bytes;
        if (typeof cpu === "number") own.cpu = [...own.cpu, cpu].slice(-KEEP);
        if (typeof mem === "number") own.mem = [...own.mem, mem].slice(-KEEP);
        const res = w.resources ?? {};
        const slotsUsed = w.slots_used ?? w.busy_slots ?? w.running;
        const memTotal = w.memory_total_bytes ?? res.memory_bytes;
        return h("tr", { "data-worker": id },
          h("td", {}, id),
          h("td", {}, stateBadge(w.state)),
          h("td", {}, slotsUsed !== undefined ? `${slotsUsed}/${w.slots ?? "?"}` : (w.slots ?? "-")),
          h("td", {}, Object.entries(res).map(([k, v]) => `${k}=${/bytes$/.test(k) ? fmtBytes(v) : v}`).join(", ") || "-"),
          h("td", {}, Object.entries(w.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
          h("td", {}, sparkline(history(w, "cpu", own.cpu), 100, "cpu"), " ", typeof cpu === "number" ? `${cpu.toFixed(0)}%` : ""),
          h("td", {}, sparkline(history(w, "memory", own.mem), memTotal, "mem"), " ", fmtBytes(mem)));
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
