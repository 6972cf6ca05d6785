from pathlib import Path

import pytest
import torch

from sae.config import SAEConfig, default_warm_k
from sae.models import REGISTRY, StepContext, build_sae
from sae.publish.saelens import load_saelens, save_saelens
from tests.conftest import k_for

ARCHS = sorted(REGISTRY)
D_IN = 12


def perturbed(arch: str, **cfg) -> torch.nn.Module:
    """An SAE whose every parameter is non-trivial, so export bugs cannot hide behind zeros."""
    sae = build_sae(SAEConfig(arch=arch, d_sae=48, **k_for(arch, 5), **cfg), D_IN, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name != "W_dec":
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        if arch == "relu":
            sae.W_dec.mul_(torch.rand(48, 1, generator=generator) + 0.5)
    sae.fit_inference([torch.randn(256, D_IN, generator=generator)])
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_returns_named_reconstruction_and_latents(arch: str) -> None:
    sae = perturbed(arch)
    x = torch.randn(32, D_IN)
    out = sae(x)
    assert out.recon.shape == (32, D_IN)
    assert out.latents.shape == (32, 48)
    assert torch.equal(out.latents, sae.encode(x))
    assert torch.allclose(out.recon, sae.decode(out.latents))


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_backpropagates_to_every_parameter(arch: str) -> None:
    sae = perturbed(arch)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_forward(torch.randn(64, D_IN), StepContext(dead_mask=dead))
    out.loss.backward()
    for name, param in sae.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_export_with_identical_outputs(arch: str, tmp_path: Path) -> None:
    sae = perturbed(arch)
    scale = 2.5  # training-time input normalisation, folded into the exported weights
    x = torch.randn(64, D_IN) * 3
    ours_latents = sae.encode(x * scale)
    ours_recon = sae.decode(ours_latents) / scale
    loaded = load_saelens(save_saelens(sae, scale, tmp_path / "sae"))
    theirs_latents = loaded.encode(x)
    assert (ours_latents != 0).sum() > 0
    assert torch.allclose(theirs_latents, ours_latents, atol=1e-5)
    assert torch.allclose(loaded.decode(theirs_latents), ours_recon, atol=1e-5)


def test_unit_norm_decoder_gradient_has_no_radial_component() -> None:
    sae = perturbed("topk")
    sae.training_forward(torch.randn(64, D_IN), StepContext()).loss.backward()
    sae.remove_parallel_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert radial.abs().max() < 1e-5


def test_relu_l1_penalty_is_weighted_by_decoder_norm() -> None:
    sae = perturbed("relu", l1_coefficient=1.0)
    x = torch.randn(16, D_IN)
    base = sae.training_forward(x, StepContext()).sparsity
    with torch.no_grad():
        sae.W_dec.mul_(2)
    assert torch.allclose(sae.training_forward(x, StepContext()).sparsity, 2 * base)


def test_batchtopk_keeps_k_per_row_on_average_in_training() -> None:
    sae = perturbed("batchtopk")
    out = sae.training_forward(torch.randn(100, D_IN), StepContext())
    assert int((out.latents.dense() != 0).sum()) <= 5 * 100


def test_batchtopk_threshold_gives_about_k_active_latents_at_inference() -> None:
    sae = build_sae(SAEConfig(arch="batchtopk", d_sae=48, k=5), D_IN, seed=0)
    batches = [torch.randn(512, D_IN) for _ in range(4)]
    sae.fit_inference(batches)
    l0 = (sae.encode(torch.randn(4096, D_IN)) != 0).sum(-1).float().mean()
    assert 3.5 < float(l0) < 6.5


def test_matryoshka_loss_averages_every_prefix_reconstruction() -> None:
    sae = perturbed("matryoshka", matryoshka_widths=[8, 24])
    x = torch.randn(64, D_IN)
    out = sae.training_forward(x, StepContext())
    z = out.latents.dense()
    expected = sum(
        (x - (z[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum(-1).mean() for w in (8, 24, 48)
    ) / 3
    assert sae.prefix_widths() == [8, 24, 48]
    assert torch.allclose(out.loss, expected, rtol=1e-5)


def prefix_error(sae: torch.nn.Module, x: torch.Tensor, z: torch.Tensor, w: int) -> torch.Tensor:
    return (x - (z[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum(-1).mean()


def test_balanced_matryoshka_weighs_inner_prefixes_geometrically() -> None:
    # Chanin et al.'s balance: the outermost inner prefix weighs m, the next m^2, ...
    sae = perturbed("matryoshka", matryoshka_widths=[8, 24], matryoshka_inner_weight=0.5)
    x = torch.randn(64, D_IN)
    out = sae.training_forward(x, StepContext())
    z = out.latents.dense()
    errors = [prefix_error(sae, x, z, w) for w in (8, 24, 48)]
    expected = (0.25 * errors[0] + 0.5 * errors[1] + errors[2]) / 1.75
    assert torch.allclose(out.loss, expected, rtol=1e-5)


def test_random_matryoshka_prefixes_are_drawn_per_step_and_repeat_on_resume() -> None:
    sae = perturbed("matryoshka", matryoshka_random_prefixes=4)
    x = torch.randn(64, D_IN)
    drawn = []
    for progress in (0.1, 0.2, 0.1):
        out = sae.training_forward(x, StepContext(progress=progress))
        widths = sae.training_widths()
        z = out.latents.dense()
        expected = sum(prefix_error(sae, x, z, w) for w in widths) / len(widths)
        assert torch.allclose(out.loss, expected, rtol=1e-5)
        assert len(widths) == 5 and widths[-1] == 48 and widths == sorted(set(widths))
        drawn.append(widths)
    assert drawn[0] == drawn[2] and drawn[0] != drawn[1]


def test_jumprelu_threshold_learns_through_straight_through_estimator() -> None:
    sae = perturbed("jumprelu", jumprelu_bandwidth=1.0)
    pre = sae.pre_acts(torch.randn(256, D_IN))
    layout = sae.select(pre, training=True).to_dense()
    acts = sae.pair_acts(pre, layout.latent)
    sae.sparsity_loss(pre, acts, layout, StepContext()).backward()
    # A larger threshold lowers L0: the L0 term must push every threshold upward.
    assert (sae.log_threshold.grad <= 0).all() and (sae.log_threshold.grad < 0).any()


def test_matryoshka_aux_loss_revives_outer_latents_as_auxk_does() -> None:
    # dead latents only in the outermost level (at least k_aux of them): the level's residual
    # is the whole dictionary's, so the per-level loss is plain AuxK
    x = torch.randn(64, D_IN)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[24:] = True
    ctx = StepContext(dead_mask=dead)
    plain = perturbed("matryoshka", matryoshka_widths=[8, 24])
    per_level = perturbed("matryoshka", matryoshka_widths=[8, 24], matryoshka_aux=True)
    expected = plain.training_forward(x, ctx).aux
    assert expected > 0
    assert torch.allclose(per_level.training_forward(x, ctx).aux, expected, rtol=1e-5)


def test_matryoshka_aux_loss_aims_inner_dead_latents_at_their_prefix_residual() -> None:
    sae = perturbed("matryoshka", matryoshka_widths=[8, 24], matryoshka_aux=True)
    x = torch.randn(64, D_IN)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:8] = True  # the whole first level
    out = sae.training_forward(x, StepContext(dead_mask=dead))
    z = out.latents.dense()
    pre = sae.pre_acts(x)
    chosen = pre[:, :8].topk(6, dim=-1)  # k_aux = d_in // 2
    latents = torch.zeros_like(pre).scatter(1, chosen.indices, chosen.values.relu())
    residual = x - (z[:, :8] @ sae.W_dec[:8] + sae.b_dec)  # what the first prefix misses
    error = (residual - latents @ sae.W_dec).pow(2).sum(-1).mean()
    variance = residual.var(0, unbiased=False).sum()
    expected = sae.cfg.aux_coefficient * error / variance
    assert torch.allclose(out.aux, expected, rtol=1e-4)


def test_default_warm_k_is_twice_k_floored_at_a_eighth_of_d_in_and_capped_at_16() -> None:
    assert default_warm_k(2, 16) == 4  # 2k
    assert default_warm_k(2, 64) == 8  # room up to d_in / 8 at small k
    assert default_warm_k(10, 64) == 16 and default_warm_k(30, 768) == 16  # the cap
    assert default_warm_k(1.5, 8) == 3  # a fractional batch k rounds up


def test_topk_trains_at_its_warm_k_before_switching_to_k() -> None:
    sae = build_sae(SAEConfig(arch="topk", d_sae=48, k=3, warm_start_frac=0.5), D_IN, seed=1)
    x = torch.randn(64, D_IN)
    assert sae.cfg.warm_k(D_IN) == 6
    early = sae.training_forward(x, StepContext(progress=0.1)).latents.l0()
    late = sae.training_forward(x, StepContext(progress=0.6)).latents.l0()
    assert float(early) == pytest.approx(6, abs=0.5) and float(late) == pytest.approx(3)
    assert float((sae.encode(x) != 0).sum(-1).float().mean()) <= 3  # inference uses k
