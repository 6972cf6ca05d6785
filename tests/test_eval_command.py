"""`sae eval`: any SAELens folder evaluated like a run; agreement with the run that wrote it and
with SAELens's own evals on the same SAE and tokens; clear errors for what cannot be loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.util import get_special_token_ids

from pipelines.cli import main
from sae.config import load_config
from sae.evaluation.reconstruction import log10_density_histogram
from sae.evaluation.spliced import read_eval_windows
from sae.hooked_models.loading import load_language_model
from sae.seeding import derive_seed
from sae.sources.model_activations import LMSource
from tests.conftest import tiny_tree, write_config
from tests.saelens_helpers import TokenBatches

HOOK = "blocks.1.hook_resid_post"
NUMERIC = (int, float)


def lm_tree(samples: int = 1024) -> dict:
    return {
        "seed": 3,
        "data": {"lm": {"hooks": [HOOK], "context_size": 64, "batch_sequences": 8}},
        "sae": {"arch": "topk", "d_sae": 256, "k": 8},
        "eval": {"samples": samples, "browser_latents": 4, "probe_rows": 1024},
        "logging": {"wandb": False, "progress": False},
    }


def saelens_topk(d_in: int, d_sae: int, k: int, seed: int, mean: torch.Tensor) -> SAE:
    """A SAELens TopK SAE built and initialised by SAELens, with b_dec at the data mean so
    that it reconstructs part of the activations."""
    torch.manual_seed(seed)
    sae = SAE.from_dict(
        {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": "float32",
         "device": "cpu", "metadata": {"hook_name": HOOK}}
    )  # fmt: skip
    with torch.no_grad():
        sae.b_dec.copy_(mean)
    return sae


def test_eval_of_a_published_folder_gives_the_metrics_of_the_run_that_wrote_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_tree())
    assert main(["toy", str(config), "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", str(tmp_path / "run" / "sae"), "--config", str(config),
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    shared = [k for k, v in run.items() if isinstance(v, NUMERIC) and k in evaluated]
    assert {"mcc", "f1", "l0", "explained_variance", "dead_latents"} <= set(shared)
    for key in shared:
        # the export folds the input scale into the weights: equal up to float rounding
        assert evaluated[key] == pytest.approx(run[key], rel=1e-5, abs=1e-6), key
    assert (tmp_path / "eval" / "report.html").is_file()
    assert (tmp_path / "eval" / "recovery.json").is_file()


def test_a_saelens_saved_sae_evaluates_as_saelens_evals_measure_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "lm.yaml", lm_tree())
    cfg = load_config(config)
    model = load_language_model(cfg.data.lm)
    source = LMSource(cfg.data.lm, model=model)
    rows = next(source.harvest_stream(batch_rows=2048, seed=1)).activations[HOOK]
    sae = saelens_topk(source.d_in, 256, 8, seed=1, mean=rows.mean(0))
    sae.save_model(tmp_path / "saelens")  # written by SAELens itself

    assert main(["eval", str(tmp_path / "saelens"), "--config", str(config),
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())

    tokens = read_eval_windows(source, cfg.eval, derive_seed(cfg.seed, "eval")).tokens

    special = list(get_special_token_ids(model.tokenizer))
    common = {"n_batches": len(tokens) // 8, "eval_batch_size_prompts": 8, "ignore_tokens": special}
    behaviour = get_downstream_reconstruction_metrics(
        sae, model.model, TokenBatches(tokens), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
        **common,
    )  # fmt: skip
    recon, features = get_sparsity_and_variance_metrics(
        sae, model.model, TokenBatches(tokens), ActivationScaler(), compute_l2_norms=False,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True, model_kwargs={}, **common,
    )  # fmt: skip
    pairs = {
        "ce_loss_recovered": behaviour["ce_loss_score"],
        "kl_divergence": behaviour["kl_div_with_sae"],
        "explained_variance": recon["explained_variance"],  # against the mean, not zero
        "l0": recon["l0"],
    }
    for key, expected in pairs.items():
        assert m[key] == pytest.approx(expected, rel=1e-4, abs=1e-6), key
    assert 0.05 < m["ce_loss_recovered"] < 0.999  # a partial reconstruction
    density = torch.tensor(features["feature_density"], dtype=torch.float64)
    assert m["dead_latents"] == int((density == 0).sum())
    assert m["dense_latents"] == int((density > cfg.eval.dense_threshold).sum())
    theirs = log10_density_histogram(
        torch.log10(density + 1e-10), density > 0, cfg.eval.density_bins
    )
    assert m["log10_density_histogram"]["counts"] == theirs["counts"]
    assert m["hook"] == HOOK and m["arch"] == "topk"
    assert "probes" in m and m["fraction_of_ceiling_mean"] > 0


def test_an_sae_of_another_width_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_tree())
    sae = SAE.from_dict({"architecture": "standard", "d_in": 7, "d_sae": 16, "dtype": "float32",
                         "device": "cpu"})  # fmt: skip
    sae.save_model(tmp_path / "narrow")
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "narrow"), "--config", str(config),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "reads 7 dims" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: None, "SAE not found"),
        (lambda p: p.mkdir(), "no cfg.json"),
        (lambda p: (p.mkdir(), (p / "cfg.json").write_text("{"),
                    (p / "sae_weights.safetensors").write_bytes(b"x")), "not readable JSON"),
    ],
)  # fmt: skip
def test_what_is_not_a_saelens_folder_fails_in_one_line(
    tmp_path: Path, capsys, prepare, message: str
) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_tree())
    prepare(tmp_path / "folder")
    assert main(["eval", str(tmp_path / "folder"), "--config", str(config),
                 "--out", str(tmp_path / "eval")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_pretrained_release_id_offline_fails_in_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_tree())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "sae", "eval", "gpt2-small-res-jb:blocks.8.hook_resid_pre",
         "--config", str(config), "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("sae: error: could not download gpt2-small-res-jb")
    assert done.stderr.count("\n") == 1


def test_an_unknown_release_or_sae_id_is_named(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_tree())
    for spec, message in (
        ("no-such-release:x", "'no-such-release' is not a SAELens pretrained release"),
        ("gpt2-small-res-jb:no.such.hook", "has no SAE 'no.such.hook'"),
    ):
        assert main(["eval", spec, "--config", str(config), "--out", str(tmp_path / "e")]) == 2
        assert message in capsys.readouterr().err
