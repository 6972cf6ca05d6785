"""Text documents in, fixed-length context windows of token ids out.

Documents come from the generated language (`dataset: generated`), from a local file (.txt:
one document per line; .json/.jsonl/.csv/.parquet: one per row, text in `text_column`), from a
local dataset folder (a `save_to_disk` folder, or data files laid out as on the hub: see
sae/sources/local_datasets.py) or from a Hugging Face hub dataset by name, always streamed, so
nothing is copied into a cache first.

Pre-tokenized data (SAELens's `input_ids` column, or `text_column` naming a column of token
ids) is taken as is: each row's ids are one document, put into windows like tokenized text.

Windows follow SAELens's `concat_and_batch_sequences`: documents are tokenized without
special tokens and concatenated, each window starts with BOS (if `prepend_bos`), and a
separator token is put between two documents that share a window. Concatenating wastes no
positions on padding and is what SAELens-trained dictionaries saw; the BOS at each window start
gives the model the resting position it expects. Only the very last window of a finite
dataset is padded, and its padding positions are marked invalid (a causal model's earlier
positions do not see them).

Rank slices: rank r of w reads documents r, r + w, r + 2w, ..., so the slices are disjoint
and together hold every document exactly once. A cursor between windows is (document, token
offset within it) plus the dataset reader's own state before that document; `state_dict` /
`load_state_dict` restore it exactly.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.errors import ConfigError, DataError, first_line
from sae.paths import looks_like_local_path
from sae.sources.local_datasets import check_dataset_folder, open_dataset_folder

GENERATED = "generated"
FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
TOKENIZED_COLUMN = "input_ids"  # SAELens's name for a pre-tokenized dataset's column
NO_DOCUMENT = -1  # doc id of positions inserted here (BOS, separators, padding)


@dataclass
class RawDocument:
    index: int  # position in the whole dataset (before rank slicing)
    text: str
    labels: dict[str, list[int]] | None  # per word, for the generated language
    state: dict[str, Any]  # reader state that reads this document next
    ids: list[int] | None = None  # pre-tokenized rows: the token ids, used instead of text


# ---------------------------------------------------------------------------- readers


class DocumentReader(ABC):
    """Documents in a fixed order, from a saved position, keeping one rank's slice."""

    @abstractmethod
    def read(
        self, state: dict[str, Any] | None, rank: int, world_size: int
    ) -> Iterator[RawDocument]: ...


class GeneratedReader(DocumentReader):
    """The generated language: document i is a pure function of (seed, split, i)."""

    def __init__(self, seed: int, split: str):
        self.seed, self.split = seed, split

    def read(
        self, state: dict[str, Any] | None, rank: int, world_size: int
    ) -> Iterator[RawDocument]:
        from sae.corpus.grammar import generate_document

        index = int(state["index"]) if state else rank
        while True:
            document = generate_document(self.seed, self.split, index)
            yield RawDocument(index, document.text, document.labels, {"index": index})
            index += world_size


