"""Which torch device a config's `device: auto | cpu | cuda` means on this machine."""

from __future__ import annotations

import sys

import torch

from sae.errors import UserError


def pick_device(name: str, key: str) -> torch.device:
    """`key` names the config entry, for the error when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA device is available")
    return torch.device(name)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether the encoder matmul runs in bf16: always for "bf16", never for "fp32", and for
    "auto" where bf16 matmuls are faster than fp32: CUDA with bf16, and CPUs with bf16
    instructions, AMX tiles or AVX512-BF16 (measured on the latter, an AMD EPYC, 2 threads:
    [4096, 129] x [129, 1024] 3.0 vs 9.2 ms, [4096, 513] x [513, 8192] 91 vs 238 ms). Without
    them oneDNN emulates bf16, slower than fp32."""
    if precision == "fp32":
        return False
    fast = fast_bf16(device)
    if precision == "bf16" and not fast:
        _warn_slow_bf16(device)
    return precision == "bf16" or fast


def fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


_warned_slow_bf16: set[str] = set()


def _warn_slow_bf16(device: torch.device) -> None:
    """Forced bf16 where oneDNN emulates it trains several times slower than fp32 (issue 14
    reports 6-7x); say so once per device, not once per SAE of a sweep."""
    if device.type in _warned_slow_bf16:
        return
    _warned_slow_bf16.add(device.type)
    what = "this CPU has no AMX or AVX512-BF16" if device.type == "cpu" else "no fast bf16 here"
    print(
        f"sae: warning: train.precision=bf16 but {what}, so bf16 matmuls are emulated and "
        "several times slower than fp32; train.precision=auto picks the faster one",
        file=sys.stderr,
    )
