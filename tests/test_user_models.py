"""Bring your own model: Pyro models written the way Pyro's tutorials write them, each checked
against a reference computed here (scipy, numpy, enumeration or quadrature).

Tolerances come from the estimate's own standard error (``Z`` of them, plus the reference's
own error where it has one); an idiom the library cannot vouch for must raise a ``ValueError``
naming the fix and return no number.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from scipy import special, stats

import inference
from pyro.ops.indexing import Vindex

Z = 4.0  # a correct estimate is outside 4 stderr with probability 6e-5


def close(est, ref, extra=0.0):
    assert math.isfinite(est.stderr) and est.stderr > 0
    assert abs(est.log_evidence - ref) < Z * est.stderr + extra, (est.log_evidence, ref, est.stderr)


def _mvn(y, cov):
    return float(stats.multivariate_normal(np.zeros(len(y)), cov).logpdf(np.asarray(y, float)))


# ---- conjugate models, global latents, the unindexed plate idiom ---------------------------


def beta_bernoulli(x):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Bernoulli(p), obs=x)


def test_beta_bernoulli_autonormal():
    x = torch.tensor([1.0, 1, 0, 1, 1, 0, 1, 1, 1, 0])
    fit = inference.fit((beta_bernoulli, AutoNormal(beta_bernoulli)), x, steps=300, lr=0.05)
    ref = special.betaln(2 + 7, 2 + 3) - special.betaln(2, 2)
    close(inference.estimate(fit, x, "is-guide", 2000), ref)


def gamma_poisson(k):
    rate = pyro.sample("rate", dist.Gamma(3.0, 1.0))
    with pyro.plate("data", len(k)):
        pyro.sample("k", dist.Poisson(rate), obs=k)


def test_gamma_poisson_integer_counts_diagonal_normal():
    k = torch.tensor([2, 4, 3, 6, 1, 3])  # int64, as counts come
    fit = inference.fit((gamma_poisson, AutoDiagonalNormal(gamma_poisson)), k, steps=300, lr=0.05)
    a, b, s, n = 3.0, 1.0, int(k.sum()), len(k)
    ref = (special.gammaln(a + s) - special.gammaln(a) + a * math.log(b)
           - (a + s) * math.log(b + n) - special.gammaln(k.numpy() + 1).sum())
    close(inference.estimate(fit, k, "is-guide", 2000), ref)


def linreg(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal((X * w).sum(-1), 0.5), obs=y)


@pytest.fixture(scope="module")
def regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(40, generator=g)
    return (X, y), _mvn(y, (X @ X.T + 0.25 * torch.eye(40)).double().numpy())


@pytest.mark.parametrize("family", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal,
                                    AutoLowRankMultivariateNormal])
@pytest.mark.parametrize("batch_size", [None, 10])
def test_linear_regression_every_autoguide(regression, family, batch_size):
    """X and y, the data not indexed by the plate, every autoguide family, with and without
    minibatches (the slices are scaled to the full data)."""
    data, ref = regression
    fit = inference.fit((linreg, family(linreg)), data, steps=300, lr=0.05, batch_size=batch_size)
    for method in ("is-guide", "elbo"):
        est = inference.estimate(fit, data, method, 1500)
        assert est.scope == "global"
        if method == "is-guide":
            close(est, ref)
        else:
            assert est.log_evidence < ref + Z * est.stderr


def linreg_matmul(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(X @ w, 0.5), obs=y)


def test_matmul_model_fits_and_estimate_names_the_fix(regression):
    data, _ = regression
    fit = inference.fit((linreg_matmul, AutoNormal(linreg_matmul)), data, steps=5)
    with pytest.raises(ValueError, match=r"broadcast .*\(X \* w\)\.sum\(-1\)"):
        inference.estimate(fit, data, "is-guide", 10)


# ---- local latents ---------------------------------------------------------------------------


def schools_local(x):
    with pyro.plate("schools", len(x)) as idx:  # a data plate not called "data"
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def test_local_autonormal_plate_not_named_data_with_minibatches():
    x = torch.linspace(-2, 2, 30)
    fit = inference.fit((schools_local, AutoNormal(schools_local)), x, steps=400, lr=0.05,
                        batch_size=10)
    ref = stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy())
    exact = inference.estimate(fit, x, "exact")
    np.testing.assert_allclose(exact.per_datapoint.numpy(), ref, atol=1e-4)
    est = inference.estimate(fit, x, "is-guide", 500)
    assert est.scope == "local" and est.per_datapoint.shape == (30,)
    close(est, ref.sum())


def local_2d(x):
    with pyro.plate("data", len(x)) as idx:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])


def test_local_two_dim_latent_quadrature_and_is():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]])
    fit = inference.fit((local_2d, AutoNormal(local_2d)), x, steps=300, lr=0.05)
    ref = stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(inference.estimate(fit, x, "exact").per_datapoint.numpy(), ref,
                               atol=1e-4)
    close(inference.estimate(fit, x, "is-guide", 1000), ref.sum())


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, 2)

    def forward(self, x):
        out = self.net(x.unsqueeze(-1))
        return out[..., 0], torch.nn.functional.softplus(out[..., 1]) + 1e-3


ENCODER = Encoder()


def amortized_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)  # not indexed: minibatches are slices


def amortized_guide(x):
    pyro.module("encoder", ENCODER)
    loc, scale = ENCODER(x)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, scale))


def test_unindexed_local_autoguide_minibatches_name_the_fix():
    x = torch.linspace(-3, 3, 40)
    with pytest.raises(ValueError, match=r"index the data with the plate.*obs=x\[idx\]"):
        inference.fit((amortized_model, AutoNormal(amortized_model)), x, steps=5, batch_size=8)


def test_amortized_unindexed_model_with_minibatches():
    x = torch.linspace(-3, 3, 40)
    tgt = inference.Target(amortized_model, amortized_guide, networks={"encoder": ENCODER})
    fit = inference.fit(tgt, x, steps=300, lr=0.05, batch_size=8)
    ref = stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy())
    est = inference.estimate(fit, x, "is-guide", 300)
    assert est.scope == "local"
    close(est, ref.sum())
    exact = inference.estimate(fit, x, "exact")
    np.testing.assert_allclose(exact.per_datapoint.numpy(), ref, atol=1e-4)


N_FULL = 24


def minibatch_model(batch):
    """Pyro's Lightning example: the model is called on a batch and scales it itself."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", size=N_FULL, subsample_size=len(batch)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=batch)


