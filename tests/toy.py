"""Small user-written model/guide pairs with closed-form evidence, shared by the tests.

``local``: z_n ~ N(0, 1), x_n | z_n ~ N(z_n, SIGMA^2), so p(x_n) = N(x_n | 0, 1 + SIGMA^2).
``global_``: mu ~ N(0, 1), x_n | mu ~ N(mu, 1), so p(X) = N(X | 0, I + 1 1^T).
``gamma_poisson``: lam_n ~ Gamma(A, B), k_n | lam_n ~ Poisson(lam_n): p(k_n) negative binomial.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

SIGMA = 0.5


def local_model(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x[idx])


def local_guide(x):
    n = x.shape[0]
    with pyro.plate("data", n):
        loc = pyro.param("loc", lambda: x.new_zeros(n), event_dim=0)
        scale = pyro.param("scale", lambda: x.new_ones(n), constraint=constraints.positive, event_dim=0)
        pyro.sample("z", dist.Normal(loc, scale))


def set_local_guide(x, shrink: float = 1.0, widen: float = 1.0):
    """Set the local guide to (a perturbation of) the exact posterior N(x / (1 + s^2), s^2 / (1 + s^2))."""
    post_var = SIGMA**2 / (1 + SIGMA**2)
    pyro.clear_param_store()
    pyro.param("loc", shrink * x / (1 + SIGMA**2), event_dim=0)
    pyro.param("scale", torch.full_like(x, widen * math.sqrt(post_var)), constraint=constraints.positive)


def local_exact(x):
    return dist.Normal(0.0, math.sqrt(1 + SIGMA**2)).log_prob(x).double()


def local_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * math.sqrt(1 + SIGMA**2)


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]) as idx:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def global_guide(x):
    loc = pyro.param("mu_loc", lambda: x.new_zeros(()))
    scale = pyro.param("mu_scale", lambda: x.new_ones(()), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def global_exact(x):
    n = x.shape[0]
    cov = torch.eye(n, dtype=torch.float64) + 1.0
    return float(dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(x.double()))


def set_global_guide(x, widen: float = 1.0):
    n = x.shape[0]
    pyro.clear_param_store()
    pyro.param("mu_loc", x.sum() / (n + 1))
    pyro.param("mu_scale", torch.tensor(widen / math.sqrt(n + 1)), constraint=constraints.positive)


A, B = 2.0, 1.0  # the Gamma prior of gamma_poisson


def gamma_poisson(k):
    """lam_n ~ Gamma(A, B), k_n ~ Poisson(lam_n): p(k_n) is negative binomial; the posterior
    of log lam_n is skewed (a log-gamma), so no Gaussian proposal is exact."""
    with pyro.plate("data", len(k)) as i:
        lam = pyro.sample("lam", dist.Gamma(A, B))
        pyro.sample("k", dist.Poisson(lam), obs=k[i])


def gamma_guide(k):
    with pyro.plate("data", len(k)):
        a = pyro.param("qa", lambda: torch.full((len(k),), 2.0), constraint=constraints.positive,
                       event_dim=0)
        b = pyro.param("qb", lambda: torch.full((len(k),), 1.5), constraint=constraints.positive,
                       event_dim=0)
        pyro.sample("lam", dist.Gamma(a, b))


def gamma_poisson_data(n=200, seed=0):
    """``n`` counts from the model and their exact ``log p(k_n)`` (float64)."""
    rng = np.random.default_rng(seed)
    k = torch.tensor(rng.poisson(rng.gamma(A, 1 / B, n)), dtype=torch.float32)
    exact = (torch.lgamma(A + k) - math.lgamma(A) - torch.lgamma(k + 1) + A * math.log(B)
             - (A + k) * math.log(B + 1)).double()
    return k, exact
