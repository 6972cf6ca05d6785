"""One line per metric, shown beside it in report.html (README "Evaluating an SAE" says more)."""

from __future__ import annotations

EXPLANATIONS = {
    "mse": "mean over rows of ||x - x̂||², summed over dimensions",
    "explained_variance": "1 - E||x - x̂||² / E||x - E x||²: reconstruction against the mean "
    "(1 perfect, 0 no better than the mean)",
    "cosine_similarity": "mean cosine between each row and its reconstruction",
    "l0": "mean number of nonzero latents per row",
    "dead_latents": "latents that never fired on the evaluation rows",
    "dense_latents": "latents firing on more than eval.dense_threshold of the rows",
    "shrinkage": "mean ||x̂|| / ||x||: below 1, the SAE shrinks its reconstructions",
    "ce_loss_clean": "next-token loss of the unmodified model",
    "ce_loss_sae": "next-token loss with the SAE's reconstruction spliced in at the hook",
    "ce_loss_zero_ablation": "next-token loss with the hook's activation zeroed",
    "ce_loss_recovered": "(zero-ablation - SAE) / (zero-ablation - clean) loss: share of the "
    "hook's contribution the SAE keeps",
    "kl_divergence": "mean KL(clean || spliced) of the next-token distributions",
    "eval_tokens": "positions scored",
    "monosemanticity_mean_f1": "mean over planted variable values of the best single "
    "latent's F1 as a detector (fires = nonzero)",
    "fraction_of_ceiling_mean": "mean over variables of best single-latent F1 / dense-probe "
    "F1 on the raw activations",
    "fraction_of_ceiling_k5_mean": "the same for a 5-sparse probe on the latents",
    "mcc": "mean |cos| of decoder rows and true features matched one-to-one (Hungarian)",
    "mmcs": "mean over true features of the best cosine with any decoder row",
    "frac_recovered_90": "true features with a decoder row at |cos| ≥ 0.9",
    "frac_recovered_99": "true features with a decoder row at |cos| ≥ 0.99",
    "uniqueness": "distinct best-matched true features / latents",
    "precision": "per latent: of its firings, the share where its matched feature is active",
    "recall": "per latent: of its matched feature's activations, the share where it fires",
    "f1": "harmonic mean of each latent's precision and recall, averaged over latents",
    "true_l0": "mean number of active true features per row",
    "absorption_rate": "per parent feature: share of rows with a child active where the "
    "parent's latent is silent; mean over parents",
    "d_sae": "latents in the dictionary",
    "seconds": "training wall-clock time",
}


def explain(key: str) -> str:
    return EXPLANATIONS.get(key, "")
