"""A batched sampler for a sae_lens SyntheticModel: the same distribution, drawn sparsely.

sae_lens builds the model (feature dictionary, firing probabilities, magnitudes, hierarchy,
low-rank correlation) and we keep all of that; only the per-batch draw is ours. Its
`sample_with_features` works on dense [batch, num_features] tensors: a Gaussian for every
feature of every row, the hierarchy applied level by level on the dense matrix, then a dense
[batch, num_features] @ [num_features, hidden_dim] product. With compensated hierarchy
probabilities most children are drawn "on" before their parents gate them off (SynthSAEBench-16k:
~7,000 raw firings per row for a realised L0 of ~35), so nearly all of that work is discarded.

The same law, drawn where it matters:
- Given the low-rank Gaussian's shared factor eps_r, sae_lens's copula makes features fire
  independently, feature i with p_i(r) = Phi((F_i . eps_r - t_i) / d_i). So a child need only
  be drawn in the rows where its parent is finally active; elsewhere sae_lens zeroes it anyway.
- Features without a parent (roots and features outside the forest) are mostly rare. They are
  drawn as a thinned Poisson process: a bound q_i >= p_i(r) over the batch gives Poisson points
  at rate -log(1 - q_i) per row, each kept with probability log(1 - p_i(r)) / log(1 - q_i); a
  cell fires when at least one point is kept, which has probability exactly p_i(r). Features
  whose bound is large are drawn densely instead.
- Mutual exclusion keeps one uniformly chosen child among those drawn active, children are
  scaled by parent value / parent mean (or gated), and the activations are summed from the
  active features' rows of the dictionary: O(active features x hidden_dim) per row.

Models this does not cover (a full correlation matrix, a custom modifier, sparse tensors, a
hierarchy node without a feature) return None from `FastSampler.build`; the source then keeps
sae_lens's own sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from sae_lens.synthetic import SyntheticModel
from torch import Tensor

DENSE_BOUND = 0.2  # features whose firing bound exceeds this are drawn for every row
BLOCK_ROWS = 64  # rows sharing one firing bound: smaller blocks, tighter bounds, fewer points
_SQRT2 = math.sqrt(2.0)


def _phi(x: Tensor) -> Tensor:
    """Standard normal CDF, accurate in the lower tail (rare features)."""
    return 0.5 * torch.erfc(-x / _SQRT2)


@dataclass
class SparseBatch:
    """Active (row, feature, value) triples of one batch, in no particular order."""

    rows: Tensor
    features: Tensor
    values: Tensor
    batch_size: int
    num_features: int

    def dense(self) -> Tensor:
        out = torch.zeros(
            self.batch_size, self.num_features, dtype=self.values.dtype, device=self.values.device
        )
        out[self.rows, self.features] = self.values
        return out


class FastSampler:
    """Draws what `model.sample_with_features` draws, from our own torch.Generator."""

    def __init__(
        self,
        model: SyntheticModel,
        parent: Tensor,
        children: Tensor,
        exclusive: Tensor,
        scaled: Tensor,
        depth: int,
    ):
        gen = model.activation_generator
        self.num_features = gen.num_features
        self.p = gen.firing_probabilities.float()
        self.mean = gen.mean_firing_magnitudes.float()
        self.std = gen.std_firing_magnitudes.float()
        self.low_rank = None
        self.thresholds = None
        if gen.low_rank_correlation is not None:
            factor, diag_sqrt = gen.low_rank_correlation
            assert gen.correlation_thresholds is not None
            self.low_rank = (factor.float(), diag_sqrt.float())
            self.thresholds = gen.correlation_thresholds.float()
        self.W = model.feature_dict.feature_vectors.detach().float()
        self.bias = model.feature_dict.bias.detach().float()
        self.parent, self.children = parent, children
        self.exclusive, self.scaled, self.depth = exclusive, scaled, depth
        self.top = torch.nonzero(parent < 0).squeeze(1)  # features drawn in every row

    @classmethod
    def build(cls, model: SyntheticModel) -> FastSampler | None:
        gen = model.activation_generator
        if gen.correlation_matrix is not None or gen.use_sparse_tensors:
            return None
        if gen.mean_firing_magnitudes.dtype != torch.float32:
            return None
        n = gen.num_features
        parent = torch.full((n,), -1, dtype=torch.long)
        exclusive = torch.zeros(n, dtype=torch.bool)
        scaled = torch.zeros(n, dtype=torch.bool)
        kids: dict[int, list[int]] = {}
        depth = 0
        if gen.modify_activations is not None:
            hierarchy = model.hierarchy
            if hierarchy is None or gen.modify_activations._fn is not hierarchy.modifier:
                return None  # a modifier other than sae_lens's hierarchy
            stack = [(root, 0) for root in hierarchy.roots]
            while stack:
                node, level = stack.pop()
                if node.feature_index is None:
                    return None  # organisational nodes: leave them to sae_lens
                i = int(node.feature_index)
                depth = max(depth, level)
                exclusive[i] = bool(node.mutually_exclusive_children)
                scaled[i] = bool(node.scale_children_by_parent)
                for child in node.children:
                    if child.feature_index is None:
                        return None
                    parent[int(child.feature_index)] = i
                    kids.setdefault(i, []).append(int(child.feature_index))
                    stack.append((child, level + 1))
        width = max((len(v) for v in kids.values()), default=1)
        children = torch.full((n, width), -1, dtype=torch.long)
        for i, v in kids.items():
            children[i, : len(v)] = torch.tensor(v)
        return cls(model, parent, children, exclusive, scaled, depth)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample_sparse(self, n: int, generator: torch.Generator) -> SparseBatch:
        eps = None
        if self.low_rank is not None:
            eps = torch.randn(n, self.low_rank[0].shape[1], generator=generator)
        rows, feats = self._top_level(n, eps, generator)
        vals = self._magnitudes(feats, generator)
        keep = vals > 0  # sae_lens's relu: a feature drawn at magnitude 0 is not active
        rows, feats, vals = rows[keep], feats[keep], vals[keep]
        out_rows, out_feats, out_vals = [rows], [feats], [vals]
        for _ in range(self.depth):
            rows, feats, vals = self._children(rows, feats, vals, eps, generator)
            if rows.numel() == 0:
                break
            out_rows.append(rows)
            out_feats.append(feats)
            out_vals.append(vals)
        return SparseBatch(
            torch.cat(out_rows), torch.cat(out_feats), torch.cat(out_vals), n, self.num_features
        )

    def hidden(self, batch: SparseBatch) -> Tensor:
        """features @ feature_vectors + bias, summed over the active features only
        (embedding_bag sums the dictionary rows without gathering them into a copy)."""
        order = torch.argsort(batch.rows)
        offsets = torch.searchsorted(batch.rows[order], torch.arange(batch.batch_size))
        x = torch.nn.functional.embedding_bag(
            batch.features[order],
            self.W,
            offsets,
            mode="sum",
            per_sample_weights=batch.values[order],
        )
        return x + self.bias

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.hidden(self.sample_sparse(n, generator))

    def sample_with_features(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch = self.sample_sparse(n, generator)
        return self.hidden(batch), batch.dense()

    # ------------------------------------------------------------------ pieces

    def _prob(self, rows: Tensor, feats: Tensor, eps: Tensor | None) -> Tensor:
        """p_feature(row) given the row's shared Gaussian factor."""
        if eps is None or self.low_rank is None:
            return self.p[feats]
        return self._copula((eps[rows] * self.low_rank[0][feats]).sum(1), feats)

    def _copula(self, shared: Tensor, feats: Tensor) -> Tensor:
        """Firing probability of `feats` given `shared`, the low-rank factor's part of their
        Gaussians (F_i . eps_r): Phi((shared - t_i) / d_i), broadcast over leading dims."""
        assert self.low_rank is not None and self.thresholds is not None
        return _phi((shared - self.thresholds[feats]) / self.low_rank[1][feats])

    def _magnitudes(self, feats: Tensor, generator: torch.Generator) -> Tensor:
        z = torch.randn(feats.shape[0], generator=generator)
        return (self.mean[feats] + z * self.std[feats]).relu()

    def _top_level(
        self, n: int, eps: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        feats = self.top
        blocks = -(-n // BLOCK_ROWS)
        if eps is None or self.low_rank is None:
            bound = self.p[feats].expand(blocks, -1)
        else:  # over a block of rows, p_i(r) <= Phi((max_r F_i . eps_r - t_i) / d_i)
            padded = torch.cat([eps, eps[: blocks * BLOCK_ROWS - n]])  # repeats: still a bound
            c = padded.view(blocks, BLOCK_ROWS, -1) @ self.low_rank[0][feats].T
            bound = self._copula(c.amax(1), feats)
        dense = (bound > DENSE_BOUND).any(0)
        d_rows, d_feats = self._dense(n, feats[dense], eps, generator)
        s_rows, s_feats = self._poisson(n, feats[~dense], bound[:, ~dense], eps, generator)
        return torch.cat([d_rows, s_rows]), torch.cat([d_feats, s_feats])

    def _dense(
        self, n: int, feats: Tensor, eps: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if eps is None or self.low_rank is None:
            prob = self.p[feats].expand(n, -1)
        else:
            prob = self._copula(eps @ self.low_rank[0][feats].T, feats)
        rows, cols = torch.nonzero(
            torch.rand(n, feats.shape[0], generator=generator) < prob, as_tuple=True
        )
        return rows, feats[cols]

    def _poisson(
        self, n: int, feats: Tensor, bound: Tensor, eps: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Cells (row, feature) firing with p_feature(row), where p_feature(row) <= bound
        [block, feature] for every row of the block: Poisson points at the bound's rate, each
        kept with (its cell's rate / the bound's rate); a cell fires if any point is kept."""
        blocks = bound.shape[0]
        rows_in = torch.full((blocks,), BLOCK_ROWS)
        rows_in[-1] = n - (blocks - 1) * BLOCK_ROWS
        rate = -torch.log1p(-bound)  # per row; 1 - exp(-rate) = bound
        counts = torch.poisson(rate * rows_in.unsqueeze(1), generator=generator).long().view(-1)
        point_feats = feats.repeat(blocks).repeat_interleave(counts)
        point_rate = rate.reshape(-1).repeat_interleave(counts)
        block = torch.arange(blocks).repeat_interleave(feats.shape[0]).repeat_interleave(counts)
        offset = torch.rand(point_feats.shape[0], generator=generator) * rows_in[block]
        point_rows = block * BLOCK_ROWS + offset.long().clamp(max=BLOCK_ROWS - 1)
        point_rows = point_rows.clamp(max=n - 1)
        keep = -torch.log1p(-self._prob(point_rows, point_feats, eps))
        kept = torch.rand(point_feats.shape[0], generator=generator) * point_rate < keep
        cells = torch.unique(point_rows[kept] * self.num_features + point_feats[kept])
        return cells // self.num_features, cells % self.num_features

    def _children(
        self,
        rows: Tensor,
        parents: Tensor,
        parent_vals: Tensor,
        eps: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The children of active (row, parent) cells: drawn, mutually excluded, scaled."""
        kids = self.children[parents]  # [E, width], -1 padding
        has = kids >= 0
        has_any = has.any(1)
        rows, parents, parent_vals, kids, has = (
            rows[has_any],
            parents[has_any],
            parent_vals[has_any],
            kids[has_any],
            has[has_any],
        )
        e, width = kids.shape
        cell_rows = rows.unsqueeze(1).expand(e, width)
        safe = kids.clamp(min=0)
        prob = self._prob(cell_rows.reshape(-1), safe.reshape(-1), eps).view(e, width)
        fire = (torch.rand(e, width, generator=generator) < prob) & has
        vals = self._magnitudes(safe.reshape(-1), generator).view(e, width)
        active = fire & (vals > 0)
        # Mutual exclusion: one uniformly chosen winner among the active siblings.
        score = torch.rand(e, width, generator=generator).masked_fill(~active, -1.0)
        winner = torch.zeros_like(active).scatter_(1, score.argmax(1, keepdim=True), True)
        active &= winner | ~self.exclusive[parents].unsqueeze(1)
        factor = torch.where(
            self.scaled[parents], parent_vals / self.mean[parents], torch.ones_like(parent_vals)
        )
        vals = vals * factor.unsqueeze(1)
        return cell_rows[active], kids[active], vals[active]
