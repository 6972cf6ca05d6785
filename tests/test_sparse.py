"""The sparse training path computes exactly the dense model's loss and gradients."""

import pytest
import torch

from sae.config import SAEConfig
from sae.models import REGISTRY, StepContext, build_sae
from sae.models import base as base_module
from sae.models.sparse import Latents, Layout, encode_at, topk_pairs
from tests.test_models import D_IN, perturbed

ARCHS = sorted(REGISTRY)


def plain_encode_at(x, b_dec, W_enc, b_enc, pre, layout):
    return layout.gather((x - b_dec) @ W_enc + b_enc)


def plain_decode(self, values, W_dec):
    return self.dense(values) @ W_dec


def loss_and_grads(sae, x, ctx):
    sae.zero_grad(set_to_none=True)
    out = sae.training_forward(x, ctx)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return out, grads


def assert_same_step(out, grads, ref_out, ref_grads) -> None:
    assert torch.allclose(out.loss, ref_out.loss, rtol=1e-5)
    assert torch.allclose(out.latents.dense(), ref_out.latents.dense(), atol=1e-6)
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sparse", [True, False])
def test_training_step_matches_plain_autograd(arch: str, sparse: bool, monkeypatch) -> None:
    sae = perturbed(arch, dead_remedy="auxk", aux_k=3)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    ctx = StepContext(sparsity_scale=0.7, dead_mask=dead, sparse=sparse)
    out, grads = loss_and_grads(sae, x, ctx)
    assert out.latents.layout.sparse == sparse

    # The reference: the same model code with every kernel replaced by plain autograd.
    monkeypatch.setattr(base_module, "encode_at", plain_encode_at)
    monkeypatch.setattr(Layout, "decode", plain_decode)
    ref_out, ref_grads = loss_and_grads(sae, x, ctx)

    assert torch.equal(out.latents.dense() != 0, ref_out.latents.dense() != 0)
    for name, grad in ref_grads.items():
        assert grad.abs().sum() > 0, name
    assert_same_step(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_a_bf16_encoder_matmul_only_chooses_the_pairs(arch: str, monkeypatch) -> None:
    """Under bf16 autocast (train.precision) the step's loss and gradients are those of float32
    training on the pairs the bf16 pre-activations chose."""
    sae = perturbed(arch)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(5))
    ctx = StepContext(sparse=True)
    with torch.autocast("cpu", torch.bfloat16):  # the forward pass only, as in training
        out = sae.training_forward(x, ctx)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    assert out.latents.values.dtype == torch.float32 and out.loss.dtype == torch.float32

    chosen = out.latents.layout
    pairs = (chosen.rows, chosen.cols, chosen.n_rows, chosen.n_latents)
    monkeypatch.setattr(sae, "training_select", lambda pre, group: Layout.from_pairs(*pairs))
    monkeypatch.setattr(base_module, "encode_at", plain_encode_at)
    monkeypatch.setattr(Layout, "decode", plain_decode)
    ref_out, ref_grads = loss_and_grads(sae, x, ctx)
    assert_same_step(out, grads, ref_out, ref_grads)


def test_sparse_kernels_pass_gradcheck() -> None:
    torch.manual_seed(0)
    n_rows, d, m = 6, 5, 9
    x = torch.randn(n_rows, d, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(d, m, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(m, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(m, d, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    cols = torch.tensor([2, 7, 0, 1, 4, 8, 2])
    layout = Layout.from_pairs(rows, cols, n_rows, m)

    def step(x, b_dec, W_enc, b_enc, W_dec):
        with torch.no_grad():
            pre = (x - b_dec) @ W_enc + b_enc
        values = encode_at(x, b_dec, W_enc, b_enc, pre, layout)
        return layout.decode(values.tanh(), W_dec)

    assert torch.autograd.gradcheck(step, (x, b_dec, W_enc, b_enc, W_dec))


def test_low_precision_pairs_get_exact_float32_values() -> None:
    x, W_enc = torch.randn(8, 6), torch.randn(6, 10)
    b_dec, b_enc = torch.randn(6), torch.randn(10)
    exact = (x - b_dec) @ W_enc + b_enc
    layout = Layout.from_pairs(torch.tensor([0, 2, 7]), torch.tensor([1, 9, 4]), 8, 10)
    values = encode_at(x, b_dec, W_enc, b_enc, exact.bfloat16(), layout)
    assert values.dtype == torch.float32
    assert torch.allclose(values, layout.gather(exact), atol=1e-5)


def test_sparse_kernels_are_chosen_when_few_latents_fire() -> None:
    x = torch.randn(256, D_IN)
    topk = build_sae(SAEConfig(arch="topk", d_sae=512, k=4), D_IN)
    assert topk.training_forward(x, StepContext()).latents.layout.sparse
    relu = build_sae(SAEConfig(arch="relu", d_sae=512), D_IN)  # about half fire at init
    assert not relu.training_forward(x, StepContext()).latents.layout.sparse


def test_row_squared_error_and_its_gradients_match_autograd() -> None:
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    recon = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(base_module.row_sq_error, (x, recon))
    assert torch.autograd.gradcheck(base_module.row_sq_error, (x, bias))
    expected = (x - recon).pow(2).sum(-1).mean()
    assert torch.allclose(base_module.row_sq_error(x, recon), expected)


def test_values_read_while_choosing_pairs_are_those_of_the_matrix_now() -> None:
    pre = torch.randn(16, 40, generator=torch.Generator().manual_seed(3))
    for layout in (topk_pairs(pre, 4), Layout.from_threshold(pre, 0.5).to_sparse()):
        expected = pre.reshape(-1)[layout.flat_index()]
        assert torch.equal(layout.gather(pre), expected)
        assert torch.equal(layout.gather(pre), expected)  # handed out once, then read again
    layout = topk_pairs(pre, 4)
    pre.add_(1.0)  # changed in place after the pairs were chosen: its new values count
    assert torch.equal(layout.gather(pre), pre.reshape(-1)[layout.flat_index()])


def test_fired_latents_are_those_with_a_non_zero_value_in_some_row() -> None:
    layout = Layout.from_pairs(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 3, 3, 0]), 3, 5)
    fired = Latents(torch.tensor([0.0, 2.0, 0.0, 0.0]), layout).fired()
    assert fired.tolist() == [False, False, False, True, False]


def test_two_encodes_on_one_layout_each_get_their_own_gradient() -> None:
    """A top-k layout hands out the values read while choosing its pairs on every gather;
    two differentiable encodes on it are still two autograd outputs (autograd gives each
    output of a custom Function a tensor of its own)."""
    x, W_enc = torch.randn(8, 6), torch.randn(6, 10, requires_grad=True)
    b_dec, b_enc = torch.zeros(6), torch.zeros(10)
    with torch.no_grad():
        pre = (x - b_dec) @ W_enc + b_enc
    layout = topk_pairs(pre, 3)
    first = encode_at(x, b_dec, W_enc, b_enc, pre, layout)
    second = encode_at(x, b_dec, W_enc, b_enc, pre, layout)
    (first.sum() + 2 * second.sum()).backward()
    expected = 3 * layout.dense(torch.ones(layout.count())).t().mm(x).t()  # d/dW of 3 * sum
    assert torch.allclose(W_enc.grad, expected, atol=1e-5)
