"""Durable file writes and safetensors state files.

Everything we write that another stage or a resumed run relies on goes through here: written to
a temporary file beside the target, fsynced, renamed over the target, and the directory fsynced,
so a reader (or a run killed at any instant) sees either the old file or the new one, whole.
State that mixes tensors and plain values is stored as one safetensors file: tensors by name,
everything else as JSON in the header metadata. Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from sae.errors import DataError

_TENSOR = "__tensor__"
_STATE = "sae_state"  # the one metadata entry of a state file: {"hash": ..., "state": ...}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def publish_dir(staging: Path, target: Path) -> None:
    """Durably replace directory `target` with the fully written directory `staging`."""
    for path in staging.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(staging)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then move tmp over `path` durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def flatten_state(tree: Any, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """Split a nested state into named tensors and a JSON-able skeleton that points at them."""
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {_TENSOR: path}
        if isinstance(node, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        return node

    return tensors, walk(tree, prefix)


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def state_hash(skeleton_json: str, tensors: dict[str, Tensor]) -> str:
    """xxh3-128 of a state: its JSON part and every tensor's name, dtype, shape and bytes.

    Like the store's hashes it catches accidents (a flipped bit, a torn copy), not tampering:
    anyone who edits the file can recompute it.
    """
    digest = xxhash.xxh3_128(skeleton_json.encode())
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
    return f"xxh3_128:{digest.hexdigest()}"


def write_failure(error: OSError | SafetensorError) -> str:
    """Why a write failed, in words ("no space left on device"); safetensors reports I/O
    failures as SafetensorError("... (os error N)")."""
    code = getattr(error, "errno", None)
    if code is None and (found := re.search(r"os error (\d+)", str(error))):
        code = int(found.group(1))
    if code == errno.ENOSPC:
        return "no space left on device"
    return os.strerror(code) if code else str(error)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a nested state dict (tensors + plain values) as one safetensors file,
    with a hash of everything in it that load_state checks. One metadata entry: safetensors
    writes several in a random order, and a resumed harvest's files must be byte-identical."""
    tensors, skeleton = flatten_state(state)
    entry = {"hash": state_hash(json.dumps(skeleton), tensors), "state": skeleton}
    metadata = {_STATE: json.dumps(entry)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_state(path: Path) -> dict[str, Any]:
    """A state written by save_state; DataError if it is unreadable or does not match its hash
    (files written before the hash existed have none and are read unchecked)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        if _STATE in metadata:
            entry = json.loads(metadata[_STATE])
            skeleton, claimed = entry["state"], entry["hash"]
        else:  # written before the hash existed
            skeleton, claimed = json.loads(metadata["state"]), None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path} is not a readable state file ({error})") from None
    if claimed is not None and claimed != state_hash(json.dumps(skeleton), tensors):
        raise DataError(
            f"{path} does not match its hash: it is corrupt (a damaged disk or copy); "
            "restore it, or remove it to start that stage again"
        )
    return unflatten_state(skeleton, tensors)

