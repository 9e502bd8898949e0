"""Posterior draws for the estimators that start from them (``bridge``, ``chib``): K
independent HMC chains, each ending at one draw, and the checks that the draws are the
posterior's (their proposals: :mod:`inference.proposals`).

**The chains.** With the model's latents ``z = T(u)`` moved to ``R^D`` as in
:mod:`inference.path`, the chains target ``pi(u) ∝ p(x, T(u)) |det dT/du|`` -- the ``beta = 1``
end of the annealing path -- with the transitions of :mod:`inference.hmc`; one vectorized call
moves every chain and, in local scope, every datapoint's own posterior ``[C, B, D]``.

1. They start at the guide's draws (``start="guide"``: any guide that samples the model's
   latents, autoguides and point masses included; the prior's where it cannot), or at the
   prior's, annealed to the posterior over ``temperatures`` of the geometric path as ``ais``
   does (``start="prior"``; the mass matrix of step 2 refitted at every temperature).
2. Over the first half of ``warmup`` transitions the step size moves towards
   ``target_accept`` [1, 2] (then fixed at the geometric mean of its values since the last
   refit), and at 10%, 20% and 33% of the warm-up the chains' own spread sets a dense mass
   matrix: the chains move in ``v = L^-1 (u - m)``, ``m`` and ``L L^T`` the mean and
   covariance of the current states across chains (diagonal with fewer than ``2 (D + 1)``
   chains), which Stan adapts from each chain's history [3].
3. Over the second half the kernel is fixed: it leaves ``pi`` invariant, and the final state
   of each chain is its draw. The draws are independent across chains (up to the shared
   step size and mass matrix), so no autocorrelation enters the estimators' errors.

Options (:data:`OPTIONS`): ``start``, ``warmup``, ``temperatures`` (``start="prior"``),
``leapfrog_steps``, ``step_size`` (the first; then adapted), ``target_accept``, ``jit`` (the
path's densities compiled, one graph per chunk shape, :mod:`inference.compiled_path`). Cost per chain:
:func:`chain_cost`.

**Checks** (:class:`Checks`; a failed one is a caveat: the stderr is not vouched for).

* *Drift*: a fixed kernel started at stationarity keeps the mean of ``log pi``; the paired
  z-score of ``log pi`` between the start and the end of the second half, per datapoint
  (``drift_z``, the largest), above the Bonferroni bound of a 1e-3 false-alarm rate; or an
  acceptance below 5% there (``acceptance_fixed``): chains that barely move cannot drift.
* *Overlap*: PSIS k-hats [4] of ``p(x, z) / g(z)`` at the proposal's draws
  (``khat_proposal``) and of ``g / p`` at the posterior's (``khat_posterior``), ``g`` the
  estimator's proposal: where both tails are heavy, neither set of draws sees the regions
  that carry the other's mass, and no error measure computed from them can either.
* *Annealing* (``start="prior"``): the annealing's own AIS estimate [5] (``ais``,
  ``ais_stderr``) must agree with the estimator's within 4 combined stderr; it disagrees when
  the draws miss posterior mass or hold its modes in the wrong proportions.

What none of them sees: a mode no chain reaches (a unimodal guide's start on a multimodal
posterior, e.g. the pack's Gaussian shells). ``start="prior"`` reaches more modes but holds
them in the proportions of a short annealing only, and its draws fit worse on the other pack
targets.

References

[1] Neal (2011), MCMC using Hamiltonian dynamics, Handbook of Markov Chain Monte Carlo.
[2] Buchholz, Chopin, Jacob (2021), Adaptive tuning of Hamiltonian Monte Carlo within
    sequential Monte Carlo, Bayesian Analysis.
[3] Carpenter et al. (2017), Stan: a probabilistic programming language, J. Stat. Softw.
[4] Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto smoothed importance sampling, JMLR.
[5] Neal (2001), Annealed importance sampling, Statistics and Computing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Dict, List

import pyro
import torch

from inference.annealing import chunks, schedule
from inference.compiled_path import Graphs
from inference.problem import NotApplicable, Problem
from inference.hmc import adapt_step_size, transition
from inference.path import Path, check_continuous, draw, guide_start
from inference.proposals import Densities
from inference.replay import sample_sites
from inference.sampling import check_proposal
from inference.weights import WeightStats, khat_threshold, pareto_khat

#: the fewest draws: half fit the proposal, half enter the estimate
MIN_SAMPLES = 4
#: the options of the chains, with their defaults
OPTIONS = {"start": "guide", "warmup": 50, "temperatures": 20, "leapfrog_steps": 5,
           "step_size": 0.1, "target_accept": 0.65, "jit": False}


def chain_cost(o: Dict[str, Any]) -> int:
    """Evaluations of ``log p(x, z)`` and its gradient per chain."""
    L, W = int(o["leapfrog_steps"]), int(o["warmup"])
    anneal = (int(o["temperatures"]) - 1) * (L + 1) if o["start"] == "prior" else 0
    return anneal + 1 + W * L


def check(problem: Problem, method: str, o: Dict[str, Any]) -> None:
    """Refuse, in one line, what the chains or the proposal cannot run on."""
    if problem.num_samples < MIN_SAMPLES:
        raise ValueError(f"num_samples K={problem.num_samples} is too small for {method}: half "
                         f"the draws fit the proposal, half enter the estimate; use K >= {MIN_SAMPLES}")
    if o["start"] not in ("guide", "prior"):
        raise ValueError(f"start={o['start']!r}: use 'guide' or 'prior'")
    if o["proposal"] not in ("gaussian", "guide"):
        raise ValueError(f"proposal={o['proposal']!r}: use 'gaussian' or 'guide'")
    if int(o["warmup"]) < 2 or int(o["leapfrog_steps"]) < 1 or int(o["temperatures"]) < 1:
        raise ValueError("warmup must be >= 2, leapfrog_steps >= 1 and temperatures >= 1")
    if not o["step_size"] > 0 or not 0 < o["target_accept"] < 1:
        raise ValueError("step_size must be > 0 and 0 < target_accept < 1")
    check_continuous(problem, method, "HMC")
    idx = torch.arange(min(2, len(problem.data[0])), device=problem.data[0].device) \
        if problem.local else None
    if not Path(problem, "prior", 1, idx).sites:
        raise NotApplicable(f"{method}: the model has no latents to draw; use 'exact'")
    if o["proposal"] == "guide":
        try:
            _, _, guide_tr = draw(problem, 1, "guide", idx)
        except ValueError as err:
            if "has no site" not in str(err):
                raise
            raise NotApplicable(f"{method}: {err}; or use proposal='gaussian'") from None
        check_proposal(problem)
        if any(s["infer"].get("is_auxiliary") for _, s in sample_sites(guide_tr, latent_only=True)):
            raise NotApplicable(f"{method}: the guide draws through an auxiliary site (an autoguide) "
                                "and has no density at given latents; use proposal='gaussian'")


@dataclasses.dataclass
class Draws:
    """K posterior draws ``u`` ``[K, B, D]`` with ``log p(x, z)`` and ``log |det dT/du|``
    ``[K, B]`` (float64), and the chains' diagnostics."""

    u: torch.Tensor
    joint: torch.Tensor
    log_jac: torch.Tensor
    drift: torch.Tensor  # the paired z-score of log pi, [B]
    acceptance: float
    fixed_acceptance: torch.Tensor  # over the second half, [B]
    ais: Any = None  # the annealing's log weights [K, B] (start="prior")


