"""A trained SAE on a language model: reconstruction, sparsity, behaviour, monosemanticity.

Everything is measured on real forward passes over held-out context windows (`eval.samples`
tokens of `eval.dataset_split`), `data.lm.batch_sequences` windows per pass. Three passes per
batch: the clean model, the model with the SAE's reconstruction spliced in at the hook, and the
model with the hook zeroed. The spliced pass also yields the reconstruction and sparsity
statistics, since its replacement function sees the clean activations.

Positions follow SAELens's `run_evals` with `exclude_special_tokens=True`:
- scored rows are the positions the source turns into training rows: real tokens, minus
  BOS/EOS/PAD when `data.lm.exclude_special_tokens` is set; padding (only in the last window of
  a finite dataset) is never scored;
- the SAE's reconstruction replaces only those rows (other positions keep the clean
  activation), while zero ablation zeroes every position;
- next-token loss at position t (predicting token t+1) counts when t is a scored row and t+1 is
  a real token (SAELens masks on the input token only; it has no padding), and is averaged
  over all such positions of all windows;
- `ce_loss_recovered` = (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean), SAELens's
  `ce_loss_score`, computed from those means;
- `kl_divergence` = mean over scored rows of KL(clean || spliced) of the next-token
  distributions (SAELens's `kl_div_with_sae`).

The SAE was trained on activations multiplied by `input_scale`; it encodes s * x and its
output is divided by s, which is what the exported (folded) SAELens weights compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sae.config import EvalConfig
from sae.errors import ConfigError, DataError
from sae.evaluation.browser import build_feature_browser, choose_latents
from sae.evaluation.monosemanticity import DetectorCounts, mean_f1
from sae.evaluation.reconstruction import ReconstructionStats, log10_density_histogram
from sae.models import SparseAutoencoder
from sae.progress import progress_iter
from sae.sources.model_activations import LMSource
from sae.sources.text import GENERATED

HELD_OUT_SPLIT = "validation"  # of the generated language: documents no training corpus holds


@dataclass
class EvalWindows:
    """The evaluation's context windows, kept whole for the feature browser's second pass."""

    tokens: Tensor  # [N, T] int64
    valid: Tensor  # [N, T] bool: real tokens (False on the last window's padding)
    rows: Tensor  # [N, T] bool: positions scored, the source's rows
    labels: dict[str, Tensor]  # variable -> [N, T] (generated language only)
    split: str

    def batches(self, size: int) -> range:
        return range(0, self.tokens.shape[0], size)


@dataclass
class LMEvaluation:
    metrics: dict[str, Any]  # the JSON keys for DIR/metrics.json
    log10_density: Tensor  # [d_sae], SAELens's sparsity.safetensors tensor `sparsity`
    browser: dict[str, Any] | None  # feature-browser data (DIR/feature_browser.json)


def eval_split(source: LMSource, cfg: EvalConfig) -> str:
    if cfg.dataset_split is not None:
        return cfg.dataset_split
    return HELD_OUT_SPLIT if source.cfg.dataset == GENERATED else source.cfg.dataset_split


def read_eval_windows(source: LMSource, cfg: EvalConfig, seed: int) -> EvalWindows:
    split = eval_split(source, cfg)
    wanted = math.ceil(cfg.samples / source.cfg.context_size)
    windows = []
    for window in source.windows(seed, split=split):
        windows.append(window)
        if len(windows) == wanted:
            break
    if not windows:
        raise DataError(f"the evaluation split '{split}' holds no tokens")
    tokens = torch.stack([w.tokens for w in windows])
    valid = torch.stack([w.valid for w in windows])
    labels = {name: torch.stack([w.labels[name] for w in windows]) for name in source.label_names}
    return EvalWindows(tokens, valid, source.row_mask(tokens, valid), labels, split)


class BehaviourStats:
    """Next-token losses of the clean, spliced and zero-ablated model, and KL(clean || spliced)."""

    def __init__(self) -> None:
        self.ce = {"clean": 0.0, "sae": 0.0, "zero_ablation": 0.0}
        self.ce_positions = 0
        self.kl_sum = 0.0
        self.kl_positions = 0

    def add_loss(self, name: str, logits: Tensor, tokens: Tensor, mask: Tensor) -> None:
        """`mask` [B, T-1]: which predictions count."""
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none"
        )
        self.ce[name] += float(losses[mask.flatten()].double().sum())

    def add_kl(self, clean_logprobs: Tensor, logits: Tensor, rows: Tensor) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # >= 0 in exact arithmetic; rounding can leave identical distributions at -1e-9
        kl = (clean_logprobs.exp() * (clean_logprobs - logprobs)).sum(-1).clamp(min=0)
        self.kl_sum += float(kl[rows].double().sum())
        self.kl_positions += int(rows.sum())

    def metrics(self) -> dict[str, float | None]:
        n = max(self.ce_positions, 1)
        clean, sae, zero = (self.ce[k] / n for k in ("clean", "sae", "zero_ablation"))
        gap = zero - clean
        return {
            "ce_loss_clean": clean,
            "ce_loss_sae": sae,
            "ce_loss_zero_ablation": zero,
            # None when zeroing the hook does not change the loss (nothing to recover)
            "ce_loss_recovered": (zero - sae) / gap if abs(gap) > 1e-12 else None,
            "kl_divergence": self.kl_sum / max(self.kl_positions, 1),
        }


def _indicator_matrix(labels: dict[str, Tensor]) -> tuple[list[str], Tensor | None]:
    if not labels:
        return [], None
    from sae.corpus.grammar import indicators

    binary = indicators(labels)
    names = list(binary)
    return names, torch.stack([binary[n] for n in names], dim=-1)  # [N, T, n_indicators]


def check_hook(sae: SparseAutoencoder, source: LMSource, hook: str) -> None:
    source.model.check_hooks([hook])
    width = source.hook_dims.get(hook) or source.model.hook_dims([hook])[hook]
    if width != sae.d_in:
        raise ConfigError(f"the SAE reads {sae.d_in} dims but hook '{hook}' has {width}")


class _Batches:
    """The three forward passes of each batch of windows, feeding the running statistics."""

    def __init__(
        self,
        sae: SparseAutoencoder,
        source: LMSource,
        hook: str,
        input_scale: float,
        names: list[str],
    ):
        self.sae, self.model, self.hook, self.scale = sae, source.model, hook, input_scale
        self.reconstruction = ReconstructionStats(sae.d_sae)
        self.behaviour = BehaviourStats()
        self.detectors = DetectorCounts(sae.d_sae, names) if names else None

    def splice(self, rows: Tensor, truth: Tensor | None) -> Callable[[Tensor], Tensor]:
        """The SAE's reconstruction at the scored rows; other positions pass through."""
        device = self.sae.W_dec.device

        def replace(activation: Tensor) -> Tensor:
            x = activation.to(device, torch.float32)
            mask = rows.to(device)
            latents = self.sae.encode(x[mask] * self.scale)  # only the rows training saw
            recon = self.sae.decode(latents) / self.scale
            self.reconstruction.add(x[mask], recon, latents)
            if self.detectors is not None and truth is not None:
                self.detectors.add(latents != 0, truth[mask.cpu()])
            return x.index_put((mask,), recon).to(activation.device)

        return replace

    def run(self, tokens: Tensor, valid: Tensor, rows: Tensor, truth: Tensor | None) -> None:
        device = self.model.device
        tokens, valid, rows = tokens.to(device), valid.to(device), rows.to(device)
        ce_mask = rows[:, :-1] & valid[:, 1:]
        behaviour = self.behaviour
        behaviour.ce_positions += int(ce_mask.sum())
        clean = self.model.logits(tokens)
        behaviour.add_loss("clean", clean, tokens, ce_mask)
        clean_logprobs = torch.log_softmax(clean.float(), dim=-1)
        del clean  # vocabulary-wide logits are large; hold at most two at a time
        spliced = self.model.logits(tokens, {self.hook: self.splice(rows, truth)})
        behaviour.add_loss("sae", spliced, tokens, ce_mask)
        behaviour.add_kl(clean_logprobs, spliced, rows)
        del spliced, clean_logprobs
        zeroed = self.model.logits(tokens, {self.hook: torch.zeros_like})
        behaviour.add_loss("zero_ablation", zeroed, tokens, ce_mask)


