"""Latents as (row, latent) pairs, and the two operations that make training cost scale with them.

Only the encoder's forward matmul has to see every latent: an activation then lets a few
(row, latent) pairs through, and everything after it (the decoder, its gradients and the
encoder's weight gradient) can work on those pairs alone. `Layout` says where a batch's
values sit, either as index pairs (sparse) or as a full [rows, latents] matrix (dense, for
when most latents fire, e.g. a ReLU SAE early in training). Architecture code is written once
against it: it sees pre-activations at the selected pairs and `layout.latent`, which indexes
per-latent parameters in either layout (a [nnz] index, or `slice(None)` that broadcasts).

`encode_at` and `Layout.decode` are the two differentiable operations. Their gradients are
the same as those of the dense expressions `(x - b_dec) @ W_enc + b_enc` and
`latents @ W_dec`, restricted to the pairs: sums over the pairs of a row or of a latent are
embedding bags (a gather and a weighted sum per bag, in a fixed order), dot products per pair
a compiled loop (kernels.py), so nothing of size [rows, latents] is made after the encoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae.models import kernels

LatentIndex = Tensor | slice
ALL = slice(None)

# Above this fraction of active pairs the dense kernels (plain matmuls) are faster: measured
# on ReLU training steps on CPU, the crossover sits at 10% (d=512, m=8192) to 17% (d=128,
# m=1024) of latents active.
DENSE_ABOVE = 0.1


@dataclass(frozen=True, eq=False)
class Layout(ABC):
    """Where one batch's latent values sit. Three kinds, one class each:

    - `PairLayout` (sparse): the selected (row, latent) pairs, values a [nnz] vector.
    - `DenseLayout`: values a [rows, latents] matrix, with a mask of the selected entries
      where the activation would otherwise let others through (top-k), or none.
    - `ThresholdLayout`: a dense layout that selects by "pre > threshold". Counting its
      pairs is one cheap pass, and listing them (`to_sparse`) waits until the density has
      decided the layout of the step.

    A layout never changes once made; what it derives (row counts, pairs grouped by latent) is
    computed on first use and kept (cached properties).
    """

    n_rows: int
    n_latents: int
    sparse: ClassVar[bool]

    @staticmethod
    def from_pairs(
        rows: Tensor, cols: Tensor, n_rows: int, n_latents: int, row_offsets: Tensor | None = None
    ) -> PairLayout:
        """Pairs in row-major order; `row_offsets` where the caller knows them already."""
        if row_offsets is None:
            counts = torch.bincount(rows, minlength=n_rows)
            row_offsets = counts.cumsum(0) - counts
        return PairLayout(n_rows, n_latents, rows, cols, row_offsets)

    @staticmethod
    def from_mask(mask: Tensor) -> DenseLayout:
        return DenseLayout(mask.shape[0], mask.shape[1], mask)

    @staticmethod
    def from_threshold(
        pre: Tensor, threshold: Tensor | float, masked: bool = False
    ) -> ThresholdLayout:
        """The pairs where pre > threshold (a number, or one per latent). `masked`: the
        activation does not zero the other entries itself, so a dense layout needs the mask."""
        threshold = torch.as_tensor(threshold, dtype=pre.dtype, device=pre.device)
        threshold = threshold.expand(pre.shape[1])
        mask = pre > threshold if masked else None
        return ThresholdLayout(pre.shape[0], pre.shape[1], mask, pre, threshold)

    # ------------------------------------------------------------------ each kind says

    @property
    @abstractmethod
    def latent(self) -> LatentIndex:
        """Indexes per-latent parameters: the pairs' latents, or ALL to broadcast."""

    @abstractmethod
    def count(self) -> int:
        """Number of selected pairs."""

    @abstractmethod
    def to_sparse(self) -> PairLayout:
        """The same selection as (row, latent) pairs."""

    @abstractmethod
    def to_dense(self) -> DenseLayout:
        """The same selection as a dense layout."""

    @abstractmethod
    def gather(self, dense: Tensor) -> Tensor:
        """Values of a [rows, latents] matrix at this layout's positions (no masking if dense)."""

    @abstractmethod
    def apply_mask(self, acts: Tensor) -> Tensor:
        """Zero what the selection left out, where the activation has not done so itself."""

    @abstractmethod
    def restrict(self, values: Tensor, start: int, end: int) -> tuple[Tensor, Layout]:
        """The values and layout of latents [start, end) only (matryoshka prefixes)."""

    @abstractmethod
    def weighted_sum(self, values: Tensor, per_latent: Tensor) -> Tensor:
        """The sum over pairs of value * per_latent[its latent]."""

    @abstractmethod
    def dense(self, values: Tensor) -> Tensor:
        """The [rows, latents] matrix of the values (zero elsewhere)."""

    # ------------------------------------------------------------------ the same for every kind

    def density(self) -> float:
        return self.count() / max(1, self.n_rows * self.n_latents)

    # decode stays one method for both kinds (not split per class), so that a test can swap
    # in plain autograd for every layout at once.
    def decode(self, values: Tensor, W_dec: Tensor) -> Tensor:
        """latents @ W_dec, for latents given by `values` in this layout."""
        if not self.sparse:
            return values @ W_dec
        return _PairDecode.apply(values, W_dec, self)

    def decode_error(
        self, values: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(recon, mse): recon = latents @ W_dec + b_dec, and the mean over rows of
        ||x - recon||^2; on CPU with a sparse layout in one compiled pass per row."""
        if self.sparse and kernels.decode_error_applies(values, W_dec, b_dec, x):
            return _DecodeError.apply(values, W_dec, b_dec, x, self)
        recon = self.decode(values, W_dec) + b_dec
        return recon, row_sq_error(x, recon)


class ValuesRead(NamedTuple):
    """A matrix's values at the pairs, read while the pairs were chosen (the selection loops
    read them anyway; gathered afterwards they cost a cache miss each)."""

    source: Tensor  # the [rows, latents] matrix they were read from
    version: int  # its `_version` then: written in place since, they are stale
    values: Tensor  # [nnz]

    @classmethod
    def now(cls, source: Tensor, values: Tensor) -> ValuesRead:
        return cls(source, source._version, values)

    def of(self, dense: Tensor) -> Tensor | None:
        """The values, if `dense` is that matrix and unchanged since; else None."""
        fresh = dense is self.source and dense._version == self.version
        return self.values if fresh else None


@dataclass(frozen=True, eq=False)
class PairLayout(Layout):
    """The selected (row, latent) pairs: values are a [nnz] vector, one per pair."""

    rows: Tensor  # [nnz] int64, non-decreasing (row-major order)
    cols: Tensor  # [nnz] int64, ascending within a row
    row_offsets: Tensor  # [n_rows]: start of each row's pairs (an embedding bag's `offsets`)
    values_read: ValuesRead | None = field(default=None, repr=False)  # see gather
    sparse: ClassVar[bool] = True

    @property
    def latent(self) -> LatentIndex:
        return self.cols

    def count(self) -> int:
        return self.rows.numel()

    def to_sparse(self) -> PairLayout:
        return self

    def to_dense(self) -> DenseLayout:
        mask = torch.zeros(self.n_rows * self.n_latents, dtype=torch.bool, device=self.rows.device)
        mask[self.flat_index()] = True
        return Layout.from_mask(mask.view(self.n_rows, self.n_latents))

    def flat_index(self) -> Tensor:
        """Position of each pair in the flattened [rows, latents] matrix."""
        return self.rows * self.n_latents + self.cols

    @cached_property
    def by_col(self) -> tuple[Tensor, Tensor]:
        """(order, offsets): pairs ordered by latent (stably, so deterministic) and the start
        of each latent's run, for the gradients that sum over rows per latent."""
        return kernels.order_by_latent(self.cols, self.n_latents)

    @cached_property
    def rows_by_col(self) -> Tensor:
        """The pairs' rows in by_col order (shared by the decoder's and encoder's gradients)."""
        return self.rows.index_select(0, self.by_col[0])

    def gather(self, dense: Tensor) -> Tensor:
        """Values of a [rows, latents] matrix at the pairs: those read while the pairs were
        chosen, where `dense` is that matrix and unchanged since; else read now."""
        read = self.values_read.of(dense) if self.values_read is not None else None
        return read if read is not None else dense.reshape(-1).take(self.flat_index())

    def apply_mask(self, acts: Tensor) -> Tensor:
        return acts  # only the selected pairs have values

    def restrict(self, values: Tensor, start: int, end: int) -> tuple[Tensor, Layout]:
        keep = (self.cols >= start) & (self.cols < end)
        sub = Layout.from_pairs(self.rows[keep], self.cols[keep] - start, self.n_rows, end - start)
        return values[keep], sub

    def weighted_sum(self, values: Tensor, per_latent: Tensor) -> Tensor:
        # Summed per latent first, so that per_latent's gradient is a gather rather than an
        # accumulating scatter.
        sums = values.new_zeros(self.n_latents).index_add(0, self.cols, values)
        return torch.dot(sums, per_latent.to(sums.dtype))

    def dense(self, values: Tensor) -> Tensor:
        out = values.new_zeros(self.n_rows * self.n_latents)
        out[self.flat_index()] = values
        return out.view(self.n_rows, self.n_latents)


