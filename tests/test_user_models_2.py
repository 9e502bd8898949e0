"""Bring your own model, round 2 (issue 25): Pyro-tutorial idioms that used to return a
confident wrong number. Each is right within ``Z`` of its own standard errors against a
reference computed here (forward algorithm, closed form, scipy quadrature), or refused in one
line naming the fix, with no number.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
from pyro.infer.autoguide import (AutoDelta, AutoGuideList, AutoLaplaceApproximation,
                                  AutoNormal)
from pyro.ops.indexing import Vindex
from scipy import integrate, stats

import inference
from inference.estimators import NotApplicable
from test_user_models import Z, close, _mvn
from toy import local_data, local_exact, local_guide, local_model, set_local_guide

# ---- 1. an HMM: pyro.markov inside the data plate, the hidden states enumerated --------------

INIT = torch.tensor([0.5, 0.3, 0.2])
TRANS = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
EMIT = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])


def hmm(markov):
    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]) as idx:
            z = pyro.sample("z_0", dist.Categorical(INIT))
            pyro.sample("x_0", dist.Categorical(Vindex(EMIT)[z]), obs=x[idx, 0])
            for t in (pyro.markov(range(1, x.shape[1])) if markov else range(1, x.shape[1])):
                z = pyro.sample(f"z_{t}", dist.Categorical(Vindex(TRANS)[z]))
                pyro.sample(f"x_{t}", dist.Categorical(Vindex(EMIT)[z]), obs=x[idx, t])

    return model


def no_latents(x):
    pass


def forward_algorithm(x):
    """log p(x_n) per sequence, by the forward recursion in numpy."""
    init, trans, emit = (t.double().numpy() for t in (INIT, TRANS, EMIT))
    out = []
    for row in x.numpy():
        a = np.log(init) + np.log(emit[:, row[0]])
        for obs in row[1:]:
            a = np.logaddexp.reduce(a[:, None] + np.log(trans), 0) + np.log(emit[:, obs])
        out.append(np.logaddexp.reduce(a))
    return np.array(out)


@pytest.mark.parametrize("markov", [True, False])
def test_hmm_markov_in_the_data_plate_matches_the_forward_algorithm(markov):
    """pyro.markov recycles the enumeration dims of z_0, z_2, ...: summing the joint over its
    dims as if each were one variable gave 9 nats too little per 5 sequences. The states are
    all enumerated, so every estimate is exact up to float32 rounding."""
    x = torch.randint(0, 3, (5, 8), generator=torch.Generator().manual_seed(0))
    ref = forward_algorithm(x)
    model = hmm(markov)
    exact = inference.estimate((model, no_latents), x, "exact")
    np.testing.assert_allclose(exact.per_datapoint.numpy(), ref, atol=1e-4)
    for method in ("is-guide", "is-prior"):
        for scope in ("local", "global"):
            est = inference.estimate((model, no_latents), x, method, 8, scope=scope)
            assert abs(est.log_evidence - ref.sum()) < 1e-3, (method, scope, est)


# ---- 2. tensor code that moves the particle dim ----------------------------------------------


def regression(kind):
    def model(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
        if kind == "matmul-unsqueeze":
            loc = (X @ w.unsqueeze(-1)).squeeze(-1)
        elif kind == "unsqueeze":
            loc = (X * w.unsqueeze(-2)).sum(-1)
        elif kind == "einsum":
            loc = torch.einsum("nd,...d->...n", X, w)
        else:
            loc = torch.stack([(X[i] * w).sum(-1) for i in range(len(y))], -1)
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(loc, 0.5), obs=y)

    return model


@pytest.mark.parametrize("kind", ["matmul-unsqueeze", "unsqueeze", "einsum", "stack"])
def test_tensor_code_moving_the_particles_is_refused_by_every_estimator(kind):
    """Under the particle plate these give loc an extra dim left of the particles, which the
    plate broadcasts to [K, K, N]; it was log-sum-exp'd as if enumerated (is-prior +323 against
    -47)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 3, generator=g), torch.randn(12, generator=g)
    model = regression(kind)
    fit = inference.fit((model, AutoNormal(model)), (X, y), steps=5)
    for method, options in [("is-prior", {}), ("is-guide", {}), ("elbo", {}),
                            ("ais", {"temperatures": 2}), ("smc", {"runs": 1})]:
        with pytest.raises(ValueError, match=r"dims left of the particle plate .*\(X \* w\)\.sum"):
            inference.estimate(fit, (X, y), method, 4, **options)


# ---- 3. point masses in a guide --------------------------------------------------------------

T3 = torch.linspace(-1.0, 1.0, 15)


def intercept_slope(t, y):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a + b * t, 1.0), obs=y)


