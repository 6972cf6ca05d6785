"""DIR/report.html: built from a run's files, self-contained, and rendered by a real headless
browser (Debian's chromium) with its script running to the end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.toy import run_toy
from sae.config import EvalConfig, LMConfig, SAEConfig, load_config
from sae.evaluation.spliced import evaluate_lm
from sae.io import atomic_write_json
from sae.models import build_sae
from sae.report import FEATURE_BROWSER, REPORT, build_report
from sae.sources.model_activations import LMSource
from tests.conftest import tiny_tree, write_config

HOOK = "blocks.1.hook_resid_post"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, as headless chromium dumps it."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / f"chromium-{page.parent.name}"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def body_attributes(dom: str) -> str:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, "no <body> in the dumped DOM"
    return match.group(1)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A language-model run directory: metrics from a real evaluation of a small SAE on the
    bundled model, a training log, and the feature browser."""
    out = tmp_path_factory.mktemp("lm-run")
    source = LMSource(LMConfig(hooks=[HOOK], context_size=64, batch_sequences=8))
    sae = build_sae(SAEConfig(arch="topk", d_sae=256, k=8), source.d_in, seed=1)
    rows = next(source.harvest_stream(batch_rows=2048, seed=1)).activations[HOOK]
    with torch.no_grad():
        sae.b_dec.copy_(rows.mean(0))
    cfg = EvalConfig(samples=512, browser_latents=5, browser_contexts=4)
    evaluation = evaluate_lm(sae, source, HOOK, cfg, seed=3)
    atomic_write_json(out / "metrics.json", {**evaluation.metrics, "arch": "topk"})
    atomic_write_json(out / FEATURE_BROWSER, evaluation.browser)
    log = [
        {
            "step": s,
            "loss": 10 / s,
            "mse": 9 / s,
            "l0": 8.0,
            "explained_variance": 1 - 1 / s,
            "dead_fraction": 0.01,
        }
        for s in range(10, 210, 10)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    build_report(out)
    return out


def test_the_report_renders_its_plots_and_feature_browser_in_chromium(
    lm_run: Path, tmp_path: Path
) -> None:
    dom = rendered_dom(lm_run / REPORT, tmp_path)
    attributes = body_attributes(dom)
    assert 'data-ready="1"' in attributes and "data-error" not in attributes
    static_charts = 4 + 1  # four training curves, the density histogram
    assert dom.count("<svg") >= static_charts + 1  # + the selected latent's histogram (script)
    assert dom.count('class="latent-item') == 5
    assert 'class="latent-item selected"' in dom  # the first latent is shown
    first = json.loads((lm_run / FEATURE_BROWSER).read_text())["latents"][0]
    assert dom.count('class="context"') == len(first["contexts"]) > 0  # drawn by the script
    assert 'class="tok peak"' in dom
    assert "Promoted tokens" in dom
    assert "Monosemanticity" in dom and "topic=music" in dom


def test_the_report_is_one_self_contained_file(lm_run: Path) -> None:
    html = (lm_run / REPORT).read_text()
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", html)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace, not a fetch
    assert len(html) < 2_000_000


def test_a_script_error_leaves_the_page_unready(lm_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(lm_run, broken)
    browser = json.loads((broken / FEATURE_BROWSER).read_text())
    browser["latents"][0]["contexts"] = None  # the script cannot iterate this
    (broken / FEATURE_BROWSER).write_text(json.dumps(browser))
    build_report(broken)
    attributes = body_attributes(rendered_dom(broken / REPORT, tmp_path))
    assert "data-ready" not in attributes and "data-error" in attributes


def test_a_toy_run_writes_a_report_with_its_recovery_curve(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 20_000
    cfg = load_config(write_config(tmp_path / "tiny.yaml", tree))
    out = tmp_path / "toy"
    run_toy(cfg, out)
    recovery = json.loads((out / "recovery.json").read_text())
    per_feature = recovery["best_cos_per_feature"]
    assert len(per_feature) == tree["data"]["synthetic"]["num_features"]
    assert per_feature == sorted(per_feature, reverse=True)
    metrics = json.loads((out / "metrics.json").read_text())
    recovered = sum(c >= 0.9 for c in per_feature) / len(per_feature)
    assert recovered == pytest.approx(metrics["frac_recovered_90"], abs=1 / len(per_feature))
    dom = rendered_dom(out / REPORT, tmp_path)
    assert 'data-ready="1"' in body_attributes(dom)
    assert 'id="recovery"' in dom and 'id="feature-browser"' not in dom


def test_sae_report_rebuilds_the_page_from_a_run_directory(lm_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(lm_run, run)
    (run / REPORT).unlink()
    result = subprocess.run(
        [sys.executable, "-m", "sae", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (run / REPORT).read_text() == (lm_run / REPORT).read_text().replace(
        lm_run.name, run.name
    )


@pytest.mark.parametrize(
    ("files", "target", "message"),
    [
        ({}, "missing", "run directory not found"),
        ({}, ".", "not a run directory (no metrics.json or metrics.jsonl)"),
        ({"metrics.json": "{oops"}, ".", "metrics.json is not readable JSON"),
        ({"metrics.json": "{}", FEATURE_BROWSER: "[]"}, ".", "not a feature-browser file"),
        ({"metrics.json": '{"monosemanticity": {"a": {"latent": 1}}}'}, ".", "expected format"),
    ],
)
def test_sae_report_names_a_bad_run_directory_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, files: dict, target: str, message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["report", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / REPORT).exists()


@pytest.mark.parametrize("log_y", [False, True])
def test_chart_ticks_stay_distinct_on_a_nearly_flat_series(log_y: bool) -> None:
    from sae.report.svg import Series, line_chart

    svg = line_chart("l0", [Series("l0", [1, 2, 3], [31.999, 32.0, 32.0])], log_y=log_y)
    labels = re.findall(r'text-anchor="end">([^<]*)</text>', svg)
    assert len(labels) >= 3 and len(set(labels)) == len(labels)


def test_a_context_token_that_opens_an_html_comment_does_not_break_the_page(
    lm_run: Path, tmp_path: Path
) -> None:
    """`<!--<script>` inside the embedded JSON once swallowed the page's own script."""
    hostile = tmp_path / "hostile"
    shutil.copytree(lm_run, hostile)
    browser = json.loads((hostile / FEATURE_BROWSER).read_text())
    context = browser["latents"][0]["contexts"][0]
    context["tokens"][0] = "<!--<script></script>"
    (hostile / FEATURE_BROWSER).write_text(json.dumps(browser))
    build_report(hostile)
    html = (hostile / REPORT).read_text()
    embedded = re.search(r'<script id="browser-data" type="application/json">(.*?)</script>', html, re.S)
    assert embedded and "<" not in embedded.group(1)
    assert json.loads(embedded.group(1)) == browser
    assert 'data-ready="1"' in body_attributes(rendered_dom(hostile / REPORT, tmp_path))
