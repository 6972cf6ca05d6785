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
