"""A language model as an activation source: token windows in, per-hook rows out.

`harvest_stream` yields rows in token-stream order (what a store writes): every hook of one
forward pass together, with each row's token id, position in its window, document index and,
on the generated language, the planted variables' labels. `stream` is for training straight
from the model: rows of one hook, mixed in a seeded buffer of `shuffle_rows` rows, because
neighbouring tokens are too alike to make a good batch.

Both resume exactly. A harvest stream's position is the token cursor before the forward pass
it is part-way through plus the rows of that pass already handed out; restoring re-runs that
one pass. The training stream saves where its current buffer was filled from and re-fills it.

The seed chooses the corpus of the generated language; documents of files and hub datasets
are read in their stored order, whatever the seed. `rank`/`world_size` select a disjoint
slice of the documents (see sae/sources/text.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.config import LMConfig
from sae.errors import ConfigError, DataError
from sae.hooked_models.models import LanguageModel
from sae.seeding import derive_seed
from sae.sources.base import ActivationSource
from sae.sources.text import GENERATED, SpecialIds, TokenWindows, build_reader, check_dataset
from sae.streams import BatchStream, HarvestBatch, HarvestStream


class LMSource(ActivationSource):
    def __init__(self, cfg: LMConfig, model: LanguageModel | None = None):
        """Checks the dataset reference, loads the model (unless given) and checks the hooks."""
        check_dataset(cfg.dataset)
        if model is None:
            from sae.hooked_models.loading import load_language_model

            model = load_language_model(cfg)
        model.check_hooks(cfg.hooks)
        if model.n_ctx is not None and cfg.context_size > model.n_ctx:
            raise ConfigError(
                f"data.lm.context_size {cfg.context_size} exceeds the model's context of {model.n_ctx}"
            )
        self.cfg, self.model = cfg, model
        self.hook_names = tuple(cfg.hooks)
        self.special = _special_ids(cfg, model.tokenizer)
        self.excluded = _excluded_ids(model.tokenizer) if cfg.exclude_special_tokens else None
        if cfg.dataset == GENERATED:
            _check_word_level(model.tokenizer)
        self.hook_dims = model.hook_dims(self.hook_names)
        self.d_in = self.hook_dims[self.hook_names[0]]

    @property
    def label_names(self) -> tuple[str, ...]:
        from sae.corpus.grammar import VARIABLES

        return VARIABLES if self.cfg.dataset == GENERATED else ()

    def row_mask(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """Which positions of windows [..., T] become rows: real tokens, minus the special
        tokens when `exclude_special_tokens` is set. Evaluation scores the same positions."""
        keep = valid.clone()
        if self.excluded is not None:
            keep &= ~torch.isin(tokens, self.excluded.to(tokens.device))
        return keep

    def windows(
        self, seed: int, rank: int = 0, world_size: int = 1, split: str | None = None
    ) -> TokenWindows:
        """The context windows this source reads (also what an evaluation feeds the model)."""
        cfg = self.cfg
        reader = build_reader(
            cfg.dataset, split or cfg.dataset_split, cfg.text_column, seed, cfg.dataset_config
        )
        return TokenWindows(
            reader,
            self.model.tokenizer,
            cfg.context_size,
            self.special,
            rank=rank,
            world_size=world_size,
            label_names=self.label_names,
        )

    def harvest_stream(
        self,
        batch_rows: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        hooks: tuple[str, ...] | None = None,
    ) -> LMHarvestStream:
        return LMHarvestStream(self, batch_rows, seed, rank, world_size, hooks or self.hook_names)

    def stream(
        self,
        batch_size: int,
        seed: int,
        hook: str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> BatchStream:
        hook = hook or self.hook_names[0]
        if hook not in self.hook_names:
            raise ConfigError(f"hook '{hook}' is not one of data.lm.hooks")
        return ShuffledStream(self, batch_size, seed, hook, rank, world_size)

    def width(self, hook: str | None) -> int:
        return self.hook_dims[hook or self.hook_names[0]]

    def metadata(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "kind": "lm",
            "model_name": self.model.name,
            "backend": cfg.backend,
            "hooks": dict(self.hook_dims),
            "context_size": cfg.context_size,
            "dataset_path": cfg.dataset,
            "dataset_split": cfg.dataset_split,
            "prepend_bos": cfg.prepend_bos,
            "exclude_special_tokens": cfg.exclude_special_tokens,
            "labels": list(self.label_names),
        }


def _special_ids(cfg: LMConfig, tokenizer: Any) -> SpecialIds:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if cfg.prepend_bos and bos is None:
        raise ConfigError("data.lm.prepend_bos is true but the tokenizer has no BOS token")
    separator = {"bos": bos, "eos": eos, "none": None}[cfg.separator]
    if cfg.separator != "none" and separator is None:
        raise ConfigError(f"data.lm.separator is '{cfg.separator}' but the tokenizer has none")
    pad = next((t for t in (tokenizer.pad_token_id, eos, bos) if t is not None), 0)
    return SpecialIds(bos=bos if cfg.prepend_bos else None, separator=separator, pad=pad)


def _excluded_ids(tokenizer: Any) -> Tensor:
    # SAELens's definition of the structural special tokens, so rows match what it would keep.
    from sae_lens.util import get_special_token_ids

    return torch.tensor(sorted(get_special_token_ids(tokenizer)), dtype=torch.long)


def _check_word_level(tokenizer: Any) -> None:
    from sae.corpus.grammar import generate_document

    document = generate_document(0, "train", 0)
    ids = tokenizer(document.text, add_special_tokens=False)["input_ids"]
    if len(ids) != len(document.words):
        raise ConfigError(
            "data.lm.dataset 'generated' needs the language's word-level tokenizer "
            "(model 'bundled'); this model's tokenizer splits its words differently"
        )


# ---------------------------------------------------------------------------- harvesting


class LMHarvestStream(HarvestStream):
    """Rows in token-stream order, `batch_rows` at a time, ending when the data (or
    max_tokens) does."""

    def __init__(
        self,
        source: LMSource,
        batch_rows: int,
        seed: int,
        rank: int,
        world_size: int,
        hooks: tuple[str, ...],
    ):
        self.source, self.batch_rows, self.hooks = source, batch_rows, hooks
        self.windows = source.windows(seed, rank, world_size)
        self.limit = source.cfg.max_tokens
        self.emitted = 0
        self.pass_state = self.windows.state_dict()  # cursor before the pass being handed out
        self.pending: HarvestBatch | None = None
        self.used = 0  # rows of `pending` already handed out

    def _pass_windows(self) -> tuple[list[Any], Tensor, Tensor] | None:
        """The next forward pass's windows, tokens and row mask; None at the end of the data."""
        windows = []
        for _ in range(self.source.cfg.batch_sequences):
            try:
                windows.append(next(self.windows))
            except StopIteration:
                break
        if not windows:
            return None
        tokens = torch.stack([w.tokens for w in windows])
        keep = self.source.row_mask(tokens, torch.stack([w.valid for w in windows])).reshape(-1)
        return windows, tokens, keep

    def _forward(self) -> HarvestBatch | None:
        """The next forward pass's rows, or None at the end of the data."""
        read = self._pass_windows()
        if read is None:
            return None
        windows, tokens, keep = read
        activations = self.source.model.activations(tokens, self.hooks)
        size = tokens.shape[1]
        everything = bool(keep.all())  # then no [rows, d] copy to drop none of them

        def kept(a: Tensor) -> Tensor:
            rows = a.reshape(-1, a.shape[-1])
            return (rows if everything else rows[keep.to(a.device)]).cpu()

        return HarvestBatch(
            activations={h: kept(a) for h, a in activations.items()},
            token_ids=tokens.reshape(-1)[keep],
            positions=torch.arange(size).repeat(len(windows))[keep],
            doc_ids=torch.stack([w.doc_ids for w in windows]).reshape(-1)[keep],
            labels={
                name: torch.stack([w.labels[name] for w in windows]).reshape(-1)[keep]
                for name in self.source.label_names
            },
        )

    def __next__(self) -> HarvestBatch:
        return self.take(self.batch_rows)

    def take(self, rows: int) -> HarvestBatch:
        """The next `rows` rows (fewer only at the end of the data)."""
        want = rows
        if self.limit is not None:
            want = min(want, self.limit - self.emitted)
        pieces: list[HarvestBatch] = []
        while want > 0:
            if self.pending is None:
                self.pass_state = self.windows.state_dict()
                self.pending, self.used = self._forward(), 0
                if self.pending is None:
                    break
            count = min(want, self.pending.rows - self.used)
            pieces.append(_slice(self.pending, self.used, self.used + count))
            self.used += count
            want -= count
            if self.used == self.pending.rows:
                self.pending = None
        if not pieces:
            raise StopIteration
        batch = _concat(pieces)
        self.emitted += batch.rows
        return batch

    def skip_batches(self, n: int) -> int:
        """Whole forward passes inside the skip are only tokenised (to count their rows); the
        model runs just for a pass the skip ends inside, whose rest is read next."""
        want = n * self.batch_rows
        if self.limit is not None:
            want = min(want, self.limit - self.emitted)
        skipped = 0
        while skipped < want:
            if self.pending is None:
                self.pass_state = self.windows.state_dict()
                read = self._pass_windows()
                if read is None:
                    break
                rows = int(read[2].sum())
                if skipped + rows <= want:
                    skipped += rows
                    continue
                self.windows.load_state_dict(self.pass_state)
                self.pending, self.used = self._forward(), 0
                assert self.pending is not None
            count = min(want - skipped, self.pending.rows - self.used)
            self.used += count
            skipped += count
            if self.used == self.pending.rows:
                self.pending = None
        self.emitted += skipped
        return skipped

    def state_dict(self) -> dict[str, Any]:
        if self.pending is None:
            self.pass_state = self.windows.state_dict()
        return {
            "windows": self.pass_state,
            "used": self.used if self.pending else 0,
            "emitted": self.emitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.windows.load_state_dict(state["windows"])
        self.pass_state = state["windows"]
        self.emitted, self.used, self.pending = int(state["emitted"]), int(state["used"]), None
        if self.used:
            self.pending = self._forward()
            if self.pending is None or self.pending.rows < self.used:
                raise DataError("cannot resume the harvest: the saved forward pass is gone")


def _slice(batch: HarvestBatch, start: int, stop: int) -> HarvestBatch:
    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[start:stop]

    return HarvestBatch(
        activations={h: a[start:stop] for h, a in batch.activations.items()},
        token_ids=cut(batch.token_ids),
        positions=cut(batch.positions),
        doc_ids=cut(batch.doc_ids),
        labels={k: v[start:stop] for k, v in batch.labels.items()},
    )


def _concat(pieces: list[HarvestBatch]) -> HarvestBatch:
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]

    def cat(get: Any) -> Tensor:
        return torch.cat([get(p) for p in pieces])

    return HarvestBatch(
        activations={h: cat(lambda p, h=h: p.activations[h]) for h in first.activations},
        token_ids=cat(lambda p: p.token_ids),
        positions=cat(lambda p: p.positions),
        doc_ids=cat(lambda p: p.doc_ids),
        labels={k: cat(lambda p, k=k: p.labels[k]) for k in first.labels},
    )


