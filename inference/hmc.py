"""Hamiltonian Monte Carlo transitions, vectorized over chains and datapoints.

The state is one tensor ``x`` of shape ``[C, B, D]``: ``C`` chains for each of ``B``
independent targets (datapoints in local scope; ``B = 1`` in global scope), each a point in
``R^D``. ``potential(x)`` returns ``(log f(x) [C, B], grad [C, B, D], aux [C, B])``; every
``(chain, datapoint)`` pair is its own Markov chain, so one call moves all of them.

A transition draws a momentum ``p ~ N(0, I)``, runs ``num_steps`` leapfrog steps of size
``eps`` (one per datapoint, ``[B]``) and accepts with probability
``min(1, exp(H(x, p) - H(x', p')))``, ``H = -log f(x) + |p|^2 / 2`` [1]; a non-finite proposal
is rejected. The kernel leaves ``f`` invariant for any fixed ``eps`` and ``num_steps``.

:func:`adapt_step_size` moves ``eps`` towards a target mean acceptance between transitions,
as annealing codes do between temperatures [2, 3]: the kernel at the next temperature then
depends on the current states, which is standard practice in AIS and leaves its weights
valid since they are computed before each transition [4].

References

[1] Neal (2011), MCMC using Hamiltonian dynamics, Handbook of Markov Chain Monte Carlo.
[2] Wu, Burda, Salakhutdinov, Grosse (2017), On the Quantitative Analysis of Decoder-Based
    Generative Models, ICLR.
[3] Buchholz, Chopin, Jacob (2021), Adaptive tuning of Hamiltonian Monte Carlo within
    sequential Monte Carlo, Bayesian Analysis.
[4] Neal (2001), Annealed importance sampling, Statistics and Computing.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

#: ``potential(x) -> (log f [C, B], grad [C, B, D], aux [C, B])``
Potential = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def transition(x: torch.Tensor, logp: torch.Tensor, grad: torch.Tensor, aux: torch.Tensor,
               potential: Potential, step_size: torch.Tensor, num_steps: int):
    """One HMC transition of every chain. ``logp``, ``grad``, ``aux`` are the potential's
    values at ``x``; ``step_size`` is ``[B]`` (or broadcastable to ``[C, B]``).

    :returns: ``(x, logp, grad, aux, accept_prob)``, the last ``[C, B]``.
    """
    eps = step_size.unsqueeze(-1)
    p0 = torch.randn_like(x)
    q, g = x, grad
    p = p0 + 0.5 * eps * g
    lp, a = logp, aux
    for i in range(num_steps):
        q = q + eps * p
        lp, g, a = potential(q)
        p = p + (eps if i < num_steps - 1 else 0.5 * eps) * g
    log_ratio = lp - logp - 0.5 * (p * p).sum(-1) + 0.5 * (p0 * p0).sum(-1)
    log_ratio = torch.where(torch.isfinite(log_ratio) & torch.isfinite(g).all(-1), log_ratio,
                            torch.full_like(log_ratio, -float("inf")))
    accept = torch.rand_like(log_ratio).log() < log_ratio
    prob = log_ratio.clamp(max=0.0).exp()
    keep = accept.unsqueeze(-1)
    return (torch.where(keep, q, x), torch.where(accept, lp, logp), torch.where(keep, g, grad),
            torch.where(accept, a, aux), prob)


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, target: float,
                    rate: float = 2.0) -> torch.Tensor:
    """``eps * exp(rate * (mean acceptance - target))`` per datapoint (mean over chains), held in
    ``[1e-4, 10]``."""
    mean = accept_prob.mean(0)
    return (step_size * torch.exp(rate * (mean - target))).clamp(1e-4, 10.0)
