"""The report and summary tables read right: legends beside the curves, not on them; a
fraction just under 1 never shown as 1; both dead-latent counts explained; a warning when
forced bf16 would be emulated."""

from __future__ import annotations

import re

import pytest
import torch

from sae import device
from sae.report.page import RunData, render
from sae.report.svg import BOTTOM, Series, fmt, line_chart
from sae.tables import format_table


def test_a_legend_sits_below_the_plot_area_not_on_the_curves() -> None:
    svg = line_chart(
        "best |cos|", [Series("true features (400)", [0, 1], [1, 0]), Series("latents (512)", [0, 1], [1, 0])]
    )
    legend_y = [float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)" class="legend"', svg)]
    assert len(legend_y) == 2 and min(legend_y) > BOTTOM + 20
    height = float(re.search(r'height="([\d.]+)"', svg).group(1))
    assert max(legend_y) < height


@pytest.mark.parametrize(("value", "shown"), [(0.9995, "0.9995"), (0.95, "0.95"), (0.99996, "0.99996"), (1.0, "1")])
def test_a_fraction_just_under_one_keeps_its_digits(value: float, shown: str) -> None:
    assert fmt(value) == shown
    assert format_table([{"ce_loss_recovered": value}], ["ce_loss_recovered"]).split()[-1] == shown


def test_the_report_explains_both_dead_latent_counts() -> None:
    metrics = {
        "dead_latents": 99,
        "config": {"train": {"samples": 10**6, "dead_window_samples": 200_000}, "eval": {"samples": 32_768}},
    }
    log = [{"step": 1, "dead_fraction": 0.004, "loss": 1.0}]
    page = render(RunData("run", metrics, log, None, None))
    assert "last 200,000 training samples" in page and "32,768 evaluation rows" in page


def test_forced_bf16_on_a_cpu_that_emulates_it_warns_once(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(device, "_warned_slow_bf16", set())
    cpu = torch.device("cpu")
    assert device.uses_bf16("bf16", cpu) and device.uses_bf16("bf16", cpu)
    assert not device.uses_bf16("auto", cpu)
    err = capsys.readouterr().err
    assert err.count("sae: warning: train.precision=bf16") == 1


def test_forced_bf16_where_it_is_fast_says_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(device, "_warned_slow_bf16", set())
    assert device.uses_bf16("bf16", torch.device("cpu"))
    assert capsys.readouterr().err == ""
