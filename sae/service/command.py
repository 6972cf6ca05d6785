"""The command line a job runs: the one place that knows how the `sae` CLI is invoked."""

from __future__ import annotations

import sys
from pathlib import Path

TORCHRUN_KINDS = ("harvest", "train")  # the commands that join a torchrun process group
CLI_MODULE = "sae"  # `python -m sae`; the CLI's code may move, the module name is the contract


def cli_command(*args: str) -> list[str]:
    """`sae ARGS` as a child process of this Python, whatever is on PATH."""
    return [sys.executable, "-m", CLI_MODULE, *args]


def job_command(kind: str, config: Path, out_dir: Path, nproc: int = 1) -> list[str]:
    """`sae KIND CONFIG --out DIR`, under torchrun (one node, `nproc` ranks) when nproc > 1."""
    args = (kind, str(config), "--out", str(out_dir))
    if nproc <= 1:
        return cli_command(*args)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m"]  # fmt: skip
    return [*torchrun, *cli_command(*args)[2:]]
