"""A submitted YAML body -> the validated config text of each job, or one ConfigError line.

Validation is sae.config's, so the API refuses exactly what the CLI refuses, with the same
message, before anything is queued. It imports no torch: the server stays light, and the
kind-specific checks the CLI makes after loading its pipeline are repeated here in words.
"""

from __future__ import annotations

from typing import Any

import yaml

from sae.config import Config, validate_tree
from sae.errors import ConfigError, UserError
from sae.service.db import KINDS, NewJob
from sae.service.state import StateDir
from sae.service.sweep import expand

RESERVED_NAMES = {".", ".."}  # allowed by the SAE name pattern, but they escape the job folder


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config body is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config body is not valid YAML{where}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("config body: top level must be a mapping of sections")
    return tree


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
    for entry in cfg.saes or []:
        if entry.name in RESERVED_NAMES:
            raise ConfigError(f"saes: name '{entry.name}' is not a folder name")
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
    jobs = []
    for job_tree, params in expand(tree, shared_batches=kind != "harvest"):
        cfg = validate_tree(job_tree)
        check_kind(kind, cfg, state)
        # the submitted tree, not to_dict(cfg): defaults stay the CLI's at run time, and the
        # job's YAML reads like what the user wrote
        samples = None if kind == "harvest" else cfg.train.samples
        jobs.append(NewJob(yaml.safe_dump(job_tree, sort_keys=False), params, samples))
    return jobs
