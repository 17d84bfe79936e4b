// The run's DAG as SVG: layout by dependency layer, the critical path, and in-place updates.
//
// Layer = longest path from a root, so every edge points right. Up to DETAIL_LIMIT tasks
// draw as labelled boxes with edges; above it (a 10,000-task run) each layer is a column
// of small cells, one per task, without edges, so the browser draws a few thousand plain
// rects instead of tens of thousands of paths. Either way an update only sets one
// element's data-state: the SVG is drawn once per page load.
import { stateName, toMs } from "./app.js";

export const DETAIL_LIMIT = 500;
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 150, NODE_H = 26, COL_GAP = 60, ROW_GAP = 10;
const CELL = 7, CELLS_PER_COL = 40, LAYER_GAP = 24;

function el(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** Layers of ``tasks`` ([{name, deps}]): Map name -> layer, in Kahn order (cycles left at 0). */
export function layers(tasks) {
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const children = new Map(tasks.map((t) => [t.name, []]));
  const indeg = new Map();
  for (const t of tasks) {
    const deps = t.deps.filter((d) => byName.has(d));
    indeg.set(t.name, deps.length);
    for (const d of deps) children.get(d).push(t.name);
  }
  const layer = new Map(tasks.map((t) => [t.name, 0]));
  const queue = tasks.filter((t) => indeg.get(t.name) === 0).map((t) => t.name);
  const order = [];
  for (let i = 0; i < queue.length; i++) {
    const n = queue[i];
    order.push(n);
    for (const c of children.get(n)) {
      layer.set(c, Math.max(layer.get(c), layer.get(n) + 1));
      indeg.set(c, indeg.get(c) - 1);
      if (indeg.get(c) === 0) queue.push(c);
    }
  }
  return { layer, order, children };
}

/** Task duration in ms for the critical path: finished - started, or so far; 0 if not started. */
function durationMs(t, now) {
  const s = toMs(t.started_at);
  if (s === null) return 0;
  return (toMs(t.finished_at) ?? now) - s;
}

/** The longest chain by duration (ties by task count): a Set of its task names. */
export function criticalPath(tasks, order, now = Date.now()) {
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const best = new Map(), prev = new Map();
  for (const n of order) {
    const t = byName.get(n);
    let base = 0, from = null;
    for (const d of t.deps) {
      if (best.has(d) && best.get(d) >= base) { base = best.get(d); from = d; }
    }
    best.set(n, base + durationMs(t, now) + 1e-3); // +1e-3: more tasks wins a tie
    prev.set(n, from);
  }
  let end = null;
  for (const [n, v] of best) if (end === null || v > best.get(end)) end = n;
  const path = new Set();
  for (let n = end; n !== null && n !== undefined; n = prev.get(n)) path.add(n);
  return path;
}

/**
 * Draw ``tasks`` into ``container``. Returns {nodes: Map name -> element, order (topological),
 * setState(name, state), detailed, markCritical(set)}; the element carries data-task and data-state.
 */
export function drawDag(container, tasks, onPick) {
  const { layer, order } = layers(tasks);
  const byLayer = [];
  for (const n of order) (byLayer[layer.get(n)] ||= []).push(n);
  // Tasks on a cycle (invalid, but never hide them) go to layer 0.
  const placed = new Set(order);
  for (const t of tasks) if (!placed.has(t.name)) (byLayer[0] ||= []).push(t.name);
  const byName = new Map(tasks.map((t) => [t.name, t]));
  const detailed = tasks.length <= DETAIL_LIMIT;
  const nodes = new Map();
  const svg = el("svg", { class: detailed ? "detail" : "lod", "data-tasks": tasks.length });
  const frag = document.createDocumentFragment();
  const pos = new Map();
  let width = 0, height = 0;

  if (detailed) {
    byLayer.forEach((names, li) => names.forEach((n, i) => {
      pos.set(n, [li * (NODE_W + COL_GAP) + 10, i * (NODE_H + ROW_GAP) + 10]);
    }));
    const edges = el("g", { class: "edges" });
    for (const t of tasks) {
      const [x2, y2] = pos.get(t.name);
      for (const d of t.deps) {
        if (!pos.has(d)) continue;
        const [x1, y1] = pos.get(d);
        const a = [x1 + NODE_W, y1 + NODE_H / 2], b = [x2, y2 + NODE_H / 2], mx = (a[0] + b[0]) / 2;
        edges.append(el("path", {
          class: "edge", "data-from": d, "data-to": t.name,
          d: `M${a[0]},${a[1]} C${mx},${a[1]} ${mx},${b[1]} ${b[0]},${b[1]}`,
        }));
      }
    }
    frag.append(edges);
    for (const [n, [x, y]] of pos) {
      const g = el("g", { class: "node", "data-task": n, "data-state": stateName(byName.get(n).state), transform: `translate(${x},${y})` });
      const title = el("title", {});
      title.textContent = n;
      const text = el("text", { x: 6, y: 17 });
      text.textContent = n.length > 22 ? `${n.slice(0, 21)}…` : n;
      g.append(el("rect", { width: NODE_W, height: NODE_H, rx: 4 }), text, title);
      frag.append(g);
      nodes.set(n, g);
      width = Math.max(width, x + NODE_W + 10);
      height = Math.max(height, y + NODE_H + 10);
    }
  } else {
    // Level of detail: per layer, columns of CELLS_PER_COL cells; a label with the layer size.
    let x = 10;
    byLayer.forEach((names, li) => {
      const cols = Math.ceil(names.length / CELLS_PER_COL);
      const label = el("text", { x, y: 12 });
      label.textContent = `L${li} (${names.length})`;
      frag.append(label);
      names.forEach((n, i) => {
        const cx = x + Math.floor(i / CELLS_PER_COL) * CELL, cy = 20 + (i % CELLS_PER_COL) * CELL;
        const r = el("rect", { class: "cell", x: cx, y: cy, width: CELL - 1, height: CELL - 1, "data-task": n, "data-state": stateName(byName.get(n).state) });
        frag.append(r);
        nodes.set(n, r);
      });
      x += Math.max(cols * CELL, 50) + LAYER_GAP;
      height = Math.max(height, 20 + Math.min(names.length, CELLS_PER_COL) * CELL + 10);
    });
    width = x;
  }
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.append(frag);
  // One listener for all nodes: 10,000 listeners would cost more than the drawing.
  svg.addEventListener("click", (ev) => {
    const target = ev.target.closest("[data-task]");
    if (target) onPick(target.getAttribute("data-task"));
  });
  container.replaceChildren(svg);

  let critical = new Set();
  return {
    nodes,
    order,
    detailed,
    setState(name, state) {
      const node = nodes.get(name);
      if (node) node.setAttribute("data-state", stateName(state));
    },
    /** Highlight ``path`` (a Set of names); touches only the nodes that changed membership. */
    markCritical(path) {
      for (const n of critical) if (!path.has(n)) nodes.get(n)?.classList.remove("crit");
      for (const n of path) nodes.get(n)?.classList.add("crit");
      if (detailed) {
        for (const e of svg.querySelectorAll(".edge.crit")) e.classList.remove("crit");
        for (const n of path) {
          for (const e of svg.querySelectorAll(`.edge[data-to="${CSS.escape(n)}"]`)) {
            if (path.has(e.getAttribute("data-from"))) e.classList.add("crit");
          }
        }
      }
      critical = path;
    },
  };
}
