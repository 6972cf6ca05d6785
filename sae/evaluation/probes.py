"""Probe ceilings: how much of what the layer linearly holds about each planted variable the
SAE's latents expose.

For every indicator of the generated language (`topic=music`, `bracket_depth=2`, ...), on the
evaluation windows' scored positions (the first `eval.probe_rows`, split train/test by a
seeded permutation):
- k-sparse probe (SAEBench's sparse probing): the k latents whose mean activation differs most
  between positive and negative training rows, then a logistic regression on those k;
- dense probe (the ceiling): a logistic regression on the raw activations;
every probe's decision threshold is the one with the best F1 on the training rows and it is
scored by F1 on the test rows. Each variable reports the mean over its values, and
`fraction_of_ceiling` = best single-latent F1 / dense-probe F1 (with `_k5` for the 5-sparse
probe): how close one latent comes to what a linear readout of the layer can do.
Logistic regressions are fitted by full-batch L-BFGS from zeros on standardised inputs, so the
results are a function of the seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sae.config import EvalConfig

KS = (1, 2, 5)
TRAIN_FRACTION = 0.7
L2 = 1e-3  # on standardised inputs: a light ridge that keeps separable indicators finite
LBFGS_STEPS = 100
MIN_POSITIVES = 5  # in each of train and test; rarer indicators are not probed


@dataclass
class ProbeRows:
    acts: Tensor  # [R, d_in] raw activations at the hook
    latents: Tensor  # [R, d_sae]
    truth: Tensor  # [R, n_indicators] bool
    names: list[str]


@torch.no_grad()
def collect_rows(
    sae: Any, source: Any, hook: str, cfg: EvalConfig, seed: int, input_scale: float = 1.0
) -> ProbeRows:
    """The evaluation windows' scored rows (as evaluate_lm reads them), up to probe_rows."""
    from sae.evaluation.spliced import _indicator_matrix, read_eval_windows

    windows = read_eval_windows(source, cfg, seed)
    names, truth = _indicator_matrix(windows.labels)
    assert truth is not None, "probe ceilings need a labelled language"
    device = sae.W_dec.device
    acts, latents, labels = [], [], []
    kept = 0
    for start in windows.batches(source.cfg.batch_sequences):
        part = slice(start, start + source.cfg.batch_sequences)
        tokens = windows.tokens[part].to(source.model.device)
        x = source.model.activations(tokens, [hook])[hook].float()
        mask = windows.rows[part]
        rows = x[mask.to(x.device)].to(device)
        acts.append(rows.cpu())
        latents.append(sae.encode(rows * input_scale).float().cpu())
        labels.append(truth[part][mask])
        kept += rows.shape[0]
        if kept >= cfg.probe_rows:
            break
    n = cfg.probe_rows
    return ProbeRows(torch.cat(acts)[:n], torch.cat(latents)[:n], torch.cat(labels)[:n], names)


def f1_at_best_threshold(scores: Tensor, y: Tensor) -> Tensor:
    """[T] thresholds (one per task, scores [T, R]) maximising F1 on these rows."""
    order = scores.argsort(dim=1, descending=True)
    sorted_scores = scores.gather(1, order)
    hits = y.gather(1, order).double().cumsum(1)
    predicted = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64)
    f1 = 2 * hits / (predicted + y.double().sum(1, keepdim=True))
    best = f1.argmax(dim=1)
    return sorted_scores.gather(1, best[:, None])[:, 0]


def f1_score(predicted: Tensor, y: Tensor) -> Tensor:
    """[T] F1 of boolean predictions [T, R] against y [T, R]."""
    hits = (predicted & y).sum(1).double()
    return 2 * hits / (predicted.sum(1) + y.sum(1)).double().clamp(min=1)


