"""The annealing estimators (ais, bdmc, smc) and their HMC kernel, against closed forms.

Tolerances are the estimators' own standard errors (3 sd) or sampling distributions stated
where they are used; the references are computed independently (closed forms, quadrature,
brute-force Monte Carlo in the test).
"""

import math

import pyro
import pytest
import torch
from pyro.distributions import constraints

import inference
import zoo
from inference.hmc import transition


def test_hmc_leaves_a_gaussian_invariant():
    # C x B independent chains start at exact draws of N(m, S) (D = 3, correlated, a different
    # scale per datapoint); after 10 transitions they must still be exact draws. Per coordinate
    # the mean has sd sqrt(S_ii / n) and the variance sd S_ii sqrt(2 / n) (n = C B draws).
    g = torch.Generator().manual_seed(0)
    C, B, D = 2000, 2, 3
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    L = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.3, 0.5, 0.4]], dtype=torch.float64)
    S = L @ L.T
    P = torch.linalg.inv(S)

    def potential(x):
        d = x - m
        return -0.5 * ((d @ P) * d).sum(-1), -(d @ P), torch.zeros(x.shape[:2], dtype=x.dtype)

    torch.manual_seed(1)
    x = m + torch.randn(C, B, D, generator=g, dtype=torch.float64) @ L.T
    f, grad, aux = potential(x)
    step = torch.tensor([0.3, 0.6], dtype=torch.float64)
    accepted = []
    for _ in range(10):
        x, f, grad, aux, prob = transition(x, f, grad, aux, potential, step, 4)
        accepted.append(float(prob.mean()))
    assert 0.2 < min(accepted) and max(accepted) < 1.0  # it moved, and not trivially
    flat = x.reshape(-1, D)
    n = flat.shape[0]
    sd = S.diagonal().sqrt()
    assert ((flat.mean(0) - m).abs() < 3.5 * sd / math.sqrt(n)).all()
    assert ((flat.var(0) - S.diagonal()).abs() < 3.5 * S.diagonal() * math.sqrt(2 / n)).all()
    cov = torch.cov(flat.T)
    assert (cov - S).abs().max() < 0.05  # off-diagonals: sd about sqrt(2/n) ~ 0.016


def _fa(num_data, guide, seed=1):
    entry = zoo.get("fa", guide=guide)
    sim = entry.simulate(num_data, seed=seed)
    entry.set_params(sim.params["W"], sim.params["mu"], sim.params["psi"])
    return entry, sim


def _poor_meanfield(entry, x):
    """The exact posterior means, but diagonal and twice the posterior sds: a poor guide."""
    W, mu, psi = entry.fitted()
    _, S = entry.posterior(x)
    A = S @ (W / psi[:, None]).T
    pyro.param("A", A.float())
    pyro.param("b", (-A @ mu).float())
    pyro.param("s", (2 * S.diagonal().sqrt()).float(), constraint=constraints.positive)


@pytest.mark.slow
def test_ais_fa_poor_guide_matches_closed_form():
    entry, sim = _fa(20, "meanfield")
    x = sim.data[0]
    _poor_meanfield(entry, x)
    exact = entry.log_evidence(x)
    iwae = inference.estimate(entry, (x,), "is-guide", 64, seed=0)
    ais = inference.estimate(entry, (x,), "ais", 64, seed=0, temperatures=200, leapfrog_steps=2)
    err = ais.log_evidence - float(exact.sum())
    assert abs(err) < 3 * ais.stderr
    assert abs(err) / len(x) < 0.05
    # the guide is poor: importance sampling with as many draws is visibly worse
    assert float(exact.sum()) - iwae.log_evidence > 5 * iwae.stderr
    assert ais.per_datapoint.shape == (20,) and ais.khat_per_datapoint.shape == (20,)
    acc = ais.diagnostics["acceptance"]
    assert len(acc) == 199 and 0.4 < ais.diagnostics["acceptance_mean"] < 0.9


def test_ais_from_the_exact_posterior_has_constant_weights():
    entry, sim = _fa(8, "amortized")
    x = sim.data[0]
    entry.set_exact_guide(x)
    est = inference.estimate(entry, (x,), "ais", 16, temperatures=5, schedule="linear")
    torch.testing.assert_close(est.per_datapoint, entry.log_evidence(x), atol=2e-3, rtol=0)
    assert est.ess_per_datapoint.min() > 16 - 1e-3  # every weight equal


