"""Small static SVG charts (line charts and histograms), written as strings.

The report must be one self-contained file that opens without network access, so the charts
are drawn here rather than by a plotting library's JavaScript bundle; each is a few kilobytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from sae.tables import significant

WIDTH, HEIGHT = 440, 250
LEFT, RIGHT, TOP, BOTTOM = 58, WIDTH - 14, 28, HEIGHT - 42  # the plot area
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
LEGEND_ROW, LEGEND_CHAR_WIDTH = 16, 6.2  # px; 11px legend text is about 6 px per character
MAX_POINTS = 1500  # longer series are thinned so the page stays small


@dataclass
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float | None]


def fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 2}e}".replace("e+0", "e").replace("e-0", "e-")
    return significant(value, digits)


def tick_labels(ticks: Sequence[float], label: Callable[[float, int], str]) -> list[str]:
    """Labels with as few significant digits as keep neighbouring ticks apart."""
    for digits in range(3, 10):
        labels = [label(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def tag(name: str, text: str | None = None, **attrs: object) -> str:
    """An SVG element; `class_` and `text_anchor`-style names become `class`, `text-anchor`."""

    def value(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, float) else escape(str(v))

    opening = name + "".join(
        f' {k.rstrip("_").replace("_", "-")}="{value(v)}"' for k, v in attrs.items()
    )
    return f"<{opening}/>" if text is None else f"<{opening}>{escape(text)}</{name}>"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = []
    value = math.ceil(low / step - 1e-9) * step
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _padded(low: float, high: float, pad: float) -> tuple[float, float]:
    if high <= low:
        return low - 0.5, high + 0.5
    extra = (high - low) * pad
    return low - extra, high + extra


class _Frame:
    """Maps data coordinates into the plot area and draws the axes."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], y_pad=0.05):
        self.x0, self.x1 = _padded(*x_range, pad=0.0)
        self.y0, self.y1 = _padded(*y_range, pad=y_pad)

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (RIGHT - LEFT)

    def py(self, y: float) -> float:
        return BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (BOTTOM - TOP)

    def axes(
        self, x_label: str, y_label: str, y_tick: Callable[[float, int], str] = fmt
    ) -> list[str]:
        parts = [
            tag("rect", x=LEFT, y=TOP, width=RIGHT - LEFT, height=BOTTOM - TOP, class_="plot-area")
        ]
        y_ticks = nice_ticks(self.y0, self.y1)
        for t, text in zip(y_ticks, tick_labels(y_ticks, y_tick), strict=True):
            y = self.py(t)
            parts.append(tag("line", x1=LEFT, x2=RIGHT, y1=y, y2=y, class_="grid"))
            parts.append(tag("text", text, x=LEFT - 6, y=y + 4, class_="tick", text_anchor="end"))
        x_ticks = nice_ticks(self.x0, self.x1)
        for t, text in zip(x_ticks, tick_labels(x_ticks, fmt), strict=True):
            x = self.px(t)
            parts.append(tag("text", text, x=x, y=BOTTOM + 16, class_="tick", text_anchor="middle"))
        middle_x, middle_y = (LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2
        parts.append(
            tag(
                "text", x_label, x=middle_x, y=HEIGHT - 6, class_="axis-label", text_anchor="middle"
            )
        )
        parts.append(
            tag(
                "text", y_label, x=14, y=middle_y, class_="axis-label", text_anchor="middle",
                transform=f"rotate(-90 14 {middle_y})",
            )
        )  # fmt: skip
        return parts


def _svg(title: str, parts: list[str], css_class: str, height: int = HEIGHT) -> str:
    header = (
        f'<svg class="chart {css_class}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )
    heading = tag("text", title, x=WIDTH / 2, y=17, class_="chart-title", text_anchor="middle")
    return header + heading + "".join(parts) + "</svg>"


def _empty(title: str, css_class: str) -> str:
    note = tag("text", "no data", x=WIDTH / 2, y=HEIGHT / 2, class_="tick", text_anchor="middle")
    return _svg(title, [note], css_class)


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    stride = max(1, math.ceil(len(xs) / MAX_POINTS))
    keep = list(range(0, len(xs), stride))
    if keep and keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str = "",
    y_label: str = "",
    log_y: bool = False,
    hlines: Sequence[tuple[float, str]] = (),
) -> str:
    """One or more lines over a shared x axis; `log_y` plots log10(y) (non-positive y dropped)."""

    def transform(y: float | None) -> float | None:
        if y is None or not math.isfinite(y):
            return None
        if log_y:
            return math.log10(y) if y > 0 else None
        return float(y)

    lines = []
    for s in series:
        points = [(float(x), transform(y)) for x, y in zip(s.x, s.y, strict=True)]
        kept = [(x, y) for x, y in points if y is not None]
        lines.append((s.name, *_thin([x for x, _ in kept], [y for _, y in kept])))
    guides = [(transform(v), label) for v, label in hlines]
    guides = [(y, label) for y, label in guides if y is not None]
    all_x = [x for _, xs, _ in lines for x in xs]
    all_y = [y for _, _, ys in lines for y in ys] + [y for y, _ in guides]
    if not all_x:
        return _empty(title, "line-chart")
    frame = _Frame((min(all_x), max(all_x)), (min(all_y), max(all_y)))
    parts = frame.axes(x_label, y_label, y_tick=(lambda t, d: fmt(10**t, d)) if log_y else fmt)
    for y, label in guides:
        py = frame.py(y)
        parts.append(tag("line", x1=LEFT, x2=RIGHT, y1=py, y2=py, class_="hline"))
        parts.append(tag("text", label, x=RIGHT - 4, y=py - 4, class_="tick", text_anchor="end"))
    for i, (_, xs, ys) in enumerate(lines):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(
            f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(xs, ys, strict=True)
        )
        parts.append(tag("polyline", points=points, fill="none", stroke=color, stroke_width=1.6))
    if len(lines) == 1:
        return _svg(title, parts, "line-chart")
    legend, height = _legend([name for name, _, _ in lines])
    return _svg(title, parts + legend, "line-chart", height)


def _legend(names: Sequence[str]) -> tuple[list[str], int]:
    """Legend entries in rows below the x axis label, where no curve can run under them (inside
    the plot area they covered the curves' starts); returns the parts and the chart's height."""
    parts, x, row = [], float(LEFT), 0
    for i, name in enumerate(names):
        width = 24 + LEGEND_CHAR_WIDTH * len(name)
        if x + width > RIGHT and x > LEFT:
            x, row = float(LEFT), row + 1
        y = HEIGHT + LEGEND_ROW * row + 8
        color = PALETTE[i % len(PALETTE)]
        parts.append(tag("line", x1=x, x2=x + 16, y1=y - 4, y2=y - 4, stroke=color, stroke_width=2))
        parts.append(tag("text", name, x=x + 20, y=y, class_="legend"))
        x += width + 12
    return parts, HEIGHT + LEGEND_ROW * (row + 1)


def histogram_chart(
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    x_label: str = "",
    y_label: str = "latents",
) -> str:
    if not counts:
        return _empty(title, "histogram")
    frame = _Frame((edges[0], edges[-1]), (0, max(counts) or 1), y_pad=0.0)
    parts = frame.axes(x_label, y_label)
    for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True):
        if count == 0:
            continue
        x, y = frame.px(low), frame.py(count)
        width = max(frame.px(high) - x - 0.5, 0.5)
        tip = tag("title", f"{fmt(low)} to {fmt(high)}: {count}")
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BOTTOM - y:.1f}" '
            f'class="bar">{tip}</rect>'
        )
    return _svg(title, parts, "histogram")