@dataclass(frozen=True, eq=False)
class DenseLayout(Layout):
    """Values are a [rows, latents] matrix."""

    # The selected entries, where the activation would let others through (top-k); None where
    # it zeroes them itself (a threshold activation).
    mask: Tensor | None  # [n_rows, n_latents] bool
    sparse: ClassVar[bool] = False

    @property
    def latent(self) -> LatentIndex:
        return ALL

    def count(self) -> int:
        if self.mask is None:
            raise ValueError("a dense layout without a mask cannot count its pairs")
        return int(self.mask.sum())

    def to_sparse(self) -> PairLayout:
        if self.mask is None:
            raise ValueError("a dense layout without a mask cannot list its pairs")
        rows, cols = self.mask.nonzero().unbind(1)  # row-major, as the kernels expect
        return Layout.from_pairs(rows, cols, self.n_rows, self.n_latents)

    def to_dense(self) -> DenseLayout:
        return self

    def gather(self, dense: Tensor) -> Tensor:
        return dense

    def apply_mask(self, acts: Tensor) -> Tensor:
        return acts * self.mask if self.mask is not None else acts

    def restrict(self, values: Tensor, start: int, end: int) -> tuple[Tensor, Layout]:
        mask = self.mask[:, start:end] if self.mask is not None else None
        return values[:, start:end], DenseLayout(self.n_rows, end - start, mask)

    def weighted_sum(self, values: Tensor, per_latent: Tensor) -> Tensor:
        return (values * per_latent).sum()

    def dense(self, values: Tensor) -> Tensor:
        return values


