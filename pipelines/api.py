"""The pipelines from Python, for notebooks: the same runs as the command line, same outputs.

    import sae
    run = sae.run("configs/quickstart.yaml", out="runs/nb", overrides={"sae.k": 32})
    model = run.sae()                      # the trained SAE (SAELens), with encode/decode
    run.metrics["explained_variance"]

`run`, `toy` and `train` validate like `sae run/toy/train` (a bad key raises ConfigError naming
it), resume a DIR an interruption left part-way, and return a `Run`; `load(DIR)` opens a
finished one. The SAE comes back as SAELens loads the published folder, input scaling folded in,
so it encodes raw activations of the hook.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sae.config import Config, load_config
from sae.errors import UserError
from sae.output_dir import check_run_dir

METRICS = "metrics.json"


@dataclass
class Run:
    """A run directory: its config and, per SAE, metrics.json and the SAELens folder."""

    out: Path

    @property
    def names(self) -> list[str]:
        """The SAEs of the run: ["sae"] for one, else each `saes:` entry's name."""
        if (self.out / METRICS).is_file():
            return ["sae"]
        return sorted(p.parent.name for p in self.out.glob(f"*/{METRICS}"))

    def _dir(self, name: str | None) -> Path:
        names = self.names
        if not names:
            raise UserError(f"{self.out} holds no finished SAE (no {METRICS})")
        name = name or names[0]
        if name not in names:
            raise UserError(f"{self.out} has no SAE '{name}' (it has {', '.join(names)})")
        return self.out if names == ["sae"] else self.out / name

    @property
    def metrics(self) -> dict[str, Any]:
        """The first (or only) SAE's metrics.json; `metrics_of(name)` for another."""
        return self.metrics_of(None)

    def metrics_of(self, name: str | None) -> dict[str, Any]:
        return json.loads((self._dir(name) / METRICS).read_text())

    def sae(self, name: str | None = None) -> Any:
        """The trained SAE as sae_lens.SAE (encode, decode, forward on raw activations)."""
        from sae.publish.saelens import load_saelens

        return load_saelens(self._dir(name) / "sae")

    @property
    def report(self) -> Path:
        return self._dir(None) / "report.html"


def _overrides(overrides: Mapping[str, Any] | None) -> list[str]:
    """{"sae.k": 32} -> ["sae.k=32"], values written as YAML so lists and null survive."""
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in (overrides or {}).items()
    ]


def _start(
    pipeline: Callable[[Config, Path], Any],
    config: str | Path,
    out: str | Path,
    overrides: Mapping[str, Any] | None,
) -> Run:
    cfg = load_config(config, _overrides(overrides))
    out = Path(out)
    check_run_dir(out)  # as the CLI checks --out: writable, new or made by sae
    pipeline(cfg, out)
    return Run(out)


def run(config: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None) -> Run:
    """`sae run`: harvest -> store -> train -> evaluate -> report -> publish."""
    from pipelines.run import run_pipeline

    return _start(run_pipeline, config, out, overrides)


def toy(config: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None) -> Run:
    """`sae toy`: train on a ground-truth source and score against its true features."""
    from pipelines.toy import run_toy

    return _start(run_toy, config, out, overrides)


def train(config: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None) -> Run:
    """`sae train`: train on a store, a live model or a ground-truth source."""
    from pipelines.train import run_train

    return _start(run_train, config, out, overrides)


def load(out: str | Path) -> Run:
    """A finished run directory (any of the above, or the command line's)."""
    found = Run(Path(out))
    found._dir(None)  # says so when nothing finished is there
    return found
