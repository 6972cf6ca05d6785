"""Language models seen through named hooks: read activations, or replace them and read logits.

Two backends share one small interface:

- `TransformerLensModel`: a TransformerLens HookedTransformer; hooks are its hook points
  (`blocks.8.hook_resid_pre`, `blocks.0.mlp.hook_post`, `blocks.1.attn.hook_z`, ...). Several
  hooks are read in one forward pass, abandoned as soon as the last of them has fired.
- `HFModel`: a plain transformers causal LM; hooks are module paths (`transformer.h.8`,
  `model.layers.3.mlp`) and read the module's output (its first element when the module
  returns a tuple), SAELens's convention for HF models. Note that `transformer.h.7`'s output
  is the residual stream that TransformerLens calls `blocks.8.hook_resid_pre`. The forward pass
  is abandoned as soon as every requested module has run.

Activations always come back as [batch, position, d]; hooks with a head axis (`hook_z`:
[batch, position, n_heads, d_head]) are flattened to n_heads * d_head, as SAELens does, and a
replacement function sees and returns that flattened view.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sae.errors import ConfigError

Replacement = Callable[[Tensor], Tensor]  # [batch, position, d] -> same shape

# Hooks whose activations are not one vector per token (attention patterns are [b, h, q, k]).
_NOT_PER_TOKEN = re.compile(r"hook_(pattern|attn_scores)$")


def flatten_heads(activation: Tensor) -> Tensor:
    return activation.reshape(*activation.shape[:2], -1) if activation.ndim > 3 else activation


def _replaced(activation: Tensor, replace: Replacement) -> Tensor:
    out = replace(flatten_heads(activation))
    return out.reshape(activation.shape).to(activation.dtype)


class LanguageModel(ABC):
    name: str  # what the user called it (a TransformerLens name, "bundled" or a directory)
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    device: torch.device
    n_ctx: int | None  # longest context the model accepts

    @abstractmethod
    def hook_names(self) -> list[str]:
        """Every hook this model can be read at."""

    @abstractmethod
    def activations(self, tokens: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
        """{hook: [batch, position, d]} for token ids [batch, position], as cheaply as possible."""

    @abstractmethod
    def logits(
        self, tokens: Tensor, replacements: Mapping[str, Replacement] | None = None
    ) -> Tensor:
        """[batch, position, vocab] logits, with each named hook's output passed through its
        replacement function first (e.g. an SAE's reconstruction, or zeros)."""

    def check_hooks(self, hooks: Iterable[str]) -> None:
        known = set(self.hook_names())
        for hook in hooks:
            if _NOT_PER_TOKEN.search(hook):
                raise ConfigError(
                    f"hook '{hook}' is an attention pattern, not one vector per token"
                )
            if hook not in known:
                raise ConfigError(
                    f"unknown hook '{hook}' for model '{self.name}' (e.g. {_examples(known)})"
                )

    @abstractmethod
    def logit_effects(self, hook: str, directions: Tensor) -> Tensor | None:
        """[n, vocab]: the direct effect on the logits of adding each row of `directions`
        ([n, d], the hook's flattened width) at `hook`, through the unembedding only (later
        layers and the final norm are skipped, as feature dashboards do). None when the hook's
        output does not reach the residual stream through a fixed linear map."""

    def hook_dims(self, hooks: Sequence[str]) -> dict[str, int]:
        """Width of each hook's flattened activation, from a two-token forward pass."""
        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        return {h: a.shape[-1] for h, a in self.activations(probe, hooks).items()}


def _examples(names: set[str]) -> str:
    layer0 = sorted(n for n in names if re.search(r"(^|\.)0(\.|$)", n))
    return ", ".join((layer0 or sorted(names))[:6])


# ---------------------------------------------------------------------------- TransformerLens


class _Stop(Exception):
    """Raised from the last hook needed, to skip the rest of the forward pass."""


def transformer_lens_stop_layer(hooks: Iterable[str]) -> int | None:
    """Blocks to run so that every hook has fired: TransformerLens's stop_at_layer (exclusive).

    `blocks.L.*` needs blocks 0..L; embedding hooks need none (0); anything after the last
    block (ln_final, unembed) needs the whole model (None).
    """
    needed = 0
    for hook in hooks:
        match = re.match(r"blocks\.(\d+)\.", hook)
        if match:
            needed = max(needed, int(match.group(1)) + 1)
        elif not hook.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
            return None
    return needed


# Hooks that are (or are added to) the residual stream as they are.
_RESIDUAL = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_normalized"
    r"|blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out))$"
)
_ATTN_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


