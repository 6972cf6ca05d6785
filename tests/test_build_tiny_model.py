"""The script that trains the bundled model: a few steps of it, written where asked."""

from __future__ import annotations

from pathlib import Path

from sae.corpus.build_tiny_model import main
from sae.corpus.bundled import load_bundled_model, training_stats
from sae.corpus.grammar import VARIABLES
from sae.corpus.tokenizer import build_tokenizer


def test_a_short_run_writes_a_model_that_loads_like_the_bundled_one(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    main(
        [
            "--steps",
            "3",
            "--batch",
            "2",
            "--context",
            "16",
            "--layers",
            "1",
            "--d-model",
            "32",
            "--eval-windows",
            "4",
            "--baseline-windows",
            "8",
            "--out",
            str(out),
        ]
    )
    model, tokenizer = load_bundled_model(path=out)
    assert model.cfg.n_layers == 1 and model.cfg.d_vocab == len(build_tokenizer())
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    stats = training_stats(out)
    assert stats["steps"] == 3 and stats["tokens_seen"] == 3 * 2 * 16
    assert set(stats["probe_accuracy"]) == set(VARIABLES)
    assert set(stats["agreement"]) == {"accuracy", "cases", "attractor_accuracy", "attractor_cases"}
    assert stats["held_out_loss"] > 0 and stats["unigram_cross_entropy"] > 0


def test_the_shipped_model_matches_the_language_of_this_version() -> None:
    model, tokenizer = load_bundled_model()
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    assert model.cfg.d_vocab == len(tokenizer)
