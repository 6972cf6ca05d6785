"""`sae bench startup`: how long a command takes to answer, next to what torch alone costs.

Each case is a fresh process (`python -m sae ...`, as the `sae` script runs it), timed from
start to exit: the interpreter alone, `import torch` (the floor of any command that trains),
`sae --help`, `sae --version`, a config error outside the `sae:` section, a config error on
an architecture's own key, and a no-op rerun of a finished tiny `sae run` made first in a
temporary directory. The cases take turns, repeat after repeat, so that load on a shared
machine falls on all of them alike; each row shows its median and its ratio to `import torch`,
which travels between machines better than seconds do.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sae.io import atomic_write_json
from sae.tables import format_table

# a whole `sae run` (harvest, train, evaluate, report, publish) in seconds
TINY_RUN = {
    "seed": 0,
    "data": {"synthetic": {"num_features": 64, "hidden_dim": 32,
                           "firing": {"kind": "constant", "probability": 0.04}}},
    "harvest": {"rows": 16_384, "shard_rows": 8192},
    "sae": {"arch": "topk", "d_sae": 64, "k": 4},
    "train": {"samples": 16_384, "batch_size": 1024, "checkpoint_every_steps": 8},
    "eval": {"samples": 4096, "batch_size": 2048, "threshold_batches": 2},
    "logging": {"wandb": False, "progress": False},
}  # fmt: skip
BAD_KEYS = {
    "config error": ("train", {"lrr": 1.0}),  # outside sae: no architecture involved
    "arch key error": ("sae", {"arch": "relu", "k": 8}),  # relu takes no k
}
COLUMNS = ("case", "command", "median_s", "vs_import_torch", "runs")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    exit_code: int = 0

    @property
    def command(self) -> str:
        sae = self.argv[1:3] == ("-m", "sae")
        return " ".join(["sae", *self.argv[3:]] if sae else ["python", *self.argv[1:]])


def _sae(*args: str, exit_code: int = 0, name: str) -> Case:
    return Case(name, (sys.executable, "-m", "sae", *args), exit_code)


def _bad_config(root: Path, section: str, keys: dict[str, Any]) -> Path:
    tree = {**TINY_RUN, section: {**TINY_RUN.get(section, {}), **keys}}
    path = root / f"bad-{section}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def cases(root: Path) -> list[Case]:
    """Every case; the finished run and the bad configs are (to be) under `root`."""
    config = root / "tiny.yaml"
    bad = {name: _bad_config(root, *keys) for name, keys in BAD_KEYS.items()}
    return [
        Case("interpreter", (sys.executable, "-c", "pass")),
        Case("import torch", (sys.executable, "-c", "import torch")),
        _sae("--help", name="help"),
        _sae("--version", name="version"),
        *(_sae("run", str(path), "--out", str(root / "never"), exit_code=2, name=name)
          for name, path in bad.items()),
        _sae("run", str(config), "--out", str(root / "run"), name="no-op rerun"),
    ]  # fmt: skip


def _time(case: Case) -> tuple[float, str]:
    """Seconds to exit, and the last line the command wrote to stderr (its error, if any)."""
    started = time.perf_counter()
    done = subprocess.run(case.argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != case.exit_code:
        raise RuntimeError(
            f"{case.name}: exit {done.returncode}, expected {case.exit_code}: "
            f"{done.stderr.strip()[-1000:]}"
        )
    lines = done.stderr.strip().splitlines()
    return seconds, lines[-1] if lines else ""


def run_bench_startup(repeats: int, out_json: Path | None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="sae-bench-startup-") as tmp:
        root = Path(tmp)
        (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_RUN))
        every = cases(root)
        finish = every[-1]
        subprocess.run(finish.argv, check=True, capture_output=True)  # the run to rerun
        seconds: dict[str, list[float]] = {case.name: [] for case in every}
        answers: dict[str, str] = {}
        for _ in range(repeats):
            for case in every:
                took, answers[case.name] = _time(case)
                seconds[case.name].append(took)
    torch_s = statistics.median(seconds["import torch"])
    rows = [
        {
            "case": case.name,
            "command": case.command.replace(str(root), "TMP"),
            "median_s": statistics.median(seconds[case.name]),
            "vs_import_torch": statistics.median(seconds[case.name]) / torch_s,
            "runs": len(seconds[case.name]),
            "answer": answers[case.name],
            "seconds": seconds[case.name],
        }
        for case in every
    ]
    print(format_table(rows, list(COLUMNS)))
    if out_json is not None:
        atomic_write_json(
            out_json, {"repeats": repeats, "python": sys.version.split()[0], "rows": rows}
        )
    return rows
