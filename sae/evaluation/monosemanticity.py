"""How well single latents detect known binary variables (the generated language's labels).

For every indicator (e.g. `topic=music`) and every latent, the latent is read as a detector
("fires" = nonzero activation) and scored by precision, recall and F1 against the indicator;
each indicator reports its best latent by F1. All latents are scored at once: the true
positives of every (latent, indicator) pair are one matrix product of binary masks per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Detection:
    latent: int
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "latent": self.latent,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


class DetectorCounts:
    """Running counts of latent firings against indicators, over batches of rows."""

    def __init__(self, d_sae: int, names: list[str]):
        self.names = names
        self.true_positives = torch.zeros(d_sae, len(names), dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.positives = torch.zeros(len(names), dtype=torch.float64)

    def add(self, fires: Tensor, truth: Tensor) -> None:
        """fires: [rows, d_sae] bool; truth: [rows, n_indicators] bool."""
        fires_f, truth_f = fires.float(), truth.to(fires.device).float()
        # float32 sums of 0/1 products are exact below 2**24 rows per batch
        self.true_positives += (fires_f.T @ truth_f).double().cpu()
        self.fired += fires_f.sum(0).double().cpu()
        self.positives += truth_f.sum(0).double().cpu()

    def f1(self) -> Tensor:
        """[d_sae, n_indicators] F1 of every latent as a detector of every indicator."""
        denominator = self.fired[:, None] + self.positives[None, :]
        return 2 * self.true_positives / denominator.clamp(min=1)

    def detection(self, latent: int, indicator: int) -> Detection:
        hits = float(self.true_positives[latent, indicator])
        fired, positives = float(self.fired[latent]), float(self.positives[indicator])
        return Detection(
            latent=latent,
            precision=hits / fired if fired else 0.0,
            recall=hits / positives if positives else 0.0,
            f1=2 * hits / max(fired + positives, 1.0),
        )

    def best(self) -> dict[str, Detection]:
        """Each indicator's best latent by F1; indicators that never occurred are left out."""
        best_latents = self.f1().argmax(dim=0)
        return {
            name: self.detection(int(best_latents[j]), j)
            for j, name in enumerate(self.names)
            if self.positives[j] > 0
        }

    def best_indicator(self, latent: int) -> tuple[str, Detection] | None:
        """The indicator that `latent` detects best by F1 (None if it never fired)."""
        if self.fired[latent] == 0 or not self.names:
            return None
        j = int(self.f1()[latent].argmax())
        return self.names[j], self.detection(latent, j)


def mean_f1(detections: dict[str, Detection]) -> float:
    return sum(d.f1 for d in detections.values()) / len(detections) if detections else 0.0
