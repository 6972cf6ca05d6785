"""Resolve `data.lm.model` / `data.lm.backend` to a loaded LanguageModel.

`model` is one of:
- "bundled": the tiny model shipped in the package (TransformerLens backend only);
- a local Hugging Face checkpoint directory (config.json, weights, tokenizer files), loaded
  without network access by either backend;
- otherwise a hub name: a TransformerLens model name ("gpt2") for `transformer_lens`, or a hub
  repository id for `hf`. These download on first use, so they need network access or a
  filled Hugging Face cache.

`check_model_reference` runs before anything heavy so that a bad path or an unknown name stops
the run with one line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from sae.device import pick_device
from sae.errors import ConfigError, UserError, first_line
from sae.hooked_models.models import HFModel, LanguageModel, TransformerLensModel
from sae.paths import looks_like_local_path

if TYPE_CHECKING:
    from sae.config import LMConfig

BUNDLED = "bundled"
LOAD_ERRORS = (
    OSError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError, RuntimeError,
    SafetensorError,
)  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_checkpoint(name: str) -> Path | None:
    """The checkpoint directory `name` points to, None for a hub name; ConfigError if broken."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"data.lm.model '{name}' is not a checkpoint directory (no config.json)"
            )
        return path
    if path.exists():
        raise ConfigError(f"data.lm.model '{name}' is a file, not a checkpoint directory")
    if looks_like_local_path(name):
        raise ConfigError(f"data.lm.model directory not found: {name}")
    return None


def check_model_reference(cfg: LMConfig) -> None:
    if cfg.model == BUNDLED:
        if cfg.backend != "transformer_lens":
            raise ConfigError(
                "data.lm.model 'bundled' is a TransformerLens model; use backend transformer_lens"
            )
        return
    if local_checkpoint(cfg.model) is None and cfg.backend == "transformer_lens":
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            get_official_model_name(cfg.model)
        except ValueError:
            raise ConfigError(
                f"data.lm.model '{cfg.model}' is neither a local checkpoint directory nor a "
                "TransformerLens model name"
            ) from None


def load_language_model(cfg: LMConfig) -> LanguageModel:
    check_model_reference(cfg)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-file loading bars would bury our output
    device, dtype = pick_device(cfg.device, "data.lm.device"), DTYPES[cfg.dtype]
    if cfg.model == BUNDLED:
        from sae.corpus.bundled import load_bundled_model

        model, _ = load_bundled_model(device=device, dtype=dtype)
        return TransformerLensModel(model, BUNDLED)
    directory = local_checkpoint(cfg.model)
    try:
        if cfg.backend == "hf":
            return _load_hf(cfg.model, directory, device, dtype)
        return _load_transformer_lens(cfg.model, directory, device, dtype)
    except LOAD_ERRORS as error:
        # TransformerLens converts each architecture by hand; what it does not know surfaces as
        # whatever its converter trips on (TypeError, KeyError, NotImplementedError, ...)
        hint = "; backend hf reads any causal LM" if cfg.backend == "transformer_lens" else ""
        raise UserError(
            f"cannot load model '{cfg.model}' with backend {cfg.backend}: "
            f"{type(error).__name__}: {first_line(error)}{hint}"
        ) from None


def _load_hf(
    name: str, directory: Path | None, device: torch.device, dtype: torch.dtype
) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(directory) if directory else name
    local = directory is not None
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return HFModel(model.to(device), tokenizer, name)


def _load_transformer_lens(
    name: str, directory: Path | None, device: torch.device, dtype: torch.dtype
) -> LanguageModel:
    from transformer_lens import HookedTransformer

    if directory is None:
        # SAELens loads without weight processing, so activations match the original model.
        model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
        return TransformerLensModel(model, name)
    return TransformerLensModel(_transformer_lens_from_directory(directory, device, dtype), name)


def _transformer_lens_from_directory(directory: Path, device: torch.device, dtype: torch.dtype):
    """HookedTransformer.from_pretrained, minus its lookup of an official model name.

    TransformerLens converts a local checkpoint's config and weights itself
    (`get_pretrained_model_config` / `get_pretrained_state_dict` accept a directory), but
    `from_pretrained` first insists on a name from its list of hub models.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(directory)
    cfg = _transformer_lens_config(directory, device, dtype)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    state_dict = loading.get_pretrained_state_dict(path, cfg, hf_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.move_model_modules_to_device()
    return model


def _transformer_lens_config(directory: Path, device: torch.device, dtype: torch.dtype):
    """TransformerLens's config for a local checkpoint.

    TransformerLens reads GPT-2's context length from `n_ctx`, which transformers 5 no longer
    writes to config.json (only `n_positions`, the same number). For such a checkpoint the
    conversion reads a copy of its config with n_ctx restored: a config.json alone in a
    temporary folder of the same name, since the weights come from the loaded HF model.
    """
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoConfig

    def convert(path: Path):
        return loading.get_pretrained_model_config(str(path), fold_ln=False, device=device, dtype=dtype)

    hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    positions = getattr(hf_config, "n_positions", None)
    if positions is None or getattr(hf_config, "n_ctx", None) is not None:
        return convert(directory)
    hf_config.n_ctx = positions
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / directory.resolve().name  # TransformerLens names the model after it
        hf_config.save_pretrained(view)
        return convert(view)
