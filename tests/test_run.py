"""`sae run` end to end on the bundled tiny model: every stage's outputs, resuming after real
kills, skipping finished stages, several SAEs from one harvest, and bad input stopped early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from pipelines.cli import main
from sae.config import Config, load_config
from sae.errors import ConfigError
from sae.io import load_state
from sae.models import build_sae
from sae.store.reader import Store
from tests.conftest import write_config
from tests.store_helpers import store_files

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# the quickstart config, cut down to seconds: context 32, a few thousand tokens, 80 steps
SHORT = [
    "data.lm.context_size=32",
    "data.lm.batch_sequences=16",
    "harvest.rows=6000",
    "harvest.shard_rows=1000",
    "harvest.batch_rows=1024",
    "sae.d_sae=256",
    "sae.k=8",
    "train.samples=20480",
    "train.batch_size=256",
    "train.lr=3e-3",
    "train.lr_warmup_steps=5",
    "train.checkpoint_every_steps=10",
    "train.dead_window_samples=10000",
    "train.norm_estimate_batches=2",
    "eval.samples=512",
    "eval.batch_size=512",
    "eval.threshold_batches=2",
    "eval.browser_latents=3",
    "eval.browser_contexts=2",
    "logging.progress=false",
]
HOOK = "blocks.1.hook_resid_post"
LM_METRICS = (
    "mse", "explained_variance", "cosine_similarity", "l0", "dead_latents", "dense_latents",
    "log10_density_histogram", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero_ablation",
    "ce_loss_recovered", "kl_divergence", "monosemanticity", "monosemanticity_mean_f1",
)  # fmt: skip
PUBLISHED_FILES = {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "README.md"}


def sae_args(out: Path, *extra: str) -> list[str]:
    return ["run", str(QUICKSTART), "--out", str(out), *[a for s in SHORT for a in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    assert main(sae_args(out)) == 0
    return out


def two_hook_tree() -> dict:
    tree = {
        "seed": 1,
        "data": {
            "lm": {
                "hooks": ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"],
                "context_size": 32,
                "batch_sequences": 16,
            }
        },
        "harvest": {"rows": 4000, "shard_rows": 2000, "batch_rows": 1024},
        "saes": [
            {"name": "resid", "hook": "blocks.0.hook_resid_post", "arch": "topk", "d_sae": 128, "k": 8},
            {"name": "mlp", "hook": "blocks.1.mlp.hook_post", "arch": "relu", "d_sae": 256},
        ],
        "train": {
            "samples": 10240,
            "batch_size": 256,
            "lr": 3e-3,
            "lr_warmup_steps": 5,
            "checkpoint_every_steps": 20,
            "norm_estimate_batches": 2,
        },
        "eval": {"samples": 256, "batch_size": 256, "threshold_batches": 2, "browser_latents": 2},
        "logging": {"wandb": False, "progress": False, "log_every_steps": 10},
    }
    return tree


@pytest.fixture(scope="module")
def two_hook_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    config = write_config(tmp / "two.yaml", two_hook_tree())
    out = tmp / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return out


def our_sae(run_dir: Path, name: str, cfg: Config) -> tuple[torch.nn.Module, float]:
    """The SAE as trained, rebuilt from the checkpoint, with its input scale."""
    state = load_state(run_dir / "checkpoint.safetensors")["saes"][name]
    entry = next(e for e in cfg.sae_entries() if e.name == name)
    sae = build_sae(entry, state["model"]["W_enc"].shape[0])
    sae.load_state_dict(state["model"])
    sae.fit_inference([])  # what evaluation does before export (relu: unit decoder rows)
    return sae.eval(), float(state["input_scale"])


def assert_saelens_matches(folder: Path, ours: torch.nn.Module, scale: float, x: Tensor) -> None:
    from sae_lens import SAE

    theirs = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        latents = ours.encode(x * scale)
        recon = ours.decode(latents) / scale
        their_latents = theirs.encode(x)
        their_recon = theirs.decode(their_latents)
    assert torch.equal(latents != 0, their_latents != 0), "the same latents fire"
    torch.testing.assert_close(their_latents, latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(their_recon, recon, rtol=1e-4, atol=1e-4)


def rows_of(run_dir: Path, hook: str, n: int = 512) -> Tensor:
    return Store(run_dir / "store").read_rows(f"acts/{hook}", 0, n).float()


# ---------------------------------------------------------------------------- one SAE


def test_a_run_harvests_trains_evaluates_reports_and_publishes(quick_run: Path) -> None:
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(LM_METRICS) <= set(metrics)
    assert metrics["explained_variance"] > 0.5 and metrics["ce_loss_recovered"] > 0.5
    assert set(metrics["monosemanticity"]) >= {"number=singular", "topic=animals"}
    assert set(metrics["probes"]["per_variable"]) >= {"topic", "number"}
    assert "bracket_depth" in metrics["language_absorption"]["per_variable"]
    assert metrics["fraction_of_ceiling_mean"] > 0
    assert Store(quick_run / "store").manifest.complete
    assert (quick_run / "feature_browser.json").is_file()
    assert "<svg" in (quick_run / "report.html").read_text()
    folder = quick_run / "published" / HOOK
    assert {p.name for p in folder.iterdir()} == PUBLISHED_FILES
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == HOOK and meta["context_size"] == 32
    assert meta["prepend_bos"] is True and meta["dataset_path"] == "generated"
    assert meta["model_name"]
    card = (folder / "README.md").read_text()
    assert "SAE.load_from_disk" in card and "CE loss recovered" in card and "| k | 8 |" in card
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (256,) and float(sparsity.max()) <= 0


def test_the_published_folder_loads_in_saelens_with_identical_outputs(quick_run: Path) -> None:
    cfg = load_config(QUICKSTART, SHORT)
    sae, scale = our_sae(quick_run, "sae", cfg)
    assert_saelens_matches(quick_run / "published" / HOOK, sae, scale, rows_of(quick_run, HOOK))


def test_running_a_finished_run_again_skips_every_stage(quick_run: Path, monkeypatch) -> None:
    import pipelines.run as run_module
    import pipelines.train_and_evaluate
    import sae.training.trainer

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    before = {p: p.stat().st_mtime_ns for p in quick_run.rglob("*") if p.is_file()}
    monkeypatch.setattr(run_module, "build_harvest_source", fail)  # no model load, no harvest
    monkeypatch.setattr(pipelines.train_and_evaluate, "evaluate_and_export", fail)
    # nor a trainer to restore the finished checkpoint into (its Adam imports torch._dynamo)
    monkeypatch.setattr(sae.training.trainer.Trainer, "__init__", fail)
    assert main(sae_args(quick_run)) == 0
    after = {p: p.stat().st_mtime_ns for p in quick_run.rglob("*") if p.is_file()}
    assert after == before


def _poll(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"sae run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_run_killed_in_training_ends_as_an_uninterrupted_one(
    quick_run: Path, tmp_path: Path
) -> None:
    # (a harvest killed part-way continues byte for byte: tests/test_store_harvest.py)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sae", *sae_args(out)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    training = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _poll(training, (out / "checkpoint.safetensors").is_file, "the first checkpoint")
    training.send_signal(signal.SIGKILL)
    training.wait()
    assert load_state(out / "checkpoint.safetensors")["step"] < 80, "killed part-way through"
    assert not (out / "metrics.json").exists()

    assert main(sae_args(out)) == 0
    assert store_files(out / "store") == store_files(quick_run / "store")
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        resumed = load_file(str(out / "published" / HOOK / name))
        straight = load_file(str(quick_run / "published" / HOOK / name))
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


# ---------------------------------------------------------------------------- several SAEs


def test_two_saes_on_two_hooks_train_from_one_store_in_one_run(two_hook_run: Path) -> None:
    store = Store(two_hook_run / "store")
    assert store.manifest.hooks == {"blocks.0.hook_resid_post": 128, "blocks.1.mlp.hook_post": 512}
    assert store.manifest.rows == 4000, "one harvest for both hooks"
    checkpoint = load_state(two_hook_run / "checkpoint.safetensors")
    assert set(checkpoint["saes"]) == {"resid", "mlp"} and checkpoint["step"] == 40
    log = [json.loads(line) for line in (two_hook_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["sae"] for r in log if r["step"] == 40} == {"resid", "mlp"}
    for name, hook, d_in in (("resid", "blocks.0.hook_resid_post", 128), ("mlp", "blocks.1.mlp.hook_post", 512)):
        metrics = json.loads((two_hook_run / name / "metrics.json").read_text())
        assert metrics["hook"] == hook and set(LM_METRICS) <= set(metrics)
        assert (two_hook_run / name / "report.html").is_file()
        assert (two_hook_run / name / "metrics.jsonl").read_text().count(f'"sae": "{name}"') == 4
        cfg = json.loads((two_hook_run / "published" / name / "cfg.json").read_text())
        assert cfg["d_in"] == d_in and cfg["metadata"]["hook_name"] == hook


def test_each_published_sae_of_a_two_hook_run_loads_in_saelens(two_hook_run: Path, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "two.yaml", two_hook_tree()))
    assert main(["publish", str(two_hook_run), "--to", str(tmp_path / "out")]) == 0
    for name, hook in (("resid", "blocks.0.hook_resid_post"), ("mlp", "blocks.1.mlp.hook_post")):
        folder = tmp_path / "out" / name
        assert {p.name for p in folder.iterdir()} == PUBLISHED_FILES
        sae, scale = our_sae(two_hook_run, name, cfg)
        assert_saelens_matches(folder, sae, scale, rows_of(two_hook_run, hook))


def test_one_sae_section_with_several_hooks_trains_one_sae_per_hook() -> None:
    from pipelines.run import resolve_config

    tree = two_hook_tree()
    tree.pop("saes")
    tree["sae"] = {"arch": "topk", "d_sae": 64, "k": 4}
    cfg = resolve_config(Config.model_validate(tree))
    assert [(e.name, e.hook, e.d_sae) for e in cfg.sae_entries()] == [
        ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post", 64),
        ("blocks.1.mlp.hook_post", "blocks.1.mlp.hook_post", 64),
    ]


# ---------------------------------------------------------------------------- bad input


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sae: error: "), err
    return err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"store": "somewhere"}}, "sae run harvests its own store"),
        ({"saes": [{"hook": "blocks.2.hook_resid_post"}]}, "saes[0].hook 'blocks.2.hook_resid_post' is not one of"),
        ({"data": {"lm": {"hooks": ["blocks.0.hook_resid_post"], "dataset": "./absent.txt"}}}, "dataset file not found"),
    ],
)
def test_a_bad_config_stops_with_one_line_and_writes_nothing(tmp_path, capsys, change, message) -> None:
    tree = {**two_hook_tree(), **change}
    if "saes" not in change:
        tree.pop("saes")
    config = write_config(tmp_path / "bad.yaml", tree)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("harvest.rows=7000", "store"), ("train.lr=1e-3", "'train.lr' differs")],
)
def test_a_changed_config_on_an_existing_run_stops_before_any_work(
    quick_run: Path, capsys, override: str, message: str
) -> None:
    before = {p: p.stat().st_mtime_ns for p in quick_run.rglob("*") if p.is_file()}
    assert main(sae_args(quick_run, "--set", override)) == 2
    assert message in _error(capsys)
    assert {p: p.stat().st_mtime_ns for p in quick_run.rglob("*") if p.is_file()} == before


def test_the_gpt2_small_config_is_a_valid_run_config() -> None:
    from pipelines.run import resolve_config

    cfg = resolve_config(load_config(ROOT / "configs" / "lm" / "gpt2-small.yaml"))
    assert cfg.saes is None and cfg.data.lm is not None
    assert cfg.harvest.rows <= cfg.train.samples


def test_resolving_a_store_config_names_the_alternative() -> None:
    from pipelines.run import resolve_config

    with pytest.raises(ConfigError, match="use sae train"):
        resolve_config(Config.model_validate({"data": {"store": "x"}}))


# ---------------------------------------------------------------------------- quality


@pytest.mark.slow
def test_the_quickstart_reaches_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    assert main(["run", str(QUICKSTART), "--out", str(out), "--set", "logging.progress=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ce_loss_recovered"] >= 0.9
    assert metrics["explained_variance"] >= 0.8


def test_sae_train_trains_saes_on_two_hooks_of_one_store(two_hook_run: Path, tmp_path: Path) -> None:
    tree = two_hook_tree()
    tree.pop("harvest")
    tree["data"] = {"store": str(two_hook_run / "store")}
    tree["train"].update(samples=2560)
    config = write_config(tmp_path / "train.yaml", tree)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 0
    for name, hook in (("resid", "blocks.0.hook_resid_post"), ("mlp", "blocks.1.mlp.hook_post")):
        metrics = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert metrics["hook"] == hook and metrics["explained_variance"] > 0
        assert json.loads((tmp_path / "out" / name / "sae" / "cfg.json").read_text())["metadata"]["hook_name"] == hook


def test_a_ground_truth_run_is_evaluated_against_its_true_features(tmp_path: Path) -> None:
    from tests.conftest import tiny_tree

    tree = tiny_tree()
    tree["harvest"] = {"rows": 8192, "shard_rows": 4096, "batch_rows": 2048}
    tree["train"].update(samples=8192)
    config = write_config(tmp_path / "toy.yaml", tree)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "mcc" in metrics and metrics["source"]["kind"] == "store"
    (published,) = (tmp_path / "out" / "published").iterdir()
    assert (published / "sae_weights.safetensors").is_file()
