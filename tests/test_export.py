"""Fits and estimates in ArviZ: guide draws and pointwise log-likelihoods (inference.export), and
an estimate's own log weights (keep_weights=True), each against an independent computation."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from inference.export import to_arviz
from inference.weights import WeightStats, pareto_khat

az = pytest.importorskip("arviz")


def test_map_l2_export_matches_the_guide_and_the_likelihood():
    entry = zoo.get("map_l2", guide="gaussian", num_features=3)
    X, y = entry.simulate(40, seed=1).data
    inference.fit(entry, (X, y), steps=300, lr=0.05, num_particles=8)
    S = 400
    data = to_arviz(entry, (X, y), num_samples=S, seed=2)
    w = np.asarray(data["posterior"]["w"])
    ll = np.asarray(data["log_likelihood"]["y"])
    assert w.shape == (1, S, 3) and ll.shape == (1, S, 40)
    # the draws are the guide's: its mean within 4 Monte Carlo standard errors
    mean, cov = (t.double().numpy() for t in entry.guide_moments())
    se = np.sqrt(np.diag(cov) / S)
    assert np.all(np.abs(w[0].mean(0) - mean) < 4 * se)
    # the pointwise log-likelihood, recomputed from the draws
    eta = np.einsum("np,sp->sn", X.double().numpy(), w[0])
    ref = -0.5 * ((y.double().numpy() - eta) / entry.noise) ** 2 - math.log(entry.noise * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(ll[0], ref, rtol=1e-5, atol=1e-5)
    loo = az.loo(data)
    elpd = float(loo.elpd if hasattr(loo, "elpd") else loo["elpd_loo"])  # arviz 1.x, 0.2x
    assert math.isfinite(elpd) and elpd < 0
    assert "w[0]" in str(az.summary(data)) or "w" in str(az.summary(data))


def test_user_pair_with_local_latents_exports_per_datapoint_draws():
    def model(x):
        with pyro.plate("data", len(x)) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=x[i])

    def guide(x):
        with pyro.plate("data", len(x)):
            loc = pyro.param("loc", lambda: x / 1.25, event_dim=0)
            pyro.sample("z", dist.Normal(loc, 0.45))

    x = torch.randn(12)
    data = to_arviz((model, guide), x, num_samples=50)
    z = np.asarray(data["posterior"]["z"])
    ll = np.asarray(data["log_likelihood"]["obs"])
    assert z.shape == (1, 50, 12) and ll.shape == (1, 50, 12)
    ref = -0.5 * ((x.double().numpy() - z[0]) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(ll[0], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        to_arviz((model, guide), x, num_samples=0)


def test_kept_weights_are_the_estimates_own(trained_vae):
    entry, x = trained_vae
    x = x[:150]
    K = 300
    est = inference.estimate(entry, (x,), "is-guide", K, keep_weights=True, memory_budget=1 << 20)
    lw = est.log_weights
    assert lw.shape == (K, 150) and est.diagnostics["chunk_particles"] < K  # several chunks
    torch.testing.assert_close(lw.double().logsumexp(0) - math.log(K), est.per_datapoint,
                               rtol=0, atol=1e-9)
    st = WeightStats(K)
    st.update(lw)
    torch.testing.assert_close(pareto_khat(st.top, K, 1 << 20), est.khat_per_datapoint)
    assert inference.estimate(entry, (x,), "is-guide", K).log_weights is None
