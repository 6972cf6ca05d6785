"""Batch size, learning rate and dead-latent window that follow the run, when not set.

A user who states only `train.samples` (and the SAE's width) gets a schedule sized to them;
the reasons come from the ground-truth suite (`sae bench suite`, configs/suite/):

- Batch size: recovery needs optimizer steps more than it needs big batches. A fixed 4096 left
  suite case s01 (500k samples) 122 steps and mcc 0.43; the 256-row batch chosen here (1950
  steps, lr 4e-3) reaches 0.96 (at lr 4e-3). So the batch is the power of two that gives about STEPS_WANTED
  steps, between 256 (below that per-step overhead dominates on CPU) and 4096 (large runs simply
  take more steps).
- Learning rate: Adam moves every weight by about lr per step, and a wider dictionary has more
  latents sharing each input direction, so the rate falls as 1/sqrt(width) (the exponent Gao et
  al. 2024 fit): LR_AT_1024 at 1024 latents, capped at LR_MAX. On case s05 (512 latents) mcc
  went 0.90 / 0.94 / 0.95 at lr 1.4e-3 / 2.8e-3 / 5e-3, and on s04 (256) 0.91 / 0.94 at 4e-3 /
  5e-3; configs/toy/recovery.yaml trains 1024 latents at 5e-3. Widths far above the suite's
  (16k and more: 1e-3 and less here) are extrapolated, not measured.
- Dead window: a latent that has not fired for a twentieth of the run counts as dead for AuxK
  and resampling. With the old fixed 1M samples a run of 1M samples never saw a dead latent, so
  AuxK never acted. (It is not the whole story: Zipfian case s04 still ends with 12% of its
  latents silent, 12.5% with the old window.)
"""

from __future__ import annotations

import math

from sae.config import TrainConfig

STEPS_WANTED = 4000
BATCH_MIN, BATCH_MAX = 256, 4096
LR_AT_1024 = 4e-3
LR_MIN, LR_MAX = 5e-5, 5e-3
DEAD_WINDOW_FRACTION = 1 / 20
DEAD_WINDOW_MAX = 1_000_000


def batch_size(tc: TrainConfig) -> int:
    if tc.batch_size is not None:
        return tc.batch_size
    wanted = max(1.0, tc.samples / STEPS_WANTED)
    return int(min(BATCH_MAX, max(BATCH_MIN, 2 ** round(math.log2(wanted)))))


def learning_rate(tc: TrainConfig, d_sae: int) -> float:
    if tc.lr is not None:
        return tc.lr
    return min(LR_MAX, max(LR_MIN, LR_AT_1024 * math.sqrt(1024 / d_sae)))


def dead_window(tc: TrainConfig) -> int:
    if tc.dead_window_samples is not None:
        return tc.dead_window_samples
    window = max(int(tc.samples * DEAD_WINDOW_FRACTION), 20 * batch_size(tc))
    return min(DEAD_WINDOW_MAX, window)