def test_minibatch_as_argument_idiom():
    x = torch.linspace(-1, 2, N_FULL)
    fit = inference.fit((minibatch_model, AutoNormal(minibatch_model)), x, steps=300, lr=0.05,
                        batch_size=6)
    ref = _mvn(x, np.eye(N_FULL) + 1.0)
    close(inference.estimate(fit, x, "is-guide", 1000), ref)


# ---- idioms that cannot be vouched for: an error naming the fix, no number -----------------


def subsampled_model(x):
    """Pyro's SVI tutorial, part II: subsampling written inside the model."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("observe_data", len(x), subsample_size=5) as ind:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x.index_select(0, ind))


def scaled_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)), pyro.poutine.scale(scale=3.0):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


@pytest.mark.parametrize("model, message", [(subsampled_model, r"subsample_size=5\) .*drop"),
                                            (scaled_model, "scaled by 3")])
@pytest.mark.parametrize("data_plate", ["data", None])
def test_user_scaling_is_refused(model, message, data_plate):
    x = torch.randn(30)
    guide = AutoNormal(model)
    fit = inference.fit(inference.Target(model, guide, data_plate=data_plate), x, steps=20)
    for method in ("is-guide", "is-prior", "elbo"):
        with pytest.raises(ValueError, match=message):
            inference.estimate(fit, x, method, 10)


def test_subsampled_model_estimates_with_the_subsample_as_a_keyword():
    def model(x, subsample_size=5):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=subsample_size) as ind:
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x[ind])

    x = torch.linspace(-1, 1, 20)
    fit = inference.fit((model, AutoNormal(model)), x, steps=300, lr=0.05)
    est = inference.estimate(fit, x, "is-guide", 1000, kwargs={"subsample_size": None})
    close(est, _mvn(x, np.eye(20) + 1.0))


# ---- hierarchical models, masks, factors, API -------------------------------------------------

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools_centered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def schools_noncentered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_evidence(points=4000):
    """theta and mu integrated out in closed form; tau = 5 tan(pi u / 2), u ~ U(0, 1), by the
    midpoint rule (the change from halving the grid is its error)."""
    y, s2 = Y8.double().numpy(), SIGMA8.double().numpy() ** 2

    def rule(n):
        tau = 5.0 * np.tan(math.pi * (np.arange(n) + 0.5) / n / 2)
        lp = [_mvn(y, 25.0 + np.diag(t**2 + s2)) for t in tau]
        return special.logsumexp(lp) - math.log(n)

    full = rule(points)
    return full, abs(full - rule(points // 2))


@pytest.mark.parametrize("model", [schools_centered, schools_noncentered])
def test_eight_schools(model):
    """The plate is the eight schools, named so, the data not indexed; a mean-field guide is too
    narrow for the centred funnel (k-hat > 0.7), so the reference check uses the prior, a
    workable proposal for 8 observations (k-hat ~ 0.2)."""
    ref, err = eight_schools_evidence()
    fit = inference.fit((model, AutoNormal(model)), (Y8, SIGMA8), steps=200, lr=0.03)
    est = inference.estimate(fit, (Y8, SIGMA8), "is-prior", 20000)
    assert est.scope == "global" and est.khat < 0.7
    close(est, ref, extra=err)
    elbo = inference.estimate(fit, (Y8, SIGMA8), "elbo", 2000)
    assert elbo.log_evidence < ref + Z * elbo.stderr


def masked(x, m):
    with pyro.plate("data", len(x)) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.poutine.mask(mask=m[idx]):
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def test_masked_datapoints():
    x = torch.tensor([0.3, float("nan"), -1.2, 2.0, float("nan")])
    m = ~x.isnan()
    with pytest.raises(ValueError, match="nan_to_num"):
        inference.estimate((masked, AutoNormal(masked)), (x, m))
    x = x.nan_to_num()
    fit = inference.fit((masked, AutoNormal(masked)), (x, m), steps=200, lr=0.05)
    ref = np.where(m.numpy(), stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy()), 0.0)
    close(inference.estimate(fit, (x, m), "is-guide", 500), ref.sum())
    # prior proposal: a masked datapoint's weights are all 0, a tie with no tail to fit
    est = inference.estimate(fit, (x, m), "is-prior", 4000)
    assert (est.per_datapoint[~m] == 0).all() and est.khat_per_datapoint[~m].isnan().all()
    assert math.isfinite(est.khat) and est.khat_per_datapoint[m].isfinite().all()
    close(est, ref.sum())


def factor_model(x):
    """A Gaussian prior written as pyro.factor on a flat one: the same evidence as N(0, 1)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    pyro.factor("prior", dist.Normal(0.0, 1.0).log_prob(mu) - dist.Normal(0.0, 10.0).log_prob(mu))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def test_factor():
    x = torch.linspace(-1, 1.5, 12)
    fit = inference.fit((factor_model, AutoNormal(factor_model)), x, steps=300, lr=0.05)
    close(inference.estimate(fit, x, "is-guide", 1000), _mvn(x, np.eye(12) + 1.0))