class DatasetReader(DocumentReader):
    """A local file or hub dataset streamed by `datasets`; resumes with its own state_dict."""

    def __init__(self, dataset: str, split: str, text_column: str, config: str | None = None):
        self.dataset, self.split, self.config = dataset, split, config
        self.text_column = text_column

    def open(self) -> Any:
        import datasets

        path = Path(self.dataset).expanduser()
        try:
            if path.is_file():
                builder = FILE_BUILDERS[path.suffix.lower()]
                return datasets.load_dataset(
                    builder, data_files=str(path), split=self.split, streaming=True
                )
            if path.is_dir():
                return open_dataset_folder(path, self.split, self.dataset)
            # A hub dataset by name (needs network access, or the local hub cache).
            return datasets.load_dataset(
                self.dataset, self.config, split=self.split, streaming=True
            )
        except (ValueError, OSError) as error:
            raise DataError(
                f"cannot read dataset '{self.dataset}' split '{self.split}': {first_line(error)}"
            ) from None

    def read(
        self, state: dict[str, Any] | None, rank: int, world_size: int
    ) -> Iterator[RawDocument]:
        stream = self.open()
        index = 0
        if state:
            stream.load_state_dict(state["dataset"])
            index = int(state["index"])
        examples = iter(stream)
        try:
            while True:
                mine = index % world_size == rank
                before = (
                    {"index": index, "dataset": copy.deepcopy(stream.state_dict())} if mine else {}
                )
                try:
                    example = next(examples)
                except StopIteration:
                    return
                except (ValueError, OSError) as error:  # pyarrow/pandas/json parse errors
                    raise DataError(
                        f"cannot read dataset '{self.dataset}' at document {index}: {first_line(error)}"
                    ) from None
                if mine:
                    yield self._document(example, index, before)
                index += 1
        finally:
            close = getattr(examples, "close", None)
            if close is not None:
                close()

    def _document(self, example: dict[str, Any], index: int, state: dict[str, Any]) -> RawDocument:
        column = self.text_column
        if column not in example and TOKENIZED_COLUMN in example:
            column = TOKENIZED_COLUMN  # SAELens's pre-tokenized datasets
        if column not in example:
            columns = ", ".join(example) or "none"
            raise DataError(
                f"dataset '{self.dataset}' has no column '{self.text_column}' "
                f"(columns: {columns}); set data.lm.text_column"
            )
        value = example[column]
        if isinstance(value, list | tuple):
            return RawDocument(index, "", None, state, self._token_ids(value, column, index))
        return RawDocument(index, self._text(value, index), None, state)

    def _token_ids(self, value: list[Any] | tuple[Any, ...], column: str, index: int) -> list[int]:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise DataError(
                f"dataset '{self.dataset}' row {index}: column '{column}' holds a list that is "
                "not token ids (whole numbers)"
            )
        return list(value)

    def _text(self, text: Any, index: int) -> str:
        if text is None:
            return ""
        if not isinstance(text, str):
            raise DataError(
                f"dataset '{self.dataset}' row {index}: column '{self.text_column}' holds "
                f"{type(text).__name__}, not text"
            )
        return text


def check_dataset(dataset: str) -> None:
    """Fail fast on a local path that is missing or of an unknown type (hub names pass)."""
    if dataset == GENERATED:
        return
    path = Path(dataset).expanduser()
    if path.is_dir():
        check_dataset_folder(path, dataset)
        return
    if path.exists():
        if path.suffix.lower() not in FILE_BUILDERS:
            known = ", ".join(sorted(FILE_BUILDERS))
            raise ConfigError(f"data.lm.dataset '{dataset}': unsupported file type (use {known})")
        return
    if looks_like_local_path(dataset) or path.suffix.lower() in FILE_BUILDERS:
        raise ConfigError(f"data.lm.dataset file not found: {dataset}")


def build_reader(
    dataset: str, split: str, text_column: str, seed: int, config: str | None = None
) -> DocumentReader:
    check_dataset(dataset)
    if dataset == GENERATED:
        return GeneratedReader(seed, split)
    return DatasetReader(dataset, split, text_column, config)


# ---------------------------------------------------------------------------- windows


@dataclass
class Window:
    """One context window and, per position, where its token came from."""

    tokens: Tensor  # [T] int64
    doc_ids: Tensor  # [T] int64, NO_DOCUMENT for inserted tokens
    valid: Tensor  # [T] bool, False only for padding after the end of the data
    labels: dict[str, Tensor]  # variable -> [T] int64 (generated language only)


@dataclass
class SpecialIds:
    bos: int | None  # put at the start of every window (None: no BOS)
    separator: int | None  # put between two documents in one window
    pad: int  # fills the final window's tail (never a valid position)


