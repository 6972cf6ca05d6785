"""Will it fit? A rough memory estimate before allocating an SAE or a training batch.

Sizes are validated as positive integers, so `sae.d_sae=10**12` or `train.batch_size=10**10`
pass the schema and then fail deep in torch (a traceback, or the kernel's OOM killer after
minutes of swapping). The estimates here are deliberately loose lower bounds: they refuse only
what cannot fit at all, and say the largest value that might.
"""

from __future__ import annotations

import os

import torch

from sae.errors import UserError

FP32 = 4
# building an SAE holds the random directions, W_dec and W_enc at once
BUILD_COPIES = 3
# training holds weights, gradients and two Adam moments of every parameter
TRAIN_COPIES = 4
# per row of a batch: the input, its scaled copy and reconstruction (d_in each), and
# pre-activations with their gradient (d_sae each), at least
ROW_COPIES_IN, ROW_COPIES_LATENT = 3, 2


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: the GPU's free memory, else the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_sae_fits(d_in: int, d_sae: int, key: str = "sae.d_sae") -> None:
    """Before building an SAE of d_in x d_sae on the host."""
    per_latent = BUILD_COPIES * FP32 * (d_in + 1)
    needed, free = per_latent * d_sae, available_bytes(torch.device("cpu"))
    if needed > free:
        raise UserError(
            f"{key}={d_sae} needs about {_gb(needed)} to build for d_in={d_in}, and "
            f"{_gb(free)} is available: at most {key}={max(1, free // per_latent)} fits"
        )


def check_training_fits(
    params: int, d_in: int, d_sae: int, batch_size: int, device: torch.device
) -> None:
    """Before training `params` parameters (all SAEs) with batches of `batch_size` rows."""
    fixed = TRAIN_COPIES * FP32 * params
    per_row = FP32 * (ROW_COPIES_IN * d_in + ROW_COPIES_LATENT * d_sae)
    free = available_bytes(device)
    if fixed + per_row * batch_size > free:
        fits = (free - fixed) // per_row
        advice = (
            f"at most train.batch_size={fits} fits"
            if fits >= 1
            else "the SAEs' weights and optimizer state alone do not fit: use a smaller d_sae"
        )
        raise UserError(
            f"training needs about {_gb(fixed + per_row * batch_size)} on {device} "
            f"(train.batch_size={batch_size}) and {_gb(free)} is free: {advice}"
        )
