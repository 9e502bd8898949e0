"""The radiata pine regressions: which predicts the maximum compression strength of 42 pine
specimens better, their density (M1) or their resin-adjusted density (M2)?

    M1:  y_i ~ N(alpha + beta (x_i - xbar), 1/tau)
    M2:  y_i ~ N(alpha + beta (z_i - zbar), 1/tau)
    alpha ~ N(3000, 1000^2),  beta ~ N(185, 100^2),  tau ~ Gamma(3, rate 2 * 300^2)

(Williams 1959 [1]; the priors of Green & O'Hagan [2], Han & Carlin [3] and Friel & Pettitt
[4]). The data are shipped in ``radiata.csv`` (columns ``y``, ``x``, ``z``: strength, density,
resin-adjusted density).

Given tau the model is linear-Gaussian, ``y | tau ~ N(X m0, X S0 X^T + I / tau)`` with
``X = [1, x - xbar]``, ``m0 = (3000, 185)``, ``S0 = diag(1000^2, 100^2)``, so the evidence is a
one-dimensional integral over the precision, computed here by the trapezoidal rule on a
fine grid of ``log tau`` (801 points over +-3 around the least-squares precision, 13
posterior sds each way; halving the grid moves it by < 1e-9):

    log Z(M1) = -309.9243,   log Z(M2) = -301.4351,   B21 = exp(8.4892) = 4862,

the Bayes factor in favour of M2 that [2] computed by quadrature and [3, 4] use as their
benchmark. (Friel & Wyse [5] report -310.1280 and -301.7046 for a conjugate variant of these
priors, ``(alpha, beta) | tau ~ N(m0, (tau diag(0.06, 6))^-1)``; for that variant we compute
-310.5073 and -301.6502 in closed form and could not reproduce their numbers.)

References

[1] Williams (1959), Regression Analysis, Wiley, p. 133.
[2] Green, O'Hagan (1998), Carlin and Chib do not need to sample from pseudo-priors,
    Tech. report, University of Nottingham.
[3] Han, Carlin (2001), Markov chain Monte Carlo methods for computing Bayes factors: a
    comparative review, JASA 96, 1122-1132.
[4] Friel, Pettitt (2008), Marginal likelihood estimation via power posteriors, JRSS B 70.
[5] Friel, Wyse (2012), Estimating the evidence -- a review, Statistica Neerlandica 66.
"""

from __future__ import annotations

import math
from importlib import resources

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_median

from inference.pack.benchmark import Benchmark, register

PRIOR_MEAN = (3000.0, 185.0)
PRIOR_SD = (1000.0, 100.0)
TAU_SHAPE, TAU_RATE = 3.0, 2 * 300.0**2


def table() -> torch.Tensor:
    """``[42, 3]``: y, x, z as in ``radiata.csv``."""
    text = resources.files("inference.pack").joinpath("radiata.csv").read_text()
    rows = [[float(v) for v in line.split(",")] for line in text.split()[1:]]
    return torch.tensor(rows, dtype=torch.float64)


def log_evidence(y: torch.Tensor, x: torch.Tensor, points: int = 801) -> float:
    """``log p(y)`` of the regression of ``y`` on ``x`` by quadrature over ``log tau``."""
    y, x = y.double(), x.double()
    X = torch.stack([torch.ones_like(x), x - x.mean()], -1)
    m0, S0 = torch.tensor(PRIOR_MEAN, dtype=torch.float64), torch.diag(torch.tensor(PRIOR_SD) ** 2).double()
    beta = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    centre = math.log(len(y) / float(((y - X @ beta) ** 2).sum()))
    u = torch.linspace(centre - 3, centre + 3, points, dtype=torch.float64)
    tau = u.exp()
    cov = X @ S0 @ X.T + torch.eye(len(y), dtype=torch.float64) / tau[:, None, None]
    like = dist.MultivariateNormal(X @ m0, cov).log_prob(y)
    prior = dist.Gamma(torch.tensor(TAU_SHAPE, dtype=torch.float64),
                       torch.tensor(TAU_RATE, dtype=torch.float64)).log_prob(tau) + u
    f = like + prior
    weights = torch.full_like(u, (u[1] - u[0]).item())
    weights[[0, -1]] *= 0.5
    return float((f + weights.log()).logsumexp(0))


def least_squares(y: torch.Tensor, x: torch.Tensor):
    """``(alpha, beta, log tau)`` of ordinary least squares and their standard errors."""
    X = torch.stack([torch.ones_like(x), x - x.mean()], -1)
    coef = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    rss = float(((y - X @ coef) ** 2).sum())
    n = len(y)
    se = (rss / (n - 2) * torch.linalg.inv(X.T @ X).diagonal()).sqrt()
    centre = torch.cat([coef, coef.new_tensor([math.log(n / rss)])])
    return centre, torch.cat([se, se.new_tensor([math.sqrt(2.0 / n)])])


def whitened_guide(y, x):
    """A hand-written mean-field guide in the units of the least-squares fit: each latent's
    location and log scale are fitted as offsets from its estimate and standard error (so one
    Adam step moves every latent alike, whatever its scale: 3000 for alpha, 1e-5 for tau)."""
    centre, se = least_squares(y, x)
    offset = pyro.param("radiata_offset", lambda: y.new_zeros(3))
    log_scale = pyro.param("radiata_log_scale", lambda: y.new_zeros(3))
    loc, scale = centre + se * offset, se * log_scale.exp()
    pyro.sample("alpha", dist.Normal(loc[0], scale[0]))
    pyro.sample("beta", dist.Normal(loc[1], scale[1]))
    pyro.sample("tau", dist.LogNormal(loc[2], scale[2]))


class _Radiata(Benchmark):
    dims = 3
    guides = ("whitened", "mvn")
    steps, lr = 300, 0.02
    column = 1

    def data(self):
        t = table().float()
        return (t[:, 0], t[:, self.column])

    def model(self, y, x):
        mean, sd = y.new_tensor(PRIOR_MEAN), y.new_tensor(PRIOR_SD)
        alpha = pyro.sample("alpha", dist.Normal(mean[0], sd[0]))
        beta = pyro.sample("beta", dist.Normal(mean[1], sd[1]))
        tau = pyro.sample("tau", dist.Gamma(y.new_tensor(TAU_SHAPE), y.new_tensor(TAU_RATE)))
        with pyro.plate("data", len(y)) as idx:
            mean = alpha + beta * (x[idx] - x.mean())
            pyro.sample("y", dist.Normal(mean, tau.rsqrt()), obs=y[idx])

    def make_guide(self, kind):
        if kind == "whitened":
            return whitened_guide
        return AutoMultivariateNormal(self.model, init_loc_fn=init_to_median)

    def reference(self) -> float:
        t = table()
        return log_evidence(t[:, 0], t[:, self.column])


@register
class RadiataDensity(_Radiata):
    name = "radiata-m1"
    summary = "radiata pine strength on density (Williams 1959, 42 rows): M1"
    source = ("quadrature over the precision, the rest in closed form: -309.9243 (B21 = 4862 "
              "as in Green & O'Hagan 1998 / Han & Carlin 2001)")
    column = 1


@register
class RadiataAdjusted(_Radiata):
    name = "radiata-m2"
    summary = "radiata pine strength on resin-adjusted density (Williams 1959, 42 rows): M2"
    source = ("quadrature over the precision, the rest in closed form: -301.4351 (B21 = 4862 "
              "as in Green & O'Hagan 1998 / Han & Carlin 2001)")
    column = 2
