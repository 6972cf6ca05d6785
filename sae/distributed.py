"""torch.distributed for sae: the process group torchrun describes, and the few collectives
harvesting and training need.

`torchrun --nproc_per_node=N -m sae ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `init()` joins them into one group (NCCL when
the processes train on CUDA, gloo on CPU). Without torchrun, `world()` is `LOCAL`: rank 0 of
one, whose collectives return their input unchanged, so single-process code paths run the
very same operations as before.

Everything sent between ranks is tensors; structured values travel as JSON bytes in a tensor
(nothing is pickled).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from sae.io import flatten_state, unflatten_state

# A rank that waits longer than this on the others (one died without torchrun noticing)
# stops with an error instead of hanging.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job."""

    rank: int = 0
    size: int = 1
    # where tensors must be for collectives: cuda for NCCL, cpu for gloo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum over ranks (a new tensor on tensor's device)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(out)
        return out.to(tensor.device)

    def any(self, flags: Tensor) -> Tensor:
        """Elementwise logical or over ranks of a bool tensor."""
        if not self.distributed:
            return flags
        return self.sum(flags.to(torch.int32)) > 0

    def rows(self, local_rows: int) -> int:
        """Rows of the global batch when every rank holds `local_rows` of it."""
        return local_rows * self.size

    def kth_largest(self, values: Tensor, k: int) -> Tensor:
        """The k-th largest of the values of all ranks together (k >= 1), as a 0-d tensor.

        Each rank sends only its own k largest: the global top k cannot hold more."""
        flat = values.detach().flatten()
        local = flat.topk(min(k, flat.numel())).values.float()
        if not self.distributed:
            return local[k - 1] if k <= local.numel() else local.new_tensor(float("-inf"))
        padded = torch.full((k,), float("-inf"), device=self.device)
        padded[: local.numel()] = local.to(self.device)
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(gathered, padded)
        return torch.cat(gathered).topk(k).values[k - 1].to(values.device)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Every gradient replaced by its mean over ranks, in one all-reduce. A parameter no
        rank has a gradient for keeps none: Adam skips it then, and must skip it everywhere."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        has = [float(p.grad is not None) for p in parameters]
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads] + [torch.tensor(has)])
        flat = flat.to(self.device)
        torch.distributed.all_reduce(flat)
        flat /= self.size
        offset = 0
        for i, (param, grad) in enumerate(zip(parameters, grads, strict=True)):
            n = grad.numel()
            if float(flat[-len(parameters) + i]) > 0:
                param.grad = flat[offset : offset + n].view_as(grad).to(grad.device, grad.dtype)
            offset += n

    def broadcast_(self, tensors: list[Tensor], src: int = 0) -> None:
        """Overwrite each tensor, in place, with rank `src`'s."""
        if not self.distributed:
            return
        for tensor in tensors:
            buffer = tensor.detach().to(self.device, copy=True)
            torch.distributed.broadcast(buffer, src)
            with torch.no_grad():
                tensor.copy_(buffer.to(tensor.device))

    def all_gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-able `value`, in rank order."""
        if not self.distributed:
            return [value]
        payload = _json_bytes(value, self.device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        torch.distributed.all_gather(sizes, torch.tensor([payload.numel()], device=self.device))
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[: payload.numel()] = payload
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(gathered, padded)
        return [_from_bytes(g[: int(s)]) for g, s in zip(gathered, sizes, strict=True)]

    def gather_states(self, owned: dict[str, Any]) -> dict[str, Any] | None:
        """Nested states (tensors and JSON scalars), each held by one rank, collected on rank
        0 (None elsewhere): the skeletons travel as JSON, then each tensor from its owner."""
        tensors, skeleton = flatten_state(owned)
        shapes = {name: [list(t.shape), str(t.dtype)] for name, t in tensors.items()}
        everyone = self.all_gather_json({"skeleton": skeleton, "shapes": shapes})
        if not self.distributed:
            return owned
        merged: dict[str, Any] = {}
        received: dict[str, Tensor] = {}
        for rank, part in enumerate(everyone):
            merged.update(part["skeleton"])
            for name, (shape, dtype) in part["shapes"].items():
                if rank == self.rank:
                    if self.main:
                        received[name] = tensors[name]
                    else:
                        torch.distributed.send(tensors[name].to(self.device), dst=0)
                elif self.main:
                    buffer = torch.empty(shape, dtype=_DTYPES[dtype], device=self.device)
                    torch.distributed.recv(buffer, src=rank)
                    received[name] = buffer.cpu()
        return unflatten_state(merged, received) if self.main else None


_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16,
                               torch.int64, torch.int32, torch.uint8, torch.bool)}  # fmt: skip

LOCAL = World()
_world = LOCAL


def _json_bytes(value: Any, device: torch.device) -> Tensor:
    data = json.dumps(value).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def _from_bytes(tensor: Tensor) -> Any:
    return json.loads(bytes(tensor.cpu().numpy().tobytes()).decode())


def launched() -> bool:
    """Whether this process was started by torchrun (or anything setting its variables) as
    one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> World:
    """Join the process group of a torchrun job (once); LOCAL when not launched as several.

    `device` is the config's train.device: NCCL carries the collectives when the ranks use
    CUDA, gloo otherwise. Each rank on a node takes the GPU of its LOCAL_RANK."""
    global _world
    if not launched():
        return LOCAL
    if _world.distributed:
        return _world
    dist = torch.distributed
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    comm = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    _world = World(dist.get_rank(), dist.get_world_size(), comm)
    return _world


def world() -> World:
    """The world `init()` joined, else LOCAL."""
    return _world


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _world
    if _world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _world = LOCAL
