"""`sae bench suite`: the ground-truth cases on the defaults, and its JSON contract.

The full suite is a benchmark; here a small case runs on the real defaults, with a floor well
below what it reaches, so a change that breaks recovery fails the default test run.
"""

import json
from pathlib import Path

import pytest

from pipelines.bench.curves import curves_html
from pipelines.bench.suite import case_paths, run_case, summarise
from tests.test_cli import sae

ROW_KEYS = {
    "case", "trainer", "arch", "hierarchical", "mcc", "f1", "uniqueness", "dead_fraction",
    "explained_variance", "l0", "seconds",
}  # fmt: skip


def test_suite_json_rows_follow_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    result = sae(
        "bench", "suite", "--cases", "s01_const_2x", "--set", "train.samples=20000",
        "--json", str(out), "--curves", str(tmp_path / "curves.html"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # ours and the oracle are drawn (SAELens's trainer is not watched during training)
    assert (tmp_path / "curves.html").read_text().count("<polyline") == 2
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert [row["trainer"] for row in rows] == ["ours", "saelens", "oracle"]
    assert all(set(row) >= ROW_KEYS and row["hierarchical"] is False for row in rows)
    settings = document["settings"]["s01_const_2x/topk"]
    assert settings["train"]["samples"] == 20000 and settings["sae"]["d_sae"] == 64
    # started at the true dictionary, the oracle is near-perfect even after a short run
    assert rows[2]["mcc"] > 0.95


def test_suite_rows_carry_an_mcc_curve_that_ends_at_the_final_mcc(tmp_path: Path) -> None:
    (path,) = case_paths(quick=False, names=["s01_const_2x"])
    rows, _ = run_case(path, "batchtopk", ["ours"], ["train.samples=20000"])
    curve = rows[0]["mcc_curve"]
    samples = [point["samples"] for point in curve]
    assert len(curve) >= 4 and samples == sorted(samples) and samples[-1] >= 20000
    # the last point is the trained decoder, which the row's mcc also scores
    assert curve[-1]["mcc"] == pytest.approx(rows[0]["mcc"], abs=1e-6)
    assert curve[-1]["mcc"] > curve[0]["mcc"]


def test_suite_rejects_an_unknown_case_in_one_line() -> None:
    result = sae("bench", "suite", "--cases", "no_such_case")
    assert result.returncode == 2 and "no_such_case" in result.stderr
    assert "Traceback" not in result.stderr


def test_suite_spans_at_least_sixteen_cases_with_a_quick_third() -> None:
    full, quick = case_paths(quick=False), case_paths(quick=True)
    assert len(full) >= 16 and 0 < len(quick) <= len(full) // 2


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("case", ["s01_const_2x", "s16_toy_uniform"])
def test_suite_case_recovers_the_dictionary_on_the_defaults(case: str, arch: str) -> None:
    (path,) = case_paths(quick=False, names=[case])
    rows, settings = run_case(path, arch, ["ours"])
    (row,) = rows
    assert settings["train"]["batch_size"] is None  # the defaults, not a recipe
    assert row["mcc"] > 0.85 and row["dead_fraction"] <= 0.05, row


def test_summary_splits_hierarchical_cases_and_takes_the_worst() -> None:
    def row(case: str, mcc: float, f1: float, hierarchical: bool) -> dict:
        return {
            "case": case, "trainer": "ours", "arch": "topk", "mcc": mcc, "f1": f1,
            "hierarchical": hierarchical, "dead_fraction": 0.0, "d_sae": 8, "n_features": 8,
        }  # fmt: skip

    (summary,) = summarise([row("a", 0.9, 0.8, False), row("b", 0.7, 0.6, False), row("h", 0.1, 0.5, True)])
    assert summary["mean_mcc"] == pytest.approx(0.8) and summary["worst_mcc"] == 0.7
    assert summary["hier_mean_f1"] == 0.5


def test_curves_page_draws_a_panel_per_case_and_a_line_per_trainer() -> None:
    curve = [{"samples": 1000, "mcc": 0.6}, {"samples": 2000, "mcc": 0.9}]
    rows = [
        {"case": case, "arch": "topk", "trainer": trainer, "mcc_curve": curve}
        for case in ("a", "b") for trainer in ("ours", "oracle")
    ] + [{"case": "a", "arch": "topk", "trainer": "saelens"}]  # fmt: skip
    page = curves_html(rows)
    assert page.count("<svg") == 2 and page.count("<polyline") == 4
    assert "topk ours" in page and "topk saelens" not in page
