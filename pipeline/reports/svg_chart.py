"""Small inline SVG line charts for HTML reports: no plotting library, renders in any browser."""
from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 360, 150
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 52, 10, 22, 30


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def line_chart(title: str, points: list[tuple[str, float | None]], lines: list[tuple[str, float, str]] = (),
               status: str = "passed") -> str:
    """A line over `points` (label, value); `lines` are horizontal threshold lines (name, y, css class).

    The last point is today's and is drawn in the colour of its status.
    """
    known = [v for _, v in points if v is not None]
    ys = known + [y for _, y, _ in lines]
    if not ys:
        return f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" role="img"><title>{escape(title)}</title>' \
               f'<text x="10" y="20">{escape(title)}: no data</text></svg>'
    low, high = min(ys), max(ys)
    if high == low:
        low, high = low - (abs(low) * 0.1 or 1), high + (abs(high) * 0.1 or 1)
    span = high - low
    low, high = low - span * 0.05, high + span * 0.05
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(i: int) -> float:
        return PAD_LEFT + (plot_w * i / (len(points) - 1) if len(points) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (high - v) / (high - low)

    parts = [f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text class="chart-title" x="{PAD_LEFT}" y="14">{escape(title)}</text>',
             f'<rect class="frame" x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}"/>',
             f'<text class="axis" x="{PAD_LEFT - 4}" y="{y(high) + 10:.1f}" text-anchor="end">{_fmt(high)}</text>',
             f'<text class="axis" x="{PAD_LEFT - 4}" y="{y(low):.1f}" text-anchor="end">{_fmt(low)}</text>']
    for name, value, css in lines:
        parts.append(f'<line class="threshold {css}" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" '
                     f'y1="{y(value):.1f}" y2="{y(value):.1f}"><title>{escape(name)} {_fmt(value)}</title></line>')
    path = [(x(i), y(v)) for i, (_, v) in enumerate(points) if v is not None]
    if len(path) > 1:
        parts.append('<polyline class="series" points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py in path) + '"/>')
    for i, (label, value) in enumerate(points):
        if value is None:
            continue
        css = f"point today {status}" if i == len(points) - 1 else "point"
        parts.append(f'<circle class="{css}" cx="{x(i):.1f}" cy="{y(value):.1f}" r="3.5">'
                     f'<title>{escape(label)}: {_fmt(value)}</title></circle>')
    for i, anchor in sorted({0: "start", len(points) - 1: "end"}.items()):
        parts.append(f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}">'
                     f'{escape(points[i][0][5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(title: str, values, bins: int = 30) -> str:
    """Bars of a value distribution (counts per equal-width bin)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return line_chart(title, [])
    counts, edges = np.histogram(values, bins=bins)
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    top = max(int(counts.max()), 1)
    width = plot_w / len(counts)
    parts = [f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text class="chart-title" x="{PAD_LEFT}" y="14">{escape(title)}</text>',
             f'<rect class="frame" x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}"/>',
             f'<text class="axis" x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end">{top}</text>']
    for i, count in enumerate(counts):
        h = plot_h * count / top
        parts.append(f'<rect class="bar" x="{PAD_LEFT + i * width:.1f}" y="{PAD_TOP + plot_h - h:.1f}" '
                     f'width="{max(width - 1, 0.5):.1f}" height="{h:.1f}"><title>{_fmt(edges[i])} to '
                     f'{_fmt(edges[i + 1])}: {count}</title></rect>')
    parts.append(f'<text class="axis" x="{PAD_LEFT}" y="{HEIGHT - 10}" text-anchor="start">{_fmt(edges[0])}</text>')
    parts.append(f'<text class="axis" x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 10}" text-anchor="end">'
                 f'{_fmt(edges[-1])}</text></svg>')
    return "".join(parts)
