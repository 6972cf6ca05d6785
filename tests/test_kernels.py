"""The compiled pair-choosing loops agree with plain torch, ties included."""

import pytest
import torch

from sae.models import kernels


def reference_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    # descending and stable: among equal values the lower latent comes first
    order = torch.sort(pre, dim=-1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=-1).values


# a partial last group too; 9000: wider than kernels._SCAN_MAX_LATENTS (the group-wise loop)
@pytest.mark.parametrize("n_latents", [512, 1000, 9000])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_cols_matches_a_stable_sort(n_latents: int, ties: bool, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(n_latents)
    pre = torch.randn(64, n_latents, generator=generator, dtype=dtype)
    if ties:
        pre = pre.mul(2).round()  # a handful of distinct values: ties everywhere
    cols, values = kernels.topk_cols(pre, 5)
    assert torch.equal(cols, reference_topk(pre, 5))
    assert torch.equal(values, pre.gather(1, cols))


# bf16 (the encoder's output when its matmul runs in bf16) is read as int16 bits: bf16's few
# distinct values make ties common even without rounding
@pytest.mark.parametrize("n_latents", [512, 1000])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_cols_on_bf16_matches_a_stable_sort_of_its_values(n_latents: int, ties: bool) -> None:
    generator = torch.Generator().manual_seed(n_latents)
    pre = torch.randn(64, n_latents, generator=generator)
    pre = (pre.mul(2).round() if ties else pre).bfloat16()
    pre[3, 17] = float("nan")
    cols, values = kernels.topk_cols(pre, 5)
    assert values.dtype == torch.bfloat16
    assert torch.equal(cols, reference_topk(pre.float(), 5))
    torch.testing.assert_close(values, pre.gather(1, cols), rtol=0, atol=0, equal_nan=True)


def test_pairs_above_on_bf16_compare_the_bf16_values() -> None:
    generator = torch.Generator().manual_seed(4)
    pre = torch.randn(40, 300, generator=generator).bfloat16()
    pre[0, :4] = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf")])
    threshold = torch.randn(300, generator=generator) / 2  # float32: compared as bf16
    threshold[:2] = torch.tensor([-float("inf"), float("inf")])
    expected = pre > threshold.bfloat16()
    counts = kernels.count_above(pre, threshold)
    rows, cols, values = kernels.pairs_above(pre, threshold, counts)
    assert torch.equal(counts, expected.sum(-1))
    assert torch.equal(torch.stack([rows, cols], 1), expected.nonzero())
    assert values.dtype == torch.bfloat16 and torch.equal(values, pre[rows, cols])


def test_pairs_above_match_nonzero_with_a_per_latent_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(50, 300, generator=generator)
    threshold = torch.rand(300, generator=generator) + 1
    counts = kernels.count_above(pre, threshold)
    rows, cols, values = kernels.pairs_above(pre, threshold, counts)
    expected = (pre > threshold).nonzero()
    assert torch.equal(counts, (pre > threshold).sum(-1))
    assert torch.equal(torch.stack([rows, cols], 1), expected)
    assert torch.equal(values, pre[rows, cols])


def test_order_by_latent_is_a_stable_sort() -> None:
    cols = torch.randint(0, 40, (1000,), generator=torch.Generator().manual_seed(1))
    order, offsets = kernels.order_by_latent(cols, 40)
    assert torch.equal(order, torch.argsort(cols, stable=True))
    counts = torch.bincount(cols, minlength=40)
    assert torch.equal(offsets, counts.cumsum(0) - counts)


def test_pair_dots_match_the_dense_product() -> None:
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 7, generator=generator), torch.randn(50, 7, generator=generator)
    mask = torch.rand(30, 50, generator=generator) < 0.2
    rows, cols = mask.nonzero().unbind(1)
    counts = torch.bincount(rows, minlength=30)
    dots = kernels.pair_dots(a, b, rows, cols, counts.cumsum(0) - counts)
    assert torch.allclose(dots, (a @ b.T)[rows, cols], atol=1e-5)


def test_topk_cols_keeps_nan_as_the_largest_value_like_torch() -> None:
    # a NaN pre-activation must reach the loss, where training stops with a clear error
    pre = torch.randn(4, 512, generator=torch.Generator().manual_seed(3))
    pre[1, 7] = float("nan")
    pre[2] = float("nan")
    cols, values = kernels.topk_cols(pre, 5)
    assert 7 in cols[1].tolist() and values[1].isnan().sum() == 1
    assert torch.equal(cols[2], torch.arange(5)) and values[2].isnan().all()
    assert torch.equal(cols[0], reference_topk(pre[:1], 5)[0])


@pytest.mark.parametrize("n_rows", [30, 600])  # one block of rows; one per thread
def test_sums_per_latent_match_a_sum_over_each_latents_pairs(n_rows: int) -> None:
    generator = torch.Generator().manual_seed(4)
    rows_of = torch.randn(n_rows, 7, generator=generator)
    mask = torch.rand(n_rows, 50, generator=generator) < 0.2
    rows, cols = mask.nonzero().unbind(1)
    weights = torch.randn(rows.numel(), generator=generator)
    counts = torch.bincount(rows, minlength=n_rows)
    out, sums = kernels.sums_per_latent(rows_of, weights, cols, counts.cumsum(0) - counts, 50)
    dense = torch.zeros(n_rows, 50).index_put_((rows, cols), weights)
    assert torch.allclose(out, dense.T @ rows_of, atol=1e-4)
    assert torch.allclose(sums, dense.sum(0), atol=1e-5)
