"""EleutherAI's sparsify as a second peer in the benchmarks (`pip install sae[bench]`).

sparsify's SparseCoder is TopK only. Its training step here is the one its Trainer takes with
its defaults (loss_fn fvu, optimizer signum, auxk_alpha 0): decoder rows back to unit norm,
forward, FVU backward, the gradient parallel to the decoder rows removed, then
ScheduleFreeWrapper(SignSGD) at its default rate 5e-3 / sqrt(num_latents / 2^14) with
momentum 0.95. Without Triton (CPUs) its decoder runs in eager PyTorch, as a CPU user gets it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

DISTRIBUTION = "eai-sparsify"  # the package index name; the module is `sparsify`
MOMENTUM = 0.95  # its Trainer's ScheduleFreeWrapper momentum


def available() -> bool:
    return importlib.util.find_spec("sparsify") is not None


def default_lr(num_latents: int) -> float:
    """sparsify's signum default: 5e-3 scaled by 1/sqrt(num_latents / 2^14)."""
    return 5e-3 / (num_latents / 2**14) ** 0.5


class SparsifyTopK:
    """A sparsify SparseCoder and its training step, on rows of width d_in."""

    def __init__(self, d_in: int, num_latents: int, k: int, device: torch.device, lr: float | None = None):
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD

        self.sae = SparseCoder(
            d_in, SparseCoderConfig(num_latents=num_latents, k=k), device=device, dtype=torch.float32
        )
        rate = lr if lr is not None else default_lr(num_latents)
        self.optimizer: Any = ScheduleFreeWrapper(
            SignSGD([{"params": self.sae.parameters(), "lr": rate}]), momentum=MOMENTUM
        )
        self.optimizer.train()
        self.started = False

    def step(self, x: Tensor) -> float:
        """One training step on the rows x; returns the batch's FVU."""
        if not self.started:  # its Trainer starts b_dec at the first batch's mean
            with torch.no_grad():
                self.sae.b_dec.copy_(x.mean(0))
            self.started = True
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x, dead_mask=None)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(out.fvu.detach())

    def eval(self) -> None:
        """ScheduleFree keeps training and evaluation weights apart; use the evaluation ones."""
        self.optimizer.eval()

    # the Dictionary protocol (sae/evaluation/reconstruction.py), for the shared metric code
    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        out = self.sae.encode(x.to(self.sae.W_dec.dtype))
        latents = x.new_zeros(x.shape[0], self.sae.num_latents)
        return latents.scatter_(1, out.top_indices, out.top_acts.to(x.dtype))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.sae.W_dec + self.sae.b_dec


def bench_step(arch: str, d: int, m: int, k: int, batches: list[Tensor], device: torch.device) -> Callable[[int], None] | None:
    """sparsify's step on batch i (cycled), or None where it does not apply (not installed,
    or an architecture it lacks)."""
    if arch != "topk" or not available():
        return None
    coder = SparsifyTopK(d, m, k, device)

    def step(i: int) -> None:
        coder.step(batches[i % len(batches)])

    return step