def sample(problem: Problem, idx, counts: List[int], o: Dict[str, Any]) -> Draws:
    """``sum(counts)`` chains, in chunks of ``counts``, for the datapoints ``idx``."""
    us, joints, jacs, diffs, acc, weights, moved = [], [], [], [], [], [], []
    graphs = Graphs() if o["jit"] else None
    for count in counts:
        path = Path(problem, "prior", count, idx, graphs)
        x = guide_start(problem, path, idx, point=False) if o["start"] == "guide" else path.pack(path.initial)
        with path.frozen() if graphs is not None else contextlib.nullcontext():  # graphs' constants
            x, f, diff, a, fixed, log_w = _chains(path, x, o)
        weights.append(log_w)
        moved.append(fixed * count)
        _, lj = path.transformed(x)
        lj = (f.new_zeros(f.shape) + lj).double()
        us.append(x)
        joints.append(f.double() - lj)
        jacs.append(lj)
        diffs.append(diff.double())
        acc.append(a)
    d = torch.cat(diffs)
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    z = d.mean(0) / (d.std(0) / math.sqrt(len(d))).clamp(min=1e-300) if len(d) > 1 else d[0] * 0
    ais = None if weights[0] is None else torch.cat(weights)
    return Draws(torch.cat(us), torch.cat(joints), torch.cat(jacs), z,
                 float(torch.stack(acc).mean()), sum(moved) / sum(counts), ais)


