"""Report sections for probe ceilings and absorption (sae/evaluation/probes.py, absorption.py)."""

from __future__ import annotations

from html import escape
from typing import Any

from sae.report.svg import PALETTE, fmt, tag

BARS = (
    ("single_latent_f1", "best single latent"),
    ("sparse_f1_k1", "1-sparse probe"),
    ("sparse_f1_k2", "2-sparse probe"),
    ("sparse_f1_k5", "5-sparse probe"),
    ("dense_f1", "dense probe (ceiling)"),
)


def probe_chart(per_variable: dict[str, dict[str, float]]) -> str:
    """Grouped horizontal bars: for each variable, F1 of every probe, the ceiling last."""
    bar, gap, left, width = 9, 10, 110, 300
    group = bar * len(BARS) + gap
    height = 30 + group * len(per_variable) + 18 * len(BARS)
    parts = []
    for g, (variable, row) in enumerate(per_variable.items()):
        top = 24 + g * group
        parts.append(tag("text", variable, x=left - 6, y=top + group / 2,
                         text_anchor="end", font_size=11))  # fmt: skip
        for i, (key, _) in enumerate(BARS):
            value = float(row.get(key, 0.0))
            parts.append(tag("rect", x=left, y=top + i * bar, width=f"{width * value:.1f}",
                             height=bar - 1, fill=PALETTE[i]))  # fmt: skip
            parts.append(tag("text", fmt(value), x=left + width * value + 3,
                             y=top + i * bar + bar - 1, font_size=8))  # fmt: skip
    legend_top = 30 + group * len(per_variable)
    for i, (_, label) in enumerate(BARS):
        y = legend_top + 18 * i
        parts.append(tag("rect", x=left, y=y, width=10, height=10, fill=PALETTE[i]))
        parts.append(tag("text", label, x=left + 14, y=y + 9, font_size=11))
    title = tag("text", "F1 per planted variable (test rows)", x=6, y=14, font_size=12)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{left + width + 50}" '
        f'height="{height}">{title}{"".join(parts)}</svg>'
    )


def probes_section(probes: dict[str, Any], metrics: dict[str, Any]) -> str:
    per_variable = probes.get("per_variable") or {}
    head = (
        "<tr><th>variable</th><th>single latent</th><th>k=1</th><th>k=2</th><th>k=5</th>"
        "<th>dense (ceiling)</th><th>fraction of ceiling</th><th>k=5 fraction</th></tr>"
    )
    rows = "".join(
        "<tr>" + f"<td>{escape(v)}</td>" + "".join(
            f"<td>{fmt(r[k])}</td>"
            for k in ("single_latent_f1", "sparse_f1_k1", "sparse_f1_k2", "sparse_f1_k5",
                      "dense_f1", "fraction_of_ceiling", "fraction_of_ceiling_k5")
        ) + "</tr>"
        for v, r in per_variable.items()
    )  # fmt: skip
    intro = (
        "<p>How much of what the layer linearly holds about each planted variable the latents "
        "expose. Per value of a variable (averaged per variable): the best single latent's F1; "
        "a logistic probe on the k latents whose means differ most between positive and "
        "negative rows (SAEBench's sparse probing); a logistic probe on the raw activations "
        f"(the ceiling). Probes: {probes.get('rows')} rows, F1 on {probes.get('test_rows')} "
        "held-out rows at the threshold best on the training rows. Mean fraction of the "
        f"ceiling: {fmt(metrics.get('fraction_of_ceiling_mean', 0.0))} (single latent), "
        f"{fmt(metrics.get('fraction_of_ceiling_k5_mean', 0.0))} (5-sparse).</p>"
    )
    body = intro + probe_chart(per_variable) + f'<table class="mono">{head}{rows}</table>'
    return f'<section id="probes"><h2>Probe ceilings</h2>{body}</section>'


def absorption_section(absorption: dict[str, Any], metrics: dict[str, Any]) -> str:
    head = (
        "<tr><th>parent</th><th>its latent</th><th>F1</th><th>rows with a child</th>"
        "<th>absorption</th><th>absorbed into</th><th>cos (parent)</th>"
        "<th>best child</th><th>cos (child)</th></tr>"
    )

    def cell(value: Any) -> str:
        return "–" if value is None else fmt(value) if isinstance(value, float) else str(value)

    parents = sorted(absorption.get("per_parent") or [], key=lambda p: -p["rate"])
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell(p[k]))}</td>" for k in (
            "parent", "latent", "f1", "child_rows", "rate", "absorbed_into",
            "absorber_cos_parent", "absorber_best_child", "absorber_cos_child",
        )) + "</tr>"
        for p in parents
    )  # fmt: skip
    intro = (
        "<p>Per parent feature of the hierarchy: its best latent (by F1), the share of rows "
        "with a child active on which that latent is silent, and the latent firing most "
        "often there instead. Absorption rate (mean over parents): "
        f"{fmt(metrics.get('absorption_rate', 0.0))}; pooled over rows: "
        f"{fmt(absorption.get('absorption_rate_pooled', 0.0))}.</p>"
    )
    return (
        f'<section id="absorption"><h2>Feature absorption</h2>{intro}'
        f'<table class="mono">{head}{rows}</table></section>'
    )


def language_absorption_section(absorption: dict[str, Any]) -> str:
    head = (
        "<tr><th>nested variable</th><th>its latent</th><th>F1</th><th>rows</th>"
        "<th>absorption</th><th>absorbed into</th><th>that latent's best value</th></tr>"
    )
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in (
            variable, str(r["latent"]), fmt(r["f1"]), str(r["parent_rows"]), fmt(r["rate"]),
            "–" if r["absorbed_into"] is None else str(r["absorbed_into"]),
            str(r["absorber_best_child"] or "–"),
        )) + "</tr>"
        for variable, r in (absorption.get("per_variable") or {}).items()
    )  # fmt: skip
    intro = (
        "<p>The generated language's nested variables: the parent is any value (inside "
        "brackets, in a list), the children its values. The parent's best latent, the share "
        "of parent rows it misses, and the latent firing most there instead. Mean: "
        f"{fmt(absorption.get('absorption_rate', 0.0))}.</p>"
    )
    return (
        f'<section id="language-absorption"><h2>Absorption in the generated language</h2>'
        f'{intro}<table class="mono">{head}{rows}</table></section>'
    )