def test_a_point_mass_anywhere_in_the_guide_is_refused():
    """An AutoDelta inside an AutoGuideList (-42.94 against -44.15) and AutoLaplaceApproximation
    itself (-42.16 +- 0) have no density at their point: refused, naming the fix; the Laplace
    approximation's own Gaussian (laplace_approximation()) is a density, right within Z
    stderr of the closed form N(y | 0, 1 1^T + t t^T + I)."""
    y = 0.5 + 1.5 * T3 + torch.randn(15, generator=torch.Generator().manual_seed(0))
    data = (T3, y)
    ref = _mvn(y.double().numpy(), (1.0 + np.outer(T3, T3) + np.eye(15)))
    mixed = AutoGuideList(intercept_slope)
    mixed.append(AutoDelta(pyro.poutine.block(intercept_slope, expose=["b"])))
    mixed.append(AutoNormal(pyro.poutine.block(intercept_slope, hide=["b"])))
    laplace = AutoLaplaceApproximation(intercept_slope)
    for guide in (mixed, laplace):
        fit = inference.fit((intercept_slope, guide), data, steps=300, lr=0.05)
        for method in ("is-guide", "elbo", "ais"):
            with pytest.raises(NotApplicable, match="point mass .*AutoNormal"):
                inference.estimate(fit, data, method, 10)
    gaussian = laplace.laplace_approximation(*data)  # the exact posterior: weights all but equal
    est = inference.estimate((intercept_slope, gaussian), data, "is-guide", 1000)
    close(est, ref, extra=1e-5)  # float32 rounding of log p(x, z) ~ 24 nats


# ---- 4. smc on many latents: its schedule from a pilot run ------------------------------------


def normal_means(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def test_smc_follows_a_pilot_schedule_and_is_unbiased():
    """Temperatures and HMC step sizes chosen from the runs' own particles biased log Z low (50
    latents, K = 300: -0.6 nats, z = -11 in the issue). Chosen by a pilot run instead, each
    run's Z is unbiased: on 5 latents with K = 4 particles (where the adaptive choice's bias is
    largest) the log-mean of 16000 runs is within Z stderr of the closed form
    sum_n log N(x_n | 0, 1.25) (the runs' own choices: -0.089 +- 0.016 at this seed, z = -5.7;
    the pilot's: +0.007 +- 0.013)."""
    x = torch.randn(5, generator=torch.Generator().manual_seed(1)) * math.sqrt(1.25)
    est = inference.estimate((normal_means, no_latents), x, "smc", 4, scope="global",
                             runs=16000, moves=1, seed=0)
    close(est, float(local_exact(x).sum()))  # the same model: z_n ~ N(0, 1), x_n ~ N(z_n, 0.5)
    temperatures = est.diagnostics["temperatures"]
    assert est.diagnostics["stages"] == [len(temperatures)] * 16000 and temperatures[-1] == 1.0


def test_smc_on_many_latents_is_right_within_its_stderr():
    """10 latents, K = 50, 64 runs: within Z stderr of the closed form. (Not a guard of the
    pilot: at this seed the runs' own choices pass too; at 30 latents both can be 4-5 stderr
    off at some seeds, with the runs' log Z spread by 0.6-1.2 nats -- issue 25 item 4 is only
    partly closed.)"""
    x = torch.randn(10, generator=torch.Generator().manual_seed(1)) * math.sqrt(1.25)
    est = inference.estimate((normal_means, no_latents), x, "smc", 50, scope="global", runs=64,
                             moves=2, seed=0)
    close(est, float(local_exact(x).sum()))


# ---- 5. local scope: the log-means' bias adds up over datapoints ------------------------------


def test_summed_bias_of_local_log_means_is_reported_and_marked():
    """Each datapoint's log mean w is low by about stderr_n^2 / 2; over N = 8000 datapoints at
    K = 200 these add up to about twice the total's stderr, with weights whose tail is light
    (a guide twice as wide as the posterior: k-hat < 0). The delta-method bias is in the
    diagnostics, the estimate is marked for it, and corrected by it the estimate is within Z
    stderr of the closed form; at N = 200, K = 1000 it is small and unmarked."""
    x = local_data(8000)
    set_local_guide(x, widen=2.0)
    est = inference.estimate((local_model, local_guide), x, "is-guide", 200)
    ref = float(local_exact(x).sum())
    bias = est.diagnostics["bias"]
    assert bias < -est.stderr and est.khat < 0
    assert len(est.caveats) == 1 and "biased" in est.caveats[0] and not est.vouched
    assert abs(est.log_evidence - bias - ref) < Z * est.stderr
    x = local_data(200)
    set_local_guide(x, widen=2.0)
    est = inference.estimate((local_model, local_guide), x, "is-guide", 1000)
    assert -est.stderr < est.diagnostics["bias"] < 0 and est.vouched


# ---- 6. exact: a sharp local posterior, and a narrow mode in the far field -------------------


def sharp(x):
    with pyro.plate("data", len(x)) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.01), obs=x[idx])


