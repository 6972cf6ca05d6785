"""The service's job queue without a server: validation, sweeps, state changes, the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import cli
from sae.errors import ConfigError, UserError
from sae.service.command import job_command
from sae.service.db import JobStore, NewJob
from sae.service.state import StateDir, lock_state
from sae.service.submit import validate_submission
from sae.service.sweep import expand, swept_keys
from tests.conftest import tiny_tree, write_config


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state").create()


def cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, tree: dict) -> str:
    config = write_config(tmp_path / "bad.yaml", tree)
    assert cli.main([kind, str(config), "--out", str(tmp_path / "out")]) == 2
    return capsys.readouterr().err.strip().removeprefix("sae: error: ")


@pytest.mark.parametrize(
    "kind, edit",
    [
        ("toy", lambda t: t["sae"].update(arhc="topk")),
        ("toy", lambda t: t["train"].update(lr=-1)),
        ("toy", lambda t: t["sae"].update(k=500)),
        ("toy", lambda t: t.update(data={"store": "somewhere"})),
        ("run", lambda t: t.update(data={"store": "somewhere"})),
    ],
)
def test_submit_refuses_what_the_cli_refuses_with_the_same_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: StateDir, kind: str, edit
) -> None:
    tree = tiny_tree()
    edit(tree)
    expected = cli_error(tmp_path, capsys, kind, tree)
    with pytest.raises(ConfigError) as refused:
        validate_submission(yaml.safe_dump(tree).encode(), kind, state)
    assert str(refused.value) == expected


def test_submit_refuses_paths_and_names_that_leave_the_state_directory(state: StateDir) -> None:
    tree = tiny_tree()
    tree["data"] = {"store": "../elsewhere"}
    with pytest.raises(UserError, match="outside the state directory"):
        validate_submission(yaml.safe_dump(tree).encode(), "train", state)
    tree = tiny_tree()
    tree["saes"] = [{**tree.pop("sae"), "name": ".."}]
    with pytest.raises(ConfigError, match="is not a plain file name"):
        validate_submission(yaml.safe_dump(tree).encode(), "toy", state)


def test_submit_refuses_bad_yaml_and_unknown_kinds_in_one_line(state: StateDir) -> None:
    with pytest.raises(ConfigError, match="config body: line 3 is not valid YAML"):
        validate_submission(b"seed: 0\ndata: [\n", "toy", state)
    with pytest.raises(UserError, match="kind must be one of run, toy, train, harvest"):
        validate_submission(b"seed: 0", "publish", state)


def test_sae_lists_become_the_saes_of_one_job_sharing_its_batches() -> None:
    tree = tiny_tree(k=[2, 4])
    tree["sae"]["d_sae"] = [32, 48]
    ((job, params),) = expand(tree, shared_batches=True)
    names = [entry["name"] for entry in job["saes"]]
    assert names == ["d_sae32-k2", "d_sae32-k4", "d_sae48-k2", "d_sae48-k4"]
    assert [(e["d_sae"], e["k"]) for e in job["saes"]] == [(32, 2), (32, 4), (48, 2), (48, 4)]
    assert "sae" not in job and params["saes"]["d_sae32-k4"] == {"sae.d_sae": 32, "sae.k": 4}


def test_other_lists_become_one_job_each_and_list_keys_need_a_list_of_lists() -> None:
    tree = tiny_tree()
    tree["train"]["lr"] = [1e-3, 1e-2]
    tree["train"]["resample_at"] = [0.5]  # a list-valued key, not a sweep
    jobs = expand(tree, shared_batches=True)
    assert [(job["train"]["lr"], params) for job, params in jobs] == [
        (1e-3, {"train.lr": 1e-3}), (1e-2, {"train.lr": 1e-2}),
    ]
    tree["train"]["resample_at"] = [[0.5], [0.25, 0.75]]
    assert swept_keys(tree) == ["train.lr", "train.resample_at"]
    assert len(expand(tree, shared_batches=True)) == 4


def test_a_sweep_is_validated_job_by_job_before_anything_is_queued(state: StateDir) -> None:
    tree = tiny_tree(k=[3, 500])  # k=500 > d_sae
    with pytest.raises(ConfigError, match="k=500 exceeds d_sae=48"):
        validate_submission(yaml.safe_dump(tree).encode(), "toy", state)


def test_a_claimed_job_is_taken_once_and_cancel_and_retry_move_it(state: StateDir) -> None:
    store = JobStore(state.db)
    first, second = store.add("toy", [NewJob("a: 1", {}, 10), NewJob("a: 2", {}, 10)], sweep=True)
    assert store.get(second).sweep == first
    claimed = store.claim()
    assert (claimed.id, claimed.state, claimed.attempts) == (first, "running", 1)
    assert store.claim().id == second and store.claim() is None
    assert store.cancel(first).state == "cancelled"
    assert not store.finish(first, "done", 0, None)  # a cancelled job's exit changes nothing
    assert store.retry(first).state == "queued"
    assert store.claim().attempts == 2
    assert store.finish(first, "done", 0, None)
    assert store.retry(first).state == "done"  # only failed or cancelled jobs are retried
    assert [job.id for job in store.list(state="done")] == [first]


def test_a_second_lock_on_one_state_directory_is_refused(state: StateDir) -> None:
    held = lock_state(state)
    try:
        with pytest.raises(UserError, match="another sae serve is already running"):
            lock_state(state)
    finally:
        os.close(held)
    os.close(lock_state(state))  # released with its holder



def test_a_job_with_several_ranks_is_the_same_command_under_torchrun(tmp_path: Path) -> None:
    one = job_command("train", tmp_path / "c.yaml", tmp_path / "out")
    two = job_command("train", tmp_path / "c.yaml", tmp_path / "out", nproc=2)
    assert one[1:3] == ["-m", "sae"] and one[3:] == ["train", str(tmp_path / "c.yaml"), "--out",
                                                      str(tmp_path / "out")]  # fmt: skip
    assert two[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert two[5:] == ["-m", *one[2:]]


def test_the_server_imports_neither_torch_nor_the_pipelines() -> None:
    code = ("import sys, pipelines.cli, sae.service.server, sae.service.app, sae.service.client; "
            "print(sorted(m for m in ('torch', 'pipelines.run', 'pipelines.train_and_evaluate')"
            " if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
