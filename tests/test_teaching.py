"""Tests of the notebooks' helpers (in the model files and in inference.diagnostics/plots): each against a closed form or an
independent implementation (scikit-learn, the normal equations, the ELBO's known gradient)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

import inference
import zoo
from inference import diagnostics, plots
from zoo import _deep as deep, gmm, map_l2, vae


# ---- MAP path = ridge path ------------------------------------------------------------------
def test_ridge_path_solves_the_normal_equations():
    X, y = zoo.get("map_l2", num_features=4).simulate(50, seed=3).data
    alphas = [0.01, 1.0, 30.0]
    path = map_l2.ridge_path(X, y, alphas)
    Xd, yd = X.double(), y.double()
    for a, row in zip(alphas, path.itertuples(index=False)):
        w = torch.linalg.solve(Xd.T @ Xd + a * torch.eye(4, dtype=Xd.dtype), Xd.T @ yd)
        assert row.alpha == a
        np.testing.assert_allclose([row.w0, row.w1, row.w2, row.w3], w.numpy(), rtol=1e-8, atol=1e-10)


def test_map_path_equals_ridge_path():
    entry = zoo.get("map_l2", num_features=3, noise=0.5)
    X, y = entry.simulate(60, seed=0).data
    scales = [0.05, 0.3, 3.0]
    path = map_l2.map_path(X, y, scales, noise=0.5, steps=400)
    np.testing.assert_allclose(path["alpha"], [0.25 / s**2 for s in scales])
    ridge = map_l2.ridge_path(X, y, path["alpha"])
    cols = ["w0", "w1", "w2"]
    # the MAP is the ridge solution at alpha = noise^2 / s^2; Adam with a decayed step size
    # converges on these well-conditioned problems to float32 accuracy
    err = np.abs(path[cols].to_numpy() - ridge[cols].to_numpy()).max()
    assert err < 1e-4
    # the shrinkage is real: the smallest prior scale pulls the weights well below the largest
    norms = np.linalg.norm(ridge[cols].to_numpy(), axis=1)
    assert norms[0] < 0.5 * norms[-1]


# ---- gradient variance ------------------------------------------------------------------------
S = 0.7  # fixed guide scale


def gauss_model(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def gauss_guide(x):
    with pyro.plate("data", x.shape[0]):
        m = pyro.param("m", lambda: x.new_full((x.shape[0],), 0.3), event_dim=0)
        pyro.sample("z", dist.Normal(m, S))


@pytest.mark.slow
@pytest.mark.parametrize("particles", [1, 4])
def test_reparameterized_gradient_variance_matches_closed_form(particles):
    # loss = -log p(x, z) + log q(z), z = m + S eps: d loss / dm = 2 z - x, whose variance over
    # eps is 4 S^2 per particle (the log q term is constant along the reparameterized path).
    x = torch.tensor([1.5])
    draws = diagnostics.gradient_draws((gauss_model, gauss_guide), x, 2000, num_particles=particles)
    g = draws["m"][:, 0]
    want = 4 * S**2 / particles
    # the sample variance of n normal draws has relative sd sqrt(2 / (n - 1))
    assert abs(float(g.var()) / want - 1) < 4 * math.sqrt(2 / 1999)
    assert abs(float(g.mean()) - (2 * 0.3 - 1.5)) < 4 * math.sqrt(want / 2000)
    table = diagnostics.gradient_variance(draws)
    assert table.set_index("param").loc["m", "variance"] == pytest.approx(float(g.var()))


LOCS = torch.tensor([-1.0, 0.5, 2.0])


def mix_model(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=x[idx])


def mix_guide(x):
    with pyro.plate("data", x.shape[0]):
        logits = pyro.param("logits", lambda: torch.tensor([[0.2, -0.3, 0.1]]).expand(x.shape[0], 3).clone(),
                            event_dim=1)
        pyro.sample("z", dist.Categorical(logits=logits))


@pytest.mark.slow
def test_score_function_gradient_is_unbiased_and_enumeration_exact():
    x = torch.tensor([0.3, 1.8])
    before = pyro.param("logits", lambda: torch.tensor([[0.2, -0.3, 0.1]]).expand(2, 3).clone()).detach().clone()
    exact = diagnostics.gradient_draws((mix_model, config_enumerate(mix_guide)), x, 5, loss="traceenum")
    sampled = diagnostics.gradient_draws((mix_model, mix_guide), x, 2000, loss="trace")
    assert float(exact["logits"].var(0).max()) < 1e-12  # summing z out: no sampling noise
    g = sampled["logits"]
    stderr = g.std(0) / math.sqrt(g.shape[0])
    assert (g.mean(0) - exact["logits"][0]).abs().max() < 4 * stderr.max()
    assert float(g.var(0).sum()) > 0.01  # the score-function estimator is noisy
    # measuring does not move the params or leave gradients behind
    assert torch.equal(pyro.param("logits").detach(), before)
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


def test_gradient_draws_checks_arguments():
    x = torch.tensor([1.0])
    with pytest.raises(ValueError, match="num_draws"):
        diagnostics.gradient_draws((gauss_model, gauss_guide), x, 1)
    with pytest.raises(ValueError, match="no gradient"):
        diagnostics.gradient_draws((gauss_model, gauss_guide), x, 2, params=["nope"])


# ---- mixtures ---------------------------------------------------------------------------------
def test_em_gmm_parameters_mean_what_gmm_means():
    entry = zoo.get("gmm", K=2, D=2)
    (x,) = entry.load_data("faithful")
    em = gmm.em_gmm(x, 2)
    assert em["converged"]
    # scikit-learn's per-sample log-likelihood at its own fit equals gmm's exact marginal at the
    # same parameters: weights, means and *variances* are named and shaped alike
    ll = entry.log_likelihood(x.double(), {k: em[k] for k in ("weights", "locs", "variances")})
    torch.testing.assert_close(ll, em["log_likelihood"], rtol=0, atol=1e-8)
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, covariance_type="diag", reg_covar=0.0, tol=1e-8, max_iter=2000,
                         n_init=5, random_state=0).fit(x.double().numpy())
    resp = gmm.responsibilities(x.double(), em)
    np.testing.assert_allclose(resp.numpy(), gm.predict_proba(x.double().numpy()), atol=1e-8)


def test_responsibilities_with_shared_variance_sum_to_one():
    x = torch.randn(7, 3)
    params = {"weights": torch.tensor([0.2, 0.8]), "locs": torch.randn(2, 3),
              "variances": torch.tensor([0.5, 1.0, 2.0])}
    r = gmm.responsibilities(x, params)
    torch.testing.assert_close(r.sum(-1), torch.ones(7))
    # Bayes' rule by hand for the first point
    lp = torch.stack([dist.Normal(params["locs"][k], params["variances"].sqrt()).log_prob(x[0]).sum()
                      for k in range(2)]) + params["weights"].log()
    torch.testing.assert_close(r[0], torch.softmax(lp, 0))


def test_match_components_undoes_a_permutation():
    ref = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])
    perm = torch.tensor([2, 0, 3, 1])
    noisy = ref[perm] + 0.1 * torch.randn(4, 2)
    back = gmm.match_components(noisy, ref)
    torch.testing.assert_close(noisy[back], ref, atol=0.5, rtol=0)
    assert torch.equal(perm[back], torch.arange(4))
    with pytest.raises(ValueError, match="shape"):
        gmm.match_components(ref[:3], ref)


def test_ellipse_lies_on_the_contour():
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, -1.2], [-1.2, 1.0]])
    pts = plots.ellipse(mean, cov, num_sd=2.0, num_points=50)
    d = pts - mean.numpy()
    maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov.numpy()), d)
    np.testing.assert_allclose(maha, 4.0, rtol=1e-6)


# ---- anomaly scores ---------------------------------------------------------------------------
def test_roc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score, roc_curve

    g = torch.Generator().manual_seed(0)
    s0 = torch.randint(0, 10, (300,), generator=g).double()  # many ties
    s1 = torch.randint(2, 12, (200,), generator=g).double()
    r = diagnostics.roc(s0, s1)
    labels = np.r_[np.zeros(300), np.ones(200)]
    scores = np.r_[s0.numpy(), s1.numpy()]
    assert r.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(r.fpr, fpr)
    np.testing.assert_allclose(r.tpr, tpr)
    # the area is the Mann-Whitney probability, ties counted one half
    diff = s1[:, None] - s0[None, :]
    assert r.auc == pytest.approx(float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()))


def test_roc_extremes_and_errors():
    assert diagnostics.roc([0.0, 1.0], [5.0, 6.0]).auc == 1.0
    assert diagnostics.roc([5.0, 6.0], [0.0, 1.0]).auc == 0.0
    with pytest.raises(ValueError, match="at least one"):
        diagnostics.roc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        diagnostics.roc([float("nan")], [1.0])


def test_flip_pixels_flips_exactly_the_fraction_and_is_private():
    x = torch.bernoulli(torch.full((20, 64), 0.3), generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    a = deep.flip_pixels(x, 0.25, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, deep.flip_pixels(x, 0.25, seed=4))
    assert torch.equal((a != x).sum(1), torch.full((20,), 16))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        deep.flip_pixels(x, 1.5)


def test_random_images_match_pixel_rates():
    like = torch.zeros(10, 4)
    like[:, 0] = 1
    like[:5, 1] = 1
    imgs = deep.random_images(20000, like, seed=0)
    assert set(imgs.unique().tolist()) <= {0.0, 1.0}
    rates = imgs.mean(0)
    assert rates[0] == 1 and rates[3] == 0
    assert abs(float(rates[1]) - 0.5) < 4 * math.sqrt(0.25 / 20000)


# ---- latent space and amortization ----------------------------------------------------------
def test_encode_decode_interpolate(trained_vae):
    entry, x = trained_vae
    loc, scale = vae.encode(entry, x[:5])
    assert loc.shape == scale.shape == (5, 2) and (scale > 0).all()
    z = torch.randn(3, 4, 2)
    probs = deep.decode(entry, z)
    assert probs.shape == (3, 4, 64)
    torch.testing.assert_close(probs, torch.sigmoid(entry.decoder(z)).detach())
    path = vae.interpolate(entry, x[0], x[1], steps=6)
    assert path.shape == (6, 64)
    torch.testing.assert_close(path[0], deep.decode(entry, loc[0]))
    torch.testing.assert_close(path[-1], deep.decode(entry, loc[1]))
    with pytest.raises(ValueError, match="encoder"):
        vae.encode(zoo.get("dlvm"), x[:2])


def test_local_guides_start_at_the_encoder_and_improve_on_it(trained_vae):
    entry, x = trained_vae
    decoder_before = {k: v.clone() for k, v in entry.decoder.state_dict().items()}
    pyro.clear_param_store()
    # One chunk for every estimate below (a budget far above their size): the same seed then
    # draws the same noise whatever each guide's measured chunk plan would have been.
    one_chunk = dict(seed=5, memory_budget=1 << 34)
    amortized = inference.estimate(entry, (x,), "elbo", 200, **one_chunk)
    loc, scale = vae.encode(entry, x)

    local, res = vae.fit_local_guides(entry, (x,), steps=0)
    torch.testing.assert_close(pyro.param("z_loc").detach(), loc)
    torch.testing.assert_close(pyro.param("z_scale").detach(), scale)
    same = inference.estimate(local, (x,), "elbo", 200, **one_chunk)
    # steps=0: the local guides ARE the encoder's, on the same decoder: identical weights
    assert same.log_evidence == pytest.approx(amortized.log_evidence, rel=1e-5)

    local, res = vae.fit_local_guides(entry, (x,), steps=200, lr=0.02)
    assert not any(k.startswith("decoder") for k in pyro.get_param_store().keys())
    for k, v in local.decoder.state_dict().items():
        torch.testing.assert_close(v, decoder_before[k])  # frozen copy
    for k, v in entry.decoder.state_dict().items():
        torch.testing.assert_close(v, decoder_before[k])  # the VAE's own is untouched
    better = inference.estimate(local, (x,), "elbo", 200, **one_chunk)
    gap = better.log_evidence - amortized.log_evidence
    assert gap > 5 * math.hypot(better.stderr, amortized.stderr) and gap > 0
    with pytest.raises(ValueError, match="init"):
        vae.fit_local_guides(entry, (x,), steps=1, init="zeros")
