// Circuits and Alerts: plain tables of what the API lists, refreshed every few seconds.
import { api, h, listOf, fmtTime, stateBadge, setStatus } from "./app.js";

const POLL_MS = 5000;

function tablePage(title, path, key, columns) {
  return async (main) => {
    const body = h("tbody");
    main.append(h("h2", {}, title),
      h("table", { id: key }, h("thead", {}, h("tr", {}, columns.map(([t]) => h("th", {}, t)))), body));
    let timer = null, stopped = false;
    async function refresh() {
      try {
        const rows = listOf(await api(path), key);
        body.replaceChildren(...rows.map((r) => h("tr", {}, columns.map(([, f]) => h("td", {}, f(r) ?? "")))));
        if (!rows.length) body.append(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, `No ${key}.`)));
        setStatus(`updated ${new Date().toLocaleTimeString()}`);
      } catch (err) {
        setStatus(String(err.message || err));
      }
      if (!stopped) timer = setTimeout(refresh, POLL_MS);
    }
    await refresh();
    return () => { stopped = true; clearTimeout(timer); };
  };
}

export const circuitsPage = tablePage("Circuits", "/api/circuits", "circuits", [
  ["Name", (c) => c.name],
  ["State", (c) => stateBadge(c.state, "w")],
  ["Failures", (c) => c.failures],
  ["Opened", (c) => fmtTime(c.opened_at)],
]);

export const alertsPage = tablePage("Alerts", "/api/alerts", "alerts", [
  ["Time", (a) => fmtTime(a.at)],
  ["Rule", (a) => a.rule],
  ["Severity", (a) => a.severity],
  ["About", (a) => [a.pipeline, a.run_id, a.task, a.worker].filter(Boolean).join(" / ")],
  ["Summary", (a) => a.summary],
  ["Delivery", (a) => (a.deliveries || []).map((d) => (typeof d === "object"
    ? [d.sink ?? d.channel, d.state ?? d.status].filter(Boolean).join(": ") : String(d))).join(", ")],
]);
