"""A sweep: one config with lists on keys that take one value, expanded into jobs.

    sae:   {d_sae: [1024, 4096], k: [16, 32]}   -> one job training 4 SAEs on the same
                                                   batches (`saes:`), so they share one harvest
    train: {lr: [1e-3, 1e-4]}                   -> 2 jobs (data, train and seed are one
                                                   per run)

Keys whose schema is already a list (data.lm.hooks, train.resample_at) are swept only when
given a list of lists. The product of every swept key's values is taken.
"""

from __future__ import annotations

import copy
import itertools
import types
import typing
from typing import Any

from pydantic import BaseModel

from sae.config import Config, SAEConfig
from sae.errors import ConfigError

MAX_JOBS = 256
MAX_SAES = 64
SAE_SECTION = "sae"


def _is_list_type(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list_type(arg) for arg in typing.get_args(annotation))
    return False


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds, if any (unwrapping `X | None`)."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _architecture_fields(arch: Any) -> dict[str, Any]:
    """The keys of the named architecture (of each, when arch itself is swept)."""
    from sae.models.registry import architecture_names, options

    fields: dict[str, Any] = {}
    for name in arch if isinstance(arch, list) else [arch]:
        if isinstance(name, str) and name in architecture_names():
            fields |= options(name).model_fields
    return fields


def swept_keys(tree: dict[str, Any], schema: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Dotted keys whose value is a list of alternatives rather than one value."""
    keys: list[str] = []
    fields = dict(schema.model_fields)
    if issubclass(schema, SAEConfig):  # an SAE section: its architecture declares the rest
        fields |= _architecture_fields(tree.get("arch", "topk"))
    for name, value in tree.items():
        field = fields.get(name)
        if field is None:
            continue  # validation names the unknown key
        dotted = f"{prefix}{name}"
        section = _section(field.annotation)
        if isinstance(value, dict) and section is not None:
            keys += swept_keys(value, section, f"{dotted}.")
        elif isinstance(value, list) and value and (
            not _is_list_type(field.annotation) or all(isinstance(v, list) for v in value)
        ):
            keys.append(dotted)
    return keys


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def _product(tree: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(_get(tree, key) for key in keys))]


def _sae_name(choice: dict[str, Any]) -> str:
    """`sae.d_sae=1024, sae.k=16` -> `d_sae1024-k16` (names are [A-Za-z0-9_.-])."""
    parts = []
    for key, value in choice.items():
        text = "x".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(key.removeprefix(f"{SAE_SECTION}.") + text)
    return "-".join(parts).replace("+", "")


def expand(tree: dict[str, Any], shared_batches: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(config tree, swept values) for each job. With `shared_batches` (kinds that train),
    `sae.*` alternatives become SAEs of one job instead of separate jobs."""
    keys = swept_keys(tree)
    if not keys:
        return [(tree, {})]
    sae_keys = [k for k in keys if shared_batches and k.startswith(f"{SAE_SECTION}.")]
    job_keys = [k for k in keys if k not in sae_keys]
    sae_choices = _product(tree, sae_keys) if sae_keys else []
    job_choices = _product(tree, job_keys) if job_keys else [{}]
    if len(job_choices) > MAX_JOBS or len(sae_choices) > MAX_SAES:
        raise ConfigError(
            f"the sweep has {len(job_choices)} jobs of {max(1, len(sae_choices))} SAEs; "
            f"at most {MAX_JOBS} jobs of {MAX_SAES} SAEs"
        )
    jobs = []
    for choice in job_choices:
        job = copy.deepcopy(tree)
        for key, value in choice.items():
            _set(job, key, value)
        params: dict[str, Any] = dict(choice)
        if sae_choices:
            base = job.pop(SAE_SECTION)
            job["saes"] = []
            for sae_choice in sae_choices:
                entry = copy.deepcopy(base)
                for key, value in sae_choice.items():
                    _set(entry, key.removeprefix(f"{SAE_SECTION}."), value)
                job["saes"].append({**entry, "name": _sae_name(sae_choice)})
            params["saes"] = {_sae_name(c): c for c in sae_choices}
        jobs.append((job, params))
    return jobs
