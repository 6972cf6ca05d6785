"""The suite's samples-vs-mcc curves as one self-contained HTML page (inline SVG, no plotting
library): a panel per case, a line per trainer and architecture. A curve still rising at the
case's budget says more samples would help; a flat one below the goal says they would not."""

from __future__ import annotations

import html
from typing import Any

WIDTH, HEIGHT, PAD = 320, 200, 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def curves_html(rows: list[dict[str, Any]]) -> str:
    cases: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("mcc_curve"):
            cases.setdefault(row["case"], []).append(row)
    series = sorted({_label(r) for group in cases.values() for r in group})
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(series)}
    legend = " ".join(
        f'<span style="color:{colour[s]}">&#9632; {html.escape(s)}</span>' for s in series
    )
    panels = "\n".join(_panel(case, group, colour) for case, group in cases.items())
    return (
        "<!doctype html><meta charset=utf-8><title>suite: mcc against samples</title>"
        "<body style='font-family:sans-serif'><h3>mcc against samples seen</h3>"
        f"<p>{legend}</p><div style='display:flex;flex-wrap:wrap;gap:8px'>{panels}</div>"
    )


def _label(row: dict[str, Any]) -> str:
    return f"{row['arch']} {row['trainer']}"


def _panel(case: str, group: list[dict[str, Any]], colour: dict[str, str]) -> str:
    points = [p for row in group for p in row["mcc_curve"]]
    x_max = max(p["samples"] for p in points)
    y_min = min(0.5, min(p["mcc"] for p in points))

    def xy(p: dict[str, float]) -> str:
        x = PAD + (WIDTH - 2 * PAD) * p["samples"] / x_max
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (p["mcc"] - y_min) / (1 - y_min)
        return f"{x:.1f},{y:.1f}"

    lines = "".join(
        f'<polyline fill="none" stroke="{colour[_label(row)]}" stroke-width="2" '
        f'points="{" ".join(xy(p) for p in row["mcc_curve"])}"/>'
        for row in group
    )
    bottom, top = HEIGHT - PAD, PAD
    axes = (
        f'<line x1="{PAD}" y1="{bottom}" x2="{WIDTH - PAD}" y2="{bottom}" stroke="#888"/>'
        f'<line x1="{PAD}" y1="{bottom}" x2="{PAD}" y2="{top}" stroke="#888"/>'
        f'<text x="{PAD}" y="{bottom + 14}" font-size="10">0</text>'
        f'<text x="{WIDTH - PAD}" y="{bottom + 14}" font-size="10" text-anchor="end">'
        f"{x_max / 1e6:g}M samples</text>"
        f'<text x="{PAD - 4}" y="{top + 4}" font-size="10" text-anchor="end">1.0</text>'
        f'<text x="{PAD - 4}" y="{bottom}" font-size="10" text-anchor="end">{y_min:.2f}</text>'
        f'<text x="{WIDTH / 2}" y="14" font-size="12" text-anchor="middle">'
        f"{html.escape(case)}</text>"
    )
    return f'<svg width="{WIDTH}" height="{HEIGHT}">{axes}{lines}</svg>'
