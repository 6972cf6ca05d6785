"""Any SAELens-format SAE as a dictionary our evaluations accept.

A folder (cfg.json + sae_weights.safetensors: ours, one SAELens saved, one a user downloaded)
is loaded by SAELens itself, so every architecture SAELens knows (and its activation
normalisation, folded decoder norms, sparse top-k outputs) behaves exactly as it does there. A
pretrained release is `RELEASE:SAE_ID` (e.g. `gpt2-small-res-jb:blocks.8.hook_resid_pre`),
downloaded through SAELens when the hub is reachable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.errors import UserError

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"


@dataclass
class ExternalSAE:
    """A SAELens SAE with what our evaluations ask of a dictionary (encode, decode, W_dec,
    d_in, d_sae, train/eval). Its weights take the model's own activations: input_scale 1."""

    sae: Any  # sae_lens.SAE
    name: str

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def arch(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def hook_name(self) -> str | None:
        metadata = getattr(self.sae.cfg, "metadata", None)
        return getattr(metadata, "hook_name", None)

    @property
    def training(self) -> bool:
        return bool(self.sae.training)

    def eval(self) -> ExternalSAE:
        self.sae.eval()
        return self

    def train(self, mode: bool = True) -> ExternalSAE:
        self.sae.train(mode)
        return self

    def encode(self, x: Tensor) -> Tensor:
        latents = self.sae.encode(x.to(self.sae.W_dec.dtype))
        # SAELens's top-k SAEs may return sparse latents; our statistics index dense rows
        return latents.to_dense() if latents.is_sparse else latents

    def decode(self, latents: Tensor) -> Tensor:
        return self.sae.decode(latents).float()


def is_release_id(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()


@torch.no_grad()
def load_external(spec: str | Path, device: str = "cpu") -> ExternalSAE:
    """Load a SAELens folder, or a SAELens pretrained release given as RELEASE:SAE_ID."""
    if is_release_id(str(spec)):
        release, sae_id = str(spec).split(":", 1)
        return ExternalSAE(_from_pretrained(release, sae_id, device), str(spec))
    path = Path(spec)
    check_saelens_folder(path)
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except Exception as error:  # SAELens raises what its parts raise: name the folder and it
        raise UserError(
            f"{path} could not be loaded by SAELens ({type(error).__name__}: {error})"
        ) from None
    sae.eval()
    return ExternalSAE(sae, path.resolve().name)


def check_saelens_folder(path: Path) -> None:
    if not path.is_dir():
        raise UserError(
            f"SAE not found: {path} (give a SAELens folder or a pretrained RELEASE:SAE_ID)"
        )
    for name in (CFG, WEIGHTS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a SAELens folder (no {name})")
    try:
        cfg = json.loads((path / CFG).read_text())
    except ValueError as error:
        raise UserError(f"{path / CFG} is not readable JSON ({error})") from None
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise UserError(f"{path / CFG} is not a SAELens config (no d_in/d_sae)")


def _from_pretrained(release: str, sae_id: str, device: str) -> Any:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    known = get_pretrained_saes_directory()
    if release not in known:
        raise UserError(f"'{release}' is not a SAELens pretrained release")
    if sae_id not in known[release].saes_map:
        raise UserError(f"SAELens release '{release}' has no SAE '{sae_id}'")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as error:  # offline: huggingface_hub's connection / cache-miss errors
        raise UserError(
            f"could not download {release}:{sae_id} from the hub (offline? "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    sae.eval()
    return sae
