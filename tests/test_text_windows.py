"""Documents to context windows: SAELens's concatenation, exact resume, disjoint rank slices,
local dataset files, and one-line errors for bad references."""

from __future__ import annotations

import csv
import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sae_lens.tokenization_and_batching import concat_and_batch_sequences

from sae.corpus.grammar import VARIABLES, generate_document
from sae.corpus.tokenizer import build_tokenizer
from sae.errors import ConfigError, DataError
from sae.sources.text import (
    NO_DOCUMENT,
    GeneratedReader,
    SpecialIds,
    TokenWindows,
    build_reader,
    check_dataset,
)

TOKENIZER = build_tokenizer()
BOS, EOS, PAD = TOKENIZER.bos_token_id, TOKENIZER.eos_token_id, TOKENIZER.pad_token_id
TEXTS = [generate_document(3, "train", i).text for i in range(40)]


def _windows(reader, context=32, special=None, rank=0, world_size=1, labels=()) -> TokenWindows:
    special = special or SpecialIds(bos=BOS, separator=BOS, pad=PAD)
    return TokenWindows(reader, TOKENIZER, context, special, rank, world_size, labels)


def _ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    paths = {
        suffix: root / f"docs{suffix}" for suffix in (".txt", ".jsonl", ".json", ".parquet", ".csv")
    }
    paths[".txt"].write_text("".join(f"{t}\n" for t in TEXTS))
    paths[".jsonl"].write_text(
        "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
    )
    paths[".json"].write_text(json.dumps([{"text": t} for t in TEXTS]))
    pq.write_table(pa.table({"text": TEXTS}), paths[".parquet"], row_group_size=7)
    with paths[".csv"].open("w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *([t] for t in TEXTS)])
    return paths


@pytest.mark.parametrize(
    ("bos", "separator"), [(True, "bos"), (False, "bos"), (True, None), (False, None)]
)
def test_windows_concatenate_documents_as_saelens_does(bos: bool, separator: str | None) -> None:
    special = SpecialIds(bos=BOS if bos else None, separator=BOS if separator else None, pad=PAD)
    ours = [w.tokens for w in islice(_windows(GeneratedReader(3, "train"), 48, special), 30)]
    reference = concat_and_batch_sequences(
        (torch.tensor(_ids(t)) for t in TEXTS),
        context_size=48,
        begin_batch_token_id=special.bos,
        sequence_separator_token_id=special.separator,
    )
    for window, expected in zip(ours, reference, strict=False):
        assert torch.equal(window, expected)


def test_positions_carry_their_document_and_its_labels() -> None:
    windows = list(islice(_windows(GeneratedReader(3, "train"), labels=VARIABLES), 25))
    offsets: dict[int, int] = {}
    for window in windows:
        assert window.valid.all()
        for t, doc in enumerate(window.doc_ids.tolist()):
            if doc == NO_DOCUMENT:
                assert window.tokens[t] == BOS
                assert all(window.labels[v][t] == NO_DOCUMENT for v in VARIABLES)
                continue
            document = generate_document(3, "train", doc)
            k = offsets.get(doc, 0)
            assert window.tokens[t] == _ids(document.text)[k]
            assert all(window.labels[v][t] == document.labels[v][k] for v in VARIABLES)
            offsets[doc] = k + 1


def test_a_saved_cursor_resumes_on_the_very_next_window(files: dict[Path, Path]) -> None:
    for reader in (
        GeneratedReader(3, "train"),
        build_reader(str(files[".jsonl"]), "train", "text", 0),
    ):
        stream = _windows(reader, context=20, labels=())
        states, windows = [], []
        for _ in range(12):
            states.append(stream.state_dict())
            windows.append(next(stream))
        for k in (0, 3, 7, 11):
            resumed = _windows(reader, context=20)
            resumed.load_state_dict(json.loads(json.dumps(states[k])))  # survives JSON
            for expected in windows[k:]:
                assert torch.equal(next(resumed).tokens, expected.tokens)


@pytest.mark.parametrize("world_size", [1, 3])
def test_rank_slices_are_disjoint_and_hold_every_token_once(
    files: dict[str, Path], world_size: int
) -> None:
    seen: dict[int, list[int]] = {}
    for rank in range(world_size):
        reader = build_reader(str(files[".jsonl"]), "train", "text", 0)
        for window in _windows(reader, context=30, rank=rank, world_size=world_size):
            for token, doc, valid in zip(window.tokens, window.doc_ids, window.valid, strict=True):
                if doc != NO_DOCUMENT:
                    assert valid and doc % world_size == rank
                    seen.setdefault(int(doc), []).append(int(token))
                elif not valid:
                    assert token == PAD
    assert seen == {i: _ids(t) for i, t in enumerate(TEXTS)}


def test_every_local_file_type_gives_the_same_windows(files: dict[str, Path]) -> None:
    def first(path: Path) -> list[list[int]]:
        reader = build_reader(str(path), "train", "text", 0)
        return [w.tokens.tolist() for w in islice(_windows(reader), 10)]

    expected = first(files[".txt"])
    for suffix in (".jsonl", ".json", ".parquet", ".csv"):
        assert first(files[suffix]) == expected, suffix


def test_a_missing_text_column_names_the_columns_there(files: dict[str, Path]) -> None:
    reader = build_reader(str(files[".jsonl"]), "train", "content", 0)
    with pytest.raises(DataError, match="no column 'content'.*columns: text, id"):
        next(_windows(reader))


def test_a_corrupt_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "the dog runs ."}\n{"text": "the cat\n')
    with pytest.raises(DataError, match="broken.jsonl"):
        list(_windows(build_reader(str(broken), "train", "text", 0)))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("./absent.jsonl", "file not found"),
        ("corpus.parquet", "file not found"),
        ("/no/such/dir/corpus", "file not found"),
    ],
)
def test_bad_local_dataset_references_fail_before_reading(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_dataset(reference)


def test_directories_and_unknown_file_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        check_dataset(str(tmp_path))
    odd = tmp_path / "docs.xml"
    odd.write_text("<a/>")
    with pytest.raises(ConfigError, match="unsupported file type"):
        check_dataset(str(odd))
    check_dataset("Skylion007/openwebtext")  # a hub name is left to the hub
