"""Target L0 for the penalty architectures: a controller on the sparsity coefficient.

relu, gated and jumprelu trade reconstruction against a sparsity penalty, so their L0 is a
consequence of a coefficient nobody can guess for new data. With `sae.target_l0` set, the
coefficient is multiplied by exp(u), where u is a PI controller's output on the log ratio of
the training L0 (smoothed over recent steps) to the target: the coefficient grows while the SAE
is denser than asked and shrinks while it is sparser. Working in log space keeps the correction
scale-free (the same gain serves an L1 on magnitudes and an L0 count) and the multiplier
positive; the integral term is clamped so it cannot saturate (wind up) while the penalty is
still ramping up or a warm start holds the L0 fixed, and it only integrates once the penalty is
fully on. The batch variants (topk, batchtopk, matryoshka) take the target as k instead.

SynthSAEBench's experiments tune L0 the same way (an L0 autotuner); this one is a handful of
lines because it only has to move one number.
"""

from __future__ import annotations

import math
from typing import Any

# Per-step integral gain on log(L0 / target), by how fast the architecture's L0 answers the
# coefficient. relu and gated answer within a few steps (b_enc moves at the full LR): at 0.1
# their L0 rang between 0.1x and 4x the target, at 0.03 it settles. A JumpReLU threshold moves
# by about lr per step in log space, so its L0 lags the coefficient: at 0.03 the controller
# trailed the still-falling coefficient and ended 10% sparse of the target, at 0.1 within 5%.
INTEGRAL_GAIN = {"relu": 0.03, "gated": 0.03, "jumprelu": 0.1}
# |log(L0 / target)| counted per step: a dense start (L0 = half the latents) would otherwise
# wind the integral up within a few steps and overshoot for hundreds.
ERROR_LIMIT = 0.5
PROPORTIONAL_GAIN = 0.5  # immediate response to the current error, damps the integral's swing
SMOOTHING = 0.9  # exponential moving average of the per-batch L0
LOG_LIMIT = 12.0  # |log multiplier| bound: 1.6e5x either way, far beyond any useful range


class L0Controller:
    """Holds the multiplier on the sparsity coefficient of one SAE with a target L0."""

    def __init__(self, target: float, arch: str):
        self.target = float(target)
        self.gain = INTEGRAL_GAIN[arch]
        self.integral = 0.0
        self.smoothed: float | None = None

    @property
    def error(self) -> float:
        if self.smoothed is None:
            return 0.0
        error = math.log(max(self.smoothed, 1e-3) / self.target)
        return max(-ERROR_LIMIT, min(ERROR_LIMIT, error))

    @property
    def multiplier(self) -> float:
        u = self.integral + PROPORTIONAL_GAIN * self.error
        return math.exp(max(-LOG_LIMIT, min(LOG_LIMIT, u)))

    def update(self, l0: float, integrate: bool) -> None:
        """Feed one training step's L0; `integrate` is False while the penalty is not yet
        fully on (sparsity warm-up, TopK warm start), when L0 says nothing about it."""
        if not integrate:
            return
        self.smoothed = l0 if self.smoothed is None else SMOOTHING * self.smoothed + (1 - SMOOTHING) * l0
        self.integral = max(-LOG_LIMIT, min(LOG_LIMIT, self.integral + self.gain * self.error))

    def state(self) -> dict[str, Any]:
        return {"integral": self.integral, "smoothed": self.smoothed}

    def load_state(self, state: dict[str, Any]) -> None:
        self.integral = float(state["integral"])
        smoothed = state["smoothed"]
        self.smoothed = None if smoothed is None else float(smoothed)


def controlled(arch: str) -> bool:
    """Architectures whose L0 follows a sparsity coefficient (the others take target_l0 as k)."""
    return arch in INTEGRAL_GAIN