@torch.no_grad()
def evaluate_lm(
    sae: SparseAutoencoder,
    source: LMSource,
    hook: str,
    cfg: EvalConfig,
    seed: int,
    input_scale: float = 1.0,
    progress: bool = False,
) -> LMEvaluation:
    """Evaluate `sae` (trained on the hook's activations times `input_scale`) on held-out text.

    `seed` picks the windows (for the generated language, its corpus); pass one derived for
    evaluation so that they differ from training's.
    """
    check_hook(sae, source, hook)
    windows = read_eval_windows(source, cfg, seed)
    names, truth = _indicator_matrix(windows.labels)
    batches = _Batches(sae, source, hook, input_scale, names)
    step = source.cfg.batch_sequences
    was_training = sae.training
    sae.eval()
    try:
        batch_starts = windows.batches(step)
        for start in progress_iter(batch_starts, len(batch_starts), "evaluate", "batch", progress):
            part = slice(start, start + step)
            batches.run(
                windows.tokens[part],
                windows.valid[part],
                windows.rows[part],
                None if truth is None else truth[part],
            )
    finally:
        sae.train(was_training)
    reconstruction, detectors = batches.reconstruction, batches.detectors
    if reconstruction.rows == 0:
        raise DataError("the evaluation windows hold no positions to score")

    log10_density = reconstruction.log10_density()
    metrics: dict[str, Any] = {
        "mse": reconstruction.mse(),
        "explained_variance": reconstruction.explained_variance(),
        "cosine_similarity": reconstruction.cosine_similarity(),
        "l0": reconstruction.l0(),
        "dead_latents": reconstruction.dead_latents(),
        "dense_latents": reconstruction.dense_latents(cfg.dense_threshold),
        "log10_density_histogram": log10_density_histogram(
            log10_density, reconstruction.fire_counts > 0, cfg.density_bins
        ),
        **batches.behaviour.metrics(),
        "eval_tokens": reconstruction.rows,
        "eval_split": windows.split,
    }
    detections = detectors.best() if detectors is not None else {}
    if detectors is not None:
        metrics["monosemanticity"] = {name: d.to_dict() for name, d in detections.items()}
        metrics["monosemanticity_mean_f1"] = mean_f1(detections)

    browser = None
    picks = choose_latents(
        reconstruction.fire_counts, detections, cfg.browser_latents, seed, detectors
    )
    if picks:
        browser = build_feature_browser(
            sae, source, hook, windows, picks, cfg, input_scale, reconstruction
        )
    return LMEvaluation(metrics, log10_density, browser)
