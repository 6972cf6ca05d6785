"""The language-model activation source: the bundled model offline, harvest rows and their
metadata, exact resume, rank slices, live shuffled training batches, and clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from sae.config import Config, DataConfig, LMConfig, load_config
from sae.corpus.build_tiny_model import agreement
from sae.corpus.bundled import load_bundled_model, training_stats
from sae.corpus.grammar import VARIABLES
from sae.errors import ConfigError
from sae.hooked_models.loading import load_language_model
from sae.hooked_models.models import LanguageModel
from sae.io import load_state, save_state
from sae.sources import build_source
from sae.sources.model_activations import LMSource
from sae.sources.text import NO_DOCUMENT
from tests.lm_checkpoints import english_lines, save_tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_mlp_out",
    "blocks.0.attn.hook_z",
]


@pytest.fixture(scope="module")
def bundled() -> LanguageModel:
    return load_language_model(LMConfig(hooks=HOOKS))


def source(model: LanguageModel, **overrides: object) -> LMSource:
    fields = {"hooks": HOOKS, "context_size": 32, "batch_sequences": 4, **overrides}
    return LMSource(LMConfig(**fields), model=model)


def test_the_bundled_model_loads_without_network_and_knows_the_language(
    bundled: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access during an offline load")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model, tokenizer = load_bundled_model()
    windows = source(bundled, context_size=64).windows(seed=99, split="validation")
    tokens = torch.stack([next(windows).tokens for _ in range(24)])
    with torch.no_grad():
        logits = model(tokens)
    loss = float(
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    )
    counts = torch.bincount(tokens.reshape(-1), minlength=len(tokenizer)).double()
    probabilities = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(probabilities * probabilities.log()).sum())
    assert loss < 0.6 * unigram_entropy
    assert agreement(logits, tokens, tokenizer)["accuracy"] > 0.95  # it tracks the subject
    stats = training_stats()
    assert stats["held_out_loss"] < stats["bigram_cross_entropy"] < stats["unigram_cross_entropy"]


def test_harvest_rows_are_the_model_activations_of_the_windows_with_their_metadata(
    bundled: LanguageModel,
) -> None:
    src = source(bundled)
    batch = next(src.harvest_stream(batch_rows=100, seed=5))
    model = bundled.model  # type: ignore[attr-defined]
    cfg = model.cfg
    assert src.hook_dims == {
        HOOKS[0]: cfg.d_model,
        HOOKS[1]: cfg.d_mlp,
        HOOKS[2]: cfg.d_model,
        HOOKS[3]: cfg.n_heads * cfg.d_head,
    }
    windows = [next(src.windows(seed=5))]
    _, cache = model.run_with_cache(windows[0].tokens[None])
    keep = windows[0].tokens != bundled.tokenizer.bos_token_id
    rows = int(keep.sum())
    for hook in HOOKS:
        expected = cache[hook][0].reshape(32, -1)[keep]
        assert torch.allclose(batch.activations[hook][:rows], expected, atol=1e-6), hook
    assert torch.equal(batch.token_ids[:rows], windows[0].tokens[keep])
    assert torch.equal(batch.positions[:rows], torch.arange(32)[keep])
    assert torch.equal(batch.doc_ids[:rows], windows[0].doc_ids[keep])
    assert set(batch.labels) == set(VARIABLES)
    for name in VARIABLES:
        assert torch.equal(batch.labels[name][:rows], windows[0].labels[name][keep])
    assert (batch.doc_ids != NO_DOCUMENT).all()


def test_special_token_positions_are_kept_only_when_asked(bundled: LanguageModel) -> None:
    bos = bundled.tokenizer.bos_token_id
    kept = next(source(bundled, exclude_special_tokens=False).harvest_stream(500, seed=1))
    assert (kept.token_ids == bos).any() and (kept.positions[kept.token_ids == bos] == 0).any()
    assert (kept.labels["topic"][kept.token_ids == bos] == NO_DOCUMENT).all()
    dropped = next(source(bundled).harvest_stream(500, seed=1))
    assert not (dropped.token_ids == bos).any()


def test_a_harvest_resumes_exactly_even_part_way_through_a_forward_pass(
    bundled: LanguageModel, tmp_path: Path
) -> None:
    src = source(bundled)
    stream = src.harvest_stream(batch_rows=45, seed=3)  # not a divisor of a pass's ~120 rows
    states, batches = [], []
    for _ in range(8):
        states.append(stream.state_dict())
        batches.append(next(stream))
    for k in (1, 4, 6):
        save_state(tmp_path / "state.safetensors", {"stream": states[k]})
        resumed = src.harvest_stream(batch_rows=45, seed=3)
        resumed.load_state_dict(load_state(tmp_path / "state.safetensors")["stream"])
        for expected in batches[k:]:
            got = next(resumed)
            assert torch.equal(got.token_ids, expected.token_ids)
            assert torch.equal(got.doc_ids, expected.doc_ids)
            assert all(torch.equal(got.activations[h], expected.activations[h]) for h in HOOKS)
            assert all(torch.equal(got.labels[v], expected.labels[v]) for v in VARIABLES)


def test_skipping_batches_reads_on_where_reading_them_would_have(
    bundled: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(bundled, max_tokens=700)
    batches = list(src.harvest_stream(batch_rows=45, seed=3))
    for skip in (1, 3, 7, 20):  # into a forward pass, across several, past the end
        stream = src.harvest_stream(batch_rows=45, seed=3)
        assert stream.skip_batches(skip) == sum(b.rows for b in batches[:skip])
        rest = list(stream)
        assert len(rest) == len(batches[skip:])
        for got, expected in zip(rest, batches[skip:], strict=True):
            assert torch.equal(got.token_ids, expected.token_ids)
            assert all(torch.equal(got.activations[h], expected.activations[h]) for h in HOOKS)
    # whole forward passes inside a skip are not run
    calls = []
    real = bundled.activations
    monkeypatch.setattr(bundled, "activations", lambda *a: calls.append(1) or real(*a))
    stream = src.harvest_stream(batch_rows=45, seed=3)
    stream.skip_batches(12)
    assert len(calls) <= 1


def test_max_tokens_ends_the_harvest_on_the_exact_row(bundled: LanguageModel) -> None:
    sizes = [b.rows for b in source(bundled, max_tokens=1000).harvest_stream(300, seed=0)]
    assert sizes == [300, 300, 300, 100]


def test_rank_slices_read_disjoint_documents(bundled: LanguageModel) -> None:
    src = source(bundled)
    for rank in range(3):
        batch = next(src.harvest_stream(300, seed=0, rank=rank, world_size=3))
        assert (batch.doc_ids % 3 == rank).all()


def test_live_batches_are_a_seeded_shuffle_of_the_harvest_and_resume_exactly(
    bundled: LanguageModel,
) -> None:
    src = source(bundled, hooks=HOOKS[:1], shuffle_rows=200)
    stream = src.stream(batch_size=64, seed=4)  # 4 batches per 256-row buffer
    states, batches = [], []
    for _ in range(9):
        states.append(stream.state_dict())
        batches.append(next(stream))
    harvested = next(src.harvest_stream(256, seed=4)).activations[HOOKS[0]]
    first_buffer = torch.cat(batches[:4])
    assert not torch.equal(first_buffer, harvested)
    assert torch.equal(
        first_buffer[first_buffer[:, 0].argsort()], harvested[harvested[:, 0].argsort()]
    )
    for k in (2, 4, 7):
        resumed = src.stream(batch_size=64, seed=4)
        resumed.load_state_dict(states[k])
        assert all(torch.equal(next(resumed), expected) for expected in batches[k:])
    assert not torch.equal(next(src.stream(batch_size=64, seed=5)), batches[0])


def test_live_batches_cycle_a_finite_dataset(bundled: LanguageModel, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(english_lines(4)) + "\n")
    src = source(bundled, hooks=HOOKS[:1], dataset=str(corpus), shuffle_rows=64)
    total = sum(b.rows for b in src.harvest_stream(10_000, seed=0))
    stream = src.stream(batch_size=64, seed=0)
    batches = [next(stream) for _ in range(2 * total // 64 + 2)]  # more than two epochs
    state = stream.state_dict()
    after = next(stream)
    resumed = src.stream(batch_size=64, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed), after) and len(batches) > 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def test_a_local_checkpoint_harvests_the_same_rows_through_both_backends(
    checkpoint: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "web.jsonl"
    corpus.write_text(
        "".join(f'{{"text": "{line}"}}\n' for line in english_lines(30, seed=1) if '"' not in line)
    )
    common = {
        "model": str(checkpoint),
        "dataset": str(corpus),
        "context_size": 32,
        "batch_sequences": 4,
    }
    via_hf = build_source(
        DataConfig(lm={**common, "backend": "hf", "hooks": ["transformer.h.0"]}), 0
    )
    via_lens = build_source(DataConfig(lm={**common, "hooks": ["blocks.1.hook_resid_pre"]}), 0)
    a = next(via_hf.harvest_stream(200, seed=0))
    b = next(via_lens.harvest_stream(200, seed=0))
    assert torch.equal(a.token_ids, b.token_ids) and a.labels == {} and a.rows == 200
    torch.testing.assert_close(
        a.activations["transformer.h.0"],
        b.activations["blocks.1.hook_resid_pre"],
        atol=1e-5,
        rtol=1e-4,
    )
    assert via_hf.metadata()["model_name"] == str(checkpoint)


def test_the_generated_language_needs_its_own_tokenizer(checkpoint: Path) -> None:
    cfg = LMConfig(model=str(checkpoint), backend="hf", hooks=["transformer.h.0"], context_size=32)
    with pytest.raises(ConfigError, match="word-level tokenizer"):
        LMSource(cfg)


def test_a_context_longer_than_the_model_allows_is_refused(bundled: LanguageModel) -> None:
    with pytest.raises(ConfigError, match="context_size 4096 exceeds"):
        source(bundled, context_size=4096)


def test_a_missing_dataset_file_stops_before_the_model_loads(tmp_path: Path) -> None:
    cfg = LMConfig(model="/no/such/model", hooks=["x"], dataset=str(tmp_path / "absent.txt"))
    with pytest.raises(ConfigError, match="dataset file not found"):
        LMSource(cfg)


def test_exactly_one_data_source_may_be_set() -> None:
    with pytest.raises(ValueError, match="data.lm"):
        DataConfig(synthetic={}, lm={"hooks": ["blocks.0.hook_resid_pre"]})
    assert DataConfig(lm={"hooks": ["blocks.0.hook_resid_pre"]}).kind == "lm"


def test_the_gpt2_small_config_describes_a_real_model_run() -> None:
    cfg: Config = load_config(ROOT / "configs" / "lm" / "gpt2-small.yaml")
    lm = cfg.data.lm
    assert lm is not None
    assert (lm.model, lm.hooks, lm.context_size, lm.prepend_bos) == (
        "gpt2",
        ["blocks.8.hook_resid_pre"],
        128,
        True,
    )
    assert not Path(lm.dataset).exists()  # a hub dataset, streamed
