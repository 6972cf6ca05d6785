"""`sae bench toy CONFIG`: our trainer against SAELens's, same data, same wall-clock budget,
each at its own default learning rate and at the best of the same learning-rate sweep.

1. Ours: `sae toy`'s train-and-evaluate on the config; its training time T (at train.lr) is
   every run's budget.
2. SAELens: `sae_lens.synthetic.training.train_toy_sae` with SAELens's documented defaults for
   the same architecture and width (we pass only d_in, d_sae and the sparsity target k where
   the architecture has one), drawing from the same ground-truth generator, stopped when its
   training time reaches T. Its trained SAE goes through SAELens's own inference export.
3. Like for like: a default learning rate tuned for one side (the configs' lr with our warm
   start) against the other side's default (train_toy_sae's 3e-4) favours the first, so both
   sides also train at every rate of one sweep (`--lrs`), and each side's best by mcc is shown.
4. sparsify (with the `bench` extra, topk only): its SparseCoder and training step
   (pipelines/bench/sparsify.py) on batches from the same generator, same budget, at its own
   default rate and the same sweep.
5. All runs are evaluated by the same metric code on the same fresh samples.
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

from pipelines.bench.sparsify import available as sparsify_available
from pipelines.bench.sparsify import default_lr as sparsify_default_lr
from pipelines.train_and_evaluate import (
    build_ground_truth,
    ground_truth_metrics,
    train_and_evaluate,
)
from sae.config import Config, to_dict, validate_tree
from sae.seeding import derive_seed
from sae.sources.base import GroundTruthSource
from sae.sources.synthetic import SyntheticSource
from sae.sources.toy import ToySuperposition
from sae.tables import format_table
from sae.training.schedule import batch_size, learning_rate

SAELENS_DEFAULT_LR = 3e-4  # train_toy_sae's default
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
COLUMNS = (
    "trainer", "setting", "lr", "arch", "samples", "seconds", "samples_per_second", "mcc", "f1", "precision",
    "recall", "frac_recovered_90", "explained_variance", "l0", "dead_latents",
)


class _BudgetSpent(Exception):
    pass


def saelens_training_sae(cfg: Config, d_in: int) -> Any:
    """SAELens's training SAE for our architecture (each declares its counterpart), given only
    d_in, d_sae and the keys that architecture passes on (k, matryoshka widths)."""
    arch, keys = cfg.sae.saelens_training()
    sae_class, cfg_class = get_sae_training_class(arch)
    torch.manual_seed(derive_seed(cfg.seed, "saelens-init"))
    return sae_class(cfg_class(d_in=d_in, d_sae=cfg.sae.d_sae, **keys))


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


def train_saelens(
    cfg: Config, source: GroundTruthSource, budget: float, max_samples: int, lr: float
) -> tuple[Any, int, float]:
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
            lr=lr,
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


def _ours(cfg: Config, source: GroundTruthSource, lr: float) -> dict[str, Any]:
    tree = to_dict(cfg)
    tree["train"]["lr"] = lr
    with tempfile.TemporaryDirectory() as tmp:
        result = train_and_evaluate(validate_tree(tree), source, Path(tmp))
    return {"trainer": "sae (ours)", "lr": lr, **_pick(result)}


def _theirs(
    cfg: Config, source: GroundTruthSource, lr: float, budget: float, max_samples: int
) -> dict[str, Any]:
    sae, samples, seconds = train_saelens(cfg, source, budget, max_samples, lr)
    return {
        "trainer": f"sae_lens {cfg.sae.saelens_training()[0]}",
        "lr": lr,
        **ground_truth_metrics(cfg, sae, source),
        "arch": cfg.sae.arch,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds else 0.0,
    }


def _sparsify(
    cfg: Config, source: GroundTruthSource, lr: float, budget: float, max_samples: int
) -> dict[str, Any]:
    from pipelines.bench.sparsify import SparsifyTopK

    torch.manual_seed(derive_seed(cfg.seed, "sparsify-init"))
    coder = SparsifyTopK(source.d_in, cfg.sae.d_sae, int(cfg.sae.k), torch.device("cpu"), lr)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "sparsify-data"))
    samples, started = 0, time.perf_counter()
    while samples < max_samples and time.perf_counter() - started < budget:
        coder.step(source.sample_with_features(batch_size(cfg.train), generator)[0])
        samples += batch_size(cfg.train)
    seconds = time.perf_counter() - started
    coder.eval()
    return {
        "trainer": "sparsify topk",
        "lr": lr,
        **ground_truth_metrics(cfg, coder, source),
        "arch": cfg.sae.arch,
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds else 0.0,
    }


def _summary_rows(runs: list[dict[str, Any]], default_lr: float) -> list[dict[str, Any]]:
    """One side's default-lr run and its best run of the sweep (by mcc)."""
    default = next(r for r in runs if r["lr"] == default_lr)
    best = max((r for r in runs if r["swept"]), key=lambda r: r["mcc"])
    return [{**default, "setting": "default lr"}, {**best, "setting": "best of sweep"}]


def run_compare(
    cfg: Config, out_json: Path | None = None, lrs: tuple[float, ...] = SWEEP_LRS
) -> list[dict[str, Any]]:
    """Every run (key `swept`: part of the sweep), then the summary table of each side's
    default-lr and best-of-sweep rows."""
    source = build_ground_truth(cfg)
    own_lr = learning_rate(cfg.train, cfg.sae.d_sae)  # the config's, or the run-following default
    ours_lrs = list(dict.fromkeys([own_lr, *lrs]))
    theirs_lrs = list(dict.fromkeys([SAELENS_DEFAULT_LR, *lrs]))
    ours = [{**_ours(cfg, source, lr), "swept": lr in lrs} for lr in ours_lrs]
    budget, max_samples = ours[0]["seconds"], ours[0]["samples"] * 8
    # SAELens may be faster or slower than us; give it room for 8x our samples, stop on time.
    theirs = [
        {**_theirs(cfg, source, lr, budget, max_samples), "swept": lr in lrs} for lr in theirs_lrs
    ]
    table = _summary_rows(ours, own_lr) + _summary_rows(theirs, SAELENS_DEFAULT_LR)
    peer: list[dict[str, Any]] = []
    if cfg.sae.arch == "topk" and sparsify_available():
        own = sparsify_default_lr(cfg.sae.d_sae)
        peer = [
            {**_sparsify(cfg, source, lr, budget, max_samples), "swept": lr in lrs}
            for lr in dict.fromkeys([own, *lrs])
        ]
        table += _summary_rows(peer, own)
    print(
        f"same data, same wall-clock budget ({budget:.1f} s of training each); "
        f"both sides swept lr over {', '.join(f'{lr:g}' for lr in lrs)}"
    )
    print(format_table(table, COLUMNS))
    runs = ours + theirs + peer
    if out_json is not None:
        out_json.write_text(json.dumps(runs, indent=2))
    return runs


def _pick(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("config", "source")}
