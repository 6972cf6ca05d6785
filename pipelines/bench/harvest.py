"""`sae bench harvest`: tokens/s of harvesting one hook of a TransformerLens model into a store,
next to the bare forward pass that any harvest must run and next to SAELens's
CacheActivationsRunner, on the same model and the same token windows, in one run.

The model is a randomly initialised HookedTransformer built from a config (gpt2-small's shape
by default: 12 layers, d_model 768, 12 heads, d_mlp 3072, n_ctx 1024; smaller with --layers /
--d-model for a quick run); nothing is downloaded. Text is the bundled generated language,
written to a local .txt file first and read through the bundled word-level tokenizer, so the
random model's vocabulary is that tokenizer's (the vocabulary only sizes the embedding table;
no forward pass here reaches the unembedding).

- ours: `LMSource.harvest_stream` -> `harvest_rows` -> `StoreWriter`, what `sae harvest` runs:
  reading and tokenizing the text, the forward passes, and shards written, hashed and
  fsynced with their resume state. Every position becomes a row (exclude_special_tokens off),
  as in SAELens's cache, so both sides store the same rows.
- forward: `model(tokens, stop_at_layer=S)` on the same windows, batch for batch, with S the
  fewest blocks that produce the hook (L for blocks.L.hook_resid_pre, the input of block L;
  L + 1 for any other hook of block L). No harvest can need less compute.
- saelens: `CacheActivationsRunner(cfg, override_dataset=...).run()` on a datasets.Dataset of
  the same windows (pretokenized `input_ids`, prepend_bos off as the windows carry BOS),
  shards of the same size, float32, shuffle off (less work for it than its default). Its
  constructor loads a model by name (`sae_lens.load_model`); that one call is redirected to
  return this model object, and everything else runs as shipped.

The three modes run one after another for each of --repeats rounds (order rotated per round,
so a change in machine load is shared out); each figure is the median over rounds. Besides
wall-clock tokens/s, the CPU seconds of the process (all threads) per mode are shown, with
the `_cpu` ratios from them: on a machine shared with other work they are the steadier
measure of the work each side does.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor

from sae.config import LMConfig
from sae.hooked_models.models import TransformerLensModel, transformer_lens_stop_layer
from sae.io import atomic_write_json
from sae.tables import format_table

JSON_KEYS = (
    "hook", "layers", "d_model", "context_size", "tokens", "ours_tokens_per_s",
    "forward_tokens_per_s", "saelens_tokens_per_s", "overhead_vs_forward", "speedup_vs_saelens",
    "overhead_vs_forward_cpu", "speedup_vs_saelens_cpu",
)  # fmt: skip
SEED = 0


@dataclass(frozen=True)
class Shape:
    layers: int = 12
    d_model: int = 768
    context_size: int = 128
    batch_sequences: int = 16  # context windows per forward pass, on every side
    tokens: int = 16_384
    shard_tokens: int = 8192  # rows per store shard / per SAELens buffer
    hook: str | None = None  # default: blocks.{min(8, layers - 1)}.hook_resid_pre

    @property
    def hook_name(self) -> str:
        return self.hook or f"blocks.{min(8, self.layers - 1)}.hook_resid_pre"

    @property
    def batch_tokens(self) -> int:
        return self.context_size * self.batch_sequences


def bare_stop_layer(hook: str) -> int | None:
    """The fewest blocks after which `hook` has its value (None: the whole model)."""
    stop = transformer_lens_stop_layer([hook])
    if stop and hook == f"blocks.{stop - 1}.hook_resid_pre":
        return stop - 1
    return stop


def build_model(shape: Shape, tokenizer: Any) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    d_head = 64 if shape.d_model % 64 == 0 else shape.d_model
    cfg = HookedTransformerConfig(
        n_layers=shape.layers,
        d_model=shape.d_model,
        d_head=d_head,
        n_heads=shape.d_model // d_head,
        d_mlp=4 * shape.d_model,
        d_vocab=len(tokenizer),
        n_ctx=max(1024, shape.context_size),
        act_fn="gelu_new",
        normalization_type="LN",
        seed=SEED,
        device="cpu",
    )
    return HookedTransformer(cfg, tokenizer).eval()


def write_corpus(path: Path, tokenizer: Any, tokens: int) -> None:
    """Documents of the generated language until they hold comfortably more than `tokens`."""
    from sae.corpus.grammar import generate_document

    lines, have, index = [], 0, 0
    while have < tokens * 1.1 + 1000:
        text = generate_document(SEED, "train", index).text
        have += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        lines.append(text.replace("\n", " "))
        index += 1
    path.write_text("\n".join(lines) + "\n")


def run_bench_harvest(
    shape: Shape, repeats: int = 2, out_json: Path | None = None, threads: int | None = None
) -> dict[str, Any]:
    from sae.corpus.bundled import load_bundled_model
    from sae.sources.model_activations import LMSource

    if threads is not None:
        torch.set_num_threads(threads)
    tokens = -(-shape.tokens // shape.batch_tokens) * shape.batch_tokens
    shard_tokens = min(tokens, -(-shape.shard_tokens // shape.batch_tokens) * shape.batch_tokens)
    tokens = -(-tokens // shard_tokens) * shard_tokens  # whole shards on both sides
    hook = shape.hook_name
    _, tokenizer = load_bundled_model()
    model = build_model(shape, tokenizer)
    with tempfile.TemporaryDirectory(prefix="sae-bench-harvest-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        write_corpus(corpus, tokenizer, tokens)
        lm_cfg = LMConfig(
            model="bench-random",
            hooks=[hook],
            dataset=str(corpus),
            context_size=shape.context_size,
            exclude_special_tokens=False,
            batch_sequences=shape.batch_sequences,
            max_tokens=tokens,
        )
        source = LMSource(lm_cfg, TransformerLensModel(model, "bench-random"))
        windows = _windows(source, tokens // shape.context_size)
        modes: dict[str, Callable[[Path], None]] = {
            "ours": lambda out: _ours(source, out, tokens, shard_tokens),
            "forward": lambda out: _forward(model, windows, shape.batch_sequences, hook),
            "saelens": lambda out: _saelens(model, windows, shape, hook, out, shard_tokens),
        }
        seconds: dict[str, list[float]] = {name: [] for name in modes}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in modes}
        names = list(modes)
        for round_ in range(repeats):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                out = work / f"{name}-{round_}"
                started, cpu_started = time.perf_counter(), time.process_time()
                modes[name](out)
                seconds[name].append(time.perf_counter() - started)
                cpu_seconds[name].append(time.process_time() - cpu_started)
                shutil.rmtree(out, ignore_errors=True)
    rate = {name: tokens / statistics.median(ts) for name, ts in seconds.items()}
    cpu = {name: statistics.median(ts) for name, ts in cpu_seconds.items()}
    row = {
        "hook": hook,
        "layers": shape.layers,
        "d_model": shape.d_model,
        "context_size": shape.context_size,
        "tokens": tokens,
        "ours_tokens_per_s": round(rate["ours"], 1),
        "forward_tokens_per_s": round(rate["forward"], 1),
        "saelens_tokens_per_s": round(rate["saelens"], 1),
        "overhead_vs_forward": round(rate["forward"] / rate["ours"] - 1, 4),
        "speedup_vs_saelens": round(rate["ours"] / rate["saelens"], 2),
        "overhead_vs_forward_cpu": round(cpu["ours"] / cpu["forward"] - 1, 4),
        "speedup_vs_saelens_cpu": round(cpu["saelens"] / cpu["ours"], 2),
    }
    table = [
        {
            "mode": name,
            "tokens_per_s": round(rate[name], 1),
            "seconds": round(statistics.median(seconds[name]), 2),
            "time_vs_forward": round(rate["forward"] / rate[name], 3),
            "cpu_s": round(cpu[name], 2),
            "cpu_vs_forward": round(cpu[name] / cpu["forward"], 3),
            "runs_s": " ".join(f"{s:.2f}" for s in seconds[name]),
        }
        for name in modes
    ]
    print(
        f"harvest {hook} of a random {shape.layers}-layer d_model {shape.d_model} "
        f"HookedTransformer: {tokens} tokens in windows of {shape.context_size}, "
        f"{shape.batch_sequences} windows per forward pass, shards of {shard_tokens} rows (fp32), "
        f"{repeats} rounds, {torch.get_num_threads()} torch threads; forward stops after "
        f"{bare_stop_layer(hook)} blocks"
    )
    print(format_table(table, list(table[0])))
    print(format_table([row], list(row)))
    if out_json is not None:
        atomic_write_json(out_json, [row])
    return row


def _windows(source: Any, count: int) -> Tensor:
    """The first `count` windows the harvest reads, as [count, context] token ids."""
    stream = source.windows(_harvest_seed())
    return torch.stack([next(stream).tokens for _ in range(count)])


def _harvest_seed() -> int:
    from sae.seeding import derive_seed

    return derive_seed(SEED, "harvest")


def _ours(source: Any, out: Path, tokens: int, shard_tokens: int) -> None:
    from sae.store.writer import harvest_rows, open_writer

    identity = {"kind": "lm", "seed": SEED, "data": {"lm": source.cfg.model_dump(mode="json")}}
    harvest = {"rows": tokens, "shard_rows": shard_tokens}
    with open_writer(out, identity, harvest, "fp32", None) as writer:
        stream = source.harvest_stream(
            source.cfg.batch_sequences * source.cfg.context_size, _harvest_seed()
        )
        try:
            manifest = harvest_rows(writer, stream, tokens, shard_tokens)
        finally:
            stream.close()
    assert manifest.rows == tokens and manifest.complete, "the harvest ended early"


@torch.no_grad()
def _forward(model: Any, windows: Tensor, batch_sequences: int, hook: str) -> None:
    stop = bare_stop_layer(hook)
    for start in range(0, len(windows), batch_sequences):
        model(windows[start : start + batch_sequences], stop_at_layer=stop)


def _saelens(
    model: Any, windows: Tensor, shape: Shape, hook: str, out: Path, shard_tokens: int
) -> None:
    from datasets import Dataset
    from sae_lens import cache_activations_runner as runner_module
    from sae_lens.config import CacheActivationsRunnerConfig

    d_in = model.cfg.d_model
    bytes_per_token = d_in * 4
    cfg = CacheActivationsRunnerConfig(
        dataset_path="bench-windows",  # a name only: the data is the override_dataset below
        model_name="bench-random",
        model_batch_size=shape.batch_sequences,
        hook_name=hook,
        d_in=d_in,
        training_tokens=windows.numel(),
        context_size=shape.context_size,
        new_cached_activations_path=str(out),
        shuffle=False,
        dtype="float32",
        device="cpu",
        # one buffer (shard) = shard_tokens rows; the half token guards the float round trip
        buffer_size_gb=(shard_tokens + 0.5) * bytes_per_token / 1e9,
        prepend_bos=False,
    )
    assert (
        cfg.n_tokens_in_buffer == shard_tokens and cfg.n_buffers * shard_tokens == windows.numel()
    )
    dataset = Dataset.from_dict({"input_ids": windows.tolist()})
    with _model_given(runner_module, model):
        runner = runner_module.CacheActivationsRunner(cfg, override_dataset=dataset)
    cached = runner.run()
    assert len(cached) == len(windows), "SAELens cached a different number of windows"


@contextmanager
def _model_given(runner_module: Any, model: Any) -> Any:
    """The runner's by-name model loading, answered with `model` (no download)."""
    with mock.patch.object(runner_module, "load_model", lambda **kwargs: model):
        yield