@dataclass(frozen=True, eq=False)
class ThresholdLayout(DenseLayout):
    """A dense layout of the entries where pre > threshold, which can count and list its
    pairs without a [rows, latents] mask (compiled passes over `pre`)."""

    pre: Tensor  # [n_rows, n_latents]
    threshold: Tensor  # [n_latents]

    @cached_property
    def row_counts(self) -> Tensor:
        """[n_rows] number of selected pairs per row."""
        return kernels.count_above(self.pre, self.threshold)

    def count(self) -> int:
        return int(self.row_counts.sum())

    def to_sparse(self) -> PairLayout:
        counts = self.row_counts
        rows, cols, values = kernels.pairs_above(self.pre, self.threshold, counts)
        offsets = counts.cumsum(0) - counts  # known: no bincount
        read = ValuesRead.now(self.pre, values)
        return PairLayout(self.n_rows, self.n_latents, rows, cols, offsets, read)


def at_latents(param: Tensor, latent: LatentIndex) -> Tensor:
    """A per-latent parameter at each pair's latent ([nnz] index), or itself to broadcast over
    a dense matrix (ALL). index_select rather than param[latent]: its gradient is an index_add,
    where indexing's is an accumulating index_put, several times slower on CPU."""
    return param if isinstance(latent, slice) else param.index_select(0, latent)