def hyper_model(x, prior_scale=1.0):
    mu = pyro.sample("mu", dist.Normal(0.0, prior_scale))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def test_keyword_arguments_and_fit_result_carries_its_params():
    x = torch.linspace(0, 3, 10)
    ref = _mvn(x, np.eye(10) + 9.0)
    a = inference.fit((hyper_model, AutoNormal(hyper_model)), x, steps=300, lr=0.05,
                      kwargs={"prior_scale": 3.0}, loss=TraceMeanField_ELBO())
    inference.fit((beta_bernoulli, AutoNormal(beta_bernoulli)), torch.ones(4), steps=5)  # B
    est = inference.estimate(a, x, "is-guide", np.int64(1000))
    assert est.ess > 500  # the fitted guide, not a re-initialised one
    close(est, ref)
    table = inference.compare(a, x, methods=["is-guide", "exact"], num_samples=1000, seeds=[0])
    assert table["K"].tolist() == [1000] and "exact" in table.attrs["skipped"]


def test_user_closed_form_is_the_exact_reference():
    x = torch.linspace(0, 3, 10)
    tgt = inference.Target(hyper_model, AutoNormal(hyper_model),
                           log_evidence=lambda x: _mvn(x, np.eye(10) + 1.0))
    fit = inference.fit(tgt, x, steps=300, lr=0.05)
    table = inference.compare(fit, x, methods=["exact", "is-guide"], num_samples=[1000], seeds=[0])
    row = table[table["method"] == "is-guide"].iloc[0]
    assert row["reference"] == _mvn(x, np.eye(10) + 1.0)
    assert abs(row["error"]) < Z * row["stderr"]


