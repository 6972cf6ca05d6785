"""Train the bundled tiny model on the generated language and write it into the package.

    python -m sae.corpus.build_tiny_model                 # writes sae/assets/tiny/
    python -m sae.corpus.build_tiny_model --steps 5 --out /tmp/tiny   # a smoke run

Run once by a developer (the result is committed). It runs on one thread by default, so the
weights do not depend on how many cores the machine has (reductions split across threads
round differently). The model sees the language exactly as a harvest will show it: the same
generated documents, tokenizer and context windows (BOS first, BOS between documents).
Afterwards it is measured on held-out documents against two baselines that know nothing of
the hidden variables (unigram and bigram cross-entropy), and linear probes on each layer's
residual stream show how well it represents each planted variable.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.corpus.bundled import ASSETS, save_bundled_model
from sae.corpus.grammar import NOT_APPLICABLE, NOUN_FORMS, VARIABLES, VERB_FORMS
from sae.corpus.tokenizer import build_tokenizer
from sae.sources.text import GeneratedReader, SpecialIds, TokenWindows

CORPUS_SEED = 1234  # the training corpus; harvests use the run's seed, so other documents


def windows(tokenizer: Any, split: str, context: int, labels: bool = False) -> TokenWindows:
    bos = tokenizer.bos_token_id
    return TokenWindows(
        GeneratedReader(CORPUS_SEED, split),
        tokenizer,
        context,
        SpecialIds(bos=bos, separator=bos, pad=tokenizer.pad_token_id),
        label_names=VARIABLES if labels else (),
    )


def batches(stream: TokenWindows, batch: int) -> Iterator[Tensor]:
    while True:
        yield torch.stack([next(stream).tokens for _ in range(batch)])


def build_model(args: argparse.Namespace, vocab: int) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.d_model // 32,
        d_head=32,
        d_mlp=4 * args.d_model,
        d_vocab=vocab,
        n_ctx=args.context,
        act_fn="gelu",
        normalization_type="LN",
        model_name="sae-tiny-language",
        seed=args.seed,
    )
    return HookedTransformer(cfg)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    warmup = max(1, min(100, args.steps // 10))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    model = build_model(args, len(tokenizer))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    data = batches(windows(tokenizer, "train", args.context), args.batch)
    started = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = model(next(data), return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
            print(f"step {step + 1}/{args.steps}  loss {recent:.4f}", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    tail = losses[-min(len(losses), 50) :]
    stats = {
        "corpus_seed": CORPUS_SEED,
        "seed": args.seed,
        "steps": args.steps,
        "batch_windows": args.batch,
        "context_size": args.context,
        "tokens_seen": args.steps * args.batch * args.context,
        "train_seconds": round(seconds, 1),
        "torch_threads": args.threads,
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        **evaluate(model, tokenizer, args),
    }
    return {"model": model, "tokenizer": tokenizer, "stats": stats}


# ---------------------------------------------------------------------------- measurements


def _first(stream: TokenWindows, n: int) -> list[Any]:
    return [window for window, _ in zip(stream, range(n), strict=False)]


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss next to unigram/bigram baselines, subject-verb agreement, and linear
    probes for each planted variable."""
    vocab = len(tokenizer)
    train_tokens = torch.cat(
        [w.tokens for w in _first(windows(tokenizer, "train", args.context), args.baseline_windows)]
    )
    held_out = _first(
        windows(tokenizer, "validation", args.context, labels=True), args.eval_windows
    )
    tokens = torch.stack([w.tokens for w in held_out])
    logits = torch.cat([model(tokens[i : i + 32]) for i in range(0, len(tokens), 32)])
    targets = tokens[:, 1:].reshape(-1)
    model_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), targets)

    unigram = torch.bincount(train_tokens, minlength=vocab).double() + 1
    unigram_ce = -(unigram / unigram.sum()).log()[targets].mean()
    pairs = train_tokens[:-1] * vocab + train_tokens[1:]
    bigram = torch.bincount(pairs, minlength=vocab * vocab).double().view(vocab, vocab) + 0.1
    bigram_logp = (bigram / bigram.sum(1, keepdim=True)).log()
    bigram_ce = -bigram_logp[tokens[:, :-1].reshape(-1), targets].mean()
    return {
        "held_out_loss": round(float(model_loss), 4),
        "unigram_cross_entropy": round(float(unigram_ce), 4),
        "bigram_cross_entropy": round(float(bigram_ce), 4),
        "agreement": agreement(logits, tokens, tokenizer),
        "probe_accuracy": probe_accuracy(model, held_out),
    }


