"""Every way a run publishes an SAE gives SAELens a folder it can splice into the model: full
metadata (hook, model, context, dataset, BOS), a sparsity.safetensors, and a loss that changes
when `HookedSAETransformer.run_with_saes` runs with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main
from tests.conftest import tiny_tree, write_config

HOOK = "blocks.1.hook_resid_post"
LM_METADATA = ("hook_name", "model_name", "context_size", "dataset_path", "prepend_bos")


def lm_tree(**data: object) -> dict:
    """The bundled model on the generated language, cut down to a few seconds of training."""
    return {
        "seed": 0,
        "data": data
        or {"lm": {"hooks": [HOOK], "context_size": 32, "batch_sequences": 16, "shuffle_rows": 512}},
        "harvest": {"rows": 3000, "shard_rows": 1000, "batch_rows": 1024},
        "sae": {"arch": "topk", "d_sae": 128, "k": 8},
        "train": {
            "samples": 5120,
            "batch_size": 256,
            "lr": 3e-3,
            "lr_warmup_steps": 5,
            "checkpoint_every_steps": 0,
            "norm_estimate_batches": 2,
        },
        "eval": {"samples": 256, "batch_size": 256, "threshold_batches": 2, "browser_latents": 2},
        "logging": {"wandb": False, "progress": False},
    }


def spliced_losses(folder: Path) -> tuple[float, float]:
    """(clean loss, loss with the SAE spliced in) of the bundled model, as a SAELens user
    measures them."""
    from sae_lens import SAE, HookedSAETransformer

    from sae.corpus.bundled import load_bundled_model

    plain, tokenizer = load_bundled_model()
    model = HookedSAETransformer(plain.cfg, tokenizer)
    model.load_state_dict(plain.state_dict())
    sae = SAE.load_from_disk(str(folder))
    tokens = model.to_tokens(["the small cat sees the dog", "two birds eat the seeds"])
    with torch.no_grad():
        clean = float(model(tokens, return_type="loss"))
        spliced = float(model.run_with_saes(tokens, saes=[sae], return_type="loss"))
    return clean, spliced


def assert_spliceable(folder: Path, d_sae: int = 128) -> None:
    metadata = json.loads((folder / "cfg.json").read_text())["metadata"]
    missing = [key for key in LM_METADATA if metadata.get(key) is None]
    assert not missing, f"cfg.json metadata lacks {missing}"
    assert metadata["hook_name"] == HOOK and metadata["context_size"] == 32
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (d_sae,) and float(sparsity.max()) <= 0
    clean, spliced = spliced_losses(folder)
    assert abs(spliced - clean) > 1e-4, "run_with_saes left the loss unchanged"


def test_sae_train_on_a_live_language_model_publishes_a_spliceable_sae(tmp_path: Path) -> None:
    config = write_config(tmp_path / "lm.yaml", lm_tree())
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert main(["publish", str(tmp_path / "run"), "--to", str(tmp_path / "pub")]) == 0
    assert_spliceable(tmp_path / "run" / "sae")
    assert_spliceable(tmp_path / "pub" / HOOK)


@pytest.mark.slow
def test_sae_train_on_a_harvested_store_publishes_a_spliceable_sae(tmp_path: Path) -> None:
    harvest = write_config(tmp_path / "harvest.yaml", lm_tree())
    assert main(["harvest", str(harvest), "--out", str(tmp_path / "store")]) == 0
    train = write_config(tmp_path / "train.yaml", lm_tree(store=str(tmp_path / "store")))
    assert main(["train", str(train), "--out", str(tmp_path / "run")]) == 0
    assert_spliceable(tmp_path / "run" / "sae")


@pytest.mark.slow
def test_sae_run_publishes_a_spliceable_sae(tmp_path: Path) -> None:
    config = write_config(tmp_path / "lm.yaml", lm_tree())
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert_spliceable(tmp_path / "run" / "published" / HOOK)


def test_a_toy_sae_is_published_with_its_feature_densities(tmp_path: Path) -> None:
    from sae_lens import SAE

    tree = tiny_tree()
    tree["train"]["samples"] = 4096
    config = write_config(tmp_path / "toy.yaml", tree)
    assert main(["toy", str(config), "--out", str(tmp_path / "run")]) == 0
    folder = tmp_path / "run" / "sae"
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (48,) and float(sparsity.max()) <= 0
    assert SAE.load_from_disk(str(folder)).cfg.d_sae == 48
