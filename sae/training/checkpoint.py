"""The training checkpoint (DIR/checkpoint.safetensors): its name, and whether a directory's
checkpoint belongs to the run a config describes, so that a changed config on an existing DIR
stops before any work instead of resuming something else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.config import Config, to_dict
from sae.errors import UserError
from sae.io import load_state

CHECKPOINT = "checkpoint.safetensors"


def int_keys(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the optimizer's integer parameter ids into strings; turn them back."""
    state = {int(k): v for k, v in optimizer_state["state"].items()}
    return {**optimizer_state, "state": state}


def check_same_run(saved: dict, current: dict, free: tuple[str, ...], out_dir: Path) -> None:
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


def check_resumable(cfg: Config, out_dir: Path, resumable_keys: tuple[str, ...] = ("logging",)) -> None:
    """Stop before any work when out_dir holds the checkpoint of a different run."""
    path = Path(out_dir) / CHECKPOINT
    if path.is_file():
        saved = load_state(path).get("config", {})
        check_same_run(saved, to_dict(cfg), resumable_keys, Path(out_dir))
