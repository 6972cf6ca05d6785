"""Which architectures exist, without importing them.

An architecture is one file in sae/models/architectures/ named after it (`topk.py` is
`sae.arch: topk`). The file defines a `SparseAutoencoder` subclass decorated with
`@register_architecture` and declares on it everything the rest of the library asks of an
architecture:

- `arch`: its name; `Options`: its pydantic options model (sae/config.py's
  `ArchitectureOptions` plus its own keys, defaults and checks), which also carries its default
  dead-latent remedy (`default_remedy`), the keys the model card and the report show
  (`shown_keys`) and its SAELens training counterpart for `sae bench toy`
  (`saelens_training()`);
- `saelens_arch` and `saelens_cfg()`: how its weights are exported to SAELens.

Listing the names reads the folder only, so a config is checked against them without importing
torch; so is an architecture's own keys: `options()` reads a built-in's options model from its
file (sae/models/options_source.py) until its module is imported for its class.
`register_architecture` also takes classes defined elsewhere (a notebook, a plugin), as
SAELens's `register_sae_class` does.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, TypeVar

from sae.models import architectures

if TYPE_CHECKING:
    from sae.config import ArchitectureOptions
    from sae.models.base import SparseAutoencoder

_REGISTERED: dict[str, type[SparseAutoencoder]] = {}
Architecture = TypeVar("Architecture", bound="type[SparseAutoencoder]")


def register_architecture(cls: Architecture) -> Architecture:
    """Class decorator: make `cls` available as `sae.arch: <cls.arch>`."""
    if cls.Options.model_config.get("extra") != "forbid":
        raise TypeError(f"{cls.__name__}.Options must derive from sae.config.ArchitectureOptions")
    _REGISTERED[cls.arch] = cls
    return cls


def builtin_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(architectures.__path__))


def architecture_names() -> list[str]:
    return sorted(set(builtin_names()) | set(_REGISTERED))


def architecture(name: str) -> type[SparseAutoencoder]:
    """The class registered as `name`, importing its built-in module on first use."""
    if name not in _REGISTERED and name in builtin_names():
        importlib.import_module(f"{architectures.__name__}.{name}")
    if name not in _REGISTERED:
        raise KeyError(f"unknown architecture '{name}' (known: {', '.join(architecture_names())})")
    return _REGISTERED[name]


def options(name: str) -> type[ArchitectureOptions]:
    """Architecture `name`'s options model, for its keys and checks: for a built-in whose module
    is not imported yet, the one read from its file, so that no torch is imported for it. A
    config's resolved section is an instance of the imported class's (SAEConfig.resolve)."""
    if name not in _REGISTERED and name in builtin_names():
        found = _source_options(name)
        if found is not None:
            return found
    return architecture(name).Options


@functools.cache
def _source_options(name: str) -> type[ArchitectureOptions] | None:
    from sae.models.options_source import source_options

    return source_options(name)


def all_architectures() -> dict[str, type[SparseAutoencoder]]:
    """Every architecture by name, the built-in ones imported."""
    return {name: architecture(name) for name in architecture_names()}


def takes(name: str, key: str) -> bool:
    """Whether architecture `name` has the config key `key`."""
    return key in options(name).model_fields


def shown_keys(name: str | None) -> tuple[str, ...]:
    """The keys an architecture's model card and report show beside arch and width; none for
    a name this library does not know (a folder written elsewhere)."""
    if name not in architecture_names():
        return ()
    return options(name).shown_keys