class Latents(NamedTuple):
    """Latent activations of a batch: `values` placed by `layout`."""

    values: Tensor
    layout: Layout

    def dense(self) -> Tensor:
        return self.layout.dense(self.values)

    def fired(self) -> Tensor:
        """[n_latents] bool: latents with a non-zero value in some row."""
        with torch.no_grad():
            if not self.layout.sparse:
                return (self.values != 0).any(0)
            # a max per latent over the pairs: no boolean indexing, which lists the non-zero
            # pairs first (a nonzero() pass and a copy)
            nonzero = (self.values != 0).to(torch.uint8)
            fired = nonzero.new_zeros(self.layout.n_latents)
            return fired.scatter_reduce_(0, self.layout.cols, nonzero, "amax").bool()

    def l0(self) -> float:
        """Mean number of non-zero latents per row."""
        with torch.no_grad():
            return float((self.values != 0).sum()) / max(1, self.layout.n_rows)


# ---------------------------------------------------------------------------- selection


def topk_pairs(pre: Tensor, k: int) -> PairLayout:
    """The k largest entries of each row, as row-major pairs (latents ascending in a row)."""
    cols, values = kernels.topk_cols(pre, k)
    n_rows, n_latents = pre.shape
    rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
    offsets = torch.arange(0, rows.numel(), k, device=pre.device)  # k per row: no bincount
    read = ValuesRead.now(pre, values.flatten())
    return PairLayout(n_rows, n_latents, rows, cols.flatten(), offsets, read)


