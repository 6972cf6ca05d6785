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
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from sae import distributed
from sae.config import Config, SAEEntry, TrainConfig, to_dict
from sae.device import pick_device, uses_bf16
from sae.distributed import LOCAL, World
from sae.errors import DataError, UserError
from sae.io import load_state, save_state, write_failure
from sae.memory import check_training_fits
from sae.models import SparseAutoencoder, StepContext, TrainOutput
from sae.progress import progress_bar, stage
from sae.seeding import derive_seed
from sae.sources.base import ActivationSource
from sae.sources.prefetch import Prefetcher
from sae.streams import BatchStream
from sae.training import schedule
from sae.training.checkpoint import CHECKPOINT, check_same_run, int_keys
from sae.training.l0_control import L0Controller, controlled
from sae.training.parallel import owned_saes, parallel_mode, rank_stream
from sae.training.training_log import TrainingLog

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
        self.l0_control = (
            L0Controller(target, sae.cfg.arch) if target and controlled(sae.cfg.arch) else None
        )
        # the first step whose loss was NaN or inf (-1: none). On an accelerator it stays on
        # the device, so that watching every step costs no synchronisation, and is read where
        # the loop syncs anyway; on the CPU a Python check is cheaper (1 vs 115 us a step,
        # measured on a loaded 2-core EPYC)
        self.first_bad_step: Tensor | int = torch.tensor(-1, device=device) if device.type != "cpu" else -1

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
        self.sae.initialise_b_dec(sample)

    def train_step(self, x: Tensor, step: int, total_steps: int) -> TrainOutput:
        warmup = self.sae.cfg.sparsity_warmup() * total_steps
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
        self._watch_loss(out.loss.detach(), step + 1)
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

    def _watch_loss(self, loss: Tensor, step: int) -> None:
        if isinstance(self.first_bad_step, int):
            if self.first_bad_step < 0 and not math.isfinite(loss.item()):
                self.first_bad_step = step
            return
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def check_finite(self, step: int) -> None:
        """DataError if the loss of any step so far, or a weight now, is NaN or inf."""
        bad_step = int(self.first_bad_step)
        if bad_step < 0 and all(bool(torch.isfinite(p).all()) for p in self.sae.parameters()):
            return
        what = f"its loss became NaN or inf at step {bad_step}" if bad_step >= 0 else (
            f"its weights became NaN or inf by step {step}"
        )
        raise DataError(
            f"training of SAE '{self.name}' diverged: {what} (with lr {self.lr:g}); the last "
            "checkpoint before it is kept and nothing was published"
        )

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
        """The step's figures over the whole batch of the data-parallel group (on one process,
        `group` is LOCAL and its sum returns its input). Rank slices are equal, so the global
        means are the means of the ranks' means; sums in float64, as the variance is taken
        from sums of squares."""
        means = torch.stack([out.loss, out.mse, out.sparsity, out.aux]).detach().double()
        l0 = means.new_tensor([out.latents.l0()])
        x = x.double()
        residual = (x - out.recon.double()).pow(2).sum().reshape(1)
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

    def _control_record(self) -> dict[str, float]:
        return {"sparsity_multiplier": self.l0_control.multiplier} if self.l0_control else {}

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
        self.optimizer.load_state_dict(int_keys(state["optimizer"]))
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
        on_step: Callable[[Trainer], None] | None = None,
    ):
        """`sae` is the one SAE of a `sae:` config, or the SAEs of a `saes:` config by name.
        Under torchrun (`world`, default the joined one) see sae/training/parallel.py.
        `on_step` is called with the trainer after every step (benchmarks that watch the
        weights during training, such as the suite's mcc curve)."""
        self.on_step = on_step
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
        check_training_fits(
            sum(p.numel() for one in saes.values() for p in one.parameters()),
            max(one.d_in for one in saes.values()),
            max(one.d_sae for one in saes.values()),
            self.batch_size,
            self.device,
        )
        self.names = list(saes)
        group = self.world if self.mode == "data" else LOCAL
        self.trainings = [
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
            return any(training.name == name for training in self.trainings)
        return self.world.main

    @property
    def sae(self) -> SparseAutoencoder:
        """The SAE of a single-SAE training."""
        (training,) = self.trainings
        return training.sae

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
                for training in self.trainings:
                    self.world.broadcast_([*training.sae.parameters(), *training.sae.buffers()])
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
            input_scale=self._training(name or self.trainings[0].name).input_scale,
        )

    def fresh_batches(
        self, n_batches: int, purpose: str, name: str | None = None
    ) -> list[Tensor]:
        """Scaled batches from a stream of their own (for fitting thresholds, estimates)."""
        training = self._training(name)
        stream = self._stream(purpose)
        try:
            return [self._prepare(training, next(stream)) for _ in range(n_batches)]
        finally:
            stream.close()

    def _training(self, name: str | None) -> SAETraining:
        if name is None:
            (training,) = self.trainings
            return training
        return next(training for training in self.trainings if training.name == name)

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
        for training in self.trainings:
            rows = [training.take(batch).to(self.device, torch.float32) for batch in batches]
            training.initialise(torch.cat(rows))

    def _state(self, stream: BatchStream) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "step": self.step,
            "seconds": self.seconds,
            "run_id": self.run_id,
            "stream": stream.state_dict(),
            "saes": {training.name: training.state() for training in self.trainings},
        }

    def _restore(self, stream: BatchStream) -> None:
        state = load_state(self.checkpoint_path)
        if "saes" not in state:
            raise UserError(
                f"{self.checkpoint_path} was written by an older version of the trainer; "
                "use a new --out directory"
            )
        check_same_run(state["config"], to_dict(self.cfg), self.resumable_keys, self.out_dir)
        for training in self.trainings:
            training.load_state(state["saes"][training.name])
        stream.load_state_dict(state["stream"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.run_id = state["run_id"]
        if self.world.main:  # says a resumed run from a fresh one, in logs that outlive a terminal
            print(f"sae: resuming from step {self.step} of {self.total_steps} "
                  f"({self.checkpoint_path})", file=sys.stderr, flush=True)  # fmt: skip

    def _checkpoint(self, stream: BatchStream, log: TrainingLog | None) -> None:
        """Rank 0 writes the one checkpoint; SAE-parallel ranks send it their SAEs' states."""
        state = self._state(stream)
        if self.mode == "saes":
            state["saes"] = self.world.gather_states(state["saes"])
        if not self.world.main:
            return
        assert log is not None
        log.sync()
        state["saes"] = {name: state["saes"][name] for name in self.names}
        try:
            save_state(self.checkpoint_path, state)
        except (OSError, SafetensorError) as error:  # the previous checkpoint is untouched
            raise UserError(
                f"cannot write {self.checkpoint_path} at step {self.step}: "
                f"{write_failure(error)}; the previous checkpoint is kept and the same command "
                "continues from it"
            ) from None

    # ------------------------------------------------------------------ the loop

    def _loop(self, stream: BatchStream) -> None:
        if self.step >= self.total_steps:
            return
        lc = self.cfg.logging
        log = None
        if self.world.main:  # the one writer of metrics.jsonl (and wandb)
            log = TrainingLog(
                self.out_dir, to_dict(self.cfg), lc.wandb, lc.wandb_project, self.run_id, self.step
            )
            self.run_id = log.run_id
        archs = ",".join(sorted({training.sae.cfg.arch for training in self.trainings}))
        desc = f"train {archs}" + (f" x{len(self.trainings)}" if len(self.trainings) > 1 else "")
        shown = lc.progress and self.world.main
        with stage(f"{desc} ({self.total_steps - self.step:,} steps)", shown):
            self._steps(stream, log, progress_bar(self.total_steps, desc, "step", shown, self.step))

    def _steps(self, stream: BatchStream, log: TrainingLog | None, bar: Any) -> None:
        lc = self.cfg.logging
        every = self.tc.checkpoint_every_steps
        try:
            for training in self.trainings:
                training.sae.train()
            while self.step < self.total_steps:
                started = time.perf_counter()
                batch = next(stream)
                steps = []
                for training in self.trainings:
                    x = self._prepare(training, batch)
                    steps.append((training, x, training.train_step(x, self.step, self.total_steps)))
                self.step += 1
                if self.step in self.resample_steps:
                    self._resample()
                self.seconds += time.perf_counter() - started
                if self.on_step is not None:  # outside the timed step: the watcher's cost
                    self.on_step(self)
                logs = self.step % lc.log_every_steps == 0 or self.step == self.total_steps
                saves = (every and self.step % every == 0) or self.step == self.total_steps
                if logs or saves:  # nothing non-finite is logged, checkpointed or published
                    for training in self.trainings:
                        training.check_finite(self.step)
                if logs:
                    self._log(log, bar, steps)
                bar.update(1)
                if saves:
                    self._checkpoint(stream, log)
        finally:
            bar.close()
            if log is not None:
                log.close()

    def _log(
        self, log: TrainingLog | None, bar: Any, steps: list[tuple[SAETraining, Tensor, TrainOutput]]
    ) -> None:
        records = [
            {
                "step": self.step,
                "samples": self.step * self.batch_size,
                **({"sae": training.name} if len(self.names) > 1 else {}),
                **training.record(x, out),
                "lr": training.lr_at(self.step - 1, self.total_steps),
            }
            for training, x, out in steps
        ]
        if self.mode == "saes":  # each rank has its SAEs' records; rank 0 logs all, in order
            records = [r for part in self.world.all_gather_json(records) for r in part]
            records.sort(key=lambda r: self.names.index(r["sae"]))
        if log is None:
            return
        for record in records:
            log.log(record)
        now = records[0]
        bar.set_postfix(
            loss=f"{now['loss']:.4g}", l0=f"{now['l0']:.1f}", ev=f"{now['explained_variance']:.3f}"
        )

    def _prepare(self, training: SAETraining, batch: Batch) -> Tensor:
        x = training.take(batch).to(self.device, torch.float32, non_blocking=True)
        if not torch.isfinite(x).all():
            raise DataError(f"activation batch at step {self.step} contains NaN or inf values")
        return x * training.input_scale if training.input_scale != 1.0 else x

    def _resample(self) -> None:
        resampled = [t for t in self.trainings if "resample" in t.sae.cfg.remedy()]
        if not resampled:
            return
        n_batches = max(1, self.tc.resample_sample_rows // self.batch_size)
        for training in resampled:
            batches = self.fresh_batches(n_batches, f"resample-{self.step}", training.name)
            training.resample_dead(torch.cat(batches), self.tc.resample_encoder_scale)


def _pin_memory(batch: Batch) -> Batch:
    if isinstance(batch, Tensor):
        return batch.pin_memory()
    return {hook: rows.pin_memory() for hook, rows in batch.items()}
