"""A language-model harvest through the store: several hooks, token metadata, planted labels."""

from pathlib import Path

import pytest
import torch

from pipelines.harvest import run_harvest
from pipelines.train import run_train
from sae.config import validate_tree
from sae.store.reader import Store
from sae.store.saelens_cache import export_saelens
from tests.conftest import tiny_tree
from tests.store_helpers import store_files

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"]


def _lm_tree(rows: int = 3000, exclude_special_tokens: bool = True) -> dict:
    return {
        "seed": 0,
        "data": {
            "lm": {
                "hooks": HOOKS,
                "context_size": 32,
                "batch_sequences": 8,
                "exclude_special_tokens": exclude_special_tokens,
            }
        },
        # 700-row batches cross the 1000-row shard boundaries
        "harvest": {"rows": rows, "shard_rows": 1000, "batch_rows": 700},
        "logging": {"progress": False},
    }


@pytest.fixture(scope="module")
def lm_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "store"
    run_harvest(validate_tree(_lm_tree()), out)
    return out


def test_an_lm_store_keeps_every_hook_and_the_token_metadata(lm_store) -> None:
    store = Store(lm_store)
    m = store.manifest
    assert set(m.hooks) == set(HOOKS) and m.rows == 3000 and m.complete
    assert {"token_ids", "positions", "doc_ids"} <= set(m.columns)
    assert any(c.startswith("labels/") for c in m.columns), "planted variables are kept"
    assert m.source["context_size"] == 32 and m.source["model"]
    positions = store.read_rows("positions", 0, 3000)
    assert int(positions.max()) < 32


def test_an_lm_harvest_killed_at_a_shard_boundary_resumes_to_the_same_files(lm_store, tmp_path, monkeypatch) -> None:
    import sae.store.writer as writer_module

    out = tmp_path / "store"
    real = writer_module.StoreWriter.commit
    calls = {"n": 0}

    def commit(self, columns, state):
        real(self, columns, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if killed right after the second commit

    monkeypatch.setattr(writer_module.StoreWriter, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        run_harvest(validate_tree(_lm_tree()), out)
    monkeypatch.setattr(writer_module.StoreWriter, "commit", real)
    run_harvest(validate_tree(_lm_tree()), out)
    assert store_files(out) == store_files(lm_store)


def test_training_on_one_hook_of_an_lm_store(lm_store, tmp_path) -> None:
    tree = tiny_tree()
    tree["data"] = {"store": str(lm_store), "hook": HOOKS[1]}
    tree["train"].update(samples=3000, batch_size=256)
    tree["sae"].update(d_sae=64, k=4)
    tree["eval"].update(samples=1024, batch_size=256)
    result = run_train(validate_tree(tree), tmp_path / "run")
    assert result["source"]["hook_name"] == HOOKS[1] and "explained_variance" in result


def test_an_lm_store_of_whole_sequences_exports_to_saelens(tmp_path) -> None:
    out = tmp_path / "store"
    run_harvest(validate_tree(_lm_tree(rows=32 * 40, exclude_special_tokens=False)), out)
    export_saelens(out, tmp_path / "cache")
    from datasets import load_from_disk

    cache = load_from_disk(str(tmp_path / "cache")).with_format("torch")
    store = Store(out)
    assert len(cache) == 40
    assert torch.equal(cache[0]["token_ids"].long(), store.read_rows("token_ids", 0, 32))
    assert torch.equal(cache[1][HOOKS[0]], store.read_rows(f"acts/{HOOKS[0]}", 32, 64))
