"""`sae bench multi`: N SAEs trained together on shared batches against N runs one after another.

The SAEs are a sweep over k (topk, width m) on a synthetic SAELens source of d dims, the kind
of run a researcher repeats for every setting. Each figure is the wall-clock time of the whole
run as a user would start it (`Trainer.fit`: input-scale estimate, batches generated with
background prefetch, every step, the final checkpoint). Sharing saves the batch generation
(and with a store or a language model, the reading or the forward passes) of all but one
run; the SAEs' own steps are not shared. The shared run must end with exactly the weights of
the separate runs (checked, and reported).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sae.config import validate_tree
from sae.io import atomic_write_json
from sae.models import build_sae
from sae.sources import build_source
from sae.tables import format_table
from sae.training.trainer import Trainer

COLUMNS = (
    "n_saes", "d", "m", "batch", "steps", "separate_seconds", "shared_seconds", "ratio",
    "identical_weights",
)  # fmt: skip
K_VALUES = (8, 16, 24, 32, 48, 64, 96, 128)


def run_bench_multi(
    n_saes: int, steps: int, d: int, m: int, batch: int, out_json: Path | None = None
) -> dict[str, Any]:
    base = _base_tree(d, m, batch, steps)
    entries = [
        {"name": f"k{k}", "arch": "topk", "d_sae": m, "k": min(k, m)} for k in K_VALUES[:n_saes]
    ]
    shared_cfg = validate_tree({**base, "saes": entries})
    source = build_source(shared_cfg.data, shared_cfg.seed)
    with tempfile.TemporaryDirectory(prefix="sae-bench-multi-") as tmp:
        # one untimed step first, so one-time costs (first calls, compilation) fall on neither
        warm = validate_tree({**base, "train": {**base["train"], "samples": batch}})
        _timed_fit(Trainer(warm, build_sae(warm.sae, source.d_in), source, _dir(tmp, "warm")))
        separate_seconds, alone = 0.0, {}
        for entry in entries:
            cfg = validate_tree({**base, "sae": {k: v for k, v in entry.items() if k != "name"}})
            alone[entry["name"]] = sae = build_sae(cfg.sae, source.d_in, cfg.seed)
            separate_seconds += _timed_fit(Trainer(cfg, sae, source, _dir(tmp, entry["name"])))
        together = {e.name: build_sae(e, source.d_in, shared_cfg.seed) for e in shared_cfg.saes}
        shared_seconds = _timed_fit(Trainer(shared_cfg, together, source, _dir(tmp, "shared")))
    identical = all(
        torch.equal(value, together[name].state_dict()[key])
        for name, sae in alone.items()
        for key, value in sae.state_dict().items()
    )
    row = {
        "n_saes": n_saes,
        "d": d,
        "m": m,
        "batch": batch,
        "steps": steps,
        "separate_seconds": round(separate_seconds, 2),
        "shared_seconds": round(shared_seconds, 2),
        "ratio": round(separate_seconds / shared_seconds, 2),
        "identical_weights": identical,
    }
    print(format_table([row], COLUMNS))
    print(
        f"\n{n_saes} topk SAEs (k = {', '.join(str(e['k']) for e in entries)}) on one stream of "
        "synthetic batches vs one run each; ratio = separate / shared wall-clock seconds."
    )
    if out_json is not None:
        atomic_write_json(out_json, [row])
    return row


def _base_tree(d: int, m: int, batch: int, steps: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "synthetic": {
                "num_features": m,
                "hidden_dim": d,
                "firing": {"kind": "constant", "probability": 0.005},
                "std_magnitude": 0.25,
            }
        },
        "train": {
            "samples": steps * batch,
            "batch_size": batch,
            "lr_warmup_steps": 0,
            "checkpoint_every_steps": 0,
        },
        "logging": {"wandb": False, "progress": False, "log_every_steps": max(1, steps)},
    }


def _dir(root: str, name: str) -> Path:
    path = Path(root) / name
    path.mkdir()
    return path


def _timed_fit(trainer: Trainer) -> float:
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started
