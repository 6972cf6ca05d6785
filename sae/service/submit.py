"""A submitted YAML body -> the validated config text of each job, or one ConfigError line.

Validation is sae.config's, so the API refuses exactly what the CLI refuses, with the same
message, before anything is queued. It imports no torch: the server stays light, and the
kind-specific checks the CLI makes after loading its pipeline are repeated here in words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sae.config import Config, validate_tree
from sae.config_paths import resolve_config_paths
from sae.errors import ConfigError, UserError
from sae.safe_yaml import parse_yaml
from sae.service.db import KINDS, NewJob
from sae.service.state import StateDir
from sae.service.sweep import expand


def parse_body(body: bytes) -> dict[str, Any]:
    """A submitted config, read with the CLI's bounds (sae/safe_yaml.py: duplicate keys, alias
    bombs, size): configs arriving over HTTP are untrusted."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config body is not UTF-8 text") from None
    tree = parse_yaml(text, "config body")
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("config body: top level must be a mapping of sections")
    return tree


def anchor_paths(tree: dict[str, Any], state: StateDir) -> None:
    """Relative paths of a submitted config are relative to the state directory (where jobs
    run): written out absolute, so the job's YAML means the same wherever the CLI reads it from
    (the CLI takes a file's relative paths from the file's folder). A store must lie inside."""
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("store"), str):
        state.inside(Path(data["store"]), "data.store")  # refused before anything is resolved
    resolve_config_paths(tree, state.root.resolve() / "submitted.yaml")


def check_kind(kind: str, cfg: Config, state: StateDir) -> None:
    """What `sae KIND` refuses once the config is valid (see pipelines/ and sae/cli.py)."""
    source = cfg.data.kind
    if kind == "toy" and source not in ("toy", "synthetic"):
        raise ConfigError(f"sae toy needs data.toy or data.synthetic, not data.{source}")
    if kind in ("run", "harvest") and source == "store":
        raise ConfigError(
            f"sae {kind} harvests its own store: give data.lm, data.toy or data.synthetic"
            + (" (to train on an existing store, use sae train)" if kind == "run" else "")
        )
    # SAE names that would leave the job's directory ('.', '..') are refused by the config
    # itself (sae/paths.py plain_name), as on the command line
    if cfg.data.store is not None:
        store = state.inside(cfg.data.store, "data.store")
        if not store.is_dir():
            raise ConfigError(f"store {cfg.data.store} does not exist or is not a directory")
        if not (store / "manifest.json").is_file():
            raise ConfigError(f"{cfg.data.store} is not an activation store (no manifest.json)")


def validate_submission(body: bytes, kind: str, state: StateDir) -> list[NewJob]:
    """The jobs a body asks for, validated. Paths in a config are read relative to the state
    directory, which is where jobs run."""
    if kind not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)} (got '{kind}')")
    tree = parse_body(body)
    anchor_paths(tree, state)
    jobs = []
    for job_tree, params in expand(tree, shared_batches=kind != "harvest"):
        cfg = validate_tree(job_tree)
        check_kind(kind, cfg, state)
        # the submitted tree, not to_dict(cfg): defaults stay the CLI's at run time, and the
        # job's YAML reads like what the user wrote
        samples = None if kind == "harvest" else cfg.train.samples
        jobs.append(NewJob(yaml.safe_dump(job_tree, sort_keys=False), params, samples))
    return jobs
