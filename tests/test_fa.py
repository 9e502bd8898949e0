"""zoo's factor analysis model: its exact evidence and posterior against scipy, and the exact
estimator in both scopes."""

import numpy as np
import pytest
import torch
from scipy import stats

import inference
import zoo


@pytest.fixture
def fa():
    entry = zoo.get("fa", latent_dim=3, data_dim=5)
    sim = entry.simulate(40, seed=0)
    entry.set_params(sim.params["W"], sim.params["mu"], sim.params["psi"])
    return entry, sim.data[0]


def test_evidence_and_posterior_against_scipy_and_bayes_rule(fa):
    entry, x = fa
    W, mu, psi = (t.numpy() for t in entry.fitted())
    xn = x.double().numpy()
    cov = W @ W.T + np.diag(psi)
    ref = stats.multivariate_normal(mu, cov).logpdf(xn)
    np.testing.assert_allclose(entry.log_evidence(x).numpy(), ref, rtol=0, atol=1e-8)
    # Bayes' rule at an arbitrary z: log p(x) = log p(z) + log p(x | z) - log p(z | x)
    mean, S = (t.numpy() for t in entry.posterior(x))
    z = np.random.default_rng(0).normal(size=(len(xn), 3))
    joint = (stats.norm.logpdf(z).sum(-1)
             + stats.norm.logpdf(xn, z @ W.T + mu, np.sqrt(psi)).sum(-1))
    post = np.array([stats.multivariate_normal(m, S).logpdf(zi) for m, zi in zip(mean, z)])
    np.testing.assert_allclose(joint - post, ref, rtol=0, atol=1e-8)


def test_exact_estimator_in_local_and_global_scope(fa):
    entry, x = fa
    local = inference.estimate(entry, x, "exact")
    assert local.scope == "local"
    torch.testing.assert_close(local.per_datapoint, entry.log_evidence(x))
    glob = inference.estimate(entry, x, "exact", scope="global")
    assert glob.log_evidence == pytest.approx(float(entry.log_evidence(x).sum()), abs=1e-9)


def test_the_amortized_guide_contains_the_posterior(fa):
    entry, x = fa
    entry.set_exact_guide(x)
    est = inference.estimate(entry, x, "is-guide", 10)
    torch.testing.assert_close(est.per_datapoint, entry.log_evidence(x), atol=1e-3, rtol=0)
    assert est.ess_per_datapoint.min() > 10 - 1e-3
    with pytest.raises(ValueError, match="amortized"):
        zoo.get("fa", guide="meanfield").set_exact_guide(x)
