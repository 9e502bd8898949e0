"""``laplace``: the Laplace approximation at the posterior mode, in the unconstrained space.

Latents with a constrained support are mapped to ``R^d`` by Pyro's ``biject_to``, ``z = T(u)``
(as in :mod:`inference.path`), where the evidence is an integral of

    f(u) = log p(x, T(u)) + log |det dT/du|,     Z = p(x) = int exp f(u) du.

At the mode ``u* = argmax f`` a second-order expansion ``f(u) ~ f(u*) - (u - u*)^T A (u - u*) / 2``,
``A = -H = -grad^2 f(u*)``, integrates in closed form [1, 2]:

    log Z ~ f(u*) + (d / 2) log 2 pi - (1 / 2) log det A.

The mode is found by L-BFGS from the guide's point estimate (an autoguide's median in global
scope, else one draw of the guide; the prior's draw if the guide cannot propose), then polished
by Newton steps with the exact Hessian (autograd, one backward pass per latent dimension for
every datapoint at once); ``diagnostics["newton_decrement"]``, ``g^T A^-1 g / 2`` at the end, is
what one more step would still gain (nats). Local scope applies it per datapoint, with any
global latents held fixed; datapoints are chunked to the memory budget.

It is exact for a Gaussian posterior in ``u`` and otherwise asymptotic: the relative error of
``Z`` is ``O(1/n)`` in the number of observations for regular models [2, 3] (a skewed posterior,
e.g. a Beta(51, 51) in logit coordinates, is off by a few thousandths of a nat). It is not a
Monte Carlo estimate: ``stderr`` is 0, and the estimate carries a caveat saying it is an
approximation, so it is never vouched for. ``num_samples`` (K) and the seed are ignored.

Refuses (``NotApplicable``, one line) a discrete latent not summed out by enumeration, a mode
the optimiser does not reach, and a Hessian that is not positive definite at the mode (a flat
direction, a ridge or a saddle: the Gaussian approximation does not exist).

References

[1] Laplace (1774), Memoir on the probability of the causes of events.
[2] Tierney, Kadane (1986), Accurate approximations for posterior moments and marginal
    densities, JASA 81, 82-86.
[3] Kass, Raftery (1995), Bayes factors, JASA 90, 773-795 (section 4.1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import pyro
import torch

from inference.annealing import chunks
from inference.problem import Estimator, NotApplicable, Problem, register
from inference.path import Path, check_continuous, guide_start

CAVEAT = ("the Laplace approximation is asymptotic (its error shrinks as O(1/n) with the data), "
          "not a Monte Carlo estimate: its stderr of 0 bounds nothing")
#: nats: the most one more Newton step may still gain before the mode counts as not reached
NEWTON_TOL = 1e-3


@register
class Laplace(Estimator):
    name = "laplace"
    summary = "Gaussian approximation at the mode (Hessian in the unconstrained space): asymptotic"
    weighted = False
    deterministic = True
    options = {"laplace_iterations": 200}

    def evaluations(self, num_samples: int, **options: Any) -> None:
        return None  # the optimiser decides; diagnostics["evaluations"] counts them

    def run(self, problem: Problem, laplace_iterations: int = 200, **options: Any) -> Dict[str, Any]:
        if int(laplace_iterations) < 1:
            raise ValueError(f"laplace_iterations must be >= 1, got {laplace_iterations!r}")
        check_continuous(problem, "laplace", "a Laplace approximation")
        one = dataclasses.replace(problem, num_samples=1)
        values, decrements, evals = [], [], 0
        with pyro.validation_enabled(False):
            for idx, _ in chunks(one, "prior")[0]:
                path = Path(one, "prior", 1, idx)
                value, decrement, n = mode_integral(path, guide_start(problem, path, idx),
                                                    int(laplace_iterations))
                values.append(value)
                decrements.append(decrement)
                evals += n
        value = torch.cat(values)
        diag = {"newton_decrement": float(torch.cat(decrements).max()), "evaluations": evals,
                "dimension": path.pack(path.initial).shape[-1]}
        fields: Dict[str, Any] = dict(
            num_samples=problem.num_samples, log_evidence=float(value.sum()), stderr=0.0,
            ess=math.nan, khat=math.nan, diagnostics=diag, caveats=(CAVEAT,))
        if problem.local:
            nan = torch.full_like(value, math.nan)
            fields.update(per_datapoint=value, stderr_per_datapoint=torch.zeros_like(value),
                          ess_per_datapoint=nan, khat_per_datapoint=nan)
        return fields


def hessian(path: Path, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f``, its gradient and Hessian at ``u`` ``[C, B, D]``: ``[C, B]``, ``[C, B, D]``,
    ``[C, B, D, D]``. Every ``(chain, datapoint)`` is its own function of its own ``D``
    coordinates, so one backward pass per coordinate gives every Hessian at once."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        _, joint, log_jac = path.densities(u)
        f = joint + log_jac
        (g,) = torch.autograd.grad(f.sum(), u, create_graph=True)
        rows = []
        for j in range(u.shape[-1]):
            (row,) = torch.autograd.grad(g[..., j].sum(), u, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(u) if row is None else row)
    return f.detach(), g.detach(), torch.stack(rows, -2).detach()


def mode_integral(path: Path, u0: torch.Tensor, iterations: int):
    """``(log Z per datapoint [B], Newton decrement [B], evaluations)`` of the Laplace
    approximation on one chunk (module docstring)."""
    potential = path.potential(1.0)
    u = u0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=iterations, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
    evals = [0]

    def closure():
        f, g, _ = potential(u.detach())
        evals[0] += 1
        u.grad = -g
        return -f.sum()

    opt.step(closure)
    x, decrement = u.detach(), torch.full(u.shape[:-1], math.inf, dtype=torch.float64, device=u.device)
    for newton in range(6):  # polish with the exact Hessian: at most 5 Newton steps
        f, g, H = hessian(path, x)
        evals[0] += 1 + x.shape[-1]
        A = -H.double()
        chol, info = torch.linalg.cholesky_ex(A)
        if (info != 0).any() or not torch.isfinite(f).all():
            break
        step = torch.cholesky_solve(g.double().unsqueeze(-1), chol).squeeze(-1)
        decrement = 0.5 * (g.double() * step).sum(-1)
        if float(decrement.max()) < 1e-7 or newton == 5:
            break
        x = x + step.to(x.dtype)
    _refuse(f, A, info)
    if float(decrement.max()) > NEWTON_TOL:
        raise NotApplicable(f"the optimiser did not reach a mode of the posterior (a Newton step "
                            f"would still gain {float(decrement.max()):.3g} nats); raise "
                            "laplace_iterations or use 'is-guide'")
    d = x.shape[-1]
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    value = f.double() + 0.5 * d * math.log(2 * math.pi) - 0.5 * log_det
    return value.reshape(-1), decrement.reshape(-1), evals[0]


def _refuse(f: torch.Tensor, A: torch.Tensor, info: torch.Tensor) -> None:
    if not torch.isfinite(f).all() or not torch.isfinite(A).all():
        raise NotApplicable("log p(x, z) is not finite at the optimiser's end: no mode to "
                            "expand around (an improper or unbounded posterior?); use 'is-guide'")
    if (info != 0).any():
        smallest = float(torch.linalg.eigvalsh(A).min())
        raise NotApplicable(
            f"the Hessian of log p(x, z) at the mode is not positive definite (smallest "
            f"curvature {smallest:.3g}): the posterior is flat, a ridge or a saddle there and has "
            "no Laplace approximation; use 'is-guide' or 'ais'")