def fit_logistic(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One logistic regression per task. x: [R, f] shared or [T, R, f]; y: [T, R] bool.
    Returns weights [T, f] and biases [T]. The tasks' losses are separable, so one L-BFGS
    over their sum fits each as it would alone (up to the shared line search)."""
    tasks, features = y.shape[0], x.shape[-1]
    w = torch.zeros(tasks, features, requires_grad=True)
    b = torch.zeros(tasks, requires_grad=True)
    target = y.float()
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = _logits(x, w, b)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, reduction="none"
        ).mean(1).sum() + L2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def _logits(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if x.dim() == 2:
        return (x @ w.T).T + b[:, None]
    return torch.einsum("trf,tf->tr", x, w) + b[:, None]


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean(dim=-2, keepdim=True)
    std = train.std(dim=-2, keepdim=True).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def probe_f1(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> Tensor:
    """[T] test F1 of logistic probes fitted on the training rows."""
    train_x, test_x = _standardise(train_x, test_x)
    w, b = fit_logistic(train_x, train_y)
    threshold = f1_at_best_threshold(_logits(train_x, w, b), train_y)
    return f1_score(_logits(test_x, w, b) >= threshold[:, None], test_y)


def top_latents(latents: Tensor, y: Tensor, k: int) -> Tensor:
    """[T, k] latents with the largest |mean on positives - mean on negatives| (SAEBench)."""
    yf = y.float()
    positives = yf @ latents / yf.sum(1, keepdim=True).clamp(min=1)
    negatives = (1 - yf) @ latents / (1 - yf).sum(1, keepdim=True).clamp(min=1)
    return (positives - negatives).abs().topk(k, dim=1).indices


def run_probes(rows: ProbeRows, seed: int) -> dict[str, Any]:
    """Sparse and dense probes on a seeded train/test split; per indicator and per variable."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows.acts.shape[0], generator=generator)
    cut = int(TRAIN_FRACTION * len(order))
    train, test = order[:cut], order[cut:]
    y_train, y_test = rows.truth[train].T, rows.truth[test].T  # [n_indicators, R]
    usable = (y_train.sum(1) >= MIN_POSITIVES) & (y_test.sum(1) >= MIN_POSITIVES)
    keep = usable.nonzero()[:, 0]
    names = [rows.names[i] for i in keep]
    y_train, y_test = y_train[keep], y_test[keep]
    results: dict[str, dict[str, Any]] = {name: {"sparse_f1": {}} for name in names}
    if not names:
        return {}
    dense = probe_f1(rows.acts[train], y_train, rows.acts[test], y_test)
    for k in KS:
        chosen = top_latents(rows.latents[train], y_train, min(k, rows.latents.shape[1]))
        pick = torch.stack([rows.latents[:, c] for c in chosen])  # [T, R, k]
        f1 = probe_f1(pick[:, train], y_train, pick[:, test], y_test)
        for j, name in enumerate(names):
            results[name]["sparse_f1"][str(k)] = float(f1[j])
            results[name][f"latents_k{k}"] = [int(i) for i in chosen[j]]
    for j, name in enumerate(names):
        results[name]["dense_f1"] = float(dense[j])
    return {"rows": int(rows.acts.shape[0]), "test_rows": len(test), "per_indicator": results}


def summarise(probes: dict[str, Any], single: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variable: means over its values of the single-latent, sparse and dense F1, and the
    fractions of the ceiling; plus their means over variables."""
    groups: dict[str, list[str]] = {}
    for name in probes.get("per_indicator", {}):
        groups.setdefault(name.split("=")[0], []).append(name)
    per_variable: dict[str, dict[str, float]] = {}
    for variable, names in groups.items():
        table = [probes["per_indicator"][n] for n in names]
        row = {
            "single_latent_f1": _mean(single.get(n, {}).get("f1", 0.0) for n in names),
            **{f"sparse_f1_k{k}": _mean(t["sparse_f1"][str(k)] for t in table) for k in KS},
            "dense_f1": _mean(t["dense_f1"] for t in table),
        }
        ceiling = max(row["dense_f1"], 1e-9)
        row["fraction_of_ceiling"] = row["single_latent_f1"] / ceiling
        row["fraction_of_ceiling_k5"] = row["sparse_f1_k5"] / ceiling
        per_variable[variable] = row
    return {
        "per_variable": per_variable,
        "fraction_of_ceiling_mean": _mean(r["fraction_of_ceiling"] for r in per_variable.values()),
        "fraction_of_ceiling_k5_mean": _mean(
            r["fraction_of_ceiling_k5"] for r in per_variable.values()
        ),
    }


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def probe_ceilings(
    sae: Any,
    source: Any,
    hook: str,
    cfg: EvalConfig,
    seed: int,
    single: dict[str, dict[str, Any]],
    input_scale: float = 1.0,
) -> dict[str, Any]:
    """metrics.json keys: `probes` (per indicator and per variable) and the two means."""
    rows = collect_rows(sae, source, hook, cfg, seed, input_scale)
    probes = run_probes(rows, seed)
    if not probes:
        return {}
    summary = summarise(probes, single)
    from sae.evaluation.absorption import label_absorption

    absorption = label_absorption(rows.latents, rows.truth, rows.names)
    return {
        **({"language_absorption": absorption} if absorption else {}),
        "probes": {**probes, "per_variable": summary["per_variable"]},
        "fraction_of_ceiling_mean": summary["fraction_of_ceiling_mean"],
        "fraction_of_ceiling_k5_mean": summary["fraction_of_ceiling_k5_mean"],
    }
