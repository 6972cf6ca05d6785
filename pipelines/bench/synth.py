"""`sae bench synth`: rows/s of our synthetic sampler next to sae_lens's, on one config.

Both samplers draw from the same sae_lens SyntheticModel (built once from the config's
`data.synthetic`), in the same shape the trainer asks for: `--batch` rows at a time, the
activations and the dense true features (what `sample_with_features` returns; ours also without
the features, which is what a training stream takes). The two sides alternate for `--repeats`
rounds of `--rows` rows each, so load on a shared machine hits both; the realised L0 of each
side is measured on the rows it drew.

The dictionary's orthogonalisation is skipped (`data.synthetic.orthogonalize_steps` set to 0):
it changes the feature directions, not the cost of a draw, and at 16,384 features it did not
finish in 30 minutes on this project's 2-core CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sae.config import Config, to_dict, validate_tree
from sae.errors import ConfigError
from sae.sources.synthetic import SyntheticSource
from sae.tables import format_table

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "synthsaebench16k.yaml"
COLUMNS = ("sampler", "rows", "seconds", "rows_per_second", "ratio", "l0")


def _time(draw: Callable[[int], torch.Tensor | None], rows: int, batch: int) -> tuple[float, float]:
    """(seconds, realised L0) over `rows` rows drawn `batch` at a time."""
    done, active, started = 0, 0, time.perf_counter()
    while done < rows:
        n = min(batch, rows - done)
        features = draw(n)
        if features is not None:
            active += int((features > 0).sum())
        done += n
    return time.perf_counter() - started, active / rows


def run_bench_synth(
    cfg: Config, rows: int, batch: int, repeats: int, out_json: Path | None
) -> list[dict[str, Any]]:
    if cfg.data.synthetic is None:
        raise ConfigError("sae bench synth needs a config with data.synthetic")
    tree = to_dict(cfg)
    tree["data"]["synthetic"]["orthogonalize_steps"] = 0
    cfg = validate_tree(tree)
    source = SyntheticSource(cfg.data.synthetic, cfg.seed)
    if source.sampler is None:
        raise ConfigError("this synthetic model is one our fast sampler leaves to sae_lens")
    sampler = source.sampler
    theirs_gen, ours_gen, x_gen = (torch.Generator().manual_seed(s) for s in (1, 2, 3))
    sides: dict[str, Callable[[int], torch.Tensor | None]] = {
        "sae_lens sample_with_features": lambda n: source.saelens_sample_with_features(
            n, theirs_gen
        )[1],
        "ours sample_with_features": lambda n: sampler.sample_with_features(n, ours_gen)[1],
        "ours sample (training stream)": lambda n: _none(sampler.sample(n, x_gen)),
    }
    totals = {name: [0.0, 0.0] for name in sides}
    for draw in sides.values():
        draw(min(batch, rows))  # warm-up: first-call allocations
    for _ in range(repeats):
        for name, draw in sides.items():
            seconds, l0 = _time(draw, rows, batch)
            totals[name][0] += seconds
            totals[name][1] += l0 / repeats
    base = rows * repeats / totals["sae_lens sample_with_features"][0]
    table = []
    for name, (seconds, l0) in totals.items():
        rate = rows * repeats / seconds
        row = {
            "sampler": name,
            "rows": rows * repeats,
            "seconds": seconds,
            "rows_per_second": rate,
            "ratio": rate / base,
        }
        if name != "ours sample (training stream)":  # draws no features to count
            row["l0"] = l0
        table.append(row)
    syn = cfg.data.synthetic
    print(
        f"{syn.num_features} features in {syn.hidden_dim} dims, batches of {batch} rows, "
        f"{repeats} alternating rounds of {rows} rows; threads {torch.get_num_threads()}"
    )
    print(format_table(table, COLUMNS))
    if out_json is not None:
        out_json.write_text(json.dumps({"rows": table, "batch": batch}, indent=2))
    return table


def _none(_: torch.Tensor) -> None:
    return None
