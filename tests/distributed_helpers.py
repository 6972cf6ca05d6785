"""Running a function as the ranks of a torch.distributed job on this machine: gloo on
127.0.0.1, a free port per job, processes started by torch.multiprocessing (which terminates
the others by pid when one fails)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from sae import distributed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_env(port: int, rank: int = 0, world_size: int = 2) -> dict[str, str]:
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
    }


def _rank_main(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    os.environ.update(torchrun_env(port, rank, world_size))
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(1)  # two ranks on a shared two-core machine
    distributed.init("cpu")
    try:
        fn(*args)
    finally:
        distributed.shutdown()


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> None:
    """`fn(*args)` in `world_size` fresh processes joined as one gloo group. Raises
    torch.multiprocessing's ProcessRaisedException / ProcessExitedException if a rank fails
    (the other ranks are then terminated)."""
    mp.start_processes(
        _rank_main,
        args=(fn, world_size, free_port(), args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def alone(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` here as a single process with one thread, like each rank of run_ranks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def torchrun_sae(*args: str, timeout: int) -> None:
    """`torchrun --nproc_per_node=2 -m sae ARGS` on 127.0.0.1, one thread per rank; it must
    succeed."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sae", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
