"""Bad inputs, as a table: each stops with exit 2 and one line naming the problem, and changes
nothing on disk: not the user's files in --out, not a byte beside it.

Each case builds its inputs under `tmp_path` and returns the command line; the test snapshots
every file under tmp_path (bytes and mode) before the command and compares after. The cases
are the probe's reproductions from the "lose nothing, write nowhere else" issue.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main
from sae.store.format import load_manifest
from tests.conftest import tiny_tree, write_config
from tests.store_helpers import harvest_counting
from tests.test_publish import fake_run


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # builds inputs under tmp_path; returns the argv
    message: str  # in the one line


def _tree(**changes: Any) -> dict[str, Any]:
    tree = tiny_tree()
    tree["train"]["samples"] = 2000
    for dotted, value in changes.items():
        node = tree
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def _config(tmp: Path, tree: dict[str, Any] | None = None) -> str:
    return str(write_config(tmp / "c.yaml", tree or _tree()))


def _user_dir(tmp: Path) -> Path:
    """A directory of the user's own results, as the probe found them overwritten."""
    out = tmp / "mine"
    (out / "sae").mkdir(parents=True)
    (out / "sae" / "cfg.json").write_text('{"mine": true}')
    (out / "metrics.json").write_text('{"mine": true}')
    (out / "metrics.jsonl").write_text('{"step": 1, "mine": true}\n')
    return out


def _into_user_dir(command: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [command, _config(tmp), "--out", str(_user_dir(tmp))]


def _toy(tree: dict[str, Any], *sets: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        args = ["toy", _config(tmp, tree), "--out", str(tmp / "out")]
        for item in sets:
            args += ["--set", item]
        return args

    return setup


def _yaml(text: str | bytes) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["toy", str(path), "--out", str(tmp / "out")]

    return setup


def _named(name: str) -> Callable[[Path], list[str]]:
    tree = _tree()
    tree["saes"] = [{**tree.pop("sae"), "name": name}]
    return _toy(tree)


def _publish_hook(hook: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    """A run whose cfg.json names a hook that would put the published folder elsewhere."""

    def setup(tmp: Path) -> list[str]:
        run = fake_run(tmp / "run")
        cfg = json.loads((run / "sae" / "cfg.json").read_text())
        cfg["metadata"]["hook_name"] = hook(tmp)
        (run / "sae" / "cfg.json").write_text(json.dumps(cfg))
        (tmp / "victim").mkdir()
        (tmp / "victim" / "keep.txt").write_text("mine")
        return ["publish", str(run), "--to", str(tmp / "to")]

    return setup


def _store_edit(edit: Callable[[Any, Path], None], command: str) -> Callable[[Path], list[str]]:
    """A store whose manifest was rewritten (with a recomputed checksum, as anyone can)."""

    def setup(tmp: Path) -> list[str]:
        store = harvest_counting(tmp / "store", rows=2000)
        (tmp / "x.safetensors").write_bytes((store / "shard-00000.safetensors").read_bytes())
        manifest = load_manifest(store)
        edit(manifest, tmp)
        manifest.save(store)
        if command == "verify":
            return ["store", "verify", str(store)]
        tree = _tree()
        tree["data"] = {"store": str(store), "hook": "resid"}
        return ["train", _config(tmp, tree), "--out", str(tmp / "out")]

    return setup


def _shard_outside(manifest: Any, tmp: Path) -> None:
    manifest.shards[0].file = "../x.safetensors"


def _state_outside(manifest: Any, tmp: Path) -> None:
    manifest.complete = False
    manifest.harvest_state = str(tmp / "x.safetensors")


def _foreign_store_dir(tmp: Path) -> list[str]:
    """The user's own shard-like files in a directory with no manifest."""
    out = tmp / "out"
    out.mkdir()
    (out / "shard-00000.safetensors").write_text("mine")
    (out / "harvest-state-00001.safetensors").write_text("mine")
    return ["harvest", _config(tmp), "--out", str(out)]


def _to_file(tmp: Path) -> list[str]:
    run = fake_run(tmp / "run")
    (tmp / "file").write_text("mine")
    return ["publish", str(run), "--to", str(tmp / "file")]


BOMB = "seed: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"k{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(7)
)

CASES = [
    Case("toy into a user's directory", _into_user_dir("toy"), "was not made by sae"),
    Case("train into a user's directory", _into_user_dir("train"), "was not made by sae"),
    Case("run into a user's directory", _into_user_dir("run"), "was not made by sae"),
    Case("an SAE named ..", _named(".."), "is not a plain file name"),
    Case("an SAE named .", _named("."), "is not a plain file name"),
    Case("cfg.json hook_name ../victim", _publish_hook(lambda tmp: "../victim"), "hook_name"),
    Case("cfg.json hook_name absolute", _publish_hook(lambda tmp: str(tmp / "victim")), "hook_name"),
    Case("manifest shard file ../x", _store_edit(_shard_outside, "verify"), "not a plain file name"),
    Case("manifest shard file ../x, trained", _store_edit(_shard_outside, "train"), "shards[].file"),
    Case("manifest harvest_state absolute", _store_edit(_state_outside, "verify"), "harvest_state"),
    Case("a user's shard files, no manifest", _foreign_store_dir, "holds no store"),
    Case("train.lr=1e30", _toy(_tree(), "train.lr=1e30"), "config key 'train.lr'"),
    Case("train.lr=inf", _toy(_tree(), "train.lr=.inf"), "finite number"),
    Case("resample_at NaN", _toy(_tree(), "train.resample_at=[.nan]"), "finite number"),
    Case("resample_at 1.5", _toy(_tree(), "train.resample_at=[1.5]"), "train.resample_at"),
    Case(
        "a run that diverges",
        _toy(_tree(train__normalize_inputs=False, data__synthetic__mean_magnitude=1e20)),
        "loss became NaN or inf at step 1",
    ),
    Case("duplicate section", _yaml("seed: 0\ntrain: {lr: 1}\ntrain: {lr: 2}\n"), "duplicate key 'train' at line 3"),
    Case("duplicate nested key", _yaml("data:\n  toy:\n    d_hidden: 2\n    d_hidden: 3\n"), "'d_hidden' at line 4"),
    Case("alias bomb under seed", _yaml(BOMB), "alias bomb"),
    Case("non-UTF-8 config", _yaml(b"seed: 0\n# caf\xe9\n"), "line 2 is not UTF-8"),
    Case("sae.d_sae=10**12", _toy(_tree(), f"sae.d_sae={10**12}"), "sae.d_sae="),
    Case("train.batch_size=10**10", _toy(_tree(), f"train.batch_size={10**10}"), "train.batch_size="),
    Case("publish --to a file", _to_file, "--to"),
]


def snapshot(root: Path) -> dict[str, tuple[int, str | None]]:
    """Every path under root: its mode, and a hash of a file's bytes."""
    return {
        str(p.relative_to(root)): (
            p.lstat().st_mode,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None,
        )
        for p in sorted(root.rglob("*"))
        if not stat.S_ISSOCK(p.lstat().st_mode)
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae: error: ") and err.count("\n") == 1, err
    assert case.message in err, err
    assert len(err) < 600, err  # never the whole of a huge value
    assert snapshot(tmp_path) == before
