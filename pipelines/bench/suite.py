"""`sae bench suite`: the ground-truth suite, every case on the library's defaults.

Each case in configs/suite/ names only a data source, the SAE's width, `k` (the true L0) and a
modest sample budget; the architecture comes from --archs and everything else is a default,
so the suite measures the defaults, not per-case recipes. For every case and architecture:

- ours: `sae toy`'s train-and-evaluate;
- saelens: `sae_lens.synthetic.training.train_toy_sae` with its documented defaults (batch
  1024, lr 3e-4, constant schedule) on the same source and the same number of samples;
- oracle: ours again, but with decoder and encoder started at the true dictionary, as
  `sae_lens.synthetic.init_sae_to_match_feature_dict` does. Where even the oracle drifts from
  the true features, the loss prefers another dictionary: judge that case against the oracle.

All three are scored by the same code on the same fresh rows. The JSON is
{"rows": [...], "settings": {case: resolved config}, "summary": [...]}.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipelines.bench.curves import curves_html
from pipelines.bench.toy import SAELENS_DEFAULT_LR, train_saelens
from pipelines.train_and_evaluate import (
    build_ground_truth,
    ground_truth_metrics,
    train_and_evaluate,
)
from sae.config import Config, load_config, to_dict
from sae.errors import ConfigError
from sae.evaluation.ground_truth import cosines, mcc
from sae.models import SparseAutoencoder, build_sae
from sae.sources.base import GroundTruthSource
from sae.tables import format_table
from sae.training.trainer import Trainer

SUITE_DIR = Path(__file__).resolve().parents[2] / "configs" / "suite"
# A representative third for --quick: superposition 16x, Zipfian + correlation, a narrow and a
# wide dictionary, a hierarchy, a trained toy model.
QUICK = (
    "s03_const_16x", "s05_zipf_8x_corr", "s09_width_half", "s11_width_4x",
    "s13_hier_misaligned", "s16_toy_uniform",
)  # fmt: skip
TRAINERS = ("ours", "saelens", "oracle")
# Suite-wide, not per case: how the results are measured, not how the SAE is trained.
MEASUREMENT = (
    "logging.wandb=false", "logging.progress=false", "train.checkpoint_every_steps=0",
    "eval.samples=50000",
)  # fmt: skip
SAELENS_BATCH = 1024  # train_toy_sae's documented default batch size
COLUMNS = (
    "case", "trainer", "arch", "mcc", "f1", "uniqueness", "dead_fraction",
    "explained_variance", "l0", "true_l0", "seconds",
)  # fmt: skip
# Where the mcc curve is read, as fractions of the run: enough points to tell a case that is
# still climbing at its budget (sample-limited) from one that has levelled off (objective- or
# optimisation-limited), at a cost of one Hungarian matching each.
CURVE_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
SUMMARY_COLUMNS = (
    "trainer", "arch", "cases", "mean_mcc", "worst_mcc", "mean_f1", "worst_f1",
    "hier_mean_f1", "max_dead_fraction",
)  # fmt: skip


def case_paths(quick: bool, names: Sequence[str] | None = None) -> list[Path]:
    paths = sorted(SUITE_DIR.glob("*.yaml"))
    wanted = set(names) if names else (set(QUICK) if quick else None)
    if wanted is not None:
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise ConfigError(f"no suite case named {', '.join(sorted(unknown))}")
        paths = [p for p in paths if p.stem in wanted]
    return paths


def case_config(path: Path, arch: str, overrides: Sequence[str] = ()) -> Config:
    """The case on the defaults: its source, width, k and samples, the chosen architecture."""
    # --set sae.arch leaves out the case's keys the architecture does not take (matryoshka's
    # prefixes), as sae.config's architecture switch does for any config
    return load_config(path, [*MEASUREMENT, f"sae.arch={arch}", *overrides])


@torch.no_grad()
def init_to_truth(sae: SparseAutoencoder, truth: Tensor) -> None:
    """init_sae_to_match_feature_dict: the first min(d_sae, n) latents take the true unit
    directions as decoder rows and encoder columns (the rest keep their random start)."""
    directions = truth / truth.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    n = min(sae.d_sae, directions.shape[0])
    scale = 1.0 if sae.unit_norm_decoder else float(sae.W_dec.norm(dim=-1).mean())
    sae.W_dec[:n] = directions[:n] * scale
    sae.W_enc[:, :n] = directions[:n].T


def run_case(
    path: Path, arch: str, trainers: Sequence[str], overrides: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = case_config(path, arch, overrides)
    source = build_ground_truth(cfg)
    hierarchical = cfg.data.synthetic is not None and cfg.data.synthetic.hierarchy is not None
    rows = []
    for trainer in trainers:
        started = time.perf_counter()
        metrics, seconds = _train(trainer, cfg, source)
        rows.append({
            "case": path.stem,
            "trainer": trainer,
            "arch": arch,
            "hierarchical": hierarchical,
            "n_features": int(source.feature_vectors.shape[0]),
            "d_sae": cfg.sae.d_sae,
            "samples": cfg.train.samples,
            **{k: metrics[k] for k in ("mcc", "f1", "uniqueness", "explained_variance", "l0")},
            "true_l0": metrics["true_l0"],
            "dead_fraction": metrics["dead_latents"] / cfg.sae.d_sae,
            "seconds": seconds,
            "wall_seconds": time.perf_counter() - started,
            **({"mcc_curve": metrics["mcc_curve"]} if "mcc_curve" in metrics else {}),
        })  # fmt: skip
    return rows, to_dict(cfg)


def _train(trainer: str, cfg: Config, source: GroundTruthSource) -> tuple[dict[str, Any], float]:
    """(ground-truth metrics, training seconds) of one trainer on the case."""
    if trainer == "saelens":
        theirs = cfg.model_copy(deep=True)
        theirs.train.batch_size = SAELENS_BATCH
        sae, _, seconds = train_saelens(
            theirs, source, math.inf, cfg.train.samples, SAELENS_DEFAULT_LR
        )
        return ground_truth_metrics(cfg, sae, source), seconds
    sae = None
    if trainer == "oracle":
        sae = build_sae(cfg.sae, source.d_in, cfg.seed)
        init_to_truth(sae, source.feature_vectors.float())
    curve = MccCurve(source.feature_vectors.float())
    with tempfile.TemporaryDirectory() as tmp:
        result = train_and_evaluate(cfg, source, Path(tmp), sae=sae, on_step=curve)
    return {**result, "mcc_curve": curve.points}, result["seconds"]


class MccCurve:
    """Samples seen against mcc during training, at CURVE_FRACTIONS of the run: the "samples
    vs mcc" curve that says whether a case would gain from a larger budget."""

    def __init__(self, truth: Tensor):
        self.truth = truth
        self.points: list[dict[str, float]] = []

    def __call__(self, trainer: Trainer) -> None:
        total = trainer.total_steps
        if trainer.step not in {max(1, round(f * total)) for f in CURVE_FRACTIONS}:
            return
        with torch.no_grad():
            value = mcc(cosines(trainer.sae.W_dec.detach().float().cpu(), self.truth))
        self.points.append({"samples": trainer.step * trainer.batch_size, "mcc": value})


