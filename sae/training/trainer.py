"""The training loop: any stream of activation batches in, a trained SAE out.

Adam with linear LR warm-up and a linear decay over the last `lr_decay_frac` of training,
gradient clipping, inputs scaled so their mean norm is sqrt(d_in) (the factor is kept and
folded into the weights at export), b_dec started at the data's geometric median or mean,
dead latents tracked over a window of samples and remedied (AuxK inside the loss, or
resampling as in Towards Monosemanticity), and an atomic checkpoint every few steps.

Exact resume: the checkpoint holds the weights, Adam's moments, the step, the dead-latent
counters, the trainer's RNG and the batch stream's position, so a run killed at any point and
started again ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sae.config import Config, to_dict
from sae.device import pick_device
from sae.errors import DataError, UserError
from sae.io import load_state, save_state
from sae.models import SparseAutoencoder, StepContext
from sae.seeding import derive_seed
from sae.sources.base import ActivationSource, BatchStream
from sae.training.run_log import RunLog

CHECKPOINT = "checkpoint.safetensors"



@dataclass
class TrainSummary:
    steps: int
    samples: int
    seconds: float  # wall-clock time spent in training steps, summed over resumes
    input_scale: float

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    def __init__(
        self,
        cfg: Config,
        sae: SparseAutoencoder,
        source: ActivationSource,
        out_dir: Path,
        resumable_keys: tuple[str, ...] = ("logging",),
    ):
        self.cfg, self.source, self.out_dir = cfg, source, Path(out_dir)
        self.device = pick_device(cfg.train.device, "train.device")
        self.sae = sae.to(self.device)
        self.tc = cfg.train
        self.batch_size = self.tc.batch_size
        self.total_steps = math.ceil(self.tc.samples / self.batch_size)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=self.tc.lr, betas=(self.tc.adam_beta1, self.tc.adam_beta2)
        )
        self.generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "trainer"))
        self.samples_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=self.device)
        self.step = 0
        self.seconds = 0.0
        self.input_scale = 1.0
        self.run_id: str | None = None
        self.resumable_keys = resumable_keys
        self.checkpoint_path = self.out_dir / CHECKPOINT
        self.resample_steps = sorted({int(f * self.total_steps) for f in self.tc.resample_at})

    # ------------------------------------------------------------------ public

    def fit(self) -> TrainSummary:
        stream = self.source.stream(self.batch_size, derive_seed(self.cfg.seed, "train"))
        try:
            if self.checkpoint_path.exists():
                self._restore(stream)
            else:
                self._initialise()
            self._loop(stream)
        finally:
            stream.close()
        return self.summary()

    def summary(self) -> TrainSummary:
        return TrainSummary(
            steps=self.step,
            samples=self.step * self.batch_size,
            seconds=self.seconds,
            input_scale=self.input_scale,
        )

    def fresh_batches(self, n_batches: int, purpose: str) -> list[Tensor]:
        """Scaled batches from a stream of their own (for fitting thresholds, estimates)."""
        stream = self.source.stream(self.batch_size, derive_seed(self.cfg.seed, purpose))
        try:
            return [self._prepare(next(stream)) for _ in range(n_batches)]
        finally:
            stream.close()

    # ------------------------------------------------------------------ set-up

    @torch.no_grad()
    def _initialise(self) -> None:
        """Fix the input scale and b_dec from a few batches of an independent stream."""
        sample = torch.cat(self.fresh_batches(self.tc.norm_estimate_batches, "input-norm"))
        if self.tc.normalize_inputs:
            mean_norm = float(sample.norm(dim=-1).mean())
            if mean_norm <= 0:
                raise DataError("activations are all zero; cannot normalise inputs")
            self.input_scale = math.sqrt(self.sae.d_in) / mean_norm
            sample = sample * self.input_scale
        init = self.cfg.sae.b_dec_init
        if init == "mean":
            self.sae.b_dec.copy_(sample.mean(0))
        elif init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(sample))

    def _state(self, stream: BatchStream) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "step": self.step,
            "seconds": self.seconds,
            "input_scale": self.input_scale,
            "run_id": self.run_id,
            "model": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "samples_since_fired": self.samples_since_fired,
            "generator": self.generator.get_state(),
            "stream": stream.state_dict(),
        }

    def _restore(self, stream: BatchStream) -> None:
        state = load_state(self.checkpoint_path)
        _check_same_run(state["config"], to_dict(self.cfg), self.resumable_keys, self.out_dir)
        self.sae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_int_keys(state["optimizer"]))
        self.samples_since_fired.copy_(state["samples_since_fired"])
        self.generator.set_state(state["generator"])
        stream.load_state_dict(state["stream"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.input_scale, self.run_id = float(state["input_scale"]), state["run_id"]

    def _checkpoint(self, stream: BatchStream, log: RunLog) -> None:
        log.sync()
        save_state(self.checkpoint_path, self._state(stream))

    # ------------------------------------------------------------------ the loop

    def _loop(self, stream: BatchStream) -> None:
        if self.step >= self.total_steps:
            return
        lc = self.cfg.logging
        log = RunLog(
            self.out_dir, to_dict(self.cfg), lc.wandb, lc.wandb_project, self.run_id, self.step
        )
        self.run_id = log.run_id
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=None if lc.progress else True,
            desc=f"train {self.cfg.sae.arch}",
            unit="step",
            dynamic_ncols=True,
        )
        every = self.tc.checkpoint_every_steps
        try:
            self.sae.train()
            while self.step < self.total_steps:
                started = time.perf_counter()
                x = self._prepare(next(stream))
                out = self._train_step(x)
                self.step += 1
                if self.step in self.resample_steps and "resample" in self.cfg.sae.remedy():
                    self._resample_dead()
                self.seconds += time.perf_counter() - started
                if self.step % lc.log_every_steps == 0 or self.step == self.total_steps:
                    record = self._record(x, out)
                    log.log(record)
                    bar.set_postfix(mse=f"{record['mse']:.4g}", l0=f"{record['l0']:.1f}")
                bar.update(1)
                if (every and self.step % every == 0) or self.step == self.total_steps:
                    self._checkpoint(stream, log)
        finally:
            bar.close()
            log.close()

    def _prepare(self, batch: Tensor) -> Tensor:
        x = batch.to(self.device, torch.float32, non_blocking=True)
        if not torch.isfinite(x).all():
            raise DataError(f"activation batch at step {self.step} contains NaN or inf values")
        return x * self.input_scale if self.input_scale != 1.0 else x

    def _train_step(self, x: Tensor) -> Any:
        warmup = self.cfg.sae.sparsity_warmup_frac * self.total_steps
        ctx = StepContext(
            sparsity_scale=min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0,
            progress=self.step / self.total_steps,
            dead_mask=self.samples_since_fired >= self.tc.dead_window_samples,
        )
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.tc.precision == "bf16"):
            out = self.sae.training_forward(x, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sae.remove_parallel_grad()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.tc.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.optimizer.step()
        self.sae.normalize_decoder()
        with torch.no_grad():
            fired = (out.latents != 0).any(0)
            self.samples_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
        return out

    def _lr(self, step: int) -> float:
        lr, warm = self.tc.lr, self.tc.lr_warmup_steps
        if warm and step < warm:
            return lr * (step + 1) / warm
        decay_start = int(self.total_steps * (1 - self.tc.lr_decay_frac))
        if step >= decay_start and self.total_steps > decay_start:
            return lr * (self.total_steps - step) / (self.total_steps - decay_start)
        return lr

    @torch.no_grad()
    def _record(self, x: Tensor, out: Any) -> dict[str, Any]:
        residual = (x - out.recon.float()).pow(2).sum()
        variance = (x - x.mean(0)).pow(2).sum().clamp(min=1e-12)
        dead = self.samples_since_fired >= self.tc.dead_window_samples
        return {
            "step": self.step,
            "samples": self.step * self.batch_size,
            "loss": float(out.loss),
            "mse": float(out.mse),
            "sparsity": float(out.sparsity),
            "aux": float(out.aux),
            "l0": float((out.latents != 0).sum(-1).float().mean()),
            "explained_variance": float(1 - residual / variance),
            "dead_fraction": float(dead.float().mean()),
            "lr": self._lr(self.step - 1),
        }

    # ------------------------------------------------------------------ resampling

    @torch.no_grad()
    def _resample_dead(self) -> None:
        """Re-point dead latents at what the SAE currently fails to reconstruct.

        As in Towards Monosemanticity, rows are drawn with probability proportional to their
        squared loss; unlike it, a dead latent takes the direction of the drawn row's
        residual x - recon (for a missed feature, that residual is the feature itself), and
        its encoder row gets `resample_encoder_scale` times the mean alive encoder norm, so
        it can win against alive latents in a top-k. Biases and Adam moments are reset.
        """
        dead = (self.samples_since_fired >= self.tc.dead_window_samples).nonzero().flatten()
        if dead.numel() == 0:
            return
        n_batches = max(1, self.tc.resample_sample_rows // self.batch_size)
        x = torch.cat(self.fresh_batches(n_batches, f"resample-{self.step}"))
        residual = x - self.sae(x).recon
        weights = residual.pow(2).sum(-1).pow(2).cpu().double()
        if float(weights.sum()) <= 0:
            return
        distinct = int(weights.count_nonzero()) >= dead.numel()  # prefer distinct rows
        picks = torch.multinomial(
            weights, dead.numel(), replacement=not distinct, generator=self.generator
        )
        directions = residual[picks.to(x.device)]
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        alive = torch.ones(self.sae.d_sae, dtype=torch.bool, device=self.device)
        alive[dead] = False
        enc_norm = self.sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0
        dec_norm = self.sae.W_dec[alive].norm(dim=-1).mean() if alive.any() else 1.0
        if self.sae.unit_norm_decoder:
            dec_norm = 1.0
        self._reset_latents(dead)
        self.sae.W_dec[dead] = directions * dec_norm
        self.sae.W_enc[:, dead] = (directions * self.tc.resample_encoder_scale * enc_norm).T
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
