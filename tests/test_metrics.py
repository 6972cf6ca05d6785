import pytest
import torch
from sae_lens.synthetic import (
    eval_sae_on_synthetic_data,
    feature_uniqueness,
    mean_correlation_coefficient,
)

from sae.config import SAEConfig, SyntheticConfig
from sae.evaluation.ground_truth import cosines, evaluate_ground_truth, frac_recovered, mcc, mmcs
from sae.models import build_sae
from sae.publish.saelens import load_saelens, save_saelens
from sae.sources.synthetic import SyntheticSource
from tests.conftest import k_for


def test_perfect_dictionary_scores_one() -> None:
    truth = torch.randn(20, 8)
    cos = cosines(truth[torch.randperm(20)], truth)
    assert mcc(cos) == pytest.approx(1.0)
    assert mmcs(cos) == pytest.approx(1.0)
    assert frac_recovered(cos, 0.99) == 1.0


def test_sign_flipped_row_counts_for_mcc_but_not_mmcs() -> None:
    truth = torch.eye(4)
    learned = truth.clone()
    learned[0] *= -1
    cos = cosines(learned, truth)
    assert mcc(cos.abs()) == pytest.approx(1.0)
    assert mmcs(cos) < 1.0


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_metrics_agree_with_saelens_synthetic_evals(arch: str, tmp_path) -> None:
    source = SyntheticSource(
        SyntheticConfig(num_features=40, hidden_dim=12, std_magnitude=0.3), seed=3
    )
    # Identical draws on both sides isolate the metric code: sae_lens's own sampler, not ours
    # (same law, other draws; tests/test_synthetic_sampler.py compares the two).
    source.sampler = None
    sae = build_sae(SAEConfig(arch=arch, d_sae=32, **k_for(arch, 4)), 12, seed=5)
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    ours = evaluate_ground_truth(sae, source, samples=3000, batch_size=3000, seed=11)
    theirs_sae = load_saelens(save_saelens(sae, 1.0, tmp_path / "sae"))
    torch.manual_seed(11)  # sae_lens samples from the global RNG; ours lends it the same state
    theirs = eval_sae_on_synthetic_data(
        theirs_sae, source.model.feature_dict, source.model.activation_generator, num_samples=3000
    )
    gt, dec = source.feature_vectors, sae.W_dec.detach()
    assert ours.mcc == pytest.approx(mean_correlation_coefficient(dec, gt), abs=1e-4)
    assert ours.mcc == pytest.approx(theirs.mcc, abs=1e-4)
    assert ours.uniqueness == pytest.approx(feature_uniqueness(dec, gt), abs=1e-4)
    assert ours.l0 == pytest.approx(theirs.sae_l0, abs=1e-4)
    assert ours.true_l0 == pytest.approx(theirs.true_l0, abs=1e-4)
    assert ours.dead_latents == theirs.dead_latents
    assert ours.shrinkage == pytest.approx(theirs.shrinkage, abs=1e-4)
    assert ours.explained_variance == pytest.approx(theirs.explained_variance, abs=1e-4)
    assert ours.precision == pytest.approx(theirs.classification.precision, abs=1e-4)
    assert ours.recall == pytest.approx(theirs.classification.recall, abs=1e-4)
    assert ours.f1 == pytest.approx(theirs.classification.f1_score, abs=1e-4)


def test_sae_initialisation_is_independent_of_the_ground_truth() -> None:
    """Same config seed for data and model must not start the SAE on the true features."""
    source = SyntheticSource(SyntheticConfig(num_features=64, hidden_dim=16), seed=0)
    sae = build_sae(SAEConfig(arch="topk", d_sae=64, k=4), 16, seed=0)
    assert mcc(cosines(sae.W_dec.detach(), source.feature_vectors)) < 0.6
