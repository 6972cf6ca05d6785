"""report.html shows every metric with its explanation, the probe-ceiling chart and table, and
the absorption table."""

from __future__ import annotations

import json
from pathlib import Path

from sae.report import build_report
from sae.report.explain import EXPLANATIONS


def test_metrics_probes_and_absorption_are_shown_with_explanations(tmp_path: Path) -> None:
    row = {"single_latent_f1": 0.4, "sparse_f1_k1": 0.45, "sparse_f1_k2": 0.5,
           "sparse_f1_k5": 0.6, "dense_f1": 0.8, "fraction_of_ceiling": 0.5,
           "fraction_of_ceiling_k5": 0.75}  # fmt: skip
    parent = {"parent": 3, "children": [4, 5], "latent": 7, "f1": 0.9, "child_rows": 10,
              "missed_rows": 4, "rate": 0.4, "absorbed_into": 11, "absorber_cos_parent": 0.3,
              "absorber_best_child": 5, "absorber_cos_child": 0.8}  # fmt: skip
    metrics = {
        "explained_variance": 0.9,
        "ce_loss_recovered": 0.8,
        "fraction_of_ceiling_mean": 0.5,
        "absorption_rate": 0.4,
        "probes": {"rows": 100, "test_rows": 30, "per_indicator": {},
                   "per_variable": {"topic": row, "quote": row}},  # fmt: skip
        "language_absorption": {"absorption_rate": 0.2, "per_variable": {"bracket_depth": {
            "latent": 2, "f1": 0.7, "parent_rows": 50, "rate": 0.2, "rate_per_child": {},
            "absorbed_into": 9, "absorber_best_child": "bracket_depth=2"}}},
        "absorption": {"absorption_rate_pooled": 0.4, "parents_scored": 1, "per_parent": [parent]},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    page = build_report(tmp_path).read_text()
    for key in ("explained_variance", "ce_loss_recovered", "fraction_of_ceiling_mean"):
        assert EXPLANATIONS[key].replace("'", "&#x27;") in page
    assert 'id="probes"' in page and "dense probe (ceiling)" in page and ">topic<" in page
    assert 'id="language-absorption"' in page and "bracket_depth=2" in page
    assert 'id="absorption"' in page and "<td>11</td>" in page