# ---------------------------------------------------------------------------- live training


class ShuffledStream(BatchStream):
    """[batch, d] float32 rows of one hook, shuffled within buffers of ~shuffle_rows rows.

    A finite dataset is repeated (epochs) so training never runs dry. The state is where the
    current buffer was filled from (harvest position, epoch, generator) and how many batches
    of it were used; restoring re-fills that buffer and skips them.
    """

    def __init__(
        self, source: LMSource, batch_size: int, seed: int, hook: str, rank: int, world_size: int
    ):
        self.source, self.batch_size, self.seed, self.hook = source, batch_size, seed, hook
        self.slice = (rank, world_size)
        per_fill = max(1, -(-source.cfg.shuffle_rows // batch_size))
        self.fill_rows = per_fill * batch_size
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
        self.epoch = 0
        self.harvest = self._harvest()
        self.buffer: Tensor | None = None
        self.fill_state: dict[str, Any] = {}
        self.used = 0

    def _harvest(self) -> LMHarvestStream:
        return self.source.harvest_stream(
            self.fill_rows, self.seed, *self.slice, hooks=(self.hook,)
        )

    def _fill(self) -> None:
        self.fill_state = {
            "harvest": self.harvest.state_dict(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }
        rows: list[Tensor] = []
        have = 0
        fresh_epoch = False
        while have < self.fill_rows:
            try:
                rows.append(self.harvest.take(self.fill_rows - have).activations[self.hook])
            except StopIteration:
                if fresh_epoch:
                    raise DataError("the dataset yields no tokens to train on") from None
                self.epoch, self.harvest, fresh_epoch = self.epoch + 1, self._harvest(), True
                continue
            fresh_epoch = False
            have += rows[-1].shape[0]
        buffer = torch.cat(rows).float()
        self.buffer = buffer[torch.randperm(buffer.shape[0], generator=self.generator)]
        self.used = 0

    def __next__(self) -> Tensor:
        if self.buffer is None or self.used * self.batch_size >= self.fill_rows:
            self._fill()
        assert self.buffer is not None
        start = self.used * self.batch_size
        self.used += 1
        return self.buffer[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        if self.buffer is None:
            return {"fill": None, "used": 0}
        return {"fill": self.fill_state, "used": self.used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fill = state["fill"]
        if fill is None:
            return
        self.epoch = int(fill["epoch"])
        self.harvest = self._harvest()
        self.harvest.load_state_dict(fill["harvest"])
        self.generator.set_state(fill["generator"])
        self._fill()
        self.used = int(state["used"])