def curve_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per trained row: mcc at each point of its curve (samples in thousands)."""
    lines = ["mcc against samples seen (k = thousand samples):"]
    for row in rows:
        points = row.get("mcc_curve") or []
        if points:
            read = ", ".join(f"{p['samples'] / 1000:.0f}k {p['mcc']:.3f}" for p in points)
            lines.append(f"  {row['case']} {row['arch']} {row['trainer']}: {read}")
    return lines


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and worst per trainer and architecture: mcc and f1 over the cases without a
    hierarchy (the goal's split), f1 over the hierarchical ones, and the worst dead fraction
    among cases no wider than their true feature count."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["trainer"], row["arch"]), []).append(row)
    summary = []
    for (trainer, arch), group in groups.items():
        flat = [r for r in group if not r["hierarchical"]] or group
        hier = [r["f1"] for r in group if r["hierarchical"]]
        narrow = [r["dead_fraction"] for r in group if r["d_sae"] <= r["n_features"]]
        summary.append({
            "trainer": trainer,
            "arch": arch,
            "cases": len(group),
            "mean_mcc": sum(r["mcc"] for r in flat) / len(flat),
            "worst_mcc": min(r["mcc"] for r in flat),
            "mean_f1": sum(r["f1"] for r in flat) / len(flat),
            "worst_f1": min(r["f1"] for r in flat),
            "hier_mean_f1": sum(hier) / len(hier) if hier else float("nan"),
            "max_dead_fraction": max(narrow) if narrow else float("nan"),
        })  # fmt: skip
    return summary


def run_suite(
    archs: Sequence[str],
    quick: bool = False,
    trainers: Sequence[str] = TRAINERS,
    cases: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    out_json: Path | None = None,
    out_curves: Path | None = None,
) -> dict[str, Any]:
    paths = case_paths(quick, cases)
    # validate every case before the first long training run
    for path in paths:
        for arch in archs:
            case_config(path, arch, overrides)
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for path in paths:
        for arch in archs:
            case_rows, settings[f"{path.stem}/{arch}"] = run_case(path, arch, trainers, overrides)
            rows += case_rows
            print(format_table(case_rows, COLUMNS), flush=True)
            if out_json is not None:  # partial results survive an interrupted suite
                _write(out_json, rows, settings)
    print()
    print(format_table(rows, COLUMNS))
    print()
    print("\n".join(curve_lines(rows)))
    summary = summarise(rows)
    print()
    print(format_table(summary, SUMMARY_COLUMNS))
    if out_json is not None:
        _write(out_json, rows, settings, summary)
    if out_curves is not None:
        out_curves.write_text(curves_html(rows))
    return {"rows": rows, "settings": settings, "summary": summary}


def _write(
    path: Path, rows: list, settings: dict, summary: list | None = None
) -> None:
    document = {"rows": rows, "settings": settings, "summary": summary or summarise(rows)}
    path.write_text(json.dumps(document, indent=2))
