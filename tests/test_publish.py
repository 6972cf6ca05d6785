"""`sae publish`: SAELens folders with model cards from any run directory; the Hub upload
only with credentials, and never over the network in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from sae.config import SAEConfig
from sae.errors import UserError
from sae.io import atomic_write_json
from sae.models import build_sae
from sae.publish.release import publish_run
from sae.publish.saelens import save_saelens

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
METADATA = {
    "model_name": "tiny",
    "hook_name": HOOK,
    "context_size": 32,
    "dataset_path": "generated",
    "prepend_bos": True,
}


def fake_run(run_dir: Path, names: list[str] | None = None) -> Path:
    """A run directory as `sae run` leaves it: <dir>/sae + metrics.json, or one per name."""
    for name in names or [None]:
        where = run_dir / name if name else run_dir
        sae = build_sae(SAEConfig(arch="relu", d_sae=32), 16, seed=len(str(name)))
        save_saelens(sae, 2.0, where / "sae", {**METADATA}, log10_density=-torch.rand(32))
        config = {"sae": {"arch": "relu", "l1_coefficient": 5.0}, "saes": None}
        metrics = {"arch": "relu", "samples": 1000, "explained_variance": 0.9, "config": config}
        atomic_write_json(where / "metrics.json", {**metrics, **({"name": name} if name else {})})
    return run_dir


def test_a_lone_sae_is_published_under_its_hook_with_a_model_card(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    assert main(["publish", str(run), "--to", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / HOOK
    card = (folder / "README.md").read_text()
    assert "| l1_coefficient | 5 |" in card and "| training tokens | 1,000 |" in card
    assert "| explained variance | 0.9 |" in card and "SAE.load_from_disk" in card
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["prepend_bos"] is True


def test_several_saes_are_published_under_their_names(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", ["wide", "narrow"])
    written = publish_run(run, tmp_path / "out")
    assert sorted(Path(p).name for p in written) == ["narrow", "wide"]


def test_a_directory_without_a_trained_sae_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["publish", str(tmp_path / "empty"), "--to", str(tmp_path / "out")]) == 2
    assert "holds no trained SAE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_publishing_to_the_hub_without_credentials_says_how_to_provide_them(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE")
    }
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "sae", "publish", str(run), "--to", "hf://someone/saes"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Hugging Face credentials found" in lines[0]
    assert "HF_TOKEN" in lines[0] and "hf auth login" in lines[0]


def test_a_malformed_hub_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="hf://<user or organisation>/<repository>"):
        publish_run(fake_run(tmp_path / "run"), "hf://no-repository")


def test_publishing_to_the_hub_uploads_every_folder_in_one_commit(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import HfApi

    calls: dict[str, object] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["created"] = (repo_id, kwargs.get("exist_ok"), self.token)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["uploaded"] = repo_id
        calls["files"] = sorted(
            str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()
        )

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    run = fake_run(tmp_path / "run", ["a", "b"])
    written = publish_run(run, "hf://someone/saes")
    assert written == ["hf://someone/saes/a", "hf://someone/saes/b"]
    assert calls["created"] == ("someone/saes", True, "hf_not_a_real_token")
    assert calls["uploaded"] == "someone/saes"
    files = ["README.md", "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert calls["files"] == [f"{d}/{f}" for d in ("a", "b") for f in files]
