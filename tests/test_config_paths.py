"""Relative paths in a config file mean relative to that file, as in other YAML-configured
tools; paths given with --set mean relative to the current directory, as on any command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from sae.config import load_config


def config_in(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def lm(**keys: str) -> dict:
    return {"lm": {"hooks": ["blocks.0.hook_resid_post"], **keys}}


def test_a_store_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config_in(Path("experiments/a"), {"store": "../stores/s1"}))
    # resolved: one store, one spelling, since a resume compares it
    assert cfg.data.store == Path("experiments/stores/s1").resolve()


def test_local_datasets_and_models_beside_the_config_are_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "ckpt").mkdir(parents=True)
    (tmp_path / "exp" / "corpus.jsonl").write_text('{"text": "a"}\n')
    cfg = load_config(config_in(Path("exp"), lm(model="ckpt", dataset="corpus.jsonl")))
    assert cfg.data.lm.model == str(Path("exp/ckpt"))
    assert cfg.data.lm.dataset == str(Path("exp/corpus.jsonl"))


@pytest.mark.parametrize(
    ("model", "dataset"),
    [("bundled", "generated"), ("gpt2", "Skylion007/openwebtext"), ("EleutherAI/pythia-70m", "NeelNanda/pile-10k")],
)
def test_hub_names_and_built_ins_are_left_alone(tmp_path: Path, model: str, dataset: str) -> None:
    cfg = load_config(config_in(tmp_path / "exp", lm(model=model, dataset=dataset)))
    assert (cfg.data.lm.model, cfg.data.lm.dataset) == (model, dataset)


def test_absolute_paths_are_left_alone(tmp_path: Path) -> None:
    cfg = load_config(config_in(tmp_path / "exp", {"store": str(tmp_path / "s")}))
    assert cfg.data.store == tmp_path / "s"


def test_set_paths_stay_relative_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = config_in(Path("exp"), {"store": "s"})
    assert load_config(path, ["data.store=here/s"]).data.store == Path("here/s").resolve()
    cfg = load_config(config_in(Path("exp2"), lm()), ["data.lm.dataset=./mine.jsonl"])
    assert cfg.data.lm.dataset == "./mine.jsonl"


def test_a_missing_relative_store_is_named_as_resolved(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = config_in(Path("exp"), {"store": "missing"})
    assert main(["train", str(path), "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert str(Path("exp/missing")) in err and err.count("\n") == 1, err
