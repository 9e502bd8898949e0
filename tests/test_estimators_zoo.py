"""Estimators on zoo models against their exact references (closed form, enumeration,
quadrature). Tolerances: the estimators' own standard errors, or stated accuracy goals."""

import math

import pyro
import pytest
import torch

import inference
import zoo


@pytest.fixture(scope="module")
def gmm_sim():
    return zoo.get("gmm", K=3, D=2).simulate(200, seed=0)


def test_gmm_local_estimators_match_enumeration(gmm_sim):
    marginal = zoo.get("gmm", K=3, D=2)
    inference.fit(marginal, gmm_sim.data, steps=300, lr=0.05, progress=False)
    explicit = zoo.get("gmm", K=3, D=2, assignments="sample")  # same globals, proposes z
    exact = inference.estimate(explicit, gmm_sim.data, "exact", scope="local")
    # generic enumeration equals the model's own analytic marginal at the same globals
    ll = marginal.log_likelihood(gmm_sim.data[0], marginal.params_from_guide())
    torch.testing.assert_close(exact.per_datapoint, ll.double(), rtol=0, atol=1e-4)
    for method in ("is-prior", "is-guide"):
        est = inference.estimate(explicit, gmm_sim.data, method, 1000, scope="local", seed=3)
        assert abs(est.log_evidence - exact.log_evidence) < 3 * est.stderr, method


@pytest.mark.slow
def test_gmm_global_evidence_undoes_label_switching():
    # Two clusters far apart: the posterior has 2! well separated modes, the guide covers one.
    # Reference: prior Monte Carlo with 2e5 draws (unbiased, no label issue; 6 datapoints).
    entry = zoo.get("gmm", K=2, D=1)
    x = torch.tensor([[-3.1], [-2.8], [-3.3], [2.9], [3.2], [3.0]])
    inference.fit(entry, (x,), steps=1500, lr=0.02, num_particles=8, progress=False)
    ref = inference.estimate(entry, (x,), "is-prior", 200_000, seed=1)
    sym = inference.estimate(entry, (x,), "is-guide", 20_000, seed=2)
    assert abs(sym.log_evidence - ref.log_evidence) < 3 * math.hypot(sym.stderr, ref.stderr)
    one_mode = inference.estimate(inference.as_target(entry, symmetries={}), (x,), "is-guide",
                                  20_000, seed=2)
    # without symmetrisation the estimate loses log 2!: the bias the issue warns about
    assert abs(sym.log_evidence - one_mode.log_evidence - math.log(2)) < 0.05


def test_map_l2_is_guide_matches_closed_form_evidence():
    entry = zoo.get("map_l2", guide="gaussian")
    data = entry.load_data()
    # A decaying step size lets the guide settle: with a constant lr=0.02 the final guide is
    # noisy, PSIS k-hat reaches 0.74 and the delta-method stderr is no longer trustworthy.
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998})
    inference.fit(entry, data, steps=1500, optim=optim, num_particles=8, progress=False)
    exact = float(entry.log_evidence(*data))
    ref = inference.estimate(entry, data, "exact")
    assert ref.scope == "global" and ref.log_evidence == pytest.approx(exact)
    est = inference.estimate(entry, data, "is-guide", 4000, seed=0)
    assert est.khat < 0.7  # the regime where the stderr is calibrated
    assert abs(est.log_evidence - exact) < 3 * est.stderr
    elbo = inference.estimate(entry, data, "elbo", 4000, seed=0)
    assert elbo.log_evidence < exact


def test_map_l2_is_prior_unbiased_in_probability_space():
    # Few datapoints so that prior draws hit the likelihood: p_hat / p has mean 1 over seeds.
    entry = zoo.get("map_l2", guide="gaussian")
    X, y = entry.simulate(5, seed=1).data
    exact = float(entry.log_evidence(X, y))
    ratios = torch.tensor([
        math.exp(inference.estimate(entry, (X, y), "is-prior", 20, seed=s).log_evidence - exact)
        for s in range(200)
    ])
    se = float(ratios.std()) / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - 1) < 3 * se


@pytest.mark.slow
def test_vae_is_guide_close_to_quadrature():
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    inference.fit(entry, (x,), steps=1500, lr=3e-3, batch_size=128, progress=False)
    sub = (x[:200],)
    exact = inference.estimate(entry, sub, "exact")
    assert exact.diagnostics["halved_grid_diff_max"] < 0.01
    assert exact.diagnostics["boundary_mass_max"] < 1e-3
    est = inference.estimate(entry, sub, "is-guide", 1000, seed=0)
    assert abs(est.mean_per_datapoint - exact.mean_per_datapoint) < 0.05
    elbo = inference.estimate(entry, sub, "elbo", 1000, seed=0)
    assert elbo.mean_per_datapoint < est.mean_per_datapoint


def test_estimate_rejects_bad_data_before_work():
    entry = zoo.get("vae")
    (x,) = entry.load_data()
    with pytest.raises(ValueError, match="data_dim|columns"):
        inference.estimate(entry, (x[:, :10],), "is-guide", 10)
    with pytest.raises(ValueError, match="binar"):
        inference.estimate(entry, (x * 0.5,), "is-guide", 10)
    with pytest.raises(ValueError, match="is global"):
        inference.estimate(zoo.get("map_l2"), zoo.get("map_l2").load_data(), "is-prior", scope="local")
