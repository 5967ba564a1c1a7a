"""Step 6 of the quickstart: the report as one self-contained HTML page with inline SVG
plots (loss curve, latency histogram), readable offline, with no script and no CDN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

from kilowatt.cli.quickstart.report import (
    DASHBOARD_COMMAND,
    DASHBOARD_URL,
    PLAN_HEADER,
    SERVING_HEADER,
    QuickstartReport,
    Row,
)
from kilowatt.cli.quickstart.serving import LatencyBucket

__all__ = ["bar_chart_svg", "line_chart_svg", "write_html"]

_WIDTH, _HEIGHT = 640, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 48
_COLORS = ("#2563eb", "#ea580c")
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 980px;
       color: #111827; padding: 0 1rem; }
h1 { font-size: 1.45rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { padding: .25rem .75rem; border-bottom: 1px solid #e5e7eb; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.method { color: #6b7280; font-size: .9em; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5rem; }
figure { margin: 0; } figcaption { color: #4b5563; font-size: .9em; }
svg text { font: 11px system-ui, sans-serif; fill: #374151; }
code { background: #f3f4f6; padding: .1rem .3rem; border-radius: 3px; }
"""


def write_html(report: QuickstartReport, path: Path) -> Path:
    """Write ``report`` to ``path`` (folders created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path


def render_html(report: QuickstartReport) -> str:
    """The report as an HTML document."""
    loss = line_chart_svg(
        [("train loss", report.loss_curve), ("eval loss", report.eval_curve)],
        x_label="optimizer step",
        y_label="cross-entropy",
    )
    latency = bar_chart_svg(report.histogram, x_label="server-side latency", y_label="requests")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>",
        "<h2>Training</h2>",
        _rows_html(report.training),
        "<h2>Plan vs measurement</h2>",
        _table_html(PLAN_HEADER, report.plan_vs_measured),
        "<div class=plots>",
        f"<figure>{loss}<figcaption>Loss curve (from the tracking store)</figcaption></figure>",
        f"<figure>{latency}<figcaption>Latency histogram of every request the server "
        "answered (its Prometheus histogram)</figcaption></figure>",
        "</div>",
        "<h2>Serving</h2>",
        _table_html(SERVING_HEADER, report.serving),
        _rows_html(report.serving_summary),
        "<h2>Tracking store</h2>",
        _rows_html(report.store),
        "<h2>Next</h2>",
        f"<p>Open the dashboard: <code>{escape(DASHBOARD_COMMAND)}</code>, then "
        f"{escape(DASHBOARD_URL)}</p>",
        "<ul>" + "".join(f"<li>{escape(note)}</li>" for note in report.notes) + "</ul>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _rows_html(rows: Sequence[Row]) -> str:
    body = "".join(
        f"<tr><th>{escape(r.label)}</th><td class=num>{escape(r.value)}</td>"
        f"<td class=method>{escape(r.method)}</td></tr>"
        for r in rows
    )
    return f"<table>{body}</table>"


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i else ''}>{escape(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def line_chart_svg(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], x_label: str, y_label: str
) -> str:
    """An SVG line chart of several ``(name, [(x, y), ...])`` series; the y axis is
    logarithmic when every value is positive and they span more than two decades."""
    points = [(x, y) for _, data in series for x, y in data if math.isfinite(y)]
    if not points:
        return _empty_svg("no points were logged")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    log_y = min(ys) > 0 and max(ys) / min(ys) > 100
    scale_y = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x_range = (min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)
    lo, hi = scale_y(min(ys)), scale_y(max(ys))
    y_range = (lo, hi if hi > lo else lo + 1)
    parts = [_axes(x_label, y_label + (" (log)" if log_y else ""))]
    parts += _ticks(x_range, y_range, log_y)
    for index, (name, data) in enumerate(series):
        color = _COLORS[index % len(_COLORS)]
        path = " ".join(
            f"{_px(x, x_range):.1f},{_py(scale_y(y), y_range):.1f}"
            for x, y in data
            if math.isfinite(y)
        )
        if path:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>'
            )
        legend_y = _TOP + 14 + 16 * index
        parts.append(
            f'<rect x="{_WIDTH - 130}" y="{legend_y - 9}" width="12" height="4" fill="{color}"/>'
            f'<text x="{_WIDTH - 112}" y="{legend_y - 3}">{escape(name)}</text>'
        )
    return _svg("".join(parts))


def bar_chart_svg(buckets: Sequence[LatencyBucket], x_label: str, y_label: str) -> str:
    """An SVG histogram with one bar per latency bucket (empty outer buckets trimmed)."""
    used = [i for i, b in enumerate(buckets) if b.count > 0]
    if not used:
        return _empty_svg("no requests were answered")
    shown = buckets[used[0] : used[-1] + 1]
    top = max(b.count for b in shown)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(shown)
    parts = [_axes(x_label, y_label)]
    for index, bucket in enumerate(shown):
        height = plot_h * bucket.count / top
        x = _LEFT + index * slot
        y = _TOP + plot_h - height
        parts.append(
            f'<rect x="{x + 3:.1f}" y="{y:.1f}" width="{slot - 6:.1f}" height="{height:.1f}" '
            f'fill="{_COLORS[0]}"><title>{bucket.count} requests in '
            f"({_ms(bucket.low_s)}, {_ms(bucket.high_s)}]</title></rect>"
            f'<text x="{x + slot / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{bucket.count}'
            f'</text><text x="{x + slot / 2:.1f}" y="{_HEIGHT - _BOTTOM + 14}" '
            f'text-anchor="middle">&#8804;{_ms(bucket.high_s)}</text>'
        )
    return _svg("".join(parts))


def _ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "inf"
    return f"{seconds * 1e3:g} ms"


def _px(x: float, x_range: tuple[float, float]) -> float:
    return _LEFT + (x - x_range[0]) / (x_range[1] - x_range[0]) * (_WIDTH - _LEFT - _RIGHT)


def _py(y: float, y_range: tuple[float, float]) -> float:
    plot_h = _HEIGHT - _TOP - _BOTTOM
    return _TOP + plot_h - (y - y_range[0]) / (y_range[1] - y_range[0]) * plot_h


def _ticks(x_range: tuple[float, float], y_range: tuple[float, float], log_y: bool) -> list[str]:
    parts = []
    for i in range(5):
        x = x_range[0] + (x_range[1] - x_range[0]) * i / 4
        parts.append(
            f'<text x="{_px(x, x_range):.1f}" y="{_HEIGHT - _BOTTOM + 14}" '
            f'text-anchor="middle">{x:.0f}</text>'
        )
        y = y_range[0] + (y_range[1] - y_range[0]) * i / 4
        label = f"{10**y:.3g}" if log_y else f"{y:.3g}"
        parts.append(
            f'<text x="{_LEFT - 6}" y="{_py(y, y_range) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    return parts


def _axes(x_label: str, y_label: str) -> str:
    bottom, right = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT
    return (
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#9ca3af"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}" stroke="#9ca3af"/>'
        f'<text x="{(_LEFT + right) / 2}" y="{_HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="14" y="{(_TOP + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(_TOP + bottom) / 2})">{escape(y_label)}</text>'
    )


def _svg(body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img">{body}</svg>'
    )


def _empty_svg(message: str) -> str:
    return _svg(
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT / 2}" text-anchor="middle">{escape(message)}</text>'
    )
