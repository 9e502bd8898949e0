"""``is-guide``: importance sampling with the guide as proposal -- the IWAE bound.

    IWAE_K = log (1/K) sum_k w_k,    w_k = p(x, z_k) / q(z_k),    z_k ~ q

a lower bound in expectation that increases with K to ``log p(x)`` [1]; ``IWAE_1 = ELBO_1``.

**Label switching.** A mixture's posterior is invariant under permuting components, but a
guide sits on one of the ``C!`` modes, so plain importance sampling would estimate the evidence
of one mode: too low by up to ``log C!``. For sites declared in the target's ``symmetries``,
the proposal is symmetrised [2], ``q_s(θ) = (1/C!) sum_σ q(σθ)``: the weight uses ``q_s``
evaluated at all ``C!`` permutations of the draw. Since ``p(x, σθ) = p(x, θ)`` under
exchangeable priors, ``E_q[p / q_s] = p(x)``: unbiased, and it equals the one-mode estimate
plus ``log C!`` when the modes do not overlap. (Global scope only: in local scope the globals
are held fixed.)

References

[1] Burda, Grosse, Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR.
[2] Frühwirth-Schnatter (2004), Estimating marginal likelihoods for mixture and Markov
    switching models using bridge sampling techniques, Econometrics Journal.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict

import torch

from inference.problem import Estimator, Problem, register
from inference.replay import guide_log_density, sample_sites
from inference.sampling import sampled


@register
class GuideImportance(Estimator):
    name = "is-guide"
    summary = "log mean of w over K guide draws: the IWAE bound, rising with K to log p(x)"
    shardable = True
    unbiased = True

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        symmetric = not problem.local and bool(problem.target.symmetries)
        return sampled(problem, "guide", "log_mean", symmetrisation if symmetric else None)


def symmetrisation(problem: Problem, count: int, guide_tr) -> torch.Tensor:
    """``log q(θ) - log q_s(θ)`` for the symmetrised proposal (module docstring)."""
    tgt, data = problem.target, problem.data
    values = {name: site["value"] for name, site in sample_sites(guide_tr, latent_only=True)}
    sizes = {values[n].shape[d] for n, d in tgt.symmetries.items() if n in values}
    if len(sizes) != 1:
        raise ValueError(f"symmetric sites {dict(tgt.symmetries)} disagree on the number of components")
    (C,) = sizes
    if C > 7:
        raise ValueError(f"{C} components give {math.factorial(C)} permutations; too many to symmetrise")
    perms = list(itertools.permutations(range(C)))
    log_q = []
    for perm in perms:
        p = torch.tensor(perm, device=data[0].device)
        permuted = {
            n: v.index_select(tgt.symmetries[n] % v.dim(), p) if n in tgt.symmetries else v
            for n, v in values.items()
        }
        log_q.append(guide_log_density(tgt, data, count, permuted,
                                       max_plate_nesting=problem.max_plate_nesting))
    log_q = torch.stack(log_q)
    return log_q[0] - (log_q.logsumexp(0) - math.log(len(perms)))
