"""Which torch device a config's `device: auto | cpu | cuda` means on this machine."""

from __future__ import annotations

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
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
