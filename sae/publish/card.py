"""The model card (README.md) of a published SAE folder: what it is, how well it does, how to load it."""

from __future__ import annotations

from typing import Any

from sae.models.registry import shown_keys

# metrics.json keys shown in the card, in this order, when the evaluation measured them
CARD_METRICS = (
    ("explained_variance", "explained variance"),
    ("mse", "MSE"),
    ("cosine_similarity", "cosine similarity"),
    ("l0", "L0 (active latents per token)"),
    ("dead_latents", "dead latents"),
    ("dense_latents", "dense latents"),
    ("ce_loss_clean", "next-token CE loss, clean"),
    ("ce_loss_sae", "next-token CE loss, SAE spliced in"),
    ("ce_loss_zero_ablation", "next-token CE loss, hook zero-ablated"),
    ("ce_loss_recovered", "CE loss recovered"),
    ("kl_divergence", "KL(clean || spliced)"),
    ("monosemanticity_mean_f1", "monosemanticity (mean best-latent F1)"),
    ("mcc", "MCC with the true features"),
    ("eval_tokens", "evaluation tokens"),
)

def sae_settings(metrics: dict[str, Any]) -> dict[str, Any]:
    """This SAE's section of the run's config (its `saes:` entry, or `sae:`)."""
    config = metrics.get("config") or {}
    for entry in config.get("saes") or []:
        if entry.get("name") == metrics.get("name"):
            return entry
    return config.get("sae") or {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def model_card(folder: str, cfg: dict[str, Any], metrics: dict[str, Any], sparsity: bool) -> str:
    meta = cfg.get("metadata") or {}
    settings = sae_settings(metrics)
    arch = metrics.get("arch") or settings.get("arch") or cfg.get("architecture")
    model, hook = meta.get("model_name"), meta.get("hook_name")
    title = f"{arch} SAE" + (f" on {model}, {hook}" if model and hook else "")
    sparsity_rows = [(key, settings.get(key, cfg.get(key))) for key in shown_keys(arch)]
    about = _table(
        [
            ("architecture", f"{arch} (SAELens `{cfg.get('architecture')}`)"),
            ("model", model),
            ("hook", hook),
            ("input width (d_in)", cfg.get("d_in")),
            ("dictionary width (d_sae)", cfg.get("d_sae")),
            *sparsity_rows,
            ("training tokens", metrics.get("samples")),
            ("dataset", meta.get("dataset_path")),
            ("context size", meta.get("context_size")),
            ("BOS prepended", meta.get("prepend_bos")),
        ]
    )
    measured = [(label, metrics.get(key)) for key, label in CARD_METRICS]
    evaluation = _table(measured) if any(v is not None for _, v in measured) else "Not evaluated."
    split = metrics.get("eval_split")
    where = f" on held-out text (split `{split}`)" if split else ""
    monosemantic = metrics.get("monosemanticity")
    planted = ""
    if isinstance(monosemantic, dict) and monosemantic:
        rows = [
            f"| {name} | {d.get('latent')} | {_fmt(d.get('precision'))} | "
            f"{_fmt(d.get('recall'))} | {_fmt(d.get('f1'))} |"
            for name, d in monosemantic.items()
            if isinstance(d, dict)
        ]
        planted = (
            "\n\nBest single latent for each planted variable of the generated language:\n\n"
            "| variable | latent | precision | recall | F1 |\n|---|---|---|---|---|\n"
            + "\n".join(rows)
        )
    files = "`cfg.json`, `sae_weights.safetensors`" + (
        ", `sparsity.safetensors` (log10 feature density on the evaluation tokens)"
        if sparsity
        else ""
    )
    return f"""---
library_name: saelens
tags:
- sparse-autoencoder
- interpretability
---

# {title}

A sparse autoencoder trained with `sae` and saved in SAELens's format ({files}).
Any input scaling used in training is folded into the weights: the SAE takes and returns
activations in the model's own units.

{about}

## Evaluation

Measured{where}:

{evaluation}{planted}

## Loading

```python
from sae_lens import SAE

sae = SAE.load_from_disk("{folder}")  # this folder
latents = sae.encode(activations)     # activations at {hook or "the hook"}, [..., {cfg.get("d_in")}]
reconstruction = sae.decode(latents)
```

From the Hugging Face Hub, download the folder first:

```python
from huggingface_hub import snapshot_download
from sae_lens import SAE

path = snapshot_download("<user>/<repository>", allow_patterns=["{folder}/*"])
sae = SAE.load_from_disk(f"{{path}}/{folder}")
```
"""