def test_quadrature_on_a_sharp_posterior_is_right():
    """A far-field cell as wide as the local grid, centred on the peak, counted the peak's
    density over its area outside the grid (-273.67 against -282.40, far field 51% of the
    mass). Reference: log N(x_n | 0, 1 + 0.01^2); tolerance: the quadrature's own check."""
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    fit = inference.fit((sharp, AutoNormal(sharp)), x, steps=300, lr=0.05)
    est = inference.estimate(fit, x, "exact")
    ref = stats.norm(0, math.sqrt(1 + 1e-4)).logpdf(x.double().numpy())
    assert np.abs(est.per_datapoint.numpy() - ref).max() < 0.01
    # the posterior is Gaussian, sd 0.01: its mass beyond the local grid's 6 sds is 2e-9 (far
    # cells centred inside the grid, counted over their area outside it, made it 1e-3)
    assert est.diagnostics["far_field_mass_max"] < 1e-6


def two_modes(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z**2, 0.1), obs=x[idx])


def on_one_mode(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.clamp(min=0).sqrt(), 0.1))


def test_far_field_refines_until_halving_agrees_or_refuses():
    """x ~ N(z^2, 0.1): the mode at -sqrt(x) that the guide misses is 0.03 wide, too narrow for
    the far field's 64 points (it was off by up to 0.66 nats, unchecked). With 64 points it
    refuses; with 256 it refines to the mode and matches scipy's adaptive quadrature."""
    x = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="halving the far field .*raise quadrature_points"):
        inference.estimate((two_modes, on_one_mode), x, "exact")
    est = inference.estimate((two_modes, on_one_mode), x, "exact", quadrature_points=256)
    for xn, got in zip(x.tolist(), est.per_datapoint.tolist()):
        f = lambda z: stats.norm.pdf(z) * stats.norm.pdf(xn, z**2, 0.1)  # noqa: E731
        ref = math.log(integrate.quad(f, -10, 10, points=[-xn**0.5, xn**0.5], epsabs=0,
                                      limit=200)[0])
        assert abs(got - ref) < 0.01, (xn, got, ref)


# ---- 7. a stochastic auxiliary site in a user's guide ----------------------------------------


def one_mean(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def hierarchical_guide(x):
    m = pyro.param("m", torch.tensor(0.0))
    c = pyro.param("c", torch.tensor(0.1))
    s = pyro.param("s", torch.tensor(0.2), constraint=dist.constraints.positive)
    u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
    pyro.sample("mu", dist.Normal(m + c * u, s))


def test_a_stochastic_auxiliary_site_is_refused():
    """q(mu) is the marginal over u, which the weights do not compute (is-guide -55.81 against
    -57.32, elbo above the evidence): refused; the prior needs no guide and is right."""
    x = torch.randn(30, generator=torch.Generator().manual_seed(0)) + 1.0
    ref = _mvn(x.double().numpy(), np.eye(30) + 1.0)
    fit = inference.fit((one_mean, hierarchical_guide), x, steps=300, lr=0.05)
    for method in ("is-guide", "elbo", "ais"):
        with pytest.raises(NotApplicable, match=r"given its auxiliary site\(s\) \['u'\]"):
            inference.estimate(fit, x, method, 10)
    close(inference.estimate(fit, x, "is-prior", 5000), ref)


# ---- raw Pyro errors that became one line naming the fix --------------------------------------


def unindexed_local(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def per_datapoint_guide(x):
    loc = pyro.param("loc", torch.zeros(len(x)))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 0.5))


@pytest.mark.parametrize("guide", [AutoNormal(unindexed_local), per_datapoint_guide])
def test_unindexed_local_latents_with_per_datapoint_guides(guide):
    """Local scope passes chunks of datapoints as slices, whose rows such a guide cannot pick
    ("Value is not broadcastable ... [2] vs [1, 80]"): refused; the global estimate it names
    is right."""
    x = torch.linspace(-1.5, 1.5, 6)
    fit = inference.fit((unindexed_local, guide), x, steps=300, lr=0.05)
    with pytest.raises(NotApplicable, match=r"index the data with the plate.*scope='global'"):
        inference.estimate(fit, x, "is-guide", 10)
    ref = float(stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy()).sum())
    close(inference.estimate(fit, x, "is-guide", 4000, scope="global"), ref)


X_FULL = torch.linspace(-2.0, 2.0, 100)


def closes_over_the_data(x):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0))

    return pyro.condition(model, data={"obs": X_FULL})(x)


def regression_y_keyword(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def captures_a_covariate(y):
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(b * T3, 1.0), obs=y)


