"""Local Hugging Face checkpoints through the TransformerLens backend: what the pinned
transformers saves loads, and what cannot load stops with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.cli import main
from sae.config import LMConfig
from sae.hooked_models.loading import load_language_model
from tests.lm_checkpoints import save_tiny_gpt2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_a_gpt2_saved_without_n_ctx_loads_with_the_hf_models_outputs(checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert "n_ctx" not in json.loads((checkpoint / "config.json").read_text())
    lens = load_language_model(LMConfig(model=str(checkpoint), hooks=["blocks.0.hook_resid_post"]))
    assert lens.model.cfg.n_ctx == 64  # n_positions
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).eval()
    tokens = torch.tensor([[5, 17, 40, 2, 99, 3]])
    with torch.no_grad():
        expected = hf(tokens).logits
        got = lens.model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def harvest(tmp_path: Path, model: Path, capsys) -> tuple[int, str]:
    tree = {
        "data": {"lm": {"model": str(model), "hooks": ["blocks.0.hook_resid_post"]}},
        "logging": {"wandb": False, "progress": False},
    }
    (tmp_path / "harvest.yaml").write_text(yaml.safe_dump(tree))
    code = main(["harvest", str(tmp_path / "harvest.yaml"), "--out", str(tmp_path / "store")])
    return code, capsys.readouterr().err


def test_an_architecture_transformer_lens_lacks_is_one_line(tmp_path: Path, capsys) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert"
    )
    code, err = harvest(tmp_path, tmp_path / "bert", capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("sae: error: cannot load model") and "backend hf" in err


def test_damaged_weights_are_one_line(tmp_path: Path, checkpoint: Path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in checkpoint.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code, err = harvest(tmp_path, broken, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("sae: error: cannot load model")
