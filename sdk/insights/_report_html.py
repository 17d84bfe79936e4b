"""The performance report as one self-contained HTML file, its plots SVG drawn by hand.

No script and no external file: the page opens offline, in a mail client or a ticket.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._report import PerformanceReport

__all__ = ["render_html"]

_W, _H, _PAD = 640, 220, 40
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def duration_svg(report: PerformanceReport) -> str:
    """Run duration over time, one line (and dots) per pipeline."""
    series = [p for p in report.pipelines if p.points]
    if not series:
        return "<p>No finished runs to plot.</p>"
    xs = [x for p in series for x, _ in p.points]
    ys = [y for p in series for _, y in p.points]
    x0, x1 = min(xs), max(xs)
    y1 = max(ys) * 1.1 or 1.0
    span = (x1 - x0) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return _PAD + (x - x0) / span * (_W - 2 * _PAD), _H - _PAD - y / y1 * (_H - 2 * _PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
             'aria-label="run duration over time">',
             f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#444"/>',
             f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#444"/>',
             f'<text x="4" y="{_PAD - 8}" font-size="11">{y1:.3g} s</text>',
             f'<text x="{_PAD}" y="{_H - 8}" font-size="11">{_e(time.strftime("%Y-%m-%d %H:%M", time.gmtime(x0)))} UTC</text>']  # fmt: skip
    for i, p in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        pts = [at(x, y) for x, y in p.points]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')  # fmt: skip
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>{_e(p.pipeline)}: '
                  f"{d:.3f} s</title></circle>" for (x, y), (_, d) in zip(pts, p.points)]  # fmt: skip
        parts.append(f'<text x="{_W - _PAD - 150}" y="{_PAD + 14 * i}" font-size="11" fill="{color}">{_e(p.pipeline)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def task_bars_svg(report: PerformanceReport) -> str:
    """Time per task: a bar of its p50 duration, a tick at its p95."""
    tasks = [t for t in report.tasks if t.p95_s > 0]
    if not tasks:
        return "<p>No task durations to plot.</p>"
    row, label_w = 22, 160
    height = row * len(tasks) + 30
    top = max(t.max_s for t in tasks) or 1.0
    scale = (_W - label_w - 80) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" role="img" '
             'aria-label="time per task">']  # fmt: skip
    for i, t in enumerate(tasks):
        y = 10 + i * row
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{_e(t.name[:24])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{max(t.p50_s * scale, 1):.1f}" height="{row - 6}" '
                     f'fill="#1f77b4"><title>p50 {t.p50_s:.3f} s</title></rect>')  # fmt: skip
        x95 = label_w + t.p95_s * scale
        parts.append(f'<line x1="{x95:.1f}" y1="{y}" x2="{x95:.1f}" y2="{y + row - 6}" stroke="#d62728" '
                     f'stroke-width="2"><title>p95 {t.p95_s:.3f} s</title></line>')  # fmt: skip
        parts.append(f'<text x="{x95 + 6:.1f}" y="{y + 14}" font-size="11">{t.p50_s:.3g} / {t.p95_s:.3g} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: PerformanceReport) -> str:
    title = f"xpipe performance report{f': {report.pipeline}' if report.pipeline else ''}"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.generated_at))
    if report.empty:
        body = "<p>No runs yet.</p>"
    else:
        body = (
            "<h2>Run duration over time</h2>" + duration_svg(report)
            + "<h2>Time per task (bar: p50, red tick: p95)</h2>" + task_bars_svg(report)
            + f"<h2>Figures</h2><pre>{_e(str(report))}</pre>"
        )  # fmt: skip
    note = f"<p><b>Note:</b> {_e(report.note)}</p>" if report.note else ""
    return (
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style></head>"
        f"<body><h1>{_e(title)}</h1><p>Generated {when}.</p>{note}{body}</body></html>\n"
    )
