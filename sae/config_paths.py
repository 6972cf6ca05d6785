"""Relative paths in a config file are relative to the file.

A config names a store, a local checkpoint or a local dataset next to itself ("store: ../store",
"dataset: corpus.jsonl"), and means it wherever the command is started from. They are rewritten
against the file's folder before validation; `--set` overrides come later and stay relative to
the current directory, as paths typed on a command line are. The rewritten path stays relative
when the file's path was (normalised, so errors show "exp/corpus.jsonl", naming the base used).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sae.paths import looks_like_local_path

# keys that always hold a path
PATH_KEYS = (("data", "store"),)
# keys that hold a path or a name: a built-in, a hub model or dataset
PATH_OR_NAME_KEYS = (("data", "lm", "model"), ("data", "lm", "dataset"))
BUILT_IN_NAMES = ("bundled", "generated")


def _relative(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not os.path.isabs(os.path.expanduser(value))


def _resolve(base: Path, value: str) -> str:
    return os.path.normpath(base / value)


def resolve_config_paths(tree: dict[str, Any], config_file: Path) -> None:
    """Rewrite, in place, the relative paths of a config file's tree against its folder."""
    base = Path(config_file).parent
    for keys in PATH_KEYS + PATH_OR_NAME_KEYS:
        node: Any = tree
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not _relative(node.get(keys[-1])):
            continue
        value = node[keys[-1]]
        if keys in PATH_OR_NAME_KEYS:
            is_path = (base / value).exists() or looks_like_local_path(value)
            if value in BUILT_IN_NAMES or not is_path:
                continue  # a hub name, resolved by the hub
        node[keys[-1]] = _resolve(base, value)
