"""Beta-Bernoulli: 50 heads and 50 tails under a Beta prior, the evidence in closed form.

    p ~ Beta(a, b),    x_n | p ~ Bernoulli(p),  n = 1..100 (50 ones, 50 zeros)

    log Z = log B(a + 50, b + 50) - log B(a, b)

(the probability of this sequence; [1] ch. 2). Under the flat prior Beta(1, 1),
``log Z = -71.39896``; under Beta(30, 30), ``-69.80774``: the prior that agrees with the data
wins by 1.6 nats. Two guides show both styles: the flat target's guide is written by hand (a
Beta with fitted shapes, the posterior's own family), Beta(30, 30)'s is ``AutoNormal`` (a
logit-normal). Both simulate (``p`` from the prior, 100 flips given it) and know the evidence of
any flips, so the pair serves Bayes-factor calibration (:mod:`inference.calibrate`); their
guide ``"conjugate"`` is the exact posterior ``Beta(a + heads, b + tails)`` with both shapes
scaled by ``1 / WIDEN^2`` (about ``WIDEN`` times its sd), nothing to fit.

References

[1] Gelman, Carlin, Stern, Dunson, Vehtari, Rubin (2013), Bayesian Data Analysis, 3rd ed.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from inference.pack.benchmark import WIDEN, Benchmark, Simulated, register

HEADS, TAILS = 50, 50


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class _BetaBernoulli(Benchmark):
    prior = (1.0, 1.0)
    dims = 1
    steps, lr = 300, 0.05
    fixed_guides = ("conjugate",)

    def data(self):
        return (torch.tensor([1.0, 0.0] * HEADS),)

    def simulate(self, seed: int) -> Simulated:
        rng = np.random.default_rng(seed)
        p = rng.beta(*self.prior)
        x = torch.tensor(rng.random(HEADS + TAILS) < p, dtype=torch.float32)
        return Simulated((x,), {"p": torch.tensor(p, dtype=torch.float32)})

    def evidence(self, x) -> float:
        heads = float(x.sum())
        a, b = self.prior
        return log_beta(a + heads, b + len(x) - heads) - log_beta(a, b)

    def make_guide(self, kind):
        if kind == "conjugate":
            return self.conjugate_guide
        return super().make_guide(kind)

    def conjugate_guide(self, x):
        a, b = self.prior
        heads = x.sum()
        shrink = 1 / WIDEN**2
        pyro.sample("p", dist.Beta(shrink * (a + heads), shrink * (b + len(x) - heads)))

    def model(self, x):
        p = pyro.sample("p", dist.Beta(*x.new_tensor(self.prior)))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(p), obs=x)

    def reference(self) -> float:
        return self.evidence(*self.data())


def beta_guide(x):
    """A user-written guide: a Beta with fitted shapes (the exact posterior's family)."""
    a = pyro.param("q_a", lambda: x.new_tensor(2.0), constraint=constraints.positive)
    b = pyro.param("q_b", lambda: x.new_tensor(2.0), constraint=constraints.positive)
    pyro.sample("p", dist.Beta(a, b))


@register
class BetaBernoulliFlat(_BetaBernoulli):
    name = "beta-bernoulli-flat"
    summary = "50 heads, 50 tails under Beta(1, 1); a hand-written Beta guide"
    source = "closed form: log B(51, 51) - log B(1, 1) = -71.39896"
    guides = ("beta", "conjugate")
    prior = (1.0, 1.0)
    lr = 0.1

    def make_guide(self, kind):
        return beta_guide if kind == "beta" else super().make_guide(kind)


@register
class BetaBernoulli30(_BetaBernoulli):
    name = "beta-bernoulli-30"
    summary = "50 heads, 50 tails under Beta(30, 30); AutoNormal"
    source = "closed form: log B(80, 80) - log B(30, 30) = -69.80774"
    guides = ("autonormal", "conjugate")
    prior = (30.0, 30.0)