def _chains(path: Path, x: torch.Tensor, o: Dict[str, Any]):
    """Anneal (prior start), then ``warmup`` transitions at ``beta = 1``: the first half adapts
    the step size and the mass matrix, the second keeps them fixed. Returns the final states,
    their ``log pi``, its change over the second half ``[C, B]``, the mean acceptance, that of
    the second half per datapoint ``[B]`` and the annealing's AIS log weights (``None`` from
    the guide)."""
    L, target, W = int(o["leapfrog_steps"]), o["target_accept"], int(o["warmup"])
    step = torch.full((path.B,), float(o["step_size"]), dtype=x.dtype, device=x.device)
    frame, accept, log_w = _Whitened(x), [], None
    v = frame.v(x)
    if o["start"] == "prior":  # AIS along the path, the mass matrix refitted at each temperature
        betas = schedule(int(o["temperatures"]))
        _, _, diff = path.potential(0.0)(x)
        log_w = torch.zeros_like(diff, dtype=torch.float64)
        for t in range(1, len(betas)):
            log_w = log_w + float(betas[t] - betas[t - 1]) * diff.double()
            pot = frame.potential(path.potential(float(betas[t])))
            v = frame.refit(frame.u(v))
            f, g, diff = pot(v)
            if t < len(betas) - 1:
                v, f, g, diff, prob = transition(v, f, g, diff, pot, step, L)
                step = adapt_step_size(step, prob, target)
    pot = frame.potential(path.potential(1.0))
    f, g, aux = pot(v)
    windows, mid, steps, fixed = {max(1, W // 10), max(1, W // 5), max(1, W // 3)}, f, [], 0.0
    for t in range(W):
        if t in windows:
            v = frame.refit(frame.u(v))
            f, g, aux = pot(v)  # not counted: the same point, its gradient in the new frame
            step, steps = torch.full_like(step, 0.5), []
        if t == W // 2:  # the kernel fixed from here, its step the mean of the last window's
            mid, step = f, torch.stack(steps).log().mean(0).exp() if steps else step
        v, f, g, aux, prob = transition(v, f, g, aux, pot, step, L)
        if t < W // 2:
            step = adapt_step_size(step, prob, target, rate=1.0)
            steps.append(step)
        else:
            fixed = fixed + prob.mean(0) / (W - W // 2)
        accept.append(prob.mean())
    return frame.u(v).detach(), f, f - mid, torch.stack(accept).mean(), fixed, log_w


class _Whitened:
    """HMC's coordinates ``v = L^-1 (u - m)``: the mass matrix ``(L L^T)^-1`` from the chains'
    spread, per datapoint (dense with at least ``2 (D + 1)`` chains, else diagonal; kept where
    the fit is not positive definite)."""

    def __init__(self, x: torch.Tensor):
        C, B, D = x.shape
        self.m = x.new_zeros(B, D)
        self.chol = torch.eye(D, dtype=x.dtype, device=x.device).expand(B, D, D)

    def u(self, v: torch.Tensor) -> torch.Tensor:
        return self.m + (self.chol @ v.unsqueeze(-1)).squeeze(-1)

    def v(self, u: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.chol, (u - self.m).unsqueeze(-1), upper=False).squeeze(-1)

    def potential(self, pot):
        def fn(v):
            f, g, aux = pot(self.u(v))
            return f, (self.chol.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1), aux
        return fn

    def refit(self, x: torch.Tensor) -> torch.Tensor:
        """Refit to the chains at ``x`` ``[C, B, D]``; returns their new coordinates."""
        C, B, D = x.shape
        if C >= 4:
            c = x.double() - x.double().mean(0)
            cov = torch.einsum("cbi,cbj->bij", c, c) / (C - 1)
            diag = torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
            cov = (cov if C >= 2 * (D + 1) else diag) + 1e-8 * diag
            new, info = torch.linalg.cholesky_ex(cov)
            ok = (info == 0) & torch.isfinite(new).flatten(1).all(-1) & (diag.flatten(1) > 0).any(-1)
            self.chol = torch.where(ok[:, None, None], new.to(x.dtype), self.chol)
            self.m = torch.where(ok[:, None], x.mean(0), self.m)
        return self.v(x)


class Checks:
    """The checks of the module docstring over the chunks of datapoints: the chains' drift,
    the overlap of proposal and posterior, and (``start="prior"``) the annealing's own
    estimate. :meth:`add` takes a chunk's draws and its log ratios ``log p(x, z) - log g(z)``
    at the posterior's (``l1``) and the proposal's (``l2``) draws."""

    def __init__(self, budget: int):
        self.budget, self.drift, self.moved, self.k_prop, self.k_post, self.ais = budget, [], [], [], [], []

    def add(self, draws: Draws, l1: torch.Tensor, l2: torch.Tensor) -> None:
        self.drift.append(draws.drift)
        self.moved.append(draws.fixed_acceptance)
        self.k_prop.append(self._khat(l2))
        self.k_post.append(self._khat(-l1))
        self.threshold = min(khat_threshold(len(l1)), khat_threshold(len(l2)))
        if draws.ais is not None:
            st = WeightStats(len(draws.ais))
            st.update(draws.ais)
            self.ais.append(st)

    def _khat(self, lw: torch.Tensor) -> torch.Tensor:
        st = WeightStats(len(lw))
        st.update(torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw))
        return pareto_khat(st.top, len(lw), self.budget)

    def finish(self, value: float, stderr: float):
        """``(caveats, diagnostics)`` for an estimate ``value +- stderr`` (totals)."""
        z, kp, kq = torch.cat(self.drift), torch.cat(self.k_prop), torch.cat(self.k_post)
        bound = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - 5e-4 / z.numel())))
        diag = dict(drift_z=float(z.abs().max()), khat_proposal=float(kp.max()),
                    khat_posterior=float(kq.max()),
                    acceptance_fixed=float(torch.cat(self.moved).min()))
        out = []
        if diag["drift_z"] > bound or diag["acceptance_fixed"] < 0.05:
            out.append(f"the chains did not settle in warm-up (drift z = {diag['drift_z']:.1f}, "
                       f"bound {bound:.1f}; acceptance {diag['acceptance_fixed']:.2f}): raise warmup")
        both = torch.minimum(kp, kq)
        if (both > self.threshold).any():
            out.append(f"the proposal and the posterior draws overlap too little (k-hat of p/g at "
                       f"the proposal's draws {float(kp.max()):.2f} and of g/p at the posterior's "
                       f"{float(kq.max()):.2f}): the error measure misses what neither sees")
        if self.ais:
            ais = float(sum(s.log_mean().sum() for s in self.ais))
            se = float(sum(s.is_stderr().pow(2).sum() for s in self.ais)) ** 0.5
            diag.update(ais=ais, ais_stderr=se)
            if abs(value - ais) > 4 * math.hypot(stderr, se):
                out.append(f"the annealing's own estimate {ais:.4g} +- {se:.2g} disagrees: the "
                           "draws miss posterior mass or hold its modes in the wrong proportions; "
                           "raise temperatures")
        return out, diag


