"""Small user-written model/guide pairs with closed-form evidence, shared by the tests.

``local``: z_n ~ N(0, 1), x_n | z_n ~ N(z_n, SIGMA^2), so p(x_n) = N(x_n | 0, 1 + SIGMA^2).
``global_``: mu ~ N(0, 1), x_n | mu ~ N(mu, 1), so p(X) = N(X | 0, I + 1 1^T).
"""

import math

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
