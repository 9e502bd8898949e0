"""A 32-D Gaussian: a standard normal prior and ten noisy observations of the vector.

    theta ~ N(0, I_32),    y_n | theta ~ N(theta, I_32),   n = 1..10

Per coordinate ``d`` the ten observations are jointly ``N(0, I + 1 1^T)``, so

    log Z = sum_d log N(y_{.d} | 0, I_10 + 1 1^T)

in closed form; the posterior is ``N(sum_n y_n / 11, I / 11)``, in the family of the guide
(``AutoDiagonalNormal``). Prior and posterior differ by about 0.7 nats per coordinate (22 in
all): plain Monte Carlo from the prior (``is-prior``) fails here at any affordable K, the
textbook case of its curse of dimension [1].

References

[1] MacKay (2003), Information Theory, Inference, and Learning Algorithms, ch. 29.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from inference.pack.benchmark import Benchmark, register

D, N, SEED = 32, 10, 32


@register
class Gaussian32(Benchmark):
    name = "gaussian-32d"
    summary = "32-D Gaussian mean under N(0, I), 10 observations with unit noise"
    source = "closed form: sum over coordinates of log N(y_.d | 0, I + 1 1^T)"
    dims = D
    guides = ("diagonal",)
    steps, lr = 300, 0.02
    fails = {"is-prior": "prior and posterior differ by ~22 nats (KL): the prior's draws almost "
                         "never land where the posterior is; weights degenerate (k-hat > 0.7)"}

    def data(self):
        g = torch.Generator().manual_seed(SEED)
        theta = torch.randn(D, generator=g)
        return (theta + torch.randn(N, D, generator=g),)

    def model(self, y):
        theta = pyro.sample("theta", dist.Normal(y.new_zeros(D), 1.0).to_event(1))
        with pyro.plate("data", len(y)) as idx:
            pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y[idx])

    def make_guide(self, kind):
        return AutoDiagonalNormal(self.model)

    def reference(self) -> float:
        (y,) = self.data()
        y = y.double()
        cov = torch.eye(len(y), dtype=torch.float64) + 1.0
        marginal = dist.MultivariateNormal(torch.zeros(len(y), dtype=torch.float64), cov)
        return float(marginal.log_prob(y.T).sum())