def batch_topk_pairs(acts: Tensor, n_keep: int) -> PairLayout:
    """The n_keep largest entries of the whole matrix, as row-major pairs."""
    n_keep = min(n_keep, acts.numel())
    _, flat = acts.flatten().topk(n_keep, sorted=False)
    flat = flat.sort().values
    n_latents = acts.shape[1]
    return Layout.from_pairs(flat // n_latents, flat % n_latents, *acts.shape)


# ---------------------------------------------------------------------------- the two operations


class PreActsBuffer:
    """The dense pre-activations of a training step, written into one reused matrix.

    A fresh [rows, latents] matrix every step is the largest allocation of the step, and on
    CPU it comes from the OS each time (page faults on first touch); reusing one is free. The
    bias rides in the matmul as one more input dimension ([x - b_dec, 1] @ [W_enc; b_enc]):
    adding it separately would be one more pass over the whole matrix. Autocast's dtype is
    honoured by hand (autocast has no `out=` form): bf16 here only picks the pairs, while
    `encode_at` recomputes their values exactly. A step that keeps using the previous matrix
    after the next was written fails autograd's version check instead of computing wrong
    gradients.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: tuple[int, int], like: Tensor) -> tuple[Tensor, bool]:
        buffer = self.buffers.get(name)
        same = buffer is not None and buffer.shape == shape and buffer.dtype == like.dtype
        if not same or buffer.device != like.device:
            buffer = self.buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
            return buffer, True
        return buffer, False

    @torch.no_grad()
    def pre_acts(self, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
        device = x.device.type
        low = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if low else W_enc.dtype
        like = W_enc.new_empty(0, dtype=dtype)
        (n_rows, d_in), n_latents = x.shape, W_enc.shape[1]
        weights, _ = self._buffer("weights", (d_in + 1, n_latents), like)
        inputs, fresh = self._buffer("inputs", (n_rows, d_in + 1), like)
        out, _ = self._buffer("pre", (n_rows, n_latents), like)
        if fresh:
            inputs[:, d_in] = 1
        weights[:d_in].copy_(W_enc)
        weights[d_in].copy_(b_enc)
        # computed at the inputs' precision and rounded as stored: no [rows, d_in] temporary
        torch.sub(x, b_dec, out=inputs[:, :d_in])
        with torch.autocast(device, enabled=False):
            return torch.mm(inputs, weights, out=out)


def row_sq_error(x: Tensor, recon: Tensor) -> Tensor:
    """Mean over rows of the summed squared error."""
    return _RowSqError.apply(x, recon)


class _RowSqError(torch.autograd.Function):
    """One pass for the value and one for the gradient, where autograd's (x - r)^2 -> sum ->
    mean takes eight over [rows, d_in]: on CPU those passes cost as much as the sparse decoder."""

    @staticmethod
    def forward(ctx, x, recon):  # type: ignore[override]
        diff = x - recon
        ctx.shapes = x.shape, recon.shape
        ctx.save_for_backward(diff)
        flat = diff.reshape(-1)
        return torch.dot(flat, flat) / (flat.numel() // diff.shape[-1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        x_shape, recon_shape = ctx.shapes
        grad_diff = diff * (2 * grad / (diff.numel() // diff.shape[-1]))
        grad_x = grad_diff.sum_to_size(x_shape) if ctx.needs_input_grad[0] else None
        grad_recon = -grad_diff.sum_to_size(recon_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_recon


def encode_at(
    x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, layout: Layout
) -> Tensor:
    """Differentiable pre-activations (x - b_dec) @ W_enc + b_enc at the layout's positions.

    `pre` is that matrix already computed without gradient (perhaps in bf16, to choose the
    pairs); the values returned are float32 and exact, and the backward pass touches only the
    selected pairs (sparse layout) or skips the [rows, d_in] input gradient (dense layout).
    """
    return _EncodeAt.apply(x, b_dec, W_enc, b_enc, pre, layout)


class _EncodeAt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, pre, layout):  # type: ignore[override]
        xc = x - b_dec
        ctx.layout = layout
        ctx.save_for_backward(xc, W_enc)
        if not layout.sparse:
            # The dense layout hands out the no-grad matrix itself: recomputing it would cost
            # a second matmul. A bf16 `pre` stays bf16 here, as autocast would have it.
            return pre.detach()
        if pre.dtype == xc.dtype:
            return layout.gather(pre)
        # Pairs were chosen on low-precision pre-activations; their values are recomputed
        # exactly, so bf16 only decides which latents fire, never what they output.
        return _pair_dots(xc, W_enc.t(), layout) + b_enc.index_select(0, layout.cols)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        xc, W_enc = ctx.saved_tensors
        layout: Layout = ctx.layout
        need_x, need_b_dec, need_W, need_b_enc = ctx.needs_input_grad[:4]
        grad = grad.to(xc.dtype)
        grad_x = grad_W = None
        if layout.sparse:
            latent_sums = None
            if need_W:
                grad_W, latent_sums = _sum_rows_per_latent(xc, grad, layout)
                grad_W = grad_W.t()
            if latent_sums is None:
                latent_sums = torch.zeros(layout.n_latents, dtype=grad.dtype, device=grad.device)
                latent_sums.index_add_(0, layout.cols, grad)
            if need_x:
                grad_x = F.embedding_bag(
                    layout.cols,
                    W_enc.t(),
                    layout.row_offsets,
                    per_sample_weights=grad,
                    mode="sum",
                )
        else:
            latent_sums = grad.sum(0)
            if need_W:
                grad_W = xc.t() @ grad
            if need_x:
                grad_x = grad @ W_enc.t()
        # b_dec's gradient through the encoder is the row sum of the input gradient, which
        # is W_enc times the per-latent sums: no [rows, d_in] product is needed for it.
        grad_b_dec = -(W_enc @ latent_sums) if need_b_dec else None
        return grad_x, grad_b_dec, grad_W, latent_sums if need_b_enc else None, None, None


class _PairDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, W_dec, layout):  # type: ignore[override]
        ctx.layout = layout
        ctx.save_for_backward(values, W_dec)
        return F.embedding_bag(
            layout.cols, W_dec, layout.row_offsets, per_sample_weights=values, mode="sum"
        )

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        layout: Layout = ctx.layout
        grad = grad.to(W_dec.dtype)
        grad_values = _pair_dots(grad, W_dec, layout) if ctx.needs_input_grad[0] else None
        grad_W = _sum_rows_per_latent(grad, values, layout)[0] if ctx.needs_input_grad[1] else None
        return grad_values, grad_W, None


class _DecodeError(torch.autograd.Function):
    """Layout.decode_error on CPU: the decoder, the error and the dot products its gradient
    needs at the pairs, all in one pass per row (kernels.decode_error); in the backward pass
    only scalings and the per-latent sums for W_dec's gradient are left. Eleven passes over
    [rows, d_in] (decode, bias, difference, square, sum, and their gradients) become one."""

    @staticmethod
    def forward(ctx, values, W_dec, b_dec, x, layout):  # type: ignore[override]
        recon, diff, sq, dots = kernels.decode_error(
            values, W_dec, b_dec, x, layout.cols, layout.row_offsets
        )
        ctx.layout = layout
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(values, W_dec, diff, dots)
        return recon, sq.sum() / x.shape[0]

    @staticmethod
    def backward(ctx, grad_recon, grad_mse):  # type: ignore[override]
        values, W_dec, diff, dots = ctx.saved_tensors
        layout: Layout = ctx.layout
        need_values, need_W, need_b, need_x = ctx.needs_input_grad[:4]
        # d mse / d recon = -2 diff / rows; d mse / d x = +2 diff / rows
        scale = diff.new_zeros(()) if grad_mse is None else -2 * grad_mse / diff.shape[0]
        if grad_recon is None:
            grad_out, grad_values = diff, dots * scale if need_values else None
        else:  # recon is used beyond the error as well: its gradient joins the error's
            grad_out, scale = grad_recon + diff * scale, scale.new_ones(())
            grad_values = _pair_dots(grad_out, W_dec, layout) if need_values else None
        grad_W = _sum_rows_per_latent(grad_out, values, layout)[0] * scale if need_W else None
        grad_b = grad_out.sum(0) * scale if need_b else None
        grad_x = None
        if need_x:
            grad_x = diff * (2 * grad_mse / diff.shape[0]) if grad_mse is not None else None
        return grad_values, grad_W, grad_b, grad_x, None


def _pair_dots(rows_of: Tensor, latents_of: Tensor, layout: PairLayout) -> Tensor:
    """For every pair (r, j): rows_of[r] . latents_of[j], without gathering [nnz, d] rows."""
    return kernels.pair_dots(
        rows_of.contiguous(),
        latents_of.contiguous(),
        layout.rows,
        layout.cols,
        layout.row_offsets,
    )


def _sum_rows_per_latent(
    rows_of: Tensor, weights: Tensor, layout: PairLayout
) -> tuple[Tensor, Tensor | None]:
    """[n_latents, d]: for each latent j, the sum over its pairs (r, j) of weight * rows_of[r],
    in a fixed order (deterministic); and the sum of each latent's weights where it came with
    them (the compiled scatter), else None. One embedding bag per latent over its pairs where
    the scatter does not apply."""
    compiled = kernels.sums_per_latent(
        rows_of, weights, layout.cols, layout.row_offsets, layout.n_latents
    )
    if compiled is not None:
        return compiled
    order, offsets = layout.by_col
    sums_of_rows = F.embedding_bag(
        layout.rows_by_col,
        rows_of,
        offsets,
        per_sample_weights=weights.index_select(0, order),
        mode="sum",
    )
    return sums_of_rows, None
