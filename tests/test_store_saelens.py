"""Moving stores to and from SAELens's cached-activations format."""

from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from sae.errors import UserError
from sae.store.reader import Store
from sae.store.saelens_cache import export_saelens, import_saelens
from tests.store_helpers import harvest_counting


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("saelens")
    store = harvest_counting(base / "store", rows=4000)  # 500 sequences of 8 positions
    export_saelens(store, base / "cache")
    return store, base / "cache"


def test_export_then_import_gives_back_every_row(exported, tmp_path) -> None:
    store, cache = exported
    assert main(["store", "import", str(cache), "--out", str(tmp_path / "back")]) == 0
    a, b = Store(store), Store(tmp_path / "back")
    assert b.rows == a.rows == 4000 and b.hooks == a.hooks
    for column in ("acts/resid", "acts/mlp", "positions"):
        assert torch.equal(a.read_rows(column, 0, 4000), b.read_rows(column, 0, 4000)), column
    assert torch.equal(a.read_rows("token_ids", 0, 4000), b.read_rows("token_ids", 0, 4000))
    assert b.manifest.source["context_size"] == 8


def test_saelens_reads_our_export_with_its_own_activations_store(exported) -> None:
    from sae_lens.training.activations_store import ActivationsStore

    store, cache = exported
    reader = ActivationsStore(
        model=None,  # cached activations need no model
        dataset=None,
        streaming=False,
        hook_name="resid",
        hook_head_index=None,
        context_size=8,
        d_in=6,
        n_batches_in_buffer=2,
        total_training_tokens=4000,
        store_batch_size_prompts=10,
        train_batch_size_tokens=80,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        cached_activations_path=str(cache),
    )
    acts, tokens = reader.get_raw_llm_batch()
    ours = Store(store)
    assert torch.equal(acts, ours.read_rows("acts/resid", 0, 80))
    assert torch.equal(tokens.long(), ours.read_rows("token_ids", 0, 80))


def test_export_refuses_a_context_size_that_splits_rows(exported, tmp_path) -> None:
    store, _ = exported
    with pytest.raises(UserError, match="not whole sequences of 7 rows"):
        export_saelens(store, tmp_path / "x", context_size=7)
    with pytest.raises(UserError, match="not whole sequences of 16 positions"):
        export_saelens(store, tmp_path / "y", context_size=16)


def test_import_of_something_else_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not a datasets folder"):
        import_saelens(tmp_path, tmp_path / "out")
