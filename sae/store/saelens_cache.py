"""SAELens's cached-activations format, both ways.

SAELens (cache_activations_runner.py) caches activations as an HF datasets folder with one row
per sequence: a column per hook of `Array2D(shape=(context_size, d_in))` and `token_ids` as
`Sequence(Value("int32"), length=context_size)`. Its ActivationsStore reads that folder with
`datasets.load_from_disk`. Export writes it the way SAELens does (arrow shards consolidated by
SAELens's own helper); import reads it through the same harvest machinery as `sae harvest`,
so an interrupted import resumes and ends with the same store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.errors import DataError, UserError
from sae.io import publish_dir
from sae.store.format import STORE_DTYPES, act_column
from sae.store.reader import Store
from sae.store.writer import harvest_rows, open_writer
from sae.streams import HarvestBatch, HarvestStream

ARROW_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "float32"}  # Arrow has no bf16
STORE_FROM_ARROW = {"float32": "fp32", "float16": "fp16"}
CHUNK_BYTES = 256 * 1024 * 1024  # rows converted at a time (bounded memory)
RUNNER_CFG = "cache_activations_runner_cfg.json"  # what SAELens uploads beside its caches


def export_saelens(
    store_dir: Path, out: Path, hooks: list[str] | None = None, context_size: int | None = None
) -> Path:
    from datasets import Array2D, Dataset, Features, Sequence, Value, disable_progress_bars

    disable_progress_bars()  # one bar per chunk is noise; we print one summary line
    store = Store(store_dir)
    manifest = store.manifest
    if not manifest.complete:
        raise UserError(f"store {store_dir} is incomplete; finish its harvest before exporting")
    hooks = hooks or list(manifest.hooks)
    for hook in hooks:
        store.hook_column(hook)  # raises for an unknown hook
    context = context_size or manifest.source.get("context_size")
    if not context:
        raise UserError("--context-size is needed: the store does not record sequence length")
    if store.rows % context:
        raise UserError(
            f"the store's {store.rows} rows are not whole sequences of {context} rows; "
            "pass a --context-size that divides them"
        )
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--to-saelens {out} exists and is not empty")
    arrow_dtype = ARROW_DTYPES[manifest.dtype]
    schema: dict[str, Any] = {
        h: Array2D(shape=(context, manifest.hooks[h]), dtype=arrow_dtype) for h in hooks
    }
    if "token_ids" in manifest.columns:
        schema["token_ids"] = Sequence(Value(dtype="int32"), length=context)
    features = Features(schema)

    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shards = staging / ".tmp_shards"
    shards.mkdir(parents=True)
    row_bytes = sum(manifest.hooks[h] for h in hooks) * 4
    per_chunk = max(1, CHUNK_BYTES // (row_bytes * context))
    n_seq = store.rows // context
    for i, first in enumerate(range(0, n_seq, per_chunk)):
        last = min(n_seq, first + per_chunk)
        a, b = first * context, last * context
        if "positions" in manifest.columns:
            positions = store.read_rows("positions", a, b).view(-1, context)
            if not torch.equal(positions, torch.arange(context).expand_as(positions)):
                raise UserError(
                    f"rows {a}..{b - 1} are not whole sequences of {context} positions: check "
                    "--context-size (a harvest that left out special tokens has no whole "
                    "sequences, which SAELens's format needs)"
                )
        chunk: dict[str, np.ndarray] = {}
        for hook in hooks:
            acts = store.read_rows(act_column(hook), a, b)
            acts = acts.float() if manifest.dtype == "bf16" else acts
            chunk[hook] = acts.numpy().reshape(last - first, context, -1)
        if "token_ids" in schema:
            tokens = store.read_rows("token_ids", a, b)
            chunk["token_ids"] = tokens.to(torch.int32).numpy().reshape(last - first, context)
        Dataset.from_dict(chunk, features=features).save_to_disk(
            str(shards / f"shard_{i:05d}"), num_shards=1
        )
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    CacheActivationsRunner._consolidate_shards(shards, staging, copy_files=False)
    publish_dir(staging, out)
    print(f"{out}: {n_seq} sequences of {context} rows, hooks {', '.join(hooks)}")
    return out


# ---------------------------------------------------------------------------- import


class CachedSequences(HarvestStream):
    """The rows of a SAELens cache, `sequences` at a time, as harvest batches."""

    def __init__(self, dataset: Any, hooks: list[str], context: int, sequences: int):
        self.dataset = dataset.with_format("numpy")
        self.hooks, self.context, self.sequences = hooks, context, sequences
        self.tokens = "token_ids" in dataset.column_names
        self.next_sequence = 0

    def __next__(self) -> HarvestBatch:
        first = self.next_sequence
        last = min(first + self.sequences, len(self.dataset))
        if first >= last:
            raise DataError("the SAELens cache ran out of sequences")
        rows = self.dataset[first:last]
        self.next_sequence = last
        count = (last - first) * self.context
        return HarvestBatch(
            activations={h: torch.from_numpy(rows[h].reshape(count, -1)) for h in self.hooks},
            token_ids=(
                torch.from_numpy(rows["token_ids"].reshape(count).astype(np.int64))
                if self.tokens
                else None
            ),
            positions=torch.arange(self.context).repeat(last - first),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"next_sequence": self.next_sequence}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_sequence = int(state["next_sequence"])


def import_saelens(
    path: Path, out: Path, shard_rows: int = 65_536, dtype: str | None = None
) -> Path:
    import datasets

    if not (path / "state.json").is_file():
        raise UserError(f"{path} is not a datasets folder saved by SAELens (no state.json)")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as error:
        raise UserError(f"cannot read SAELens cache {path}: {error}") from None
    hooks = [c for c, f in dataset.features.items() if isinstance(f, datasets.Array2D)]
    if not hooks:
        raise UserError(f"{path} has no Array2D activation columns (not a SAELens cache)")
    context = dataset.features[hooks[0]].shape[0]
    arrow_dtype = dataset.features[hooks[0]].dtype
    dtype = dtype or STORE_FROM_ARROW.get(arrow_dtype, "fp32")
    if dtype not in STORE_DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(STORE_DTYPES)}")
    runner_cfg = _runner_cfg(path)
    identity = {
        "kind": "saelens_cache",
        "seed": None,
        "data": {"path": str(path.resolve()), "fingerprint": dataset._fingerprint},
    }
    rows = len(dataset) * context
    sequences = max(1, 4096 // context)
    harvest = {
        "rows": rows,
        "shard_rows": shard_rows,
        "batch_rows": sequences * context,
        "dtype": dtype,
        "block_rows": None,
    }
    with open_writer(out, identity, harvest, dtype, None) as writer:
        if writer.complete:
            print(f"{out}: already imported ({writer.rows} rows)")
            return out
        writer.describe(
            {
                "model": runner_cfg.get("model_name"),
                "dataset": runner_cfg.get("dataset_path", str(path)),
                "context_size": context,
                "metadata": {"saelens_cache": str(path), "hooks": hooks, "arrow_dtype": arrow_dtype},
            }
        )
        manifest = harvest_rows(
            writer, CachedSequences(dataset, hooks, context, sequences), rows, shard_rows
        )
    print(f"{out}: {manifest.rows} rows in {len(manifest.shards)} shards from {path}")
    return out


def _runner_cfg(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / RUNNER_CFG).read_text())
    except (OSError, ValueError):
        return {}
