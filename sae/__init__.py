"""sae: train sparse autoencoders on neural-network activations and measure what they learn.

`sae.run`, `sae.toy`, `sae.train` and `sae.load` are the pipelines for notebooks
(pipelines/api.py). They load on first use: this top-level door is the only place the library
package names the application, and importing `sae` stays light.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("run", "toy", "train", "load", "Run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from pipelines import api

        return getattr(api, name)
    raise AttributeError(f"module 'sae' has no attribute '{name}'")
