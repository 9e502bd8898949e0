"""``nested``: nested sampling over the prior, with its own error estimate and a check of its
constrained moves.

The evidence is a one-dimensional integral over the prior volume [1]:

    Z = int L(z) p(z) dz = int_0^1 L(X) dX,    X(l) = P_prior(L(z) > l),    L(z) = p(x | z).

K live points are drawn from the prior. Each iteration removes the ``b`` live points of lowest
likelihood and replaces them by draws from the prior constrained to ``L > L*``, ``L*`` the
highest removed likelihood. Removing the lowest of ``n`` live points shrinks the volume by
``t ~ Beta(n, 1)``, the largest of ``n`` uniforms; removing ``b`` at once is removing them one
by one with ``n_i = K, K - 1, ..., K - b + 1`` live points (a varying number of live points, as
in dynamic nested sampling [2]; ``b = 1`` is Skilling's algorithm). With ``X_i = t_i X_{i-1}``
at its expectation, ``E[t_i] = n_i / (n_i + 1)``,

    Z_hat = sum_i L_i E[X_{i-1}] / (n_i + 1)  +  E[X_end] mean(L_live),

the last term the live points left at the end, uniform in the remaining volume. The run stops
when the most the live points can add, ``X max L_live``, is below ``stop_fraction`` of Z_hat.

**Error.** The volumes are known only in distribution; the error of ``log Z`` is that of
``log X`` where the posterior lies, ``sqrt(H / K)`` [1], with ``H = E_post[log L] - log Z``
the information (the posterior's KL divergence from the prior; ``diagnostics["information"]``)
and K, for ``b > 1``, the effective number ``sum 1/n_i / sum 1/n_i^2`` over one iteration
(``Var log t_i = 1 / n_i^2``, ``E log t_i = -1 / n_i``).

**Constrained moves.** A new point starts at a surviving live point picked at random (a draw
of the constrained prior) and makes ``mcmc_steps`` random-walk Metropolis steps [1, 3] in the
unconstrained space ``u`` (``z = T(u)`` by ``biject_to``, the prior density there
``p(T(u)) |det dT/du|``: :mod:`inference.path`), proposing ``u + s C eps``, accepting where
the prior's Metropolis ratio allows and ``L > L*``; ``s`` is adapted between iterations
towards acceptance 1/4. ``C C^T`` is the covariance of the half of the survivors (in random
halves) the chain did not start from: the kernel must not depend on its own start, or it
leaves nothing invariant (with all survivors' covariance, a 32-D Gaussian came out 7.7 nats
high). Each step leaves the constrained prior invariant; too few leave the new point close to
where it started, and the estimate biased high.

**Insertion-rank test** [4]. Were the new points independent draws of the constrained prior,
each one's rank among the ``m = K - b`` survivors' likelihoods would be uniform on ``{0..m}``.
The Kolmogorov-Smirnov distance of all ranks from that uniform, with ``n`` ranks counted as
``n / (1 + (b - 1) / (m + 2))`` (b new points ranked against the same survivors; 1 for b = 1),
gives ``diagnostics["insertion_pvalue"]`` [5]; below ``ALPHA`` the estimate is not vouched for.

Options: ``mcmc_steps`` (random-walk steps per new point; default ``None``: twice the latent
dimension D, at least 20 -- raise it where the walk mixes slowly, e.g. separated modes),
``batch`` (the fraction of the live points replaced per iteration, moved together in one
vectorized walk; default 0.5; ``1 / K`` replaces one at a time), ``stop_fraction`` (default
0.01). K (``num_samples``) is the number of live points per datapoint (local scope: one run per
datapoint, a chunk's datapoints in lockstep, each stopping at its own rule) or in all (global
scope); it should exceed 4 D, else the proposals are diagonal. Cost: ``K + iterations b
mcmc_steps`` evaluations of ``log p(x, z)`` per datapoint, without gradients; the iterations,
about ``(H + log(1/stop_fraction) + a few) / log(K / (K - b))``, are known only as it runs, so
:meth:`Nested.evaluations` is ``None`` and the count is ``diagnostics["evaluations"]``.

**Limits.** The insertion test sees some failures of the moves, not all: on the 30-D LogGamma
with 10 steps per point (K = 40) the estimate was 8 to 12 nats high with the test passed.
The prior must be proper; latents continuous (or enumerated per datapoint); a likelihood with
plateaus (ties in L) breaks the volume estimates.

References

[1] Skilling (2006), Nested sampling for general Bayesian computation, Bayesian Analysis.
[2] Higson, Handley, Hobson, Lasenby (2019), Dynamic nested sampling: an improved algorithm
    for parameter estimation and evidence calculation, Statistics and Computing.
[3] Speagle (2020), dynesty: a dynamic nested sampling package for estimating Bayesian
    posteriors and evidences, MNRAS.
[4] Fowlie, Handley, Su (2020), Nested sampling cross-checks using order statistics, MNRAS.
[5] Stephens (1970), Use of the Kolmogorov-Smirnov, Cramer-von Mises and related statistics
    without extensive tables, JRSS B.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pyro
import torch

from inference.annealing import check_target, plan
from inference.problem import Estimator, NotApplicable, Problem, number, register
from inference.path import Path

#: the insertion-rank test's level: a smaller p-value puts a caveat on the estimate
ALPHA = 0.01
#: iterations after which a run that has not met its stopping rule is an error
MAX_ITERATIONS = 100_000
#: the fewest random-walk steps per new point by default (else twice the latent dimension)
MIN_STEPS = 20
#: the random walk's scale is adapted towards this acceptance
TARGET_ACCEPT = 0.25


@register
class Nested(Estimator):
    name = "nested"
    summary = "nested sampling over the prior: K live points, constrained random-walk moves"
    weighted = False
    min_samples = 2
    options = {"mcmc_steps": None, "batch": 0.5, "stop_fraction": 0.01}
    checks = {"mcmc_steps": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                     and v >= 1), "None or an integer >= 1"),
              "batch": number(0, 1), "stop_fraction": number(0, 1)}

    def evaluations(self, num_samples: int, **options: Any) -> None:
        return None  # the number of iterations is known only as it runs

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        o = {**self.options, **options}
        steps, K = o["mcmc_steps"], problem.num_samples
        if K < self.min_samples:
            raise ValueError(f"nested sampling needs K >= {self.min_samples} live points "
                             f"(num_samples), got {K}")
        b = min(K - 1, max(1, round(o["batch"] * K)))
        check_target(problem, "prior")
        kc, bc = plan(problem, "prior", per_chain=2.0)
        groups = (torch.arange(len(problem.data[0]), device=problem.data[0].device).split(bc)
                  if problem.local else [None])
        with pyro.validation_enabled(False):
            runs = [_nested(problem, idx, K, b, kc, steps, o["stop_fraction"]) for idx in groups]
        log_z, info, ess = (torch.cat([r[k] for r in runs]) for k in ("log_z", "info", "ess"))
        n = K - torch.arange(b, dtype=torch.float64)
        k_eff = float((1 / n).sum() / (1 / n**2).sum())
        err = (info.clamp(min=0) / k_eff).sqrt()
        ranks = sum(r["ranks"] for r in runs)
        distance, pvalue = insertion_test(ranks, b)
        diag = dict(information=float(info.sum()), live_points=K, batch=b, mcmc_steps=runs[0]["steps"],
                    effective_live_points=k_eff, iterations=max(r["iterations"] for r in runs),
                    evaluations=max(r["evaluations"] for r in runs),
                    acceptance_mean=sum(r["acceptance"] for r in runs) / len(runs),
                    insertion_ks=distance, insertion_pvalue=pvalue, chunk_particles=kc,
                    chunk_datapoints=bc)
        caveats = []
        if pvalue < ALPHA:
            caveats.append(f"the insertion ranks of new live points are not uniform (KS p = "
                           f"{pvalue:.2g}): the constrained moves did not give independent draws "
                           "from the prior; raise mcmc_steps")
        out = dict(num_samples=K, log_evidence=float(log_z.sum()),
                   stderr=float(err.pow(2).sum().sqrt()), ess=float(ess.mean()), khat=math.nan,
                   diagnostics=diag, caveats=caveats)
        if problem.local:
            out.update(per_datapoint=log_z, stderr_per_datapoint=err, ess_per_datapoint=ess,
                       khat_per_datapoint=torch.full_like(log_z, math.nan))
        return out


class _Sums:
    """Streaming ``log Z``, ``E_post[log L]`` and ``log sum (w L)^2`` from terms ``a = log (w L)``."""

    def __init__(self, like: torch.Tensor):
        self.log_z = torch.full_like(like, -math.inf)
        self.lse2 = self.log_z.clone()
        self.mean_ll = torch.zeros_like(like)

    def add(self, a: torch.Tensor, ll: torch.Tensor) -> None:
        new = torch.logaddexp(self.log_z, a.logsumexp(0))
        share = torch.exp(a - new).nan_to_num(0.0)
        self.mean_ll = (self.mean_ll * torch.exp(self.log_z - new).nan_to_num(0.0)
                        + (share * torch.where(share > 0, ll, torch.zeros_like(ll))).sum(0))
        self.lse2 = torch.logaddexp(self.lse2, (2 * a).logsumexp(0))
        self.log_z = new


def _nested(problem: Problem, idx: Optional[torch.Tensor], K: int, b: int, kc: int, steps: int,
            stop: float) -> Dict[str, Any]:
    """One nested-sampling run per datapoint of ``idx`` (one run in global scope), in lockstep."""
    paths: Dict[int, Path] = {}

    def evaluate(x):  # [C, B, D] -> log L and the prior's log density in u, [C, B] each
        ls, ps = [], []
        for piece in x.split(kc):
            if piece.shape[0] not in paths:
                paths[piece.shape[0]] = Path(problem, "prior", piece.shape[0], idx)
            start, joint, log_jac = paths[piece.shape[0]].densities(piece)
            ls.append(torch.nan_to_num(joint - start, nan=-math.inf))
            ps.append(start + log_jac)
        return torch.cat(ls), torch.cat(ps)

    pieces = [Path(problem, "prior", c, idx) for c in [kc] * (K // kc) + [K % kc] if c]
    x = torch.cat([p.pack(p.initial) for p in pieces])
    if x.shape[-1] == 0:
        raise NotApplicable("the model has no continuous latent to integrate over; its evidence "
                            "is its likelihood: use method='exact' or 'is-prior'")
    l, p = evaluate(x)
    dev, D, B = x.device, x.shape[-1], x.shape[1]
    steps = max(MIN_STEPS, 2 * D) if steps is None else steps
    n = K - torch.arange(b, dtype=torch.float64, device=dev)  # live points at each removal
    log_t = torch.log(n / (n + 1))
    width = torch.cat([log_t.new_zeros(1), log_t.cumsum(0)[:-1]]) - torch.log(n + 1)
    log_x = torch.zeros(B, dtype=torch.float64, device=dev)
    sums = _Sums(log_x)
    scale = torch.full((B,), 2.38 / math.sqrt(D), dtype=x.dtype, device=dev)
    ranks = torch.zeros(K - b + 1, dtype=torch.long, device=dev)
    accepted, evaluations = 0.0, K
    active = torch.ones(B, dtype=torch.bool, device=dev)  # a datapoint stops at its own rule
    for it in range(1, MAX_ITERATIONS + 1):
        order = l.argsort(0)
        dead = l.gather(0, order[:b])
        a = log_x + width.unsqueeze(-1) + dead.double()
        sums.add(torch.where(active, a, torch.full_like(a, -math.inf)), dead.double())
        log_x = torch.where(active, log_x + log_t.sum(), log_x)
        keep = order[b:]
        # the survivors in random order, in two halves; a chain starting in one half moves
        # with the other half's covariance, which is independent of its start
        shuffled = keep.gather(0, torch.rand(keep.shape, device=dev).argsort(0))
        half = (K - b) // 2
        pick = torch.randint(K - b, (b, B), device=dev)
        parent = shuffled.gather(0, pick)
        cov = [ensemble_cholesky(x.gather(0, part.unsqueeze(-1).expand(-1, -1, D)))
               for part in (shuffled[half:], shuffled[:half])]
        new, nl, npr, rate = _walk(evaluate, x.gather(0, parent.unsqueeze(-1).expand(-1, -1, D)),
                                   l.gather(0, parent), p.gather(0, parent), dead[-1],
                                   scale, cov, pick < half, steps)
        evaluations += b * steps
        accepted += float(rate[active].mean())
        scale = (scale * torch.exp(2 * (rate - TARGET_ACCEPT))).clamp(1e-4, 10.0)
        ranks += torch.bincount(_ranks(l.gather(0, keep), nl)[:, active].reshape(-1),
                                minlength=K - b + 1)
        slots = order[:b]
        keep_old = (~active).unsqueeze(0)
        x = torch.where(keep_old.unsqueeze(-1), x,
                        x.scatter(0, slots.unsqueeze(-1).expand(-1, -1, D), new))
        l = torch.where(keep_old, l, l.scatter(0, slots, nl))
        p = torch.where(keep_old, p, p.scatter(0, slots, npr))
        active &= log_x + l.max(0).values.double() - sums.log_z >= math.log(stop)
        if not active.any():
            break
    else:
        raise RuntimeError(f"nested sampling did not meet its stopping rule in {MAX_ITERATIONS} "
                           "iterations; raise stop_fraction or check the likelihood is bounded")
    sums.add(log_x + l.double() - math.log(K), l.double())  # the live points left
    return dict(log_z=sums.log_z, info=sums.mean_ll - sums.log_z,
                ess=torch.exp(2 * sums.log_z - sums.lse2), ranks=ranks.cpu(), iterations=it,
                evaluations=evaluations, acceptance=accepted / it, steps=steps)


def _walk(evaluate, x, l, p, threshold, scale, chol, first, steps: int):
    """``steps`` random-walk Metropolis steps of the prior in u constrained to ``L > threshold``,
    every chain at once, a chain with ``first`` set proposing with ``chol[0]``, the others with
    ``chol[1]``; returns the states, their log L and log prior, and the acceptance rate per
    datapoint."""
    accepted = torch.zeros_like(l)
    first = first.unsqueeze(-1)
    for _ in range(steps):
        eps = torch.randn_like(x)
        step = torch.where(first, torch.einsum("bed,cbd->cbe", chol[0], eps),
                           torch.einsum("bed,cbd->cbe", chol[1], eps))
        prop = x + scale.unsqueeze(-1) * step
        pl, pp = evaluate(prop)
        ok = (pl > threshold) & (torch.rand_like(pp).log() < pp - p)
        x = torch.where(ok.unsqueeze(-1), prop, x)
        l, p = torch.where(ok, pl, l), torch.where(ok, pp, p)
        accepted += ok.to(accepted.dtype)
    return x, l, p, accepted.mean(0) / steps


def _ranks(survivors: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Each new point's rank ``[b, B]`` among the survivors' log likelihoods ``[m, B]``, ties
    (a walk that never moved) broken at random."""
    s = survivors.sort(0).values.T.contiguous()
    lo = torch.searchsorted(s, new.T.contiguous())
    hi = torch.searchsorted(s, new.T.contiguous(), right=True)
    return (lo + (torch.rand(lo.shape, device=lo.device) * (hi - lo + 1)).long()).T


