"""Several SAEs trained on shared batches end exactly as if each had been trained alone."""

from pathlib import Path

import pytest
import torch

from pipelines.train_and_evaluate import build_ground_truth
from sae.config import validate_tree
from sae.errors import ConfigError
from sae.models import build_sae
from sae.training.trainer import Trainer
from tests.conftest import tiny_tree

ENTRIES = [
    {"name": "k2", "arch": "topk", "d_sae": 256, "k": 2},
    {"name": "relu", "arch": "relu", "d_sae": 256, "l1_coefficient": 10.0, "lr": 1e-3},
]


def short_tree() -> dict:
    tree = tiny_tree()
    tree["train"].update(samples=30_000, resample_at=[0.9])
    tree["train"]["dead_window_samples"] = 1024  # short, so AuxK and resampling both act
    return tree


@pytest.fixture
def one_thread():
    """Bitwise comparisons run on one thread. With two, a loaded full-suite run once ended 1e-4
    apart (not reproduced alone); one thread rules out thread-dependent reduction orders."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shared_batches_give_each_sae_the_weights_it_gets_alone(tmp_path: Path, one_thread) -> None:
    tree = short_tree()
    del tree["sae"]
    cfg = validate_tree({**tree, "saes": ENTRIES})
    source = build_ground_truth(cfg)
    together = {e.name: build_sae(e, source.d_in, cfg.seed) for e in cfg.sae_entries()}
    (tmp_path / "together").mkdir()
    Trainer(cfg, together, source, tmp_path / "together").fit()

    for entry in ENTRIES:
        alone_tree = short_tree()
        sae_keys = {k: v for k, v in entry.items() if k not in ("name", "lr")}
        alone_tree["sae"] = sae_keys
        alone_tree["train"]["lr"] = entry.get("lr", alone_tree["train"]["lr"])
        alone_cfg = validate_tree(alone_tree)
        alone = build_sae(alone_cfg.sae, source.d_in, alone_cfg.seed)
        (tmp_path / entry["name"]).mkdir()
        Trainer(alone_cfg, alone, source, tmp_path / entry["name"]).fit()
        for name, param in alone.state_dict().items():
            assert torch.equal(param, together[entry["name"]].state_dict()[name]), (entry, name)


def test_sae_and_saes_sections_are_exclusive() -> None:
    tree = short_tree()
    with pytest.raises(ConfigError, match="either sae"):
        validate_tree({**tree, "saes": ENTRIES})
    del tree["sae"]
    with pytest.raises(ConfigError, match="distinct"):
        validate_tree({**tree, "saes": [ENTRIES[0], ENTRIES[0]]})
