"""Hugging Face datasets on disk (save_to_disk folders, folders of hub-style shards) and
pre-tokenized data give the same windows as the same documents in a plain file."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import datasets
import pytest
import yaml

from pipelines.cli import main
from sae.corpus.grammar import generate_document
from sae.corpus.tokenizer import build_tokenizer
from sae.errors import ConfigError, DataError
from sae.sources.text import SpecialIds, TokenWindows, build_reader, check_dataset
from sae.store.reader import Store

TOKENIZER = build_tokenizer()
TEXTS = [generate_document(5, "train", i).text for i in range(30)]


def windows(dataset: Path | str, split: str = "train", column: str = "text", n: int = 8) -> list:
    reader = build_reader(str(dataset), split, column, 0)
    special = SpecialIds(TOKENIZER.bos_token_id, TOKENIZER.bos_token_id, TOKENIZER.pad_token_id)
    return [w.tokens.tolist() for w in islice(TokenWindows(reader, TOKENIZER, 24, special), n)]


def ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> list:
    plain = tmp_path_factory.mktemp("plain") / "docs.txt"
    plain.write_text("".join(f"{t}\n" for t in TEXTS))
    return windows(plain)


def test_a_save_to_disk_folder_reads_like_the_same_file(tmp_path: Path, expected: list) -> None:
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    check_dataset(str(tmp_path / "saved"))
    assert windows(tmp_path / "saved") == expected


def test_a_saved_dataset_dict_reads_the_asked_split(tmp_path: Path, expected: list) -> None:
    splits = {"train": TEXTS, "validation": TEXTS[::-1]}
    saved = datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()})
    saved.save_to_disk(str(tmp_path / "saved"))
    assert windows(tmp_path / "saved") == expected
    assert windows(tmp_path / "saved", "validation") != expected
    with pytest.raises(DataError, match="no split 'test' \\(splits: train, validation\\)"):
        windows(tmp_path / "saved", "test")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_folder_of_hub_style_shards_reads_like_the_same_file(
    tmp_path: Path, expected: list, suffix: str
) -> None:
    (tmp_path / "corpus" / "data").mkdir(parents=True)
    for k in range(3):  # hub layout: data/<split>-<shard>-of-<count>.<ext>
        part = datasets.Dataset.from_dict({"text": TEXTS[k * 10 : (k + 1) * 10]})
        shard = tmp_path / "corpus" / "data" / f"train-{k:05d}-of-00003{suffix}"
        part.to_parquet(str(shard)) if suffix == ".parquet" else part.to_json(str(shard))
    check_dataset(str(tmp_path / "corpus"))
    assert windows(tmp_path / "corpus") == expected


def test_pre_tokenized_input_ids_give_the_windows_of_their_text(tmp_path: Path, expected: list) -> None:
    tokenized = datasets.Dataset.from_dict({"input_ids": [ids(t) for t in TEXTS]})
    tokenized.save_to_disk(str(tmp_path / "tokenized"))
    assert windows(tmp_path / "tokenized") == expected  # text_column left at "text"
    (tmp_path / "tokens.jsonl").write_text(
        "".join(json.dumps({"tokens": ids(t)}) + "\n" for t in TEXTS)
    )
    assert windows(tmp_path / "tokens.jsonl", column="tokens") == expected


def test_token_ids_outside_the_vocabulary_are_a_data_error(tmp_path: Path) -> None:
    rows = [[1, 2, len(TOKENIZER) + 7]]
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "alien"))
    with pytest.raises(DataError, match=f"token id {len(TOKENIZER) + 7} is outside"):
        windows(tmp_path / "alien")


def test_a_saved_dataset_resumes_on_the_very_next_window(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    special = SpecialIds(TOKENIZER.bos_token_id, TOKENIZER.bos_token_id, TOKENIZER.pad_token_id)

    def stream() -> TokenWindows:
        return TokenWindows(build_reader(str(tmp_path / "saved"), "train", "text", 0), TOKENIZER, 24, special)

    straight = [w.tokens.tolist() for w in islice(stream(), 12)]
    first = stream()
    head = [w.tokens.tolist() for w in islice(first, 5)]
    resumed = stream()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [w.tokens.tolist() for w in islice(resumed, 7)] == straight


def test_a_folder_without_a_dataset_is_refused_naming_what_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("nothing here")
    with pytest.raises(ConfigError, match="neither a save_to_disk dataset.*nor data files"):
        check_dataset(str(tmp_path))


def test_sae_harvest_reads_a_pre_tokenized_saved_dataset(tmp_path: Path) -> None:
    tokenized = datasets.Dataset.from_dict({"input_ids": [ids(t) for t in TEXTS]})
    tokenized.save_to_disk(str(tmp_path / "tokenized"))
    tree = {
        "data": {
            "lm": {
                "hooks": ["blocks.0.hook_resid_post"],
                "dataset": str(tmp_path / "tokenized"),
                "context_size": 24,
                "batch_sequences": 4,
            }
        },
        "harvest": {"rows": 200, "shard_rows": 100, "batch_rows": 100},
        "logging": {"wandb": False, "progress": False},
    }
    (tmp_path / "harvest.yaml").write_text(yaml.safe_dump(tree))
    assert main(["harvest", str(tmp_path / "harvest.yaml"), "--out", str(tmp_path / "store")]) == 0
    assert Store(tmp_path / "store").rows == 200
