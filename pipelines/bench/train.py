"""`sae bench train`: our training step against SAELens's SAETrainer, sparsify's TopK step
(when the `bench` extra is installed: pipelines/bench/sparsify.py) and the hardware.

For each (arch, d, m, batch) both trainers step on the same pre-generated batches (drawn from
a synthetic SAELens model with d dims), so data generation is timed on neither side. After a
few warm-up steps, steps of ours, steps of SAELens's `SAETrainer.step` and a plain dense
matmul [batch, d] x [d, m] in the dtype our encoder uses (the bound: the one product no SAE
step can avoid) are interleaved, one of each per round, so a change in machine load hits all
three alike. Rates are medians over the rounds; `speedup` and `bound_ratio` are medians of the
per-round ratios, so a slow stretch of the shared machine that hits one round's three steps
cancels out in that round's ratio instead of skewing one side's median.

Ours is the trainer's real step (`SAETraining.train_step`: forward, backward, decoder-norm
handling, clipping, Adam, dead-latent counters); SAELens's is its own step with the matching
TrainingSAE at its defaults (topk: TopKTrainingSAE, k as ours; relu: StandardTrainingSAE),
float32 without autocast, its default. sparsify has TopK only; its columns are null
elsewhere and when it is not installed.

A ReLU SAE's cost depends on how many latents fire: about half at initialisation, a few dozen
once training has made it sparse, which is most of a run. relu rows are therefore timed at
trained sparsity: on both sides b_enc is set so each latent fires on about k/m of the rows
(L0 about k, as in a trained SAE) and the learning rate is RELU_HOLD_LR, so that sparsity
holds through the few timed steps (at the default rate the first Adam steps of such an
untrained encoder move every pre-activation by more than its spread). A step's cost depends
on the learning rate only through the sparsity. The `l0` column shows the L0 ours saw; the
"relu@init" rows show ours from the plain initialisation at the default learning rate (L0
about m/2, dense kernels), printed but not written to the JSON.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipelines.bench.sparsify import bench_step as sparsify_step
from sae.config import SAEEntry, SyntheticConfig, TrainConfig
from sae.device import pick_device, uses_bf16
from sae.io import atomic_write_json
from sae.models import build_sae
from sae.models.registry import takes
from sae.tables import format_table
from sae.training.trainer import SAETraining

DEFAULT_POINTS = ((128, 1024, 4096), (512, 8192, 4096))
DEFAULT_ARCHS = ("topk", "relu")
JSON_KEYS = (
    "arch", "d", "m", "batch", "ours_samples_per_s", "saelens_samples_per_s", "speedup",
    "bound_samples_per_s", "bound_ratio", "sparsify_samples_per_s", "speedup_vs_sparsify",
)  # fmt: skip
TABLE = (*JSON_KEYS, "l0", "dtype")
K = 32
N_BATCHES = 4  # distinct batches, cycled
STEPS_PER_RUN = 1_000_000  # the trainers' nominal length: keeps LR warm-up/decay out of the way
RELU_HOLD_LR = 1e-6


@dataclass(frozen=True)
class Point:
    arch: str
    d: int
    m: int
    batch: int
    at_init: bool = False  # relu only: time from the plain initialisation

    @property
    def label(self) -> str:
        return f"{self.arch}@init" if self.at_init else self.arch


def run_bench_train(
    points: list[tuple[int, int, int]],
    archs: list[str],
    warmup: int,
    steps: int,
    device_name: str = "auto",
    precision: str = "auto",
    out_json: str | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    device = pick_device(device_name, "--device")
    if threads is not None:
        torch.set_num_threads(threads)
    bf16 = uses_bf16(precision, device)
    grid = [Point(arch, *shape) for shape in points for arch in archs]
    grid += [Point("relu", *shape, at_init=True) for shape in points if "relu" in archs]
    rows = []
    for point in grid:
        row = _bench_point(point, warmup, steps, device, precision, bf16)
        rows.append(row)
        print(format_table([row], TABLE), flush=True)
    print()
    print(format_table(rows, TABLE))
    print(
        f"\nours: {'bf16 encoder matmul, fp32 weights' if bf16 else 'fp32'} on {device}"
        f" ({torch.get_num_threads()} CPU threads, both sides); "
        "SAELens: fp32 (its default, no autocast); bound: one dense "
        f"[batch, d] x [d, m] matmul in {'bf16' if bf16 else 'fp32'}.\n"
        f"relu rows at trained sparsity (b_enc set for L0 ~ {K}, lr {RELU_HOLD_LR:g}, both sides); "
        "relu@init: ours from initialisation, default lr (not a JSON row)."
    )
    if out_json:
        json_rows = [{key: row[key] for key in JSON_KEYS} for row in rows if row["arch"] != "relu@init"]
        atomic_write_json(out_json, json_rows)
    return rows


def _bench_point(
    point: Point, warmup: int, steps: int, device: torch.device, precision: str, bf16: bool
) -> dict[str, Any]:
    batches = _batches(point.d, point.batch, device)
    ours = _Ours(point, batches, precision, device)
    theirs = None if point.at_init else _saelens(point, batches, device)
    a = torch.randn(point.batch, point.d, device=device)
    w = torch.randn(point.d, point.m, device=device)
    if bf16:
        a, w = a.bfloat16(), w.bfloat16()
    timers: dict[str, Callable[[int], None]] = {"ours": ours.step, "bound": lambda i: a @ w}
    if theirs is not None:
        timers["saelens"] = theirs
    peer = None if point.at_init else sparsify_step(point.arch, point.d, point.m, K, batches, device)
    if peer is not None:
        timers["sparsify"] = peer
    for step in timers.values():
        for i in range(warmup):
            step(i)
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in timers}
    for i in range(steps):
        for name, step in timers.items():
            started = time.perf_counter()
            step(warmup + i)
            _sync(device)
            times[name].append(time.perf_counter() - started)
    per_step = {name: statistics.median(ts) for name, ts in times.items()}
    theirs_rate = point.batch / per_step["saelens"] if theirs is not None else float("nan")
    speedup = float("nan")
    if theirs is not None:
        speedup = _median_ratio(times["saelens"], times["ours"])
    return {
        "arch": point.label,
        "d": point.d,
        "m": point.m,
        "batch": point.batch,
        "ours_samples_per_s": round(point.batch / per_step["ours"], 1),
        "saelens_samples_per_s": round(theirs_rate, 1),
        "speedup": round(speedup, 2),
        "bound_samples_per_s": round(point.batch / per_step["bound"], 1),
        "bound_ratio": round(_median_ratio(times["ours"], times["bound"]), 2),
        "sparsify_samples_per_s": (
            round(point.batch / per_step["sparsify"], 1) if peer is not None else None
        ),
        "speedup_vs_sparsify": (
            round(_median_ratio(times["sparsify"], times["ours"]), 2) if peer is not None else None
        ),
        "l0": round(ours.l0, 1),
        "dtype": "bf16" if bf16 else "fp32",
    }


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator, each pair timed in the same round."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(d: int, batch: int, device: torch.device) -> list[Tensor]:
    from sae.sources.synthetic import SyntheticSource

    source = SyntheticSource(SyntheticConfig(num_features=4 * d, hidden_dim=d), seed=0)
    generator = torch.Generator().manual_seed(1)
    batches = [source.sample_with_features(batch, generator)[0] for _ in range(N_BATCHES)]
    scale = d**0.5 / float(torch.cat(batches).norm(dim=-1).mean())
    return [(x * scale).to(device) for x in batches]  # mean norm sqrt(d), as both trainers see


def _sparse_relu_bias(W_enc: Tensor, b_dec: Tensor, x: Tensor, k: int) -> Tensor:
    """b_enc that makes each latent fire on about k/m of the rows of x (L0 about k)."""
    pre = (x - b_dec) @ W_enc
    firing_rows = max(1, round(len(x) * k / W_enc.shape[1]))
    return -pre.kthvalue(len(x) - firing_rows, dim=0).values


class _Ours:
    def __init__(self, point: Point, batches: list[Tensor], precision: str, device: torch.device):
        k = {"k": K} if takes(point.arch, "k") else {}
        entry = SAEEntry(arch=point.arch, d_sae=point.m, name="bench", **k)
        tc = TrainConfig(batch_size=point.batch, precision=precision, lr_warmup_steps=0)
        if _held_sparse(point):
            tc.lr = RELU_HOLD_LR
        self.run = SAETraining(entry, build_sae(entry, point.d), tc, seed=0, device=device)
        self.batches = batches
        self.last: Any = None
        if _held_sparse(point):
            with torch.no_grad():
                sae = self.run.sae
                sae.b_enc.copy_(_sparse_relu_bias(sae.W_enc, sae.b_dec, batches[0], K))

    def step(self, i: int) -> None:
        self.last = self.run.train_step(self.batches[i % len(self.batches)], i, STEPS_PER_RUN)

    @property
    def l0(self) -> float:
        return self.last.latents.l0() if self.last is not None else float("nan")


def _held_sparse(point: Point) -> bool:
    return point.arch == "relu" and not point.at_init


def _saelens(point: Point, batches: list[Tensor], device: torch.device) -> Callable[[int], None]:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if point.arch == "topk":
        sae: Any = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=point.d, d_sae=point.m, k=K, device=str(device))
        )
    elif point.arch == "relu":
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(d_in=point.d, d_sae=point.m, device=str(device))
        )
        with torch.no_grad():
            sae.b_enc.copy_(_sparse_relu_bias(sae.W_enc, sae.b_dec, batches[0], K))
    else:
        raise ValueError(f"no SAELens counterpart wired up for arch '{point.arch}'")
    lr = RELU_HOLD_LR if _held_sparse(point) else SAETrainerConfig.lr
    cfg = SAETrainerConfig(
        total_training_samples=point.batch * STEPS_PER_RUN,
        train_batch_size_samples=point.batch,
        lr=lr,
        lr_end=lr,
        device=str(device),
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(i: int) -> None:
        trainer.step(batches[i % len(batches)])
        trainer.n_training_steps += 1

    return step