def nested(x):
    """Groups (dim -2) of observations (dim -1): the group is the datapoint."""
    with pyro.plate("groups", x.shape[0], dim=-2) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def test_nested_plates_data_plate_at_dim_minus_two():
    x = torch.tensor([[0.1, 0.5, -0.2], [1.5, 2.0, 1.0], [-1.0, 0.0, -0.5], [0.3, 0.3, 0.9]])
    tgt = inference.Target(nested, AutoNormal(nested), data_plate="groups")
    fit = inference.fit(tgt, x, steps=300, lr=0.05)
    ref = [_mvn(row, np.eye(3) + 1.0) for row in x.double().numpy()]
    est = inference.estimate(fit, x, "is-guide", 1000)
    assert est.scope == "local"
    close(est, sum(ref))
    np.testing.assert_allclose(inference.estimate(fit, x, "exact").per_datapoint.numpy(), ref,
                               atol=1e-4)


@pyro.infer.config_enumerate
def mixture(x):
    """Pyro's GMM tutorial: the assignment enumerated (summed out inside the weights), the
    means global."""
    locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    with pyro.plate("data", len(x)):
        a = pyro.sample("a", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., a], 1.0), obs=x)


@pytest.mark.slow
def test_enumerated_mixture():
    x = torch.cat([torch.linspace(-2.5, -1.5, 6), torch.linspace(2.0, 4.0, 14)])
    guide = AutoNormal(pyro.poutine.block(mixture, hide=["a"]),
                       init_loc_fn=pyro.infer.autoguide.init_to_value(values={"locs": torch.tensor([-2.0, 3.0])}))
    fit = inference.fit((mixture, guide), x, steps=300, lr=0.05)  # picks TraceEnum_ELBO itself
    # reference: the 2-D integral over the means on a grid (the other labelling's mode holds
    # (0.3/0.7)^8 ~ 1e-3 of the mass: it is in the grid, and costs the guide < 0.002 nats)
    u = np.linspace(-6, 10, 801)
    l0, l1 = np.meshgrid(u, u, indexing="ij")
    xs = x.double().numpy()[:, None, None]
    lik = np.logaddexp(math.log(0.3) + stats.norm.logpdf(xs, l0, 1.0),
                       math.log(0.7) + stats.norm.logpdf(xs, l1, 1.0)).sum(0)
    joint = lik + stats.norm.logpdf(l0, 0, 10) + stats.norm.logpdf(l1, 0, 10)
    ref = special.logsumexp(joint) + 2 * math.log(u[1] - u[0])
    close(inference.estimate(fit, x, "is-guide", 2000), ref, extra=0.002)
