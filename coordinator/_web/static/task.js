// The task panel: attempts, timings, error and traceback, metrics, the worker, and the
// task's logs followed live (SSE) while the panel is open.
import { api, events, h, stateBadge, fmtTime, fmtDuration, toMs, listOf } from "./app.js";

let closePanel = null; // closes the open panel's log stream

export async function openTask(runId, name, known = {}) {
  if (closePanel) closePanel();
  const panel = document.getElementById("panel");
  const base = `/api/runs/${encodeURIComponent(runId)}/tasks/${encodeURIComponent(name)}`;
  const logs = h("pre", { id: "task-logs" });
  const body = h("div", { id: "task-body" }, h("p", { class: "muted" }, "Loading…"));
  const close = h("button", { id: "panel-close", onclick: () => { closePanel?.(); panel.hidden = true; } }, "Close");
  panel.replaceChildren(close, h("h3", { id: "task-name", "data-task": name }, name), body, h("h4", {}, "Logs"), logs);
  panel.hidden = false;

  let task;
  try {
    task = { ...known, ...(await api(base)) };
  } catch (err) {
    body.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
    task = known;
  }
  const attempts = listOf(task, "attempts");
  const last = attempts[attempts.length - 1] || {};
  const error = task.error || last.error || "";
  const traceback = task.traceback || last.traceback || "";
  const worker = task.worker || task.worker_id || last.worker || last.worker_id || "-";
  const started = toMs(task.started_at ?? last.started_at), ended = toMs(task.finished_at ?? last.finished_at);
  const dl = (pairs) => h("table", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
  body.replaceChildren(
    dl([
      ["State", stateBadge(task.state)],
      ["Worker", h("span", { id: "task-worker" }, worker)],
      ["Started", fmtTime(started)],
      ["Duration", started ? fmtDuration((ended ?? Date.now()) - started) : "-"],
      ["Queue wait", task.queue_wait_s !== undefined ? fmtDuration(task.queue_wait_s * 1000) : "-"],
    ]),
    error ? h("div", { id: "task-error" }, h("h4", {}, "Error"), h("p", { class: "error" }, String(error))) : null,
    traceback ? h("pre", { id: "task-traceback" }, String(traceback)) : null,
    h("h4", {}, `Attempts (${attempts.length})`),
    h("table", { id: "task-attempts" },
      h("tr", {}, ["#", "State", "Worker", "Started", "Duration", "Error"].map((t) => h("th", {}, t))),
      attempts.map((a, i) => {
        const s = toMs(a.started_at), e = toMs(a.finished_at);
        return h("tr", {},
          h("td", {}, a.attempt ?? i + 1), h("td", {}, stateBadge(a.state)),
          h("td", {}, a.worker || a.worker_id || "-"), h("td", {}, fmtTime(s)),
          h("td", {}, s ? fmtDuration((e ?? Date.now()) - s) : "-"), h("td", { class: "error" }, a.error || ""));
      })),
    metricsTable(task.metrics));

  // Logs: what exists now, then new lines as they come.
  const source = events(`${base}/logs`);
  const onLine = (msg) => {
    let line = msg.data;
    try {
      const rec = JSON.parse(msg.data);
      line = rec.line ?? rec.message ?? rec.text ?? msg.data;
    } catch { /* a plain text line */ }
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.append(`${line}\n`);
    if (atEnd) logs.scrollTop = logs.scrollHeight; // follow only when already following
  };
  source.onmessage = onLine;
  source.addEventListener("log", onLine);
  source.addEventListener("end", () => source.close());
  closePanel = () => { source.close(); closePanel = null; };
}

function metricsTable(metrics) {
  if (!metrics || typeof metrics !== "object" || !Object.keys(metrics).length) return null;
  const rows = Array.isArray(metrics)
    ? metrics.map((m) => [m.name, m.value])
    : Object.entries(metrics);
  return h("div", { id: "task-metrics" }, h("h4", {}, "Metrics"),
    h("table", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : v)))));
}
