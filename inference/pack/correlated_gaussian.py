"""A correlated 3-D Gaussian likelihood under a uniform prior on the box [-10, 10]^3.

    theta ~ Uniform(-10, 10)^3,    x | theta ~ N(theta, Sigma),   x = m = (-1, 0, 1),
    Sigma_ii = 1,  Sigma_ij = 0.95 (i != j)

the test problem of dynesty's suite [1] written as a Pyro model: the likelihood is a
normalised Gaussian density in theta, so

    log Z = -3 log 20 + log P(theta in box),   theta ~ N(m, Sigma)

and the box holds all but ``sum_i 2 Phi(-9) < 1e-18`` of that Gaussian's mass (each marginal
is N(m_i, 1) with ``|m_i| <= 1``, 9 sds from the walls): ``log Z = -3 log 20 = -8.98720`` to
1e-18. The posterior is that Gaussian, with correlation 0.95: the default guide
(``AutoMultivariateNormal``) can match it; the ``"meanfield"`` guide (``AutoNormal``) cannot,
the case where importance sampling with a mean-field guide is weakest and bridge sampling
should win [2]. The posterior is Gaussian in theta but not in the unconstrained (scaled logit)
coordinates of the box, so ``laplace`` is not exact here: 0.03 nats low.

References

[1] Speagle (2020), dynesty: a dynamic nested sampling package for estimating Bayesian
    posteriors and evidences, MNRAS (tests/test_gau.py: ``logz_truth = 3 * -log(2 * 10)``).
[2] Meng, Wong (1996), Simulating ratios of normalizing constants via a simple identity,
    Statistica Sinica.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from inference.pack.benchmark import Benchmark, register

HALF_WIDTH = 10.0
RHO = 0.95


def covariance(d: int = 3) -> torch.Tensor:
    return torch.full((d, d), RHO) + (1 - RHO) * torch.eye(d)


@register
class CorrelatedGaussian3(Benchmark):
    name = "gaussian-3d-correlated"
    summary = "3-D Gaussian likelihood, correlation 0.95, uniform prior on [-10, 10]^3"
    source = ("closed form (dynesty's correlated-normal test): -3 log 20 = -8.98720, the box "
              "holding all but < 1e-18 of the likelihood's mass")
    dims = 3
    guides = ("mvn", "meanfield")
    steps, lr = 400, 0.03
    fit_options = {"num_particles": 16}
    fails = {"is-prior": "the posterior fills 1.7e-4 of the box: the estimate is close at K = 1e6 "
                         "but its weights' tail (k-hat ~2) leaves the stderr unvouched below ~1e7"}

    def data(self):
        return (torch.linspace(-1.0, 1.0, self.dims).unsqueeze(0),)

    def model(self, x):
        box = x.new_tensor([-HALF_WIDTH, HALF_WIDTH])
        theta = pyro.sample("theta", dist.Uniform(box[0], box[1]).expand([self.dims]).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.MultivariateNormal(theta, covariance(self.dims).to(x)), obs=x)

    def make_guide(self, kind):
        guide = AutoMultivariateNormal if kind == "mvn" else AutoNormal
        return guide(self.model, init_loc_fn=pyro.infer.autoguide.init_to_median)

    def reference(self) -> float:
        return -self.dims * math.log(2 * HALF_WIDTH)
