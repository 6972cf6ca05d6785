"""SAELens folders: cfg.json + sae_weights.safetensors (+ sparsity.safetensors).

The config dict is produced by SAELens's own config classes, so the keys and defaults are
exactly what `sae_lens.SAE.load_from_disk` expects. Training-time input scaling is folded into
the weights: the exported SAE takes and returns activations in the model's own units.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sae.errors import DataError
from sae.io import publish_dir
from sae.models import SparseAutoencoder

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"
SPARSITY = "sparsity.safetensors"


def fold_input_scale(weights: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """The SAE was trained on s*x. Rewrite it to take x: pre-activations are unchanged, since
    (s x - b) W = (x - b/s)(s W); the output (z W_dec + b_dec)/s is back in input units."""
    folded = dict(weights)
    folded["W_enc"] = weights["W_enc"] * scale
    folded["W_dec"] = weights["W_dec"] / scale
    folded["b_dec"] = weights["b_dec"] / scale
    return folded


def export_weights(sae: SparseAutoencoder, input_scale: float) -> dict[str, Tensor]:
    weights = fold_input_scale(sae.saelens_weights(), input_scale)
    return {name: t.detach().float().cpu().contiguous() for name, t in weights.items()}


def saelens_cfg_dict(sae: SparseAutoencoder, metadata: dict[str, Any] | None = None) -> dict:
    # sae_lens (and transformer_lens with it) loads here, not at import: a run that finds every
    # stage done, or fails validation, should not wait for it
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    _, cfg_class = get_sae_class(sae.saelens_arch)
    cfg = cfg_class(
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        **sae.saelens_cfg(),
    )
    cfg.metadata = SAEMetadata(**(metadata or {}))
    return cfg.to_dict()


def save_saelens(
    sae: SparseAutoencoder,
    input_scale: float,
    out_dir: Path,
    metadata: dict[str, Any] | None = None,
    log10_density: Tensor | None = None,
) -> Path:
    """Write a complete SAELens folder at `out_dir`, replacing any previous one atomically."""
    out_dir = Path(out_dir)
    weights = export_weights(sae, input_scale)
    bad = [name for name, value in weights.items() if not bool(torch.isfinite(value).all())]
    if bad:  # never publish a diverged SAE, whatever path led here
        raise DataError(f"{out_dir}: the SAE's {', '.join(bad)} hold NaN or inf; not published")
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(weights, str(staging / WEIGHTS))
    (staging / CFG).write_text(json.dumps(saelens_cfg_dict(sae, metadata), indent=2))
    if log10_density is not None:
        save_file({"sparsity": log10_density.float().cpu().contiguous()}, str(staging / SPARSITY))
    publish_dir(staging, out_dir)
    return out_dir


@torch.no_grad()
def load_saelens(path: Path) -> Any:
    """Load with SAELens itself (what users will do)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path))