class TokenWindows(Iterator[Window]):
    """Fixed-length windows over one rank's slice of the documents; resumable between windows."""

    def __init__(
        self,
        reader: DocumentReader,
        tokenizer: Any,
        context_size: int,
        special: SpecialIds,
        rank: int = 0,
        world_size: int = 1,
        label_names: tuple[str, ...] = (),
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.reader, self.tokenizer, self.context_size = reader, tokenizer, context_size
        self.special, self.rank, self.world_size = special, rank, world_size
        self.label_names = label_names
        self._restart(None)

    def _restart(self, reader_state: dict[str, Any] | None) -> None:
        self.documents = self.reader.read(reader_state, self.rank, self.world_size)
        self.current: tuple[RawDocument, list[int], dict[str, list[int]]] | None = None
        self.offset = 0
        self.exhausted = False

    def _next_document(self) -> tuple[RawDocument, list[int], dict[str, list[int]]] | None:
        for document in self.documents:
            ids = document.ids
            if ids is None:
                encoded = self.tokenizer(document.text, add_special_tokens=False, verbose=False)
                ids = encoded["input_ids"]
            else:
                self._check_vocabulary(document.index, ids)
            if not ids:
                continue
            labels = document.labels or {}
            if labels and any(len(v) != len(ids) for v in labels.values()):
                raise DataError(
                    f"document {document.index}: the tokenizer does not give one token per word, "
                    "so the generated language's labels cannot be aligned"
                )
            return document, ids, labels
        self.exhausted = True
        return None

    def _check_vocabulary(self, index: int, ids: list[int]) -> None:
        """Pre-tokenized ids from another tokenizer would index past the embedding."""
        vocabulary = len(self.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise DataError(
                f"document {index}: token id {bad} is outside the tokenizer's vocabulary "
                f"(0..{vocabulary - 1}); was the data tokenized for another model?"
            )

    def __next__(self) -> Window:
        size = self.context_size
        tokens: list[int] = []
        doc_ids: list[int] = []
        labels: dict[str, list[int]] = {name: [] for name in self.label_names}

        def insert(token: int) -> None:
            tokens.append(token)
            doc_ids.append(NO_DOCUMENT)
            for values in labels.values():
                values.append(NO_DOCUMENT)

        if self.special.bos is not None:
            insert(self.special.bos)
        while len(tokens) < size:
            if self.current is None:
                self.current = None if self.exhausted else self._next_document()
                if self.current is None:
                    break
                if (
                    len(tokens) > (self.special.bos is not None)
                    and self.special.separator is not None
                ):
                    insert(self.special.separator)
                    continue
            document, ids, document_labels = self.current
            take = min(size - len(tokens), len(ids) - self.offset)
            tokens += ids[self.offset : self.offset + take]
            doc_ids += [document.index] * take
            for name, values in labels.items():
                values += document_labels.get(name, [NO_DOCUMENT] * len(ids))[
                    self.offset : self.offset + take
                ]
            self.offset += take
            if self.offset == len(ids):
                self.current, self.offset = None, 0
        if all(d == NO_DOCUMENT for d in doc_ids):
            raise StopIteration
        valid = len(tokens)
        padding = size - valid
        tokens += [self.special.pad] * padding
        doc_ids += [NO_DOCUMENT] * padding
        return Window(
            tokens=torch.tensor(tokens, dtype=torch.long),
            doc_ids=torch.tensor(doc_ids, dtype=torch.long),
            valid=torch.arange(size) < valid,
            labels={
                name: torch.tensor(values + [NO_DOCUMENT] * padding, dtype=torch.long)
                for name, values in labels.items()
            },
        )

    def state_dict(self) -> dict[str, Any]:
        if self.current is None:
            # Between documents: peek the next one so that its reader state can be saved.
            self.current = None if self.exhausted else self._next_document()
            self.offset = 0
        if self.current is None:
            return {"reader": {"exhausted": True}, "offset": 0}
        return {"reader": self.current[0].state, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        reader_state = state["reader"]
        if reader_state.get("exhausted"):
            self.documents, self.current, self.offset, self.exhausted = iter(()), None, 0, True
            return
        self._restart(reader_state)
        self.current = self._next_document()
        if self.current is None:
            raise DataError("cannot resume the token stream: its saved document is gone")
        self.offset = int(state["offset"])
