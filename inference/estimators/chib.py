"""``chib``: Chib's estimate from posterior draws, with the label-switching correction.

The basic marginal likelihood identity [1], at any point ``z*``,

    log p(x) = log p(x | z*) + log p(z*) - log p(z* | x),

needs the posterior ordinate ``p(z* | x)``. Chib [1] Rao-Blackwellises it over Gibbs output,
which needs every full conditional in closed form -- what a generic Pyro model does not
expose. This file takes the form that needs only ``p(x, z)`` and draws: Chib and Jeliazkov's
ordinate from Metropolis-Hastings detailed balance [2], for an independence kernel with
proposal ``g``, integrated over ``z``:

    p(z* | x) = g(z*) E_{p(z|x)}[a(z, z*)] / E_g[a(z*, z)],
    a(z, z') = min(1, p(x, z') g(z) / (p(x, z) g(z'))).

In ``W(z) = log p(x, z) - log g(z)`` the estimate is

    log p(x) = W(z*) + log mean_i min(1, exp(W(z~_i) - W(z*))) - log mean_j min(1, exp(W(z*) - W(z_j)))

with ``z_j`` posterior draws and ``z~_i ~ g``: a bridge sampler with the bridge function
``min(1 / (c g), 1 / p(x, .))`` [3], whose terms lie in ``[0, 1]``, so both means have finite
variance. The draws need only come from the posterior, not from that kernel: they are the K
HMC chains of :mod:`inference.posterior` (its options). The first ``floor(K/2)`` fit ``g``
(``proposal="gaussian"``: ``N(m, S)`` in the unconstrained space; or ``"guide"``, a guide with
a density at given latents) and give ``z*``, the draw of highest posterior density in ``u``;
the other ``N1 = ceil(K/2)`` and ``N2 = N1`` draws of ``g`` enter the means. The stderr is
the delta method's on the two independent means, ``V(a) / (N1 mean(a)^2) + V(b) / (N2 mean(b)^2)``.

**Limits.** One block: the acceptance from ``z*`` of a Gaussian fitted to the posterior falls
with the dimension and the posterior's departure from normality, and with it the precision
(the stderr says so; a 30-dimensional posterior needs far larger K than a 3-dimensional one).
Latents must be continuous (HMC); discrete ones must be summed out or enumerated in the data
plate. A kernel density estimate of the ordinate would add a bias that no stderr states.

**Label switching.** For a mixture the posterior is invariant under the ``C!`` relabellings
``σ`` of exchangeable components (the target's ``symmetries``), but HMC chains stay in one
mode: the draws' ordinate at ``z*`` is then ``C!`` times too high, and the estimate up to
``log C!`` too low [4]. Symmetrising the ordinate over relabellings [5],

    mean_j min(1, ...)  ->  mean_j mean_σ min(1, exp(W(z*) - log p(x, z_j) + log g(σ z_j))),

is right whether the chains visit one mode or all (global scope). ``diagnostics`` holds the
uncorrected value (``uncorrected``) beside the corrected estimate.

Cost per datapoint: K chains as in ``bridge``, and ``N2`` evaluations of ``log p(x, z)``.

References

[1] Chib (1995), Marginal likelihood from the Gibbs output, JASA.
[2] Chib, Jeliazkov (2001), Marginal likelihood from the Metropolis-Hastings output, JASA.
[3] Mira, Nicholls (2004), Bridge estimation of the probability density at a point,
    Statistica Sinica.
[4] Neal (1999), Erroneous results in "Marginal likelihood from the Gibbs output", letter.
[5] Berkhof, van Mechelen, Gelman (2003), A Bayesian approach to the selection and testing of
    mixture models, Statistica Sinica.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import torch

from inference.problem import Estimator, Problem, register
from inference.posterior import MIN_SAMPLES, OPTIONS, chain_cost, check, from_draws
from inference.proposals import (Densities, Gaussian, Guide, proposal_densities,
                                 relabellings)


@register
class Chib(Estimator):
    name = "chib"
    summary = "Chib-Jeliazkov ordinate from HMC posterior draws; mixtures symmetrised over relabellings"
    weighted = False
    min_samples = MIN_SAMPLES
    options = dict(OPTIONS, proposal="gaussian")

    def evaluations(self, num_samples: int, **options: Any) -> float:
        o = {**self.options, **options}
        return float(num_samples * chain_cost(o) + num_samples - num_samples // 2)

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        o = {**self.options, **options}
        check(problem, self.name, o)
        K = problem.num_samples
        out, extra = from_draws(problem, o, K - K // 2,
                                lambda draws, dens: ordinate(problem, draws, dens, o))
        out["diagnostics"].update(
            uncorrected=float(extra["uncorrected"].sum()),
            uncorrected_stderr=float(extra["uncorrected_var"].sum().sqrt()),
            relabellings=int(extra["relabellings"][0]),
            log_numerator=float(extra["log_numerator"].sum()),
            log_acceptance_from_star=float(extra["log_acceptance_from_star"].sum()))
        return out


def ordinate(problem: Problem, draws, dens: Densities, o: Dict[str, Any]):
    """Per datapoint: the estimate, its variance, the diagnostics (the uncorrected estimate and
    its variance, the logs of the numerator's and the denominator's means, the number of
    relabellings), and ``log p(x, z) - log g(z)`` at the posterior's and the proposal's draws
    (for the checks)."""
    K = draws.u.shape[0]
    n = K // 2
    best = (draws.joint[:n] + draws.log_jac[:n]).argmax(0)  # z*: highest density in u
    cols = torch.arange(draws.u.shape[1], device=best.device)
    star = draws.u[best, cols].unsqueeze(0)
    if o["proposal"] == "guide":
        g = Guide(dens)
        _, j2, lg2 = g.sample(K - n)
    else:
        g = Gaussian(draws.u[:n])
        u2 = g.sample(K - n)
        j2, lj2 = dens.joint(u2)
        lg2 = g.dist.log_prob(u2.double()) - lj2
    w_star = draws.joint[best, cols] - g.log_density(dens, star)[0]
    perms = relabellings(problem, dens, draws.u)
    lg1 = proposal_densities(problem, g, dens, draws.u[n:], perms)  # [perms, N1, B]
    log_a = (w_star - draws.joint[n:] + lg1).clamp(max=0.0)  # log a(σ z_j, z*)
    log_b = (j2 - lg2 - w_star).clamp(max=0.0)  # log a(z*, z~_i)
    log_a_sym = log_a.logsumexp(0) - math.log(len(perms))
    num, den = _log_mean(log_a_sym), _log_mean(log_b)
    raw = w_star + den - _log_mean(log_a[0])  # the identity alone: uncorrected
    var = _rel_var(log_a_sym) + _rel_var(log_b)
    extra = dict(uncorrected=raw, uncorrected_var=_rel_var(log_a[0]) + _rel_var(log_b),
                 log_numerator=num, log_acceptance_from_star=den,
                 relabellings=torch.full_like(var, len(perms)))
    return w_star + den - num, var, extra, draws.joint[n:] - lg1[0], j2 - lg2


def _log_mean(log_x: torch.Tensor) -> torch.Tensor:
    return log_x.logsumexp(0) - math.log(len(log_x))


def _rel_var(log_x: torch.Tensor) -> torch.Tensor:
    """``V(x) / (n mean(x)^2)`` of ``x = exp(log_x)`` ``[n, B]``: the delta method's variance of
    ``log mean(x)``."""
    x = torch.exp(log_x - log_x.max(0).values)
    return x.var(0) / (len(x) * x.mean(0) ** 2)