def agreement(logits: Tensor, tokens: Tensor, tokenizer: Any) -> dict[str, Any]:
    """Where the next word is a verb, how often the model prefers the form that agrees with
    its subject over the other form; "attractor" cases are those whose nearest preceding noun
    has the other number ("the dog that the cats see [runs]"), so a model that copied the
    last noun's number would get them wrong."""
    vocab = tokenizer.get_vocab()
    verb_pair = {vocab[f]: (vocab[s], vocab[p]) for f, (s, p) in VERB_FORMS.items()}
    noun_number = {vocab[f]: pair.index(f) for f, pair in NOUN_FORMS.items()}
    right = attracted = attracted_right = cases = 0
    for window, scores in zip(tokens.tolist(), logits, strict=True):
        last_noun: int | None = None
        for t in range(len(window) - 1):
            if window[t] in noun_number:
                last_noun = noun_number[window[t]]
            pair = verb_pair.get(window[t + 1])
            if pair is None:
                continue
            number = pair.index(window[t + 1])
            correct = bool(scores[t, pair[number]] > scores[t, pair[1 - number]])
            cases += 1
            right += correct
            if last_noun is not None and last_noun != number:
                attracted += 1
                attracted_right += correct
    return {
        "accuracy": round(right / max(cases, 1), 4),
        "cases": cases,
        "attractor_accuracy": round(attracted_right / max(attracted, 1), 4),
        "attractor_cases": attracted,
    }


def probe_accuracy(model: Any, held_out: list[Any]) -> dict[str, Any]:
    """Logistic-regression probes on each layer's resid_post, fit on half the held-out windows
    and scored on the other half, next to the majority-class baseline."""
    tokens = torch.stack([w.tokens for w in held_out])
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    half = len(held_out) // 2
    result: dict[str, Any] = {}
    for variable in VARIABLES:
        labels = torch.stack([w.labels[variable] for w in held_out])
        keep = labels != NOT_APPLICABLE
        fit, test = keep.clone(), keep.clone()
        fit[half:], test[:half] = False, False
        classes = int(labels.max()) + 1
        majority = torch.bincount(labels[fit], minlength=classes).argmax()
        layers = {}
        for layer, hook in enumerate(hooks):
            probe = fit_probe(cache[hook][fit], labels[fit], classes)
            accuracy = (probe(cache[hook][test]).argmax(1) == labels[test]).float().mean()
            layers[str(layer)] = round(float(accuracy), 4)
        result[variable] = {
            "majority": round(float((labels[test] == majority).float().mean()), 4),
            "layers": layers,
        }
    return result


def fit_probe(x: Tensor, y: Tensor, classes: int) -> Any:
    """Multinomial logistic regression on standardised features (L-BFGS, light L2)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=100, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, y) + 1e-4 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return lambda rows: ((rows - mean) / std) @ weight.detach() + bias.detach()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets directory to write")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16, help="context windows per step")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--baseline-windows", type=int, default=8192)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(args)
    save_bundled_model(result["model"], result["tokenizer"], result["stats"], args.out)
    stats = result["stats"]
    print(
        f"wrote {args.out}: held-out loss {stats['held_out_loss']} nats/token "
        f"(unigram {stats['unigram_cross_entropy']}, bigram {stats['bigram_cross_entropy']}), "
        f"{stats['train_seconds']} s"
    )


if __name__ == "__main__":
    main()
