"""Progress without a terminal: a line every ~10 s or 5% of the work with rate, ETA and the
current loss, L0 and explained variance, and a line at each stage's start and end."""

from __future__ import annotations

import io
import re
from pathlib import Path

from pipelines.cli import main
from sae.progress import LineProgress
from tests.conftest import tiny_tree, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_is_printed_every_twentieth_of_the_work() -> None:
    out = io.StringIO()
    bar = LineProgress(1000, "train topk", "step", stream=out, clock=Clock())
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20
    assert lines[0].startswith("[train topk] 50/1,000 step (5%)")
    assert lines[-1].startswith("[train topk] 1,000/1,000 step (100%)")


def test_a_slow_stage_prints_every_ten_seconds_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(10_000, "harvest", "row", stream=out, clock=clock)
    bar.set_postfix(loss="0.12", l0="16.0", ev="0.910")
    for _ in range(30):
        clock.now += 1.0  # one row a second: 5% is 500 rows, so only the clock triggers lines
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "[harvest] 10/10,000 row (0%)  1.0 row/s  ETA 2h46m  loss=0.12 l0=16.0 ev=0.910"


def test_a_run_without_a_terminal_reports_stages_and_progress(tmp_path: Path, capsys) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 12_800  # 100 steps
    tree["logging"]["progress"] = True
    config = write_config(tmp_path / "tiny.yaml", tree)
    assert main(["toy", str(config), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "sae: train topk (100 steps) ..." in err
    assert re.search(r"sae: train topk \(100 steps\) done in [\d.]+\w", err)
    lines = [line for line in err.splitlines() if line.startswith("[train topk]")]
    assert len(lines) == 20
    assert re.match(r"\[train topk\] 100/100 step \(100%\)  [\d,.]+ step/s  ETA \S+  loss=\S+ l0=\S+ ev=\S+$", lines[-1])
    assert "sae: evaluate sae ..." in err and "sae: evaluate sae done in" in err