def from_draws(problem: Problem, o: Dict[str, Any], n1: int, compute):
    """The :class:`inference.Estimate` fields of an estimator from posterior draws, with
    ``compute(draws, densities) -> (log p(x) [B], its variance [B], {name: [B]}, l1, l2)`` per
    chunk of datapoints (``l1``, ``l2`` for the :class:`Checks`); returns them and the
    ``{name: [N]}`` the chunks computed besides."""
    K = problem.num_samples
    plan_, (kc, bc) = chunks(problem, "prior")
    parts, acc, evals, checks = [], [], 0, Checks(problem.memory_budget)
    with pyro.validation_enabled(False):
        for idx, counts in plan_:
            draws = sample(problem, idx, counts, o)
            dens = Densities(problem, idx, kc)
            value, var, extra, l1, l2 = compute(draws, dens)
            parts.append((value, var, extra))
            evals = K * chain_cost(o) + dens.evaluations
            checks.add(draws, l1, l2)
            acc.append(draws.acceptance)
    value, var = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    extra = {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
    caveats, diag = checks.finish(float(value.sum()), float(var.sum().sqrt()))
    out = dict(num_samples=K, log_evidence=float(value.sum()), stderr=float(var.sum().sqrt()),
               ess=float(n1), khat=math.nan, caveats=caveats,
               diagnostics=dict(n_estimate=n1, n_proposal=n1, n_fit=K - n1, evaluations=evals,
                                acceptance_mean=sum(acc) / len(acc), chunk_particles=kc,
                                chunk_datapoints=bc, **diag))
    if problem.local:
        out.update(per_datapoint=value, stderr_per_datapoint=var.sqrt(),
                   ess_per_datapoint=torch.full_like(value, float(n1)),
                   khat_per_datapoint=torch.full_like(value, math.nan))
    return out, extra
