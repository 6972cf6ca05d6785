"""The README's code runs: every Python block, and every YAML block is a valid config (section)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sae.config import validate_tree
from tests.conftest import tiny_tree

ROOT = Path(__file__).parents[1]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
YAML = [code for lang, code in BLOCKS if lang == "yaml"]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_every_python_block_of_the_readme_runs(code: str, tmp_path: Path) -> None:
    """Run from a copy of configs/ in a fresh directory, as a user at the repository root."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("code", YAML, ids=[f"yaml-{i}" for i in range(len(YAML))])
def test_every_yaml_block_of_the_readme_is_a_valid_config(code: str) -> None:
    """Blocks show sections of a config: each is checked on top of a small valid one."""
    tree = {**tiny_tree(), **yaml.safe_load(code)}
    if "saes" in tree:
        tree.pop("sae")
    if tree["data"].get("lm"):
        tree["data"] = {"lm": tree["data"]["lm"]}
    validate_tree(tree)
