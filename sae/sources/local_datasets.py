"""Hugging Face datasets on disk, streamed: the folders people already have.

- a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder (state.json or
  dataset_dict.json): memory-mapped by `datasets.load_from_disk` and read through
  `to_iterable_dataset()`, so no row is copied into memory or a cache first;
- a folder of data files as the hub lays them out (`data/train-00000-of-00004.parquet`,
  `*.jsonl`, ...): `datasets.load_dataset(folder, streaming=True)` infers the format and the
  split of each file from its name, exactly as for a hub repository.

Both give an IterableDataset with `state_dict` / `load_state_dict`, which is what the document
reader in sae/sources/text.py resumes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.errors import ConfigError, DataError

SAVED_DATASET = "state.json"  # Dataset.save_to_disk
SAVED_DATASET_DICT = "dataset_dict.json"  # DatasetDict.save_to_disk
# the file types datasets' folder loader infers a builder for
DATA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".txt", ".arrow")


def is_saved_dataset(folder: Path) -> bool:
    return (folder / SAVED_DATASET).is_file() or (folder / SAVED_DATASET_DICT).is_file()


def check_dataset_folder(folder: Path, reference: str) -> None:
    """A folder must be a saved dataset or hold data files; say which it is not."""
    if is_saved_dataset(folder):
        return
    if not any(p.suffix.lower() in DATA_FILE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        kinds = ", ".join(DATA_FILE_SUFFIXES)
        raise ConfigError(
            f"data.lm.dataset '{reference}' is a directory with neither a save_to_disk dataset "
            f"({SAVED_DATASET} or {SAVED_DATASET_DICT}) nor data files ({kinds})"
        )


def open_dataset_folder(folder: Path, split: str, reference: str) -> Any:
    """An IterableDataset over `split` of the dataset in `folder`."""
    import datasets

    if not is_saved_dataset(folder):
        return datasets.load_dataset(str(folder), split=split, streaming=True)
    saved = datasets.load_from_disk(str(folder))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(
                f"dataset '{reference}' has no split '{split}' (splits: {', '.join(saved)})"
            )
        saved = saved[split]
    # a lone saved Dataset is one split already, whatever it was called
    return saved.to_iterable_dataset()
