"""The superposition lab's report.html: the paper's pictures as static SVG, one file, no network."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from sae.report.svg import PALETTE, fmt, tag

PHASE_COLOURS = {"ignored": "#d9d9d9", "dedicated": "#1f77b4", "superposition": "#d62728"}


def _svg(width: int, height: int, parts: list[str], title: str) -> str:
    head = tag("text", title, x=6, y=14, **{"font-size": 12, "font-weight": "bold"})
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{head}{"".join(parts)}</svg>'
    )


def directions_svg(result: dict[str, Any]) -> str:
    pictures = []
    n = result["n"]
    for sparsity, w, represented in zip(
        result["sparsity"], result["W"], result["represented"], strict=True
    ):
        size, centre, scale = 150, 80, 55
        parts = [tag("circle", cx=centre, cy=centre, r=scale, fill="none", stroke="#ccc")]
        for i in range(n):
            x, y = w[0][i], w[1][i]
            end_x, end_y = centre + scale * x, centre - scale * y
            shade = 0.25 + 0.75 * (0.9**i)  # the more important, the darker
            colour = f"rgba(31,119,180,{shade:.2f})"
            parts.append(tag("line", x1=centre, y1=centre, x2=f"{end_x:.1f}", y2=f"{end_y:.1f}",
                             stroke=colour, **{"stroke-width": 2}))  # fmt: skip
            parts.append(tag("circle", cx=f"{end_x:.1f}", cy=f"{end_y:.1f}", r=3, fill=colour))
        parts.append(tag("text", f"{represented} of {n} represented", x=6, y=size + 6,
                         **{"font-size": 11}))  # fmt: skip
        pictures.append(_svg(size + 10, size + 12, parts, f"1 - S = {fmt(1 - sparsity)}"))
    return "".join(pictures)


def phase_svg(result: dict[str, Any]) -> str:
    """The trained diagram and the expected one (lowest-loss candidate), side by side."""
    restarts = result.get("restarts", 1)
    trained = f"trained: best of {restarts} restart{'s' if restarts > 1 else ''} per cell"
    return _phase_grid(result, result["phase"], trained) + _phase_grid(
        result, result["expected_phase"], "expected: lowest exact loss of the 3 solutions"
    )


def _phase_grid(result: dict[str, Any], phases: list[list[str]], title: str) -> str:
    importances, densities = result["importance"], result["density"]
    cell, left, top = 34, 70, 26
    width = max(left + cell * len(importances) + 10, 8 * len(title))
    height = top + cell * len(densities) + 40
    parts = []
    for row, density in enumerate(densities):
        y = top + row * cell
        parts.append(tag("text", fmt(density), x=left - 6, y=y + cell / 2 + 4,
                         **{"text-anchor": "end", "font-size": 10}))  # fmt: skip
        for col, phase in enumerate(phases[row]):
            parts.append(tag("rect", x=left + col * cell, y=y, width=cell - 1, height=cell - 1,
                             fill=PHASE_COLOURS[phase]))  # fmt: skip
    for col, importance in enumerate(importances):
        parts.append(tag("text", fmt(importance), x=left + col * cell + cell / 2,
                         y=top + cell * len(densities) + 12,
                         **{"text-anchor": "middle", "font-size": 10}))  # fmt: skip
    parts.append(tag("text", "relative importance of the extra feature →", x=left,
                     y=height - 8, **{"font-size": 11}))  # fmt: skip
    parts.append(tag("text", "1 - S", x=4, y=top + 12, **{"font-size": 11}))
    return _svg(width, height, parts, title)


def dimensionality_svg(result: dict[str, Any]) -> str:
    width, height, left, right, top, bottom = 480, 280, 50, 440, 26, 240
    densities = result["density"]
    xs = [math.log10(1 / d) for d in densities]
    x_low, x_high = min(xs), max(xs) or 1.0

    def px(x: float) -> float:
        return left + (x - x_low) / max(x_high - x_low, 1e-9) * (right - left)

    def py(y: float) -> float:
        return bottom - min(max(y, 0.0), 1.1) / 1.1 * (bottom - top)

    parts = [tag("rect", x=left, y=top, width=right - left, height=bottom - top,
                 fill="none", stroke="#999")]  # fmt: skip
    tolerance = result["sticky_tolerance"]
    for value, label in zip(result["sticky"], result["sticky_labels"], strict=True):
        parts.append(tag("line", x1=left, x2=right, y1=f"{py(value):.1f}", y2=f"{py(value):.1f}",
                         stroke="#bbb", **{"stroke-dasharray": "3 3"}))  # fmt: skip
        # 3/8 sits just under 2/5: its label goes to the right so the two stay readable
        x, anchor = (right + 4, "start") if value == 3 / 8 else (left - 4, "end")
        parts.append(tag("text", label, x=x, y=py(value) + 4,
                         **{"text-anchor": anchor, "font-size": 10}))  # fmt: skip
    for x, dims in zip(xs, result["feature_dimensionality"], strict=True):
        for d in dims:
            near = any(abs(d - v) <= tolerance for v in result["sticky"])
            colour = "rgba(31,119,180,0.6)" if near else "rgba(127,127,127,0.35)"
            parts.append(tag("circle", cx=f"{px(x):.1f}", cy=f"{py(d):.1f}", r=2, fill=colour))
    line = " ".join(
        f"{px(x):.1f},{py(v):.1f}"
        for x, v in zip(xs, result["dimensions_per_feature"], strict=True)
    )
    parts.append(tag("polyline", points=line, fill="none", stroke=PALETTE[1],
                     **{"stroke-width": 2}))  # fmt: skip
    for x, density in zip(xs, densities, strict=True):
        parts.append(tag("text", fmt(1 / density, 2), x=px(x), y=bottom + 14,
                         **{"text-anchor": "middle", "font-size": 9}))  # fmt: skip
    parts.append(tag("text", "1 / (1 - S)  (log scale)", x=left, y=height - 8,
                     **{"font-size": 11}))  # fmt: skip
    title = (
        f"n = {result['n']} in m = {result['m']}: D_i (dots; blue near a sticky fraction), "
        "m / ||W||² (red)"
    )
    return _svg(width, height, parts, title)


def recovery_svg(result: dict[str, Any]) -> str:
    matrix = result["cos_matrix"]
    cell, left, top = 12, 10, 24
    columns = len(matrix[0]) if matrix else 0
    width, height = left + cell * columns + 20, top + cell * len(matrix) + 20
    parts = []
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            parts.append(tag("rect", x=left + j * cell, y=top + i * cell, width=cell - 1,
                             height=cell - 1, fill=f"rgba(214,39,40,{value:.3f})"))  # fmt: skip
    return _svg(width, height, parts, "|cos|: matched SAE latents (rows) × W's columns")


EXPLAIN = {
    "directions": "W's columns (one arrow per feature, darker = more important) of models "
    "trained at rising sparsity S. Dense features: the m = 2 most important get orthogonal "
    "directions, the rest are dropped; sparse: more features share the plane (antipodal "
    "pairs, then a pentagon).",
    "phase": "n = 2 features in m = 1 dimension. For each relative importance of the extra "
    "feature and feature density 1 - S: grey, the extra feature is ignored; blue, it takes the "
    "one dimension alone; red, the two share it in superposition (antipodal). Superposition "
    "appears only when features are sparse. Left: each cell keeps the lowest-loss of several "
    "toy models trained from random starts (as the paper does). Right: the reference, the "
    "lowest exact expected loss among the paper's three solutions (each with its lengths and "
    "biases optimised).",
    "dimensionality": "D_i = ||W_i||² / Σ_j (Ŵ_i·W_j)² is the share of a dimension feature i "
    "gets. As features get sparser the model spends fewer dimensions per feature (red line "
    "below 1) and D_i sticks at fractions (dashed): 3/4 (tetrahedra), 2/3 (triangles), 1/2 "
    "(digons: antipodal pairs), 2/5 (pentagons), 3/8 (square antiprisms), 1/3 (hexagons).",
    "recovery": "An SAE trained by this library on the hidden layer h = W x of a toy model, "
    "its latents matched one-to-one to the represented columns of W by |cos| (Hungarian).",
}


def render_lab(results: dict[str, Any]) -> str:
    directions, phase = results["directions"], results["phase_diagram"]
    dims, recovery = results["dimensionality"], results["sae_recovery"]
    near = ", ".join(
        f"1-S={fmt(d)}: {fmt(f)}"
        for d, f in zip(dims["density"], dims["fraction_near_sticky"], strict=True)
    )
    sticky = (
        f"<p>Represented features within {fmt(dims['sticky_tolerance'])} of a sticky fraction, "
        f"pooled over the sparse settings (1 - S ≤ 0.5): {fmt(dims['sticky_share_sparse'])}; "
        f"over those whose models spend at least 0.3 dims per feature, where the fractions' "
        f"polytopes fit: {fmt(dims['sticky_share_named_range'])} (an even spread over [0, 1] "
        f"would put {fmt(dims['sticky_share_chance'])} there). Per setting: {escape(near)}."
        "</p>"
    )
    sections = [
        ("Feature directions, n = 5 in m = 2", EXPLAIN["directions"], directions_svg(directions)),
        ("Phase diagram of one extra feature", EXPLAIN["phase"]
         + f" Cells in the expected phase: {fmt(phase['agreement'])}.", phase_svg(phase)),
        ("Feature dimensionality against sparsity", EXPLAIN["dimensionality"],
         dimensionality_svg(dims) + sticky),
        ("An SAE on the hidden layer", EXPLAIN["recovery"]
         + f" mcc {fmt(recovery['mcc'])}, frac_recovered_90 {fmt(recovery['frac_recovered_90'])}"
         f", {recovery['represented']} of {recovery['n_features']} features represented in "
         f"{recovery['d_hidden']} dims, SAE width {recovery['d_sae']}.",
         recovery_svg(recovery)),
    ]  # fmt: skip
    body = "".join(
        f"<section><h2>{escape(title)}</h2><p>{escape(text)}</p><div>{svg}</div></section>"
        for title, text, svg in sections
    )
    quick = " (quick settings)" if results.get("quick") else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Superposition lab</title><style>body{font-family:sans-serif;max-width:1000px;"
        "margin:1em auto}svg{margin:4px;vertical-align:top}</style></head><body>"
        f"<h1>Toy Models of Superposition, reproduced{quick}</h1>{body}</body></html>\n"
    )
