"""Feature-browser data: what a sample of latents respond to and what they write.

For each browsed latent, from a second pass over the evaluation windows (hook activations
only, the model stops after the hook's block):
- the top-activating contexts, one per window (the window's peak), with the tokens around the
  peak and every shown token's activation for highlighting;
- a histogram of its nonzero activations;
- the tokens it promotes and suppresses most: its decoder row, in the model's units (the input
  scale folded out, as in the exported SAE), through the model's direct path to the logits
  (`LanguageModel.logit_effects`: W_U for residual-stream hooks, W_O then W_U for attention
  `hook_z`, W_out then W_U for MLP `hook_post`; none for other hooks, e.g. `hook_pre`).

Latents are chosen among those that fired during evaluation: first the best detectors of the
planted variables (strongest F1 first, up to half the sample), then a seeded random draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sae.config import EvalConfig
from sae.evaluation.monosemanticity import Detection, DetectorCounts
from sae.evaluation.reconstruction import ReconstructionStats
from sae.models import SparseAutoencoder
from sae.seeding import derive_seed

if TYPE_CHECKING:
    from sae.evaluation.spliced import EvalWindows
    from sae.sources.model_activations import LMSource


@dataclass
class Pick:
    latent: int
    reason: str  # "best detector of <indicator>" or "random"
    label: tuple[str, Detection] | None  # the indicator it detects best


def choose_latents(
    fire_counts: Tensor,
    detections: dict[str, Detection],
    n: int,
    seed: int,
    detectors: DetectorCounts | None = None,
) -> list[Pick]:
    alive = fire_counts > 0
    chosen: dict[int, str] = {}
    for name, detection in sorted(detections.items(), key=lambda item: -item[1].f1):
        if len(chosen) >= (n + 1) // 2:
            break
        if alive[detection.latent] and detection.latent not in chosen:
            chosen[detection.latent] = f"best detector of {name}"
    generator = torch.Generator().manual_seed(derive_seed(seed, "browser"))
    candidates = alive.nonzero().flatten()
    for latent in candidates[torch.randperm(len(candidates), generator=generator)].tolist():
        if len(chosen) >= n:
            break
        chosen.setdefault(latent, "random")
    return [
        Pick(latent, reason, detectors.best_indicator(latent) if detectors else None)
        for latent, reason in chosen.items()
    ]


@torch.no_grad()
def latent_activations(
    sae: SparseAutoencoder,
    source: LMSource,
    hook: str,
    windows: EvalWindows,
    latents: list[int],
    input_scale: float,
) -> Tensor:
    """[N, T, len(latents)] activations of the chosen latents on every window (0 off-row)."""
    device = sae.W_dec.device
    index = torch.tensor(latents, device=device)
    out = torch.zeros(*windows.tokens.shape, len(latents))
    step = source.cfg.batch_sequences
    for start in windows.batches(step):
        tokens, rows = windows.tokens[start : start + step], windows.rows[start : start + step]
        x = source.model.activations(tokens, [hook])[hook].to(device, torch.float32)
        acts = sae.encode(x[rows.to(device)] * input_scale)[:, index].cpu()
        out[start : start + step][rows] = acts
    return out


def _round(value: float) -> float:
    return float(f"{value:.4g}")


class _TokenText:
    """Readable text of tokens in context: each token's piece is read off the decoded prefix,
    so byte-level BPE spaces (and word-level tokenizers' joins) come out as the text has them."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def one(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def pieces(self, tokens: list[int]) -> list[str]:
        out, before = [], ""
        for i in range(len(tokens)):
            text = self.tokenizer.decode(tokens[: i + 1])
            out.append(text[len(before) :] if text.startswith(before) else self.one(tokens[i]))
            before = text
        return out


def _top_contexts(
    acts: Tensor, windows: EvalWindows, cfg: EvalConfig, text: _TokenText
) -> list[dict[str, Any]]:
    peaks, positions = acts.max(dim=1)  # per window
    count = min(cfg.browser_contexts, int((peaks > 0).sum()))
    contexts = []
    for window in peaks.topk(count).indices.tolist():
        peak = int(positions[window])
        end_valid = int(windows.valid[window].sum())
        start = max(0, peak - cfg.browser_tokens_before)
        stop = min(end_valid, peak + cfg.browser_tokens_after + 1)
        tokens = windows.tokens[window, start:stop].tolist()
        contexts.append(
            {
                "window": window,
                "position": peak,
                "peak": peak - start,
                "tokens": text.pieces(tokens),
                "acts": [_round(a) for a in acts[window, start:stop].tolist()],
            }
        )
    return contexts


def _histogram(values: Tensor, bins: int) -> dict[str, list]:
    if values.numel() == 0:
        return {"edges": [], "counts": []}
    edges = torch.linspace(0.0, float(values.max()), bins + 1, dtype=torch.float64)
    counts = torch.histogram(values.double(), bins=edges).hist
    return {"edges": [_round(e) for e in edges.tolist()], "counts": [int(c) for c in counts]}


def _token_ranking(effects: Tensor, k: int, text: _TokenText, largest: bool) -> list[list]:
    """[[token text, logit effect], ...]: the k most promoted (largest) or suppressed tokens."""
    values, tokens = effects.topk(min(k, effects.numel()), largest=largest)
    return [[text.one(t), _round(v)] for t, v in zip(tokens.tolist(), values.tolist(), strict=True)]


def build_feature_browser(
    sae: SparseAutoencoder,
    source: LMSource,
    hook: str,
    windows: EvalWindows,
    picks: list[Pick],
    cfg: EvalConfig,
    input_scale: float,
    reconstruction: ReconstructionStats,
) -> dict[str, Any]:
    latents = [p.latent for p in picks]
    acts = latent_activations(sae, source, hook, windows, latents, input_scale)
    directions = sae.W_dec.detach()[latents].float() / input_scale
    effects = source.model.logit_effects(hook, directions)
    density = reconstruction.density()
    text = _TokenText(source.model.tokenizer)
    entries = []
    for j, pick in enumerate(picks):
        latent_acts = acts[..., j]
        entry: dict[str, Any] = {
            "latent": pick.latent,
            "reason": pick.reason,
            "density": _round(float(density[pick.latent])),
            "max_activation": _round(float(latent_acts.max())),
            "label": None,
            "contexts": _top_contexts(latent_acts, windows, cfg, text),
            "histogram": _histogram(latent_acts[latent_acts > 0], cfg.activation_bins),
            "promoted": None,
            "suppressed": None,
        }
        if pick.label is not None:
            name, detection = pick.label
            entry["label"] = {"indicator": name, **detection.to_dict()}
        if effects is not None:
            entry["promoted"] = _token_ranking(effects[j], cfg.promoted_tokens, text, True)
            entry["suppressed"] = _token_ranking(effects[j], cfg.promoted_tokens, text, False)
        entries.append(entry)
    return {
        "model": source.model.name,
        "hook": hook,
        "eval_split": windows.split,
        "eval_windows": int(windows.tokens.shape[0]),
        "promoted_tokens": effects is not None,  # False: the hook has no direct path to logits
        "latents": entries,
    }
