"""The training loop: any stream of activation batches in, trained SAEs out.

Adam with linear LR warm-up and a linear decay over the last `lr_decay_frac` of training,
gradient clipping, inputs scaled so their mean norm is sqrt(d_in) (the factor is kept and
folded into the weights at export), b_dec started at the data's geometric median or mean,
dead latents tracked over a window of samples and remedied (AuxK inside the loss, or
resampling as in Towards Monosemanticity), and an atomic checkpoint every few steps.

Several SAEs (a `saes:` list) train together on every batch: the batch is read (or generated)
once and each SAE takes its step with its own optimizer, counters and RNG, so each ends with
exactly the weights it would have had trained alone. Batches are read ahead on a background
thread (sae/sources/prefetch.py).

Exact resume: the checkpoint holds the weights, Adam's moments, the step, the dead-latent
counters, the RNGs and the batch stream's position, so a run killed at any point and started
again ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sae import distributed
from sae.config import Config, SAEEntry, TrainConfig, to_dict
from sae.device import pick_device
from sae.distributed import LOCAL, World
from sae.errors import DataError, UserError
from sae.io import load_state, save_state
from sae.models import SparseAutoencoder, StepContext, TrainOutput
from sae.seeding import derive_seed
from sae.sources.base import ActivationSource, BatchStream
from sae.sources.prefetch import Prefetcher
from sae.training import schedule
from sae.training.l0_control import L0Controller, controlled
from sae.training.parallel import owned_saes, parallel_mode, rank_stream
from sae.training.run_log import RunLog

CHECKPOINT = "checkpoint.safetensors"

Batch = Tensor | dict[str, Tensor]


@dataclass
class TrainSummary:
    steps: int
    samples: int
    seconds: float  # wall-clock time spent in training steps, summed over resumes
    input_scale: float

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether the encoder matmul runs in bf16: always for "bf16", never for "fp32", and for
    "auto" where bf16 matmuls are faster than fp32: CUDA with bf16, and CPUs with bf16
    instructions, AMX tiles or AVX512-BF16 (measured on the latter, an AMD EPYC, 2 threads:
    [4096, 129] x [129, 1024] 3.0 vs 9.2 ms, [4096, 513] x [513, 8192] 91 vs 238 ms). Without
    them oneDNN emulates bf16, slower than fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class SAETraining:
    """One SAE in training and everything that is its own: optimizer, dead-latent counters,
    input scale, resampling RNG, and the hook and learning rate it trains with."""

    def __init__(
        self,
        entry: SAEEntry,
        sae: SparseAutoencoder,
        tc: TrainConfig,
        seed: int,
        device: torch.device,
        group: World = LOCAL,
    ):
        self.name, self.hook, self.tc = entry.name or "sae", entry.hook, tc
        self.group = group  # the data-parallel ranks sharing each batch (LOCAL: none)
        self.sae = sae.to(device)
        self.lr = entry.lr or schedule.learning_rate(tc, sae.d_sae)
        self.dead_window = schedule.dead_window(tc)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(),
            lr=self.lr,
            betas=(tc.adam_beta1, tc.adam_beta2),
            # One kernel over all parameters instead of a dozen passes each: 3-4x faster on CPU.
            fused=device.type in ("cpu", "cuda"),
        )
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "trainer"))
        self.samples_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        self.input_scale = 1.0
        self.bf16 = uses_bf16(tc.precision, device)
        self.sparse = {"auto": None, "sparse": True, "dense": False}[tc.kernels]
        target = sae.cfg.target_l0
        self.l0_control = L0Controller(target, sae.cfg.arch) if target and controlled(sae.cfg.arch) else None

    def take(self, batch: Batch) -> Tensor:
        """This SAE's rows of a batch (batches of several hooks are dicts by hook)."""
        if isinstance(batch, Tensor):
            return batch
        return batch[self.hook] if self.hook else next(iter(batch.values()))

    def dead(self) -> Tensor:
        return self.samples_since_fired >= self.dead_window

    @torch.no_grad()
    def initialise(self, sample: Tensor) -> None:
        """Fix the input scale and b_dec from a sample of an independent stream."""
        if self.tc.normalize_inputs:
            mean_norm = float(sample.norm(dim=-1).mean())
            if mean_norm <= 0:
                raise DataError("activations are all zero; cannot normalise inputs")
            self.input_scale = math.sqrt(self.sae.d_in) / mean_norm
            sample = sample * self.input_scale
        init = self.sae.cfg.b_dec_init
        if init == "mean":
            self.sae.b_dec.copy_(sample.mean(0))
        elif init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(sample))

    def train_step(self, x: Tensor, step: int, total_steps: int) -> TrainOutput:
        warmup = self.sae.cfg.sparsity_warmup_frac * total_steps
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        ctx = StepContext(
            sparsity_scale=ramp * (self.l0_control.multiplier if self.l0_control else 1.0),
            progress=step / total_steps,
            dead_mask=self.dead(),
            sparse=self.sparse,
            group=self.group,
        )
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            out = self.sae.training_forward(x, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.group.average_gradients(list(self.sae.parameters()))
        self.sae.remove_parallel_grad()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.tc.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step, total_steps)
        self.optimizer.step()
        self.sae.normalize_decoder()
        with torch.no_grad():
            fired = self.group.any(out.latents.fired())
            self.samples_since_fired.add_(self.group.rows(x.shape[0])).masked_fill_(fired, 0)
        if self.l0_control is not None:
            warming = self.sae.warm_startable and ctx.progress < self.sae.cfg.warm_start_frac
            self.l0_control.update(out.latents.l0(), integrate=ramp >= 1.0 and not warming)
        return out

    def lr_at(self, step: int, total_steps: int) -> float:
        lr, warm = self.lr, self.tc.lr_warmup_steps
        if warm and step < warm:
            return lr * (step + 1) / warm
        decay_start = int(total_steps * (1 - self.tc.lr_decay_frac))
        if step >= decay_start and total_steps > decay_start:
            return lr * (total_steps - step) / (total_steps - decay_start)
        return lr

    @torch.no_grad()
    def record(self, x: Tensor, out: TrainOutput) -> dict[str, Any]:
        if self.group.distributed:
            return self._global_record(x, out)
        residual = (x - out.recon.float()).pow(2).sum()
        variance = (x - x.mean(0)).pow(2).sum().clamp(min=1e-12)
        return {
            "loss": float(out.loss),
            "mse": float(out.mse),
            "sparsity": float(out.sparsity),
            "aux": float(out.aux),
            "l0": out.latents.l0(),
            "explained_variance": float(1 - residual / variance),
            "dead_fraction": float(self.dead().float().mean()),
            **self._control_record(),
        }

    def _control_record(self) -> dict[str, float]:
        return {"sparsity_multiplier": self.l0_control.multiplier} if self.l0_control else {}

    def _global_record(self, x: Tensor, out: TrainOutput) -> dict[str, Any]:
        """`record` over the whole batch of the data-parallel group: rank slices are equal, so
        the global means are the means of the ranks' means."""
        means = torch.stack([out.loss, out.mse, out.sparsity, out.aux]).detach().float()
        l0 = means.new_tensor([out.latents.l0()])
        residual = (x - out.recon.float()).pow(2).sum().reshape(1)
        sums = self.group.sum(torch.cat([means, l0, residual, x.pow(2).sum().reshape(1), x.sum(0)]))
        loss, mse, sparsity, aux, l0_sum, residual_sum, square_sum = sums[:7].tolist()
        n = self.group.rows(x.shape[0])
        variance = max(square_sum - float(sums[7:].pow(2).sum()) / n, 1e-12)
        size = self.group.size
        return {
            "loss": loss / size,
            "mse": mse / size,
            "sparsity": sparsity / size,
            "aux": aux / size,
            "l0": l0_sum / size,
            "explained_variance": 1 - residual_sum / variance,
            "dead_fraction": float(self.dead().float().mean()),
            **self._control_record(),
        }

    def state(self) -> dict[str, Any]:
        return {
            "input_scale": self.input_scale,
            "model": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samples_since_fired": self.samples_since_fired,
            "generator": self.generator.get_state(),
            **({"l0_control": self.l0_control.state()} if self.l0_control else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_int_keys(state["optimizer"]))
        self.samples_since_fired.copy_(state["samples_since_fired"])
        self.generator.set_state(state["generator"])
        self.input_scale = float(state["input_scale"])
        if self.l0_control is not None:
            self.l0_control.load_state(state["l0_control"])

    @torch.no_grad()
    def resample_dead(self, x: Tensor, encoder_scale: float) -> None:
        """Re-point dead latents at what the SAE fails to reconstruct, from scaled inputs `x`.

        As in Towards Monosemanticity, rows are drawn with probability proportional to their
        squared loss; unlike it, a dead latent takes the direction of the drawn row's
        residual x - recon (for a missed feature, that residual is the feature itself). Its
        encoder row gets `encoder_scale` times the mean alive encoder norm (TM: 0.2; about 1
        lets it compete in a top-k), its biases zero, and its Adam moments are reset.
        """
        sae = self.sae
        dead = self.dead().nonzero().flatten()
        if dead.numel() == 0:
            return
        residual = x - sae(x).recon
        weights = residual.pow(2).sum(-1).pow(2).cpu().double()
        if float(weights.sum()) <= 0:
            return
        distinct = int(weights.count_nonzero()) >= dead.numel()  # prefer distinct rows
        picks = torch.multinomial(
            weights, dead.numel(), replacement=not distinct, generator=self.generator
        )
        directions = residual[picks.to(x.device)]
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=x.device)
        alive[dead] = False
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0
        dec_norm = sae.W_dec[alive].norm(dim=-1).mean() if alive.any() else 1.0
        if sae.unit_norm_decoder:
            dec_norm = 1.0
        self._reset_latents(dead)
        sae.W_dec[dead] = directions * dec_norm
        sae.W_enc[:, dead] = (directions * encoder_scale * enc_norm).T
        self.samples_since_fired[dead] = 0

    def _reset_latents(self, latents: Tensor) -> None:
        """Zero the weights and Adam moments of `latents` along each parameter's latent axis."""
        params = dict(self.sae.named_parameters())
        for name, axis in self.sae.latent_axes().items():
            param = params[name]
            param.data.index_fill_(axis, latents, 0.0)
            for moment in self.optimizer.state.get(param, {}).values():
                if isinstance(moment, Tensor) and moment.shape == param.shape:
                    moment.index_fill_(axis, latents, 0.0)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        sae: SparseAutoencoder | Mapping[str, SparseAutoencoder],
        source: ActivationSource,
        out_dir: Path,
        resumable_keys: tuple[str, ...] = ("logging",),
        world: World | None = None,
    ):
        """`sae` is the one SAE of a `sae:` config, or the SAEs of a `saes:` config by name.
        Under torchrun (`world`, default the joined one) see sae/training/parallel.py."""
        self.cfg, self.source, self.out_dir = cfg, source, Path(out_dir)
        self.world = world or distributed.world()
        self.device = pick_device(cfg.train.device, "train.device")
        self.tc = cfg.train
        self.batch_size = schedule.batch_size(self.tc)
        self.total_steps = math.ceil(self.tc.samples / self.batch_size)
        entries = {entry.name: entry for entry in cfg.sae_entries()}
        saes = {"sae": sae} if isinstance(sae, SparseAutoencoder) else dict(sae)
        if len(saes) == 1 and len(entries) == 1:
            saes = {next(iter(entries)): next(iter(saes.values()))}
        missing = sorted(set(saes) ^ set(entries))
        if missing:
            raise UserError(f"SAEs and config entries do not match: {', '.join(missing)}")
        self.mode = parallel_mode(self.tc, len(saes), self.world)
        self.names = list(saes)
        group = self.world if self.mode == "data" else LOCAL
        self.runs = [
            SAETraining(entries[name], saes[name], self.tc, cfg.seed, self.device, group)
            for name in owned_saes(self.names, self.mode, self.world)
        ]
        # every rank reads the same hooks, so each SAE sees the batches it sees alone
        self.hooks = tuple(sorted({entry.hook for entry in entries.values() if entry.hook}))
        self.step = 0
        self.seconds = 0.0
        self.run_id: str | None = None
        self.resumable_keys = resumable_keys
        self.checkpoint_path = self.out_dir / CHECKPOINT
        self.resample_steps = sorted({int(f * self.total_steps) for f in self.tc.resample_at})

    def publishes(self, name: str) -> bool:
        """Whether this process writes SAE `name`'s results: its owner in SAE-parallel
        training, else rank 0 (data-parallel ranks hold identical copies)."""
        if self.mode == "saes":
            return any(run.name == name for run in self.runs)
        return self.world.main

    @property
    def sae(self) -> SparseAutoencoder:
        """The SAE of a single-SAE run."""
        (run,) = self.runs
        return run.sae

    # ------------------------------------------------------------------ public

    def fit(self) -> TrainSummary:
        stream = self._stream("train", partitioned=True)
        if self.tc.prefetch_batches:
            pin = self.device.type == "cuda"
            stream = Prefetcher(stream, self.tc.prefetch_batches, _pin_memory if pin else None)
        try:
            if self.checkpoint_path.exists():
                self._restore(stream)
            else:
                self._initialise()
            if self.mode == "data":  # identical already; DDP's guarantee, made explicit
                for run in self.runs:
                    self.world.broadcast_([*run.sae.parameters(), *run.sae.buffers()])
            self._loop(stream)
        finally:
            stream.close()
        return self.summary()

    def summary(self, name: str | None = None) -> TrainSummary:
        """Steps and time of the run; the input scale is that of SAE `name` (default: the first)."""
        return TrainSummary(
            steps=self.step,
            samples=self.step * self.batch_size,
            seconds=self.seconds,
            input_scale=self._run(name or self.runs[0].name).input_scale,
        )

    def fresh_batches(
        self, n_batches: int, purpose: str, name: str | None = None
    ) -> list[Tensor]:
        """Scaled batches from a stream of their own (for fitting thresholds, estimates)."""
        run = self._run(name)
        stream = self._stream(purpose)
        try:
            return [self._prepare(run, next(stream)) for _ in range(n_batches)]
        finally:
            stream.close()

    def _run(self, name: str | None) -> SAETraining:
        if name is None:
            (run,) = self.runs
            return run
        return next(run for run in self.runs if run.name == name)

    def _stream(self, purpose: str, partitioned: bool = False) -> BatchStream:
        """Whole batches, the same on every rank; `partitioned`: this rank's data-parallel slice."""
        seed = derive_seed(self.cfg.seed, purpose)
        if partitioned and self.mode == "data":
            return rank_stream(self.source, self.batch_size, seed, self.hooks, self.world)
        if self.hooks:
            return self.source.stream_hooks(self.batch_size, seed, self.hooks)
        return self.source.stream(self.batch_size, seed)

    # ------------------------------------------------------------------ set-up

    @torch.no_grad()
    def _initialise(self) -> None:
        """Fix each SAE's input scale and b_dec from a few batches of an independent stream."""
        stream = self._stream("input-norm")
        try:
            batches = [next(stream) for _ in range(self.tc.norm_estimate_batches)]
        finally:
            stream.close()
        for run in self.runs:
            rows = [run.take(batch).to(self.device, torch.float32) for batch in batches]
            run.initialise(torch.cat(rows))

    def _state(self, stream: BatchStream) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "step": self.step,
            "seconds": self.seconds,
            "run_id": self.run_id,
            "stream": stream.state_dict(),
            "saes": {run.name: run.state() for run in self.runs},
        }

    def _restore(self, stream: BatchStream) -> None:
        state = load_state(self.checkpoint_path)
        if "saes" not in state:
            raise UserError(
                f"{self.checkpoint_path} was written by an older version of the trainer; "
                "use a new --out directory"
            )
        _check_same_run(state["config"], to_dict(self.cfg), self.resumable_keys, self.out_dir)
        for run in self.runs:
            run.load_state(state["saes"][run.name])
        stream.load_state_dict(state["stream"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.run_id = state["run_id"]

    def _checkpoint(self, stream: BatchStream, log: RunLog | None) -> None:
        """Rank 0 writes the one checkpoint; SAE-parallel ranks send it their SAEs' states."""
        state = self._state(stream)
        if self.mode == "saes":
            state["saes"] = self.world.gather_states(state["saes"])
        if not self.world.main:
            return
        assert log is not None
        log.sync()
        state["saes"] = {name: state["saes"][name] for name in self.names}
        save_state(self.checkpoint_path, state)

    # ------------------------------------------------------------------ the loop

    def _loop(self, stream: BatchStream) -> None:
        if self.step >= self.total_steps:
            return
        lc = self.cfg.logging
        log = None
        if self.world.main:  # the one writer of metrics.jsonl (and wandb)
            log = RunLog(
                self.out_dir, to_dict(self.cfg), lc.wandb, lc.wandb_project, self.run_id, self.step
            )
            self.run_id = log.run_id
        archs = ",".join(sorted({run.sae.cfg.arch for run in self.runs}))
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=None if lc.progress and self.world.main else True,
            desc=f"train {archs}" + (f" x{len(self.runs)}" if len(self.runs) > 1 else ""),
            unit="step",
            dynamic_ncols=True,
        )
        every = self.tc.checkpoint_every_steps
        try:
            for run in self.runs:
                run.sae.train()
            while self.step < self.total_steps:
                started = time.perf_counter()
                batch = next(stream)
                steps = []
                for run in self.runs:
                    x = self._prepare(run, batch)
                    steps.append((run, x, run.train_step(x, self.step, self.total_steps)))
                self.step += 1
                if self.step in self.resample_steps:
                    self._resample()
                self.seconds += time.perf_counter() - started
                if self.step % lc.log_every_steps == 0 or self.step == self.total_steps:
                    self._log(log, bar, steps)
                bar.update(1)
                if (every and self.step % every == 0) or self.step == self.total_steps:
                    self._checkpoint(stream, log)
        finally:
            bar.close()
            if log is not None:
                log.close()

    def _log(
        self, log: RunLog | None, bar: tqdm, steps: list[tuple[SAETraining, Tensor, TrainOutput]]
    ) -> None:
        records = [
            {
                "step": self.step,
                "samples": self.step * self.batch_size,
                **({"sae": run.name} if len(self.names) > 1 else {}),
                **run.record(x, out),
                "lr": run.lr_at(self.step - 1, self.total_steps),
            }
            for run, x, out in steps
        ]
        if self.mode == "saes":  # each rank has its SAEs' records; rank 0 logs all, in order
            records = [r for part in self.world.all_gather_json(records) for r in part]
            records.sort(key=lambda r: self.names.index(r["sae"]))
        if log is None:
            return
        for record in records:
            log.log(record)
        bar.set_postfix(mse=f"{records[0]['mse']:.4g}", l0=f"{records[0]['l0']:.1f}")

    def _prepare(self, run: SAETraining, batch: Batch) -> Tensor:
        x = run.take(batch).to(self.device, torch.float32, non_blocking=True)
        if not torch.isfinite(x).all():
            raise DataError(f"activation batch at step {self.step} contains NaN or inf values")
        return x * run.input_scale if run.input_scale != 1.0 else x

    def _resample(self) -> None:
        runs = [run for run in self.runs if "resample" in run.sae.cfg.remedy()]
        if not runs:
            return
        n_batches = max(1, self.tc.resample_sample_rows // self.batch_size)
        for run in runs:
            batches = self.fresh_batches(n_batches, f"resample-{self.step}", run.name)
            run.resample_dead(torch.cat(batches), self.tc.resample_encoder_scale)


def _pin_memory(batch: Batch) -> Batch:
    if isinstance(batch, Tensor):
        return batch.pin_memory()
    return {hook: rows.pin_memory() for hook, rows in batch.items()}


def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm, started at the mean."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp(min=1e-12)
        weights = 1 / distances
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= tol * max(float(median.norm()), 1.0):
            median = updated
            break
        median = updated
    return median.float()


def _int_keys(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the optimizer's integer parameter ids into strings; turn them back."""
    state = {int(k): v for k, v in optimizer_state["state"].items()}
    return {**optimizer_state, "state": state}


def _check_same_run(saved: dict, current: dict, free: tuple[str, ...], out_dir: Path) -> None:
    def diff(a: Any, b: Any, path: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                sub = f"{path}.{key}" if path else key
                if sub in free:
                    continue
                found = diff(a.get(key), b.get(key), sub)
                if found:
                    return found
            return None
        return path if a != b else None

    key = diff(saved, current, "")
    if key:
        raise UserError(
            f"{out_dir} holds a checkpoint of a different run ('{key}' differs); "
            "use a new --out directory or the original config"
        )


def check_resumable(cfg: Config, out_dir: Path, resumable_keys: tuple[str, ...] = ("logging",)) -> None:
    """Stop before any work when out_dir holds the checkpoint of a different run."""
    path = Path(out_dir) / CHECKPOINT
    if path.is_file():
        saved = load_state(path).get("config", {})
        _check_same_run(saved, to_dict(cfg), resumable_keys, Path(out_dir))