def test_bdmc_brackets_the_closed_form_and_the_gap_shrinks_with_temperatures():
    entry, sim = _fa(20, "meanfield")
    x = sim.data[0]
    _poor_meanfield(entry, x)
    exact = float(entry.log_evidence(x).sum())
    gaps = []
    for T in (5, 40):
        est = inference.estimate(entry, (x,), "bdmc", 16, seed=0, temperatures=T,
                                 leapfrog_steps=2, latents=sim.params)
        d = est.diagnostics
        assert d["lower"] == est.log_evidence
        assert d["lower"] < exact + 3 * d["lower_stderr"]
        assert d["upper"] > exact - 3 * d["upper_stderr"]
        assert d["gap_per_datapoint"].shape == (20,)
        gaps.append((d["gap"], math.hypot(d["lower_stderr"], d["upper_stderr"])))
    (wide, se_wide), (narrow, se_narrow) = gaps
    assert narrow < wide - 3 * math.hypot(se_wide, se_narrow)
    assert wide > 3 * se_wide  # the few-temperature gap is real, not noise


def test_bdmc_on_data_simulated_from_a_trained_vae(trained_vae):
    # the trained vae simulates the data, z ~ N(0, I) then x ~ p(x | z) from the fitted
    # decoder, so z are exact posterior draws; the quadrature is the reference. From the fitted
    # guide the sandwich is already tight; from the prior its gap is nats wide at 5 temperatures
    # and closes by 40.
    entry, _ = trained_vae
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 2, generator=g)
    with torch.no_grad():
        xs = torch.bernoulli(entry.mean_pixels(z), generator=g)
    exact = inference.estimate(entry, xs, "exact", quadrature_points=32).log_evidence
    gaps = []
    for start, T in (("guide", 10), ("prior", 5), ("prior", 40)):
        d = inference.estimate(entry, xs, "bdmc", 16, seed=0, temperatures=T, leapfrog_steps=2,
                               start=start, latents={"z": z}).diagnostics
        # + the quadrature's own 1e-3 per datapoint
        assert d["lower"] < exact + 3 * d["lower_stderr"] + 1e-3 * len(xs)
        assert d["upper"] > exact - 3 * d["upper_stderr"] - 1e-3 * len(xs)
        gaps.append((d["gap"], math.hypot(d["lower_stderr"], d["upper_stderr"])))
    _, (wide, se_wide), (narrow, se_narrow) = gaps
    assert wide > 3 * se_wide and narrow < wide - 3 * math.hypot(se_wide, se_narrow)


def test_bdmc_needs_the_simulating_latents():
    entry, sim = _fa(4, "meanfield")
    with pytest.raises(inference.estimators.NotApplicable, match="latents=simulate"):
        inference.estimate(entry, sim.data, "bdmc", 4)


def test_smc_map_l2_global_within_three_stderr():
    entry = zoo.get("map_l2", guide="gaussian")
    X, y = entry.load_data()
    X, y = X[:100], y[:100]
    inference.fit(entry, (X, y), steps=300, lr=0.05, progress=False)
    exact = float(entry.log_evidence(X, y))
    est = inference.estimate(entry, (X, y), "smc", 64, seed=0, runs=8)
    assert est.scope == "global" and est.stderr > 0
    assert abs(est.log_evidence - exact) < 3 * est.stderr
    assert len(est.diagnostics["runs"]) == 8 and min(est.diagnostics["stages"]) >= 2


@pytest.fixture(scope="module")
def gmm_brute_force():
    """A two-component mixture in 1-D on 8 points (gmm, K=2, D=1) and its log p(X) by 1e6
    prior draws in plain torch, with the delta-method standard error."""
    (x,) = zoo.get("gmm", K=2, D=1).simulate(8, seed=0).data
    g = torch.Generator().manual_seed(0)
    n, xd = 1_000_000, x.double().reshape(-1)
    w = torch.distributions.Dirichlet(torch.ones(2, dtype=torch.float64)).sample((n,))
    locs = 3.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    var = 1.0 / torch.distributions.Gamma(torch.full((2,), 2.0, dtype=torch.float64), 1.0).sample((n,))
    comp = torch.distributions.Normal(locs.unsqueeze(1), var.sqrt().unsqueeze(1))
    ll = (comp.log_prob(xd[:, None]) + w.log().unsqueeze(1)).logsumexp(-1).sum(-1)
    brute = float(ll.logsumexp(0) - math.log(n))
    brute_se = float((ll - ll.max()).exp().std() / (ll - ll.max()).exp().mean() / math.sqrt(n))
    return x, brute, brute_se


