// The run's DAG as SVG: layout by dependency layer, the critical path, and in-place updates.
//
// Layer = longest path from a root, so every edge points right. Up to DETAIL_LIMIT tasks
// draw as labelled SVG boxes with edges; an update sets one element's data-state. Above it
// (a 10,000-task run) each layer is a column of small cells, one per task, without edges,
// painted on a canvas: no element per task, so loading the page and restyling thousands of
// cells per message cost the viewer's CPU a few milliseconds, not a second (measured in
// bench/dashboard_cost.py). An update there repaints only the changed cells, once a frame.
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
 * Above DETAIL_LIMIT tasks it returns drawCells's canvas view instead (same interface).
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
  if (!detailed) return drawCells(container, tasks, byLayer, order, byName, onPick);
  const nodes = new Map();
  const svg = el("svg", { class: "detail", "data-tasks": tasks.length });
  const frag = document.createDocumentFragment();
  const pos = new Map();
  let width = 0, height = 0;

  {
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
      for (const e of svg.querySelectorAll(".edge.crit")) e.classList.remove("crit");
      for (const n of path) {
        for (const e of svg.querySelectorAll(`.edge[data-to="${CSS.escape(n)}"]`)) {
          if (path.has(e.getAttribute("data-from"))) e.classList.add("crit");
        }
      }
      critical = path;
    },
  };
}

/**
 * The level-of-detail view: per layer, columns of CELLS_PER_COL cells on one canvas. Same
 * interface as drawDag's, plus ``stateOf(name)`` and ``drawnCount(state)`` (what is painted),
 * which tests and tools read, as the cells are not elements. The canvas carries
 * ``data-tasks`` and a title naming the task under the pointer.
 */
function drawCells(container, tasks, byLayer, order, byName, onPick) {
  const pos = new Map();
  const columns = []; // [x0, names] per layer, for hit-testing
  const labels = [];
  let x = 10, height = 0;
  byLayer.forEach((names, li) => {
    const cols = Math.ceil(names.length / CELLS_PER_COL);
    labels.push([`L${li} (${names.length})`, x]);
    columns.push([x, names]);
    names.forEach((n, i) => pos.set(n, [x + Math.floor(i / CELLS_PER_COL) * CELL, 20 + (i % CELLS_PER_COL) * CELL]));
    x += Math.max(cols * CELL, 50) + LAYER_GAP;
    height = Math.max(height, 20 + Math.min(names.length, CELLS_PER_COL) * CELL + 10);
  });
  const width = x;
  const canvas = document.createElement("canvas");
  canvas.className = "lod";
  canvas.dataset.tasks = String(tasks.length);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${tasks.length} tasks in ${byLayer.length} layers`);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.ceil(width * ratio);
  canvas.height = Math.ceil(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const css = getComputedStyle(document.documentElement);
  const colour = (state) => (css.getPropertyValue(`--${state}`) || css.getPropertyValue("--muted")).trim() || "#666";
  const colours = new Map();
  const fill = (state) => {
    let c = colours.get(state);
    if (c === undefined) colours.set(state, (c = colour(state)));
    return c;
  };
  const critColour = colour("critical");

  const want = new Map(); // name -> state to show
  const painted = new Map(); // name -> state painted
  const counts = new Map(); // state -> cells painted in it
  let critical = new Set();
  const dirty = new Set();
  let scheduled = false;

  /**
   * Paint ``names`` (an iterable of task names): grouped by state, so the fill colour is set
   * once per state rather than once per cell. A cell's fill is opaque and covers its whole
   * square, outline included, so nothing is cleared first.
   */
  function paint(names) {
    const byState = new Map();
    for (const n of names) {
      if (!pos.has(n)) continue;
      const s = want.get(n);
      let group = byState.get(s);
      if (group === undefined) byState.set(s, (group = []));
      group.push(n);
    }
    const outlined = [];
    for (const [s, group] of byState) {
      ctx.fillStyle = fill(s);
      for (const n of group) {
        const p = pos.get(n);
        ctx.fillRect(p[0], p[1], CELL - 1, CELL - 1);
        if (critical.has(n)) outlined.push(p);
        const before = painted.get(n);
        if (before !== undefined) counts.set(before, counts.get(before) - 1);
        painted.set(n, s);
      }
      counts.set(s, (counts.get(s) || 0) + group.length);
    }
    if (outlined.length) {
      ctx.strokeStyle = critColour;
      ctx.lineWidth = 1.5;
      for (const p of outlined) ctx.strokeRect(p[0] + 0.75, p[1] + 0.75, CELL - 2.5, CELL - 2.5);
    }
  }
  function flush() {
    scheduled = false;
    paint(dirty);
    dirty.clear();
  }
  function schedule(n) {
    dirty.add(n);
    if (scheduled) return;
    scheduled = true;
    // A hidden page gets no animation frames; it still paints, less often.
    if (document.hidden) setTimeout(flush, 100);
    else requestAnimationFrame(flush);
  }

  ctx.fillStyle = css.getPropertyValue("--fg").trim() || "#000";
  ctx.font = "11px system-ui, sans-serif";
  for (const [text, lx] of labels) ctx.fillText(text, lx, 12);
  for (const n of pos.keys()) want.set(n, stateName(byName.get(n).state));
  paint(pos.keys());

  function nameAt(ev) {
    const r = canvas.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    for (const [x0, names] of columns) {
      if (px < x0 || px >= x0 + Math.ceil(names.length / CELLS_PER_COL) * CELL) continue;
      const row = Math.floor((py - 20) / CELL);
      if (row < 0 || row >= CELLS_PER_COL) return null;
      return names[Math.floor((px - x0) / CELL) * CELLS_PER_COL + row] ?? null;
    }
    return null;
  }
  canvas.addEventListener("click", (ev) => {
    const n = nameAt(ev);
    if (n !== null) onPick(n);
  });
  canvas.addEventListener("mousemove", (ev) => {
    const n = nameAt(ev);
    canvas.title = n === null ? "" : `${n} (${want.get(n)})`;
    canvas.style.cursor = n === null ? "" : "pointer";
  });
  container.replaceChildren(canvas);

  const view = {
    nodes: pos,
    order,
    detailed: false,
    cells: pos.size,
    setState(name, state) {
      if (!pos.has(name)) return;
      want.set(name, stateName(state));
      schedule(name);
    },
    markCritical(path) {
      const was = critical;
      critical = path;
      for (const n of was) if (!path.has(n)) schedule(n);
      for (const n of path) if (!was.has(n)) schedule(n);
    },
    /** The state a cell shows (or is about to, this frame); undefined for an unknown task. */
    stateOf(name) {
      return want.get(name);
    },
    /** How many cells are painted in ``state`` now. */
    drawnCount(state) {
      return counts.get(state) || 0;
    },
  };
  container.xpipeDag = view;
  return view;
}
