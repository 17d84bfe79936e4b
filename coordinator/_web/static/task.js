// The task panel: attempts, timings, error and traceback, metrics, the worker, and the
// task's logs followed live (SSE) while the panel is open.
import { api, events, h, stateBadge, fmtTime, fmtDuration, toMs, listOf } from "./app.js";

let closePanel = null; // closes the open panel's log stream

/** Close the panel and its log stream (the run page calls it when it is left). */
export function closeTask() {
  closePanel?.();
  document.getElementById("panel").hidden = true;
}

export async function openTask(runId, name, known = {}) {
  if (closePanel) closePanel();
  const panel = document.getElementById("panel");
  const base = `/api/runs/${encodeURIComponent(runId)}/tasks/${encodeURIComponent(name)}`;
  const logs = h("pre", { id: "task-logs" });
  const body = h("div", { id: "task-body" }, h("p", { class: "muted" }, "Loading…"));
  const close = h("button", { id: "panel-close", onclick: closeTask }, "Close");
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
  // The run page's row has error_type/error_message; the task document an error object.
  const error = task.error && typeof task.error === "object"
    ? task.error
    : (task.error_message ? { type: task.error_type, message: task.error_message } : null);
  const started = toMs(task.started_at), ended = toMs(task.finished_at);
  const dl = (pairs) => h("table", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
  const telemetry = task.telemetry || {};
  body.replaceChildren(...[
    dl([
      ["State", stateBadge(task.state)],
      ["Worker", h("span", { id: "task-worker" }, task.worker || "-")],
      ["Attempt", task.attempt ?? "-"],
      ["Started", fmtTime(started)],
      ["Duration", started ? fmtDuration((ended ?? Date.now()) - started) : "-"],
      ["Upstream", (task.depends_on || []).join(", ") || "-"],
    ]),
    error ? h("div", { id: "task-error" }, h("h4", {}, "Error"),
      h("p", { class: "error" }, [error.exception_type || error.type, error.message].filter(Boolean).join(": ")),
      error.non_retryable ? h("p", { class: "muted" }, "not retryable") : null,
      error.traceback ? h("pre", { id: "task-traceback" }, error.traceback) : null) : null,
    h("h4", {}, `Attempts (${attempts.length})`),
    h("table", { id: "task-attempts" },
      h("tr", {}, ["#", "State", "Worker", "Started", "Duration", "Moves"].map((t) => h("th", {}, t))),
      attempts.map((a, i) => {
        const s = toMs(a.started_at), e = toMs(a.finished_at);
        return h("tr", {},
          h("td", {}, a.attempt ?? i + 1), h("td", {}, stateBadge(a.state)),
          h("td", {}, a.worker || "-"), h("td", {}, fmtTime(s)),
          h("td", {}, s ? fmtDuration((e ?? Date.now()) - s) : "-"),
          h("td", { class: "muted" }, (a.transitions || []).map((m) => `${m.from}→${m.to}${m.reason ? ` (${m.reason})` : ""}`).join(", ")));
      })),
    metricsTable("Metrics", telemetry.metrics),
    metricsTable("Performance", Object.fromEntries(Object.entries(telemetry).filter(([k, v]) => k !== "metrics" && typeof v !== "object"))),
  ].filter(Boolean)); // replaceChildren would print an absent section as "null"

  // Logs: what exists now, then new lines as they come.
  const source = events(`${base}/logs?follow=1`);
  source.addEventListener("log", (msg) => {
    let line;
    try { line = JSON.parse(msg.data); } catch { return; }
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    const span = h("span", { class: line.stream === "stderr" ? "error" : "" }, line.data);
    logs.append(span);
    if (line.truncated_bytes) logs.append(h("span", { class: "muted" }, `[${line.truncated_bytes} bytes truncated]\n`));
    if (atEnd) logs.scrollTop = logs.scrollHeight; // follow only when already following
  });
  source.addEventListener("end", () => { source.close(); logs.append(h("span", { class: "muted" }, "[end of output]")); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) logs.append(h("span", { class: "error" }, "[log stream closed]")); };
  closePanel = () => { source.close(); closePanel = null; };
}

function metricsTable(title, metrics) {
  if (!metrics || typeof metrics !== "object" || !Object.keys(metrics).length) return null;
  const rows = Array.isArray(metrics)
    ? metrics.map((m) => [m.name, m.value])
    : Object.entries(metrics);
  return h("div", { class: "task-metrics" }, h("h4", {}, title),
    h("table", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : v)))));
}
