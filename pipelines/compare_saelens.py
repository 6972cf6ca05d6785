"""`sae bench toy CONFIG`: our trainer against SAELens's, same data, same wall-clock budget.

1. Ours: `sae toy`'s train-and-evaluate on the config; its training time T is the budget.
2. SAELens: `sae_lens.synthetic.training.train_toy_sae` with SAELens's documented defaults for
   the same architecture and width (we pass only d_in, d_sae and the sparsity target k where
   the architecture has one), drawing from the same ground-truth generator, stopped when its
   training time reaches T. Its trained SAE goes through SAELens's own inference export.
3. Both are evaluated by the same metric code on the same fresh samples; rows print side by side.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_training_class
from sae_lens.synthetic import FeatureDictionary
from sae_lens.synthetic.training import train_toy_sae
from torch import nn

from pipelines.toy import build_ground_truth, ground_truth_metrics, train_and_evaluate
from sae.config import Config
from sae.models.matryoshka import default_widths
from sae.seeding import derive_seed
from sae.sources.base import GroundTruthSource
from sae.sources.synthetic import SyntheticSource
from sae.sources.toy import ToySuperposition
from sae.tables import format_table
from sae.training.schedule import batch_size

SAELENS_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "matryoshka": "matryoshka_batchtopk",
}
COLUMNS = (
    "trainer", "arch", "samples", "seconds", "samples_per_second", "mcc", "f1", "precision",
    "recall", "frac_recovered_90", "explained_variance", "l0", "dead_latents",
)


class _BudgetSpent(Exception):
    pass


def saelens_training_sae(cfg: Config, d_in: int) -> Any:
    arch = SAELENS_ARCH[cfg.sae.arch]
    sae_class, cfg_class = get_sae_training_class(arch)
    kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": cfg.sae.d_sae}
    if cfg.sae.arch in ("topk", "batchtopk", "matryoshka"):
        # SAELens's TopK takes an int (its batch variants a float), as our topk model does
        kwargs["k"] = int(cfg.sae.k) if cfg.sae.arch == "topk" else cfg.sae.k
    if cfg.sae.arch == "matryoshka":
        kwargs["matryoshka_widths"] = list(cfg.sae.matryoshka_widths or default_widths(cfg.sae.d_sae))
    torch.manual_seed(derive_seed(cfg.seed, "saelens-init"))
    return sae_class(cfg_class(**kwargs))


class _ToyFeatures(nn.Module):
    """Our toy model of superposition's feature sampler in sae_lens's generator shape."""

    def __init__(self, source: ToySuperposition, seed: int):
        super().__init__()
        self.source = source
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.source.sample_features(batch_size, self.generator)


def saelens_data(source: GroundTruthSource, seed: int) -> tuple[Any, Any]:
    """(feature_dict, activations_generator) as train_toy_sae wants them, for the same source."""
    if isinstance(source, SyntheticSource):
        return source.model.feature_dict, source.model.activation_generator
    assert isinstance(source, ToySuperposition)
    n, m = source.W.shape[1], source.W.shape[0]
    feature_dict = FeatureDictionary(n, m, bias=False, initializer=None)
    with torch.no_grad():
        feature_dict.feature_vectors.copy_(source.W.T)  # h = x @ W^T, exactly the toy model
    return feature_dict, _ToyFeatures(source, seed)


def train_saelens(cfg: Config, source: GroundTruthSource, budget: float, max_samples: int) -> tuple[Any, int, float]:
    sae = saelens_training_sae(cfg, source.d_in)
    feature_dict, generator = saelens_data(source, derive_seed(cfg.seed, "saelens-data"))
    started = time.perf_counter()
    seen = {"samples": 0}

    def stop_when_spent(trainer: Any) -> None:
        seen["samples"] = trainer.n_training_samples
        if time.perf_counter() - started >= budget:
            raise _BudgetSpent

    torch.manual_seed(derive_seed(cfg.seed, "saelens-data"))
    try:
        train_toy_sae(
            sae,
            feature_dict,
            generator,
            training_samples=max_samples,
            batch_size=batch_size(cfg.train),
            n_snapshots=4000,  # budget checks, evenly spaced over max_samples
            snapshot_fn=stop_when_spent,
        )
        seen["samples"] = max_samples
    except _BudgetSpent:
        pass
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)  # what a SAELens user gets (batchtopk -> jumprelu)
        inference = SAE.load_from_disk(tmp)
    return inference, seen["samples"], seconds


def run_compare(cfg: Config, out_json: Path | None = None) -> list[dict[str, Any]]:
    source = build_ground_truth(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ours = train_and_evaluate(cfg, source, Path(tmp))
    budget = ours["seconds"]
    # SAELens may be faster or slower than us; give it room for 8x our samples, stop on time.
    theirs_sae, samples, seconds = train_saelens(cfg, source, budget, ours["samples"] * 8)
    theirs = ground_truth_metrics(cfg, theirs_sae, source)
    rows = [
        {"trainer": "sae (ours)", **_pick(ours)},
        {
            "trainer": f"sae_lens {SAELENS_ARCH[cfg.sae.arch]}",
            **theirs,
            "arch": cfg.sae.arch,
            "samples": samples,
            "seconds": seconds,
            "samples_per_second": samples / seconds if seconds else 0.0,
        },
    ]
    print(f"same data, same wall-clock budget ({budget:.1f} s of training each)")
    print(format_table(rows, COLUMNS))
    if out_json is not None:
        out_json.write_text(json.dumps(rows, indent=2))
    return rows


def _pick(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("config", "source")}
