"""Reading and replacing activations at named hooks, for both backends, with no network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae.config import LMConfig
from sae.errors import ConfigError
from sae.hooked_models.loading import check_model_reference, load_language_model
from sae.hooked_models.models import HFModel, TransformerLensModel, transformer_lens_stop_layer
from tests.lm_checkpoints import save_tiny_gpt2

TOKENS = torch.randint(1, 300, (3, 20), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def hf(checkpoint: Path) -> HFModel:
    model = load_language_model(
        LMConfig(model=str(checkpoint), backend="hf", hooks=["transformer.h.0"])
    )
    assert isinstance(model, HFModel)
    return model


@pytest.fixture(scope="module")
def lens(checkpoint: Path) -> TransformerLensModel:
    model = load_language_model(LMConfig(model=str(checkpoint), hooks=["blocks.0.hook_resid_post"]))
    assert isinstance(model, TransformerLensModel)
    return model


@pytest.fixture(scope="module")
def bundled() -> TransformerLensModel:
    model = load_language_model(LMConfig(hooks=["blocks.0.hook_resid_post"]))
    assert isinstance(model, TransformerLensModel)
    return model


def test_stop_layer_covers_the_deepest_hook() -> None:
    assert transformer_lens_stop_layer(["blocks.0.hook_resid_pre", "blocks.2.mlp.hook_post"]) == 3
    assert transformer_lens_stop_layer(["hook_embed"]) == 0
    assert (
        transformer_lens_stop_layer(["blocks.0.hook_resid_pre", "ln_final.hook_normalized"]) is None
    )


def test_several_hooks_in_one_stopped_pass_equal_a_full_cached_run(
    bundled: TransformerLensModel,
) -> None:
    hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.0.mlp.hook_post",
        "blocks.1.attn.hook_z",
        "hook_embed",
    ]
    got = bundled.activations(TOKENS, hooks)
    _, cache = bundled.model.run_with_cache(TOKENS)
    for hook in hooks:
        expected = cache[hook]
        if hook.endswith("hook_z"):  # [b, pos, heads, d_head] -> heads flattened, head-major
            assert expected.ndim == 4
            expected = expected.reshape(*expected.shape[:2], -1)
        assert torch.equal(got[hook], expected), hook
    cfg = bundled.model.cfg
    assert bundled.hook_dims(hooks)["blocks.1.attn.hook_z"] == cfg.n_heads * cfg.d_head


def _modules_run(model: TransformerLensModel, hooks: list[str]) -> list[str]:
    """Which blocks and attention layers started computing while reading `hooks`."""
    ran: list[str] = []
    modules = {f"blocks.{i}": b for i, b in enumerate(model.model.blocks)}
    modules |= {f"blocks.{i}.attn": b.attn for i, b in enumerate(model.model.blocks)}
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
        for name, module in modules.items()
    ]
    try:
        model.activations(TOKENS, hooks)
    finally:
        for handle in handles:
            handle.remove()
    return ran


def test_the_pass_really_stops_after_the_last_needed_block(bundled: TransformerLensModel) -> None:
    assert _modules_run(bundled, ["blocks.0.hook_resid_post"]) == ["blocks.0", "blocks.0.attn"]


def test_a_block_input_hook_stops_the_pass_before_that_block_computes(
    bundled: TransformerLensModel,
) -> None:
    ran = _modules_run(bundled, ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_mid"])
    assert ran == ["blocks.0", "blocks.0.attn", "blocks.1"]  # block 1 entered, never computed
    expected = bundled.model.run_with_cache(TOKENS)[1]["blocks.1.hook_resid_pre"]
    assert torch.equal(
        bundled.activations(TOKENS, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"],
        expected,
    )


def test_hf_module_outputs_are_the_hidden_states_and_the_pass_stops_early(hf: HFModel) -> None:
    hidden = hf.model(TOKENS, output_hidden_states=True).hidden_states
    got = hf.activations(TOKENS, ["transformer.h.0", "transformer.wte"])
    assert torch.equal(got["transformer.h.0"], hidden[1])
    ran: list[str] = []
    handle = hf.model.transformer.h[1].register_forward_hook(lambda *_: ran.append("h.1"))
    try:
        hf.activations(TOKENS, ["transformer.h.0"])
    finally:
        handle.remove()
    assert ran == []


def test_transformer_lens_loads_a_local_checkpoint_like_hf(
    hf: HFModel, lens: TransformerLensModel
) -> None:
    hidden = hf.model(TOKENS, output_hidden_states=True).hidden_states
    got = lens.activations(TOKENS, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(got, hidden[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lens.logits(TOKENS), hf.logits(TOKENS), atol=1e-4, rtol=1e-4)
    assert lens.n_ctx == hf.n_ctx == 64


@pytest.mark.parametrize("backend", ["lens", "hf"])
def test_replacing_a_hook_changes_only_what_follows_it(
    backend: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(backend)
    hook = "blocks.0.hook_resid_post" if backend == "lens" else "transformer.h.0"
    clean = model.logits(TOKENS)
    seen: list[torch.Size] = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return x

    torch.testing.assert_close(model.logits(TOKENS, {hook: identity}), clean)
    assert seen == [torch.Size([3, 20, 32])]
    ablated = model.logits(TOKENS, {hook: torch.zeros_like})
    assert not torch.allclose(ablated, clean)
    torch.testing.assert_close(model.logits(TOKENS), clean)  # the replacement was removed


def test_hook_z_replacements_see_heads_flattened(bundled: TransformerLensModel) -> None:
    shapes: list[torch.Size] = []
    bundled.logits(TOKENS, {"blocks.0.attn.hook_z": lambda x: shapes.append(x.shape) or x})
    cfg = bundled.model.cfg
    assert shapes == [torch.Size([3, 20, cfg.n_heads * cfg.d_head])]


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("blocks.9.hook_resid_pre", "unknown hook 'blocks.9.hook_resid_pre'.*blocks.0"),
        ("blocks.0.attn.hook_pattern", "attention pattern"),
    ],
)
def test_bad_hooks_are_named(bundled: TransformerLensModel, hook: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bundled.check_hooks([hook])


def test_hf_hooks_are_module_paths(hf: HFModel) -> None:
    hf.check_hooks(["transformer.h.1", "transformer.h.0.mlp"])
    with pytest.raises(ConfigError, match="unknown hook 'blocks.0.hook_resid_post'"):
        hf.check_hooks(["blocks.0.hook_resid_post"])


@pytest.mark.parametrize(
    ("model", "backend", "message"),
    [
        ("./no/such/checkpoint", "hf", "directory not found"),
        ("/no/such/checkpoint", "transformer_lens", "directory not found"),
        ("not-a-transformer-lens-model", "transformer_lens", "neither a local checkpoint"),
        ("bundled", "hf", "TransformerLens model"),
    ],
)
def test_bad_model_references_fail_before_loading(model: str, backend: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_model_reference(LMConfig(model=model, backend=backend, hooks=["x"]))


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        check_model_reference(LMConfig(model=str(tmp_path), backend="hf", hooks=["x"]))
