"""DIR/report.html from a run's files: one self-contained page, no network.

Charts are static SVG (sae/report/svg.py); the feature browser is the JSON of
feature_browser.json embedded in the page and drawn by a small script (static/report.js),
which marks `<body data-ready="1">` when it has finished without an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from typing import Any

from sae.models.registry import shown_keys
from sae.report.evaluation import (
    absorption_section,
    language_absorption_section,
    probes_section,
)
from sae.report.explain import explain
from sae.report.svg import Series, fmt, histogram_chart, line_chart

# Training-log series worth a chart each: (title, keys, log scale).
TRAINING_CHARTS = (
    ("loss", ("loss", "mse"), True),
    ("L0 (active latents per row)", ("l0",), False),
    ("explained variance (training batch)", ("explained_variance",), False),
    ("dead latents (fraction, training window)", ("dead_fraction",), False),
)


@dataclass
class RunData:
    name: str
    metrics: dict[str, Any] | None  # DIR/metrics.json
    log: list[dict[str, Any]]  # DIR/metrics.jsonl
    browser: dict[str, Any] | None  # DIR/feature_browser.json
    recovery: dict[str, Any] | None  # DIR/recovery.json (ground-truth runs)


def _static(name: str) -> str:
    return files("sae.report").joinpath("static", name).read_text()


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return escape(str(value))
    if isinstance(value, float):
        return fmt(value)
    return escape(str(value))


def _summary(metrics: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{escape(key)}</th><td>{_cell(value)}</td>"
        f'<td class="explain">{escape(explain(key))}</td></tr>'
        for key, value in metrics.items()
        if isinstance(value, int | float | str | bool) or value is None
    ]
    return f'<table class="summary">{"".join(rows)}</table>'


def _config_line(metrics: dict[str, Any]) -> str:
    config = metrics.get("config") or {}
    sae = config.get("sae") or {}
    data = config.get("data") or {}
    source = next((k for k, v in data.items() if v), "?")
    parts = [f"source {source}"]
    lm = data.get("lm") or {}
    if lm:
        parts.append(f"model {lm.get('model')} at {', '.join(lm.get('hooks') or [])}")
    parts += [f"arch {sae.get('arch')}", f"d_sae {sae.get('d_sae')}"]
    shown = [(key, sae.get(key)) for key in shown_keys(sae.get("arch"))]
    parts += [f"{key} {value}" for key, value in shown if value is not None]
    train = config.get("train") or {}
    if train:
        parts.append(f"{train.get('samples'):,} training samples")
    return escape(" · ".join(parts))


def _dead_window(train: dict[str, Any]) -> int | None:
    """train.dead_window_samples as the run used it (None in the config follows the run)."""
    if not train:
        return None
    from pydantic import ValidationError

    from sae.config import TrainConfig
    from sae.training.schedule import dead_window

    try:
        return dead_window(TrainConfig.model_validate(train))
    except ValidationError:  # a config from another version: say nothing rather than guess
        return train.get("dead_window_samples")


def _dead_note(metrics: dict[str, Any]) -> str:
    """Training and evaluation call different latents dead; say how each counts, so that a
    dead fraction of 0.004 next to 99 of 1024 dead reads as two windows, not a contradiction."""
    config = metrics.get("config") or {}
    window = _dead_window(config.get("train") or {})
    rows = (config.get("eval") or {}).get("samples")
    if window is None or rows is None:
        return ""
    return (
        f"<p>Dead latents are counted over two windows. Training's dead fraction: latents that "
        f"have not fired in the last {window:,} training samples (train.dead_window_samples), "
        f"the ones its dead-latent remedy works on. Evaluation's dead_latents: latents that "
        f"never fired on its {rows:,} evaluation rows (eval.samples). A latent that fires "
        f"rarely is alive in the first and dead in the second when the evaluation is shorter."
        f"</p>"
    )


def _training(log: list[dict[str, Any]], metrics: dict[str, Any] | None = None) -> str:
    steps = [r.get("step", i) for i, r in enumerate(log)]
    charts = []
    for title, keys, log_y in TRAINING_CHARTS:
        series = [
            Series(key, steps, [r.get(key) for r in log])
            for key in keys
            if any(key in r for r in log)
        ]
        if series:
            charts.append(line_chart(title, series, "step", title.split(" (")[0], log_y=log_y))
    return _section("Training", "".join(charts) + _dead_note(metrics or {}), "training")


def _density(histogram: dict[str, list], metrics: dict[str, Any]) -> str:
    note = (
        f"<p>{metrics.get('dead_latents', '?')} dead latents (never fired on the evaluation "
        f"tokens, a different window from training's dead fraction: see Training) are not in "
        f"the histogram; {metrics.get('dense_latents', '?')} are dense.</p>"
    )
    chart = histogram_chart(
        "feature density (alive latents)", histogram["edges"], histogram["counts"], "log10 density"
    )
    return _section("Feature density", note + chart, "density")


def _row(cells: list[str], cell: str = "td") -> str:
    """A table row of already-escaped cells."""
    return "<tr>" + "".join(f"<{cell}>{c}</{cell}>" for c in cells) + "</tr>"


def _monosemanticity(
    table: dict[str, dict[str, Any]], mean: float | None, browsed: set[int]
) -> str:
    rows = []
    for name, d in sorted(table.items(), key=lambda item: -item[1]["f1"]):
        latent = int(d["latent"])
        link = (
            f'<a href="#latent-{latent}" class="latent-link" data-latent="{latent}">{latent}</a>'
            if latent in browsed
            else str(latent)
        )
        bar = f'<span class="bar-cell" style="width:{100 * d["f1"]:.0f}px"></span>'
        f1 = f"{bar} {fmt(d['f1'])}"
        rows.append(_row([escape(name), link, fmt(d["precision"]), fmt(d["recall"]), f1]))
    head = _row(["planted variable", "best latent", "precision", "recall", "F1"], "th")
    intro = (
        "<p>For every value of the generated language's planted variables, the single latent "
        "that detects it best (fires = nonzero) on the evaluation tokens"
        + (f"; mean F1 {fmt(mean)}" if mean is not None else "")
        + ".</p>"
    )
    return _section(
        "Monosemanticity",
        intro + f'<table class="mono">{head}{"".join(rows)}</table>',
        "monosemanticity",
    )


def _recovery(recovery: dict[str, Any]) -> str:
    series = []
    for key, name in (
        ("best_cos_per_feature", "true features"),
        ("best_cos_per_latent", "latents"),
    ):
        values = recovery.get(key) or []
        n = max(len(values) - 1, 1)
        series.append(
            Series(f"{name} ({len(values)})", [i / n for i in range(len(values))], values)
        )
    chart = line_chart(
        "best |cos| with the other side, sorted",
        series,
        "rank (fraction)",
        "|cos|",
        hlines=((0.9, "0.9"), (0.99, "0.99")),
    )
    intro = (
        "<p>For each true feature, the best |cosine| of any decoder row with it (recovered at "
        "≥ 0.9 / ≥ 0.99), and for each latent, its best match among the true features.</p>"
    )
    return _section("Recovery of the true features", intro + chart, "recovery")


def _browser(browser: dict[str, Any]) -> str:
    # "<" as its JSON escape: inside <script>, "</script" ends the block and "<!--" followed by
    # "<script" swallows the page's own script (a context token "<!--<script>" did); JSON.parse
    # reads \u003c back as "<"
    data = json.dumps(browser, separators=(",", ":")).replace("<", "\\u003c")
    promoted = browser.get("promoted_tokens")
    hook, split = escape(str(browser.get("hook"))), escape(str(browser.get("eval_split")))
    windows = escape(str(browser.get("eval_windows")))
    note = (
        f"<p>{len(browser['latents'])} latents of the SAE at <code>{hook}</code> "
        f"on {windows} held-out windows ({split}). "
        + (
            "Promoted tokens: the decoder row through the model's direct path to the logits."
            if promoted
            else "This hook has no direct linear path to the logits, so no promoted tokens."
        )
        + "</p>"
    )
    body = (
        note + '<div class="browser"><div id="latent-list" class="latent-list"></div>'
        '<div id="latent-detail" class="latent-detail"></div></div>'
        f'<script id="browser-data" type="application/json">{data}</script>'
    )
    return _section("Feature browser", body, "feature-browser")


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def render(run: RunData) -> str:
    metrics = run.metrics or {}
    sections = []
    if metrics:
        sections.append(_section("Results", _summary(metrics), "results"))
    if run.log:
        sections.append(_training(run.log, metrics))
    histogram = metrics.get("log10_density_histogram")
    if isinstance(histogram, dict) and histogram.get("counts"):
        sections.append(_density(histogram, metrics))
    if isinstance(metrics.get("monosemanticity"), dict):
        browsed = {e["latent"] for e in (run.browser or {}).get("latents", [])}
        sections.append(
            _monosemanticity(
                metrics["monosemanticity"], metrics.get("monosemanticity_mean_f1"), browsed
            )
        )
    if isinstance(metrics.get("probes"), dict):
        sections.append(probes_section(metrics["probes"], metrics))
    if isinstance(metrics.get("language_absorption"), dict):
        sections.append(language_absorption_section(metrics["language_absorption"]))
    if isinstance(metrics.get("absorption"), dict):
        sections.append(absorption_section(metrics["absorption"], metrics))
    if run.recovery:
        sections.append(_recovery(run.recovery))
    if run.browser:
        sections.append(_browser(run.browser))
    title = f"SAE report: {escape(run.name)}"
    subtitle = _config_line(metrics) if metrics else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_static('report.css')}</style></head><body>"
        f'<header><h1>{title}</h1><p class="subtitle">{subtitle}</p></header>'
        f"<main>{''.join(sections)}</main>"
        f"<script>{_static('report.js')}</script></body></html>\n"
    )
