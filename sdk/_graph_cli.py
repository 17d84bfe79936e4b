"""``xpipe graph FILE.py[:OBJ]``: draw a pipeline's DAG as text, Graphviz DOT or SVG.

The layout is the dashboard's (``coordinator/_web/static/dag.js``): a task's layer is the
longest path to it from a root, so every edge points to a later layer; tasks of a layer
keep their order in the pipeline. SVG is written here, so no Graphviz binary is needed;
DOT is for those who have one. Nothing talks to a coordinator.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._dag import Pipeline

__all__ = ["FORMATS", "layers", "render", "register", "to_dot", "to_svg", "to_text"]

#: What ``--format`` accepts.
FORMATS = ("text", "dot", "svg")
# Box and gap sizes in px, as the dashboard draws a run's DAG.
_NODE_W, _NODE_H, _COL_GAP, _ROW_GAP, _MARGIN = 150, 26, 60, 10, 10
#: Characters of a name shown in an SVG box (the full name is in its tooltip).
_LABEL_CHARS = 22


def _graph(pipeline: Pipeline) -> tuple[list[str], dict[str, list[str]]]:
    """Task names in a topological order and each task's upstream names (checked: no cycle)."""
    order = pipeline.validate()
    tasks = pipeline.tasks
    return order, {name: list(tasks[name].upstream) for name in order}


def layers(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tasks by layer: a task's layer is one more than its deepest upstream's (roots: 0)."""
    layer: dict[str, int] = {}
    for name in order:
        layer[name] = 1 + max((layer[d] for d in deps[name]), default=-1)
    by_layer: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in order:
        by_layer[layer[name]].append(name)
    return by_layer


def to_text(pipeline: Pipeline) -> str:
    """An indented layered view: one line per task, indented by its layer, with its upstream."""
    order, deps = _graph(pipeline)
    by_layer = layers(order, deps)
    lines = [f"pipeline {pipeline.name}: {len(order)} tasks in {len(by_layer)} layers"]
    for index, names in enumerate(by_layer):
        for name in names:
            after = f"  <- {', '.join(deps[name])}" if deps[name] else ""
            lines.append(f"  [{index}] {'  ' * index}{name}{after}")
    return "\n".join(lines)


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(pipeline: Pipeline) -> str:
    """Graphviz source, left to right, roots in one rank (``dot -Tpng`` draws it)."""
    order, deps = _graph(pipeline)
    lines = [f"digraph {_dot_id(pipeline.name)} {{", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    lines += [f"  {_dot_id(name)};" for name in order]
    lines += [f"  {_dot_id(d)} -> {_dot_id(name)};" for name in order for d in deps[name]]
    lines.append("}")
    return "\n".join(lines)


def to_svg(pipeline: Pipeline) -> str:
    """A standalone SVG: a box (``<g class="node" data-task=...>``) per task, a path per edge."""
    order, deps = _graph(pipeline)
    pos: dict[str, tuple[int, int]] = {}
    for li, names in enumerate(layers(order, deps)):
        for i, name in enumerate(names):
            pos[name] = (_MARGIN + li * (_NODE_W + _COL_GAP), _MARGIN + i * (_NODE_H + _ROW_GAP))
    width = max(x for x, _ in pos.values()) + _NODE_W + _MARGIN
    height = max(y for _, y in pos.values()) + _NODE_H + _MARGIN
    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "width": str(width), "height": str(height),
                             "viewBox": f"0 0 {width} {height}", "font-family": "sans-serif", "font-size": "12"})  # fmt: skip
    ET.SubElement(svg, "title").text = f"pipeline {pipeline.name}"
    edges = ET.SubElement(svg, "g", {"class": "edges", "fill": "none", "stroke": "#888"})
    for name in order:
        x2, y2 = pos[name]
        for dep in deps[name]:
            x1, y1 = pos[dep]
            ax, ay, bx, by = x1 + _NODE_W, y1 + _NODE_H / 2, x2, y2 + _NODE_H / 2
            mx = (ax + bx) / 2
            ET.SubElement(edges, "path", {"class": "edge", "data-from": dep, "data-to": name,
                                          "d": f"M{ax},{ay} C{mx},{ay} {mx},{by} {bx},{by}"})  # fmt: skip
    for name in order:
        x, y = pos[name]
        node = ET.SubElement(svg, "g", {"class": "node", "data-task": name, "transform": f"translate({x},{y})"})
        ET.SubElement(node, "rect", width=str(_NODE_W), height=str(_NODE_H), rx="4", fill="#eef", stroke="#557")
        label = name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"
        ET.SubElement(node, "text", x="6", y="17").text = label
        ET.SubElement(node, "title").text = name
    return ET.tostring(svg, encoding="unicode")


_RENDERERS = {"text": to_text, "dot": to_dot, "svg": to_svg}


def render(pipeline: Pipeline, fmt: str) -> str:
    """The pipeline's DAG in ``fmt`` (one of ``FORMATS``).

    Raises:
        ValueError: an unknown format, naming the known ones.
        PipelineValidationError: the graph has a cycle or an unknown dependency.
    """
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown graph format {fmt!r}; known: {', '.join(FORMATS)}")
    return _RENDERERS[fmt](pipeline)


def cmd_graph(opts: argparse.Namespace) -> int:
    from ._cli import load_pipeline  # the CLI imports this module to register the command

    pipeline = load_pipeline(opts.target, command="graph")
    sys.stdout.write(render(pipeline, opts.format) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``xpipe graph`` to the CLI's subcommands."""
    graph = sub.add_parser("graph", help="draw the DAG of FILE.py[:OBJECT] (text, Graphviz dot or SVG)",
                           description="Draw the DAG of a pipeline defined in a file. OBJECT is a Pipeline or a "
                                       "function that builds one; default: the only Pipeline in the file.")  # fmt: skip
    graph.add_argument("target", help="a Python file and optionally the Pipeline (or its builder) in it")
    graph.add_argument("--format", "-f", choices=FORMATS, default="text",
                       help="text: layers, indented; dot: Graphviz source; svg: a picture, drawn without Graphviz")
    graph.set_defaults(fn=cmd_graph)