@pytest.mark.slow
def test_smc_gmm_matches_brute_force_prior_monte_carlo(gmm_brute_force):
    # smc starts at the prior (the guide sits on one of the 2! relabelled modes, which the
    # estimator refuses).
    x, brute, brute_se = gmm_brute_force
    entry = zoo.get("gmm", K=2, D=1)
    inference.fit(entry, (x,), steps=50, lr=0.05, progress=False)
    with pytest.raises(inference.estimators.NotApplicable, match="start='prior'"):
        inference.estimate(entry, (x,), "smc", 8, start="guide")
    est = inference.estimate(entry, (x,), "smc", 64, seed=0, runs=8, start="prior")
    assert abs(est.log_evidence - brute) < 3 * math.hypot(est.stderr, brute_se)
    assert est.stderr < 0.1


@pytest.mark.slow
def test_ais_sums_out_enumerated_assignments(gmm_brute_force):
    # the assignments z_n marked for enumeration: summed out of the annealed density per
    # datapoint, HMC moving the weights, locations and variances alone
    x, brute, brute_se = gmm_brute_force
    entry = zoo.get("gmm", K=2, D=1, assignments="enumerate")
    est = inference.estimate(entry, (x,), "ais", 32, seed=0, start="prior", temperatures=50)
    assert est.scope == "global"
    assert abs(est.log_evidence - brute) < 3 * math.hypot(est.stderr, brute_se)
    assert est.stderr < 0.5 and est.diagnostics["acceptance_mean"] > 0.4


def test_discrete_latents_are_refused_in_one_line():
    entry = zoo.get("gmm", K=2, D=1, assignments="sample")
    (x,) = entry.simulate(8, seed=0).data
    inference.fit(entry, (x,), steps=5, progress=False)
    for method in ("ais", "smc"):
        with pytest.raises(inference.estimators.NotApplicable,
                           match="discrete.*config_enumerate") as err:
            inference.estimate(entry, (x,), method, 4, start="prior")
        assert "\n" not in str(err.value)


@pyro.infer.config_enumerate
def _global_switch(x):
    c = pyro.sample("c", pyro.distributions.Bernoulli(0.5))  # enumerable, but not per datapoint
    m = pyro.sample("m", pyro.distributions.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", pyro.distributions.Normal(m + c, 1.0), obs=x)


def test_enumerated_latents_outside_the_data_plate_are_refused_in_one_line():
    with pytest.raises(inference.estimators.NotApplicable,
                       match="'c' is or depends on a discrete.*is-guide") as err:
        inference.estimate((_global_switch, _global_switch), torch.zeros(3), "ais", 4,
                           start="prior", scope="global")
    assert "\n" not in str(err.value)


def test_ais_vae_digits_within_two_hundredths_of_quadrature(trained_vae):
    entry, x = trained_vae
    xe = x[:10]
    exact = inference.estimate(entry, xe, "exact", quadrature_points=32)
    est = inference.estimate(entry, xe, "ais", 16, seed=0, temperatures=50, leapfrog_steps=2)
    err = est.log_evidence - exact.log_evidence
    assert abs(err) / len(xe) < 0.02
    assert abs(err) < 3 * est.stderr + 1e-3 * len(xe)  # + the quadrature's own 1e-3 per datapoint


def test_ais_jit_matches_the_closed_form_and_leaves_the_parameters_trainable():
    # jit=True (the default) compiles each chunk's densities; the answer is still the closed
    # form within 3 stderr, a chunk ran compiled, and the networks' and params' gradients are
    # back on (tests/test_compiled_path.py: compiled equals eager)
    entry, sim = _fa(20, "meanfield")
    x = sim.data[0]
    _poor_meanfield(entry, x)
    exact = float(entry.log_evidence(x).sum())
    est = inference.estimate(entry, (x,), "ais", 32, seed=0, temperatures=100, leapfrog_steps=2,
                             jit=True)
    assert est.diagnostics["jit_chunks"] >= 1
    assert abs(est.log_evidence - exact) < 3 * est.stderr
    store = pyro.get_param_store().get_state()["params"]
    assert store and all(p.requires_grad for p in store.values())
    vae = zoo.get("vae", latent_dim=2, hidden=(16,))
    (xv,) = vae.simulate(8, seed=0).data
    inference.estimate(vae, (xv,), "ais", 4, temperatures=3, jit=True)
    assert all(p.requires_grad for net in vae.networks().values() for p in net.parameters())
