"""The tiny TransformerLens model shipped in the package, trained on the generated language.

Assets (sae/assets/tiny/, written by sae/corpus/build_tiny_model.py):
    config.json        the HookedTransformerConfig fields that define the architecture
    model.safetensors  the TransformerLens state dict (float32)
    tokenizer.json     the language's word-level tokenizer (+ tokenizer_config.json)
    training.json      how it was trained and how well it predicts the language

Loading reads only these files: no network, no pickles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from sae.errors import DataError

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "tiny"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_FILE = "training.json"

# The HookedTransformerConfig fields saved with the model; everything else takes its default.
ARCHITECTURE_FIELDS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "n_ctx",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "attn_only",
    "model_name",
)


def architecture(cfg: Any) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in ARCHITECTURE_FIELDS}


def load_bundled_model(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    path: Path = ASSETS,
) -> tuple[Any, Any]:
    """(HookedTransformer, tokenizer) of the bundled model, from the package's files only."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    try:
        fields = json.loads((path / CONFIG_FILE).read_text())
        state = load_file(str(path / WEIGHTS_FILE))
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise DataError(
            f"the bundled model's files in {path} are missing or damaged ({error})"
        ) from None
    cfg = HookedTransformerConfig(**fields, device=str(device), dtype=dtype)
    model = HookedTransformer(cfg, tokenizer)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise DataError(f"the bundled model's weights do not fit its config ({error})") from None
    return model.eval(), model.tokenizer


def save_bundled_model(model: Any, tokenizer: Any, stats: dict[str, Any], out_dir: Path) -> None:
    """Write the assets that `load_bundled_model(path=out_dir)` reads, replacing out_dir whole."""
    from safetensors.torch import save_file

    from sae.io import publish_dir

    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps(architecture(model.cfg), indent=2) + "\n")
    tokenizer.save_pretrained(str(staging))
    (staging / TRAINING_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    publish_dir(staging, out_dir)


def training_stats(path: Path = ASSETS) -> dict[str, Any]:
    return json.loads((path / TRAINING_FILE).read_text())