def test_data_from_outside_the_arguments_cannot_be_minibatched():
    """pyro.condition over the full data, y passed through kwargs=, a covariate captured from
    the enclosing scope: a minibatch slices the arguments, not those (Pyro: "Value is not
    broadcastable ... [100] vs [20]", "Shape mismatch inside plate('data') ... 2 vs 15").
    Without minibatches, and in global scope, they are fine."""
    with pytest.raises(ValueError, match="observes 'obs' on 100 rows .*pass them as data"):
        inference.fit((closes_over_the_data, AutoNormal(closes_over_the_data)), X_FULL, steps=5,
                      batch_size=20)
    y = 1.5 * T3 + torch.randn(15, generator=torch.Generator().manual_seed(0))
    guide = AutoNormal(captures_a_covariate)
    with pytest.raises(ValueError, match="fails when given 2 of its datapoints as slices .*"
                                         "pass it as data"):
        inference.fit((captures_a_covariate, guide), y, steps=5, batch_size=5)
    fit = inference.fit((captures_a_covariate, guide), y, steps=300, lr=0.05)
    close(inference.estimate(fit, y, "is-guide", 1000),
          _mvn(y.double().numpy(), np.outer(T3, T3) + np.eye(15)))
    with pytest.raises(ValueError, match="fails when given 2 of its datapoints as slices"):
        inference.estimate(fit, y, "is-guide", 10, scope="local", fixed={"b": torch.tensor(1.)})
    X = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="observes 'y' on 60 rows .*pass them as data"):
        inference.fit((regression_y_keyword, AutoNormal(regression_y_keyword)), X, steps=5,
                      batch_size=20, kwargs={"y": X.sum(-1)})


def test_two_unindexed_datapoints_minibatched_one_at_a_time():
    """With N = 2 the model's whole data looked indexed by a subsample of 2 ("invalid log_prob
    shape, expected [1], actual [2]")."""
    x = torch.tensor([0.3, -0.2])
    fit = inference.fit((one_mean, AutoNormal(one_mean)), x, steps=400, lr=0.05, batch_size=1)
    close(inference.estimate(fit, x, "is-guide", 2000), _mvn(x.double().numpy(), np.eye(2) + 1))


@config_enumerate
def components_plate(x):
    """Pyro's GMM tutorial writes the means in a plate of components."""
    with pyro.plate("components", 3):
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(x)):
        a = pyro.sample("a", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., a], 1.0), obs=x)


def test_a_components_plate_names_the_vector_idiom():
    """Under the particle plate the components' dim is the data plate's ("Shape mismatch inside
    plate('data') ... 60 vs 8")."""
    x = torch.linspace(-3, 3, 60)
    guide = AutoNormal(pyro.poutine.block(components_plate, hide=["a"]))
    fit = inference.fit((components_plate, guide), x, steps=5)
    with pytest.raises(ValueError, match=r"\.to_event\(1\).*Vindex\(locs\)\[\.\.\., a\]"):
        inference.estimate(fit, x, "is-guide", 8)


# ---- NaN and +inf log densities (issue 26, item 9) -------------------------------------------


def nan_factor(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("bad", torch.where(mu > 0, torch.tensor(math.nan), torch.tensor(0.0)))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def inf_factor(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("bonus", torch.where(mu > 0, torch.tensor(math.inf), torch.tensor(0.0)))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def truncated(x):
    """-inf for half the particles is an answer: mu ~ N(0, 1) cut to mu > 0 (unnormalised)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("cut", torch.where(mu > 0, torch.tensor(0.0), torch.tensor(-math.inf)))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


@pytest.mark.parametrize("model, site", [(nan_factor, "bad"), (inf_factor, "bonus")])
def test_nan_or_positive_infinite_log_densities_are_refused(model, site):
    """Without Pyro's validation (which catches a NaN parameter, not a +inf factor) these gave
    log_evidence nan or inf with no error."""
    x = torch.linspace(-1.0, 1.0, 10)
    for method, options in [("is-guide", {}), ("is-prior", {}), ("elbo", {}),
                            ("ais", {"temperatures": 3, "start": "prior"})]:
        with pyro.validation_enabled(False), pytest.raises(
                ValueError, match=f"site '{site}' of the model has a log density of NaN or \\+inf"):
            inference.estimate((model, AutoNormal(model)), x, method, 64, **options)
    with pytest.raises(ValueError):
        inference.estimate((model, AutoNormal(model)), x, "is-prior", 64)


def test_minus_infinite_weights_for_some_particles_are_an_answer():
    x = torch.linspace(0.0, 1.5, 10)
    f = lambda m: math.exp(stats.norm.logpdf(m) + stats.norm.logpdf(x.numpy(), m).sum() + 15)  # noqa: E731
    ref = math.log(integrate.quad(f, 0, 10)[0]) - 15
    close(inference.estimate((truncated, AutoNormal(truncated)), x, "is-prior", 20000), ref)