class TransformerLensModel(LanguageModel):
    def __init__(self, model: Any, name: str):
        self.model, self.name = model.eval(), name
        self.tokenizer = model.tokenizer
        self.device = next(model.parameters()).device
        self.n_ctx = model.cfg.n_ctx

    def hook_names(self) -> list[str]:
        return sorted(self.model.hook_dict)

    @torch.no_grad()
    def activations(self, tokens: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
        # stop_at_layer alone would still run all of the last block; the pass is abandoned as
        # soon as the last hook has fired (blocks.8.hook_resid_pre needs blocks 0-7 only).
        captured: dict[str, Tensor] = {}
        waiting = set(hooks)

        def capture(activation: Tensor, hook: Any) -> None:
            captured[hook.name] = activation
            waiting.discard(hook.name)
            if not waiting:
                raise _Stop

        fwd_hooks = [(name, capture) for name in hooks]
        with self.model.hooks(fwd_hooks=fwd_hooks), contextlib.suppress(_Stop):
            self.model(tokens.to(self.device), stop_at_layer=transformer_lens_stop_layer(hooks))
        return {hook: flatten_heads(captured[hook]) for hook in hooks}

    @torch.no_grad()
    def logits(
        self, tokens: Tensor, replacements: Mapping[str, Replacement] | None = None
    ) -> Tensor:
        hooks = [
            (name, lambda act, hook, fn=fn: _replaced(act, fn))
            for name, fn in (replacements or {}).items()
        ]
        return self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=hooks)

    @torch.no_grad()
    def logit_effects(self, hook: str, directions: Tensor) -> Tensor | None:
        model = self.model
        dirs = directions.to(self.device, model.W_U.dtype)
        if _RESIDUAL.match(hook):
            residual = dirs
        elif match := _ATTN_Z.match(hook):
            W_O = model.blocks[int(match.group(1))].attn.W_O  # [heads, d_head, d_model]
            residual = torch.einsum("nhd,hdm->nm", dirs.reshape(len(dirs), *W_O.shape[:2]), W_O)
        elif match := _MLP_POST.match(hook):
            residual = dirs @ model.blocks[int(match.group(1))].mlp.W_out
        else:
            return None
        return (residual @ model.W_U).float().cpu()


# ---------------------------------------------------------------------------- plain transformers


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    first = output[0] if hasattr(output, "to_tuple") else None  # a transformers ModelOutput
    if isinstance(first, Tensor):
        return first
    raise ConfigError(f"module output of type {type(output).__name__} holds no activation tensor")


def _with_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, Tensor):
        return tensor
    if isinstance(output, tuple | list):
        return type(output)([tensor, *output[1:]])
    output[next(iter(output.keys()))] = tensor
    return output


class HFModel(LanguageModel):
    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        config = model.config
        self.n_ctx = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self.modules = dict(model.named_modules())

    def hook_names(self) -> list[str]:
        return sorted(name for name in self.modules if name)

    @torch.no_grad()
    def activations(self, tokens: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
        captured: dict[str, Tensor] = {}
        waiting = set(hooks)

        def capture(name: str) -> Callable[..., None]:
            def hook(module: Any, inputs: Any, output: Any) -> None:
                captured[name] = flatten_heads(_first_tensor(output))
                waiting.discard(name)
                if not waiting:
                    raise _Stop

            return hook

        handles = [self.modules[name].register_forward_hook(capture(name)) for name in hooks]
        try:
            self.model(input_ids=tokens.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {hook: captured[hook] for hook in hooks}

    @torch.no_grad()
    def logits(
        self, tokens: Tensor, replacements: Mapping[str, Replacement] | None = None
    ) -> Tensor:
        def replace(fn: Replacement) -> Callable[..., Any]:
            def hook(module: Any, inputs: Any, output: Any) -> Any:
                return _with_first(output, _replaced(_first_tensor(output), fn))

            return hook

        handles = [
            self.modules[name].register_forward_hook(replace(fn))
            for name, fn in (replacements or {}).items()
        ]
        try:
            return self.model(input_ids=tokens.to(self.device), use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def logit_effects(self, hook: str, directions: Tensor) -> Tensor | None:
        # Module outputs as wide as the model read (or write) the residual stream: blocks,
        # attention and MLP outputs. Anything narrower or wider has no direct path.
        unembed = self.model.get_output_embeddings()
        if unembed is None or directions.shape[-1] != unembed.weight.shape[1]:
            return None
        weight = unembed.weight
        return (directions.to(weight.device, weight.dtype) @ weight.T).float().cpu()