def ensemble_cholesky(points: torch.Tensor) -> torch.Tensor:
    """A Cholesky factor ``[B, D, D]`` of the covariance of ``points [m, B, D]``: its diagonal
    where there are too few points to estimate it (m <= 2 D; a dense estimate from as few made
    the 30-D LogGamma's estimate twice as biased) or it is not positive definite, the identity
    where a coordinate does not vary or m < 2 (m = 0: one survivor, the other half empty)."""
    m, _, D = points.shape
    if m < 2:
        return torch.diag_embed(points.new_ones(points.shape[1:]))
    c = points - points.mean(0)
    cov = torch.einsum("mbd,mbe->bde", c, c) / (m - 1)
    var = cov.diagonal(dim1=-2, dim2=-1)
    var = torch.where(var > 0, var, torch.ones_like(var))
    diag = torch.diag_embed(var.sqrt())
    if m <= 2 * D:
        return diag
    chol, info = torch.linalg.cholesky_ex(cov + torch.diag_embed(1e-6 * var))
    return torch.where((info != 0).view(-1, 1, 1), diag, chol)


def insertion_test(ranks: torch.Tensor, b: int) -> tuple:
    """``(KS distance, p-value)`` of insertion-rank counts ``ranks`` (ranks ``0..m`` among ``m``
    survivors) against the uniform, for ``b`` new points per iteration (module docstring)."""
    counts = ranks.double()
    n, m = float(counts.sum()), len(counts) - 1
    if n == 0:
        return math.nan, 1.0
    ecdf = counts.cumsum(0) / n
    uniform = torch.arange(1, m + 2, dtype=torch.float64) / (m + 1)
    distance = float((ecdf - uniform).abs().max())
    return distance, kolmogorov_sf(distance, n / (1 + (b - 1) / (m + 2)))


def kolmogorov_sf(distance: float, n: float) -> float:
    """``P(D_n > distance)`` for the KS distance of ``n`` draws, by Stephens' approximation [5]
    ``Q((sqrt n + 0.12 + 0.11 / sqrt n) distance)``, ``Q(l) = 2 sum_j (-1)^(j-1) exp(-2 j^2 l^2)``."""
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * distance
    if lam < 0.3:
        return 1.0
    q = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return min(1.0, max(0.0, q))
