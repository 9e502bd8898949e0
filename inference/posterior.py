"""Posterior draws for the estimators that start from them (``bridge``, ``chib``): K
independent HMC chains, each ending at one draw, and the proposals those estimators compare
the posterior with.

**The chains.** With the model's latents ``z = T(u)`` moved to ``R^D`` as in
:mod:`inference.path`, the chains target ``pi(u) ∝ p(x, T(u)) |det dT/du|`` -- the ``beta = 1``
end of the annealing path -- with the transitions of :mod:`inference.hmc`; one vectorized call
moves every chain and, in local scope, every datapoint's own posterior ``[C, B, D]``.

1. They start at the guide's draws (``start="guide"``: any guide that samples the model's
   latents, autoguides and point masses included; the prior's where it cannot), or at the
   prior's, annealed to the posterior over ``temperatures`` of the geometric path as ``ais``
   does (``start="prior"``).
2. Over the first half of ``warmup`` transitions the step size moves towards
   ``target_accept`` [1, 2], and at 10%, 20% and 33% of the warm-up the chains' own spread
   sets a dense mass matrix: the chains move in ``v = L^-1 (u - m)``, ``m`` and ``L L^T`` the
   mean and covariance of the current states across chains (diagonal with fewer than
   ``2 (D + 1)`` chains), which Stan adapts from each chain's history [3].
3. Over the second half the kernel is fixed: it leaves ``pi`` invariant, and the final state
   of each chain is its draw. The draws are independent across chains (up to the shared
   step size and mass matrix), so no autocorrelation enters the estimators' errors.

**Drift check.** A fixed kernel started at stationarity keeps the mean of ``log pi``; the
paired z-score of ``log pi`` between the start and the end of the second half, per datapoint,
is ``drift_z`` (its largest absolute value), and above the Bonferroni bound of a 1e-3
false-alarm rate the stderr is not vouched for (raise ``warmup``).

**Relabelling.** For a target whose ``symmetries`` declare exchangeable components (global
scope), :func:`relabellings` maps each draw to its ``C!`` relabelled copies, in ``u``; the
estimators symmetrise over them, as ``is-guide`` does [4].

References

[1] Neal (2011), MCMC using Hamiltonian dynamics, Handbook of Markov Chain Monte Carlo.
[2] Buchholz, Chopin, Jacob (2021), Adaptive tuning of Hamiltonian Monte Carlo within
    sequential Monte Carlo, Bayesian Analysis.
[3] Carpenter et al. (2017), Stan: a probabilistic programming language, J. Stat. Softw.
[4] Frühwirth-Schnatter (2004), Estimating marginal likelihoods for mixture and Markov
    switching models using bridge sampling techniques, Econometrics Journal.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Dict, List

import torch
from torch.distributions import MultivariateNormal

from inference.annealing import schedule
from inference.estimators import NotApplicable, Problem
from inference.estimators.laplace import check_continuous, guide_start
from inference.hmc import adapt_step_size, transition
from inference.path import Path, draw
from inference.replay import sample_sites
from inference.sampling import check_proposal

#: the options of the chains, with their defaults
OPTIONS = {"start": "guide", "warmup": 50, "temperatures": 20, "leapfrog_steps": 5,
           "step_size": 0.1, "target_accept": 0.65, "jit": False}


def chain_cost(o: Dict[str, Any]) -> int:
    """Evaluations of ``log p(x, z)`` and its gradient per chain."""
    L, W = int(o["leapfrog_steps"]), int(o["warmup"])
    anneal = (int(o["temperatures"]) - 1) * (L + 1) if o["start"] == "prior" else 0
    return anneal + 1 + W * L


def check(problem: Problem, method: str, o: Dict[str, Any]) -> int:
    """Refuse, in one line, what the chains cannot run on; returns D, the latent dimension."""
    if o["start"] not in ("guide", "prior"):
        raise ValueError(f"start={o['start']!r}: use 'guide' or 'prior'")
    if o["proposal"] not in ("gaussian", "guide"):
        raise ValueError(f"proposal={o['proposal']!r}: use 'gaussian' or 'guide'")
    if int(o["warmup"]) < 2 or int(o["leapfrog_steps"]) < 1 or int(o["temperatures"]) < 1:
        raise ValueError("warmup must be >= 2, leapfrog_steps >= 1 and temperatures >= 1")
    if not o["step_size"] > 0 or not 0 < o["target_accept"] < 1:
        raise ValueError("step_size must be > 0 and 0 < target_accept < 1")
    check_continuous(problem, method, "HMC")
    idx = first_datapoints(problem)
    path = Path(problem, "prior", 1, idx)
    if not path.sites:
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
    return path.pack(path.initial).shape[-1]


def first_datapoints(problem: Problem):
    return torch.arange(min(2, len(problem.data[0])), device=problem.data[0].device) if problem.local else None


@dataclasses.dataclass
class Draws:
    """K posterior draws ``u`` ``[K, B, D]`` with ``log p(x, z)`` and ``log |det dT/du|``
    ``[K, B]`` (float64), and the chains' diagnostics."""

    u: torch.Tensor
    joint: torch.Tensor
    log_jac: torch.Tensor
    drift: torch.Tensor  # the paired z-score of log pi, [B]
    acceptance: float


def sample(problem: Problem, idx, counts: List[int], o: Dict[str, Any]) -> Draws:
    """``sum(counts)`` chains, in chunks of ``counts``, for the datapoints ``idx``."""
    us, joints, jacs, diffs, acc = [], [], [], [], []
    for count in counts:
        path = Path(problem, "prior", count, idx, jit=bool(o["jit"]))
        x = guide_start(problem, path, idx, point=False) if o["start"] == "guide" else path.pack(path.initial)
        x, f, diff, a = _chains(path, x, o)
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
    return Draws(torch.cat(us), torch.cat(joints), torch.cat(jacs), z,
                 float(torch.stack(acc).mean()))


def _chains(path: Path, x: torch.Tensor, o: Dict[str, Any]):
    """Anneal (prior start), then ``warmup`` transitions at ``beta = 1``: the first half adapts
    the step size and the mass matrix, the second keeps them fixed. Returns the final states,
    their ``log pi``, its change over the second half ``[C, B]`` and the mean acceptance."""
    L, target, W = int(o["leapfrog_steps"]), o["target_accept"], int(o["warmup"])
    step = torch.full((path.B,), float(o["step_size"]), dtype=x.dtype, device=x.device)
    if o["start"] == "prior":
        for beta in schedule(int(o["temperatures"]))[1:-1]:
            pot = path.potential(float(beta))
            f, g, d = pot(x)
            x, f, g, d, prob = transition(x, f, g, d, pot, step, L)
            step = adapt_step_size(step, prob, target)
    pot = path.potential(1.0)
    f, g, aux = pot(x)
    D = x.shape[-1]
    m = x.new_zeros(x.shape[1:])
    chol = torch.eye(D, dtype=x.dtype, device=x.device).expand(path.B, D, D)
    windows, accept, mid = {max(1, W // 10), max(1, W // 5), max(1, W // 3)}, [], f
    v = x
    for t in range(W):
        if t in windows:
            m, chol, v, g = _mass(x, g, m, chol, v)
            step = torch.full_like(step, 0.5)
        if t == W // 2:
            mid = f

        def whitened(v):
            fv, gu, a = pot(m + (chol @ v.unsqueeze(-1)).squeeze(-1))
            return fv, (chol.transpose(-1, -2) @ gu.unsqueeze(-1)).squeeze(-1), a

        v, f, g, aux, prob = transition(v, f, g, aux, whitened, step, L)
        x = m + (chol @ v.unsqueeze(-1)).squeeze(-1)
        if t < W // 2:
            step = adapt_step_size(step, prob, target)
        accept.append(prob.mean())
    return x.detach(), f, f - mid, torch.stack(accept).mean()


def _mass(x, g, m, chol, v):
    """The mean and Cholesky factor of the chains' covariance per datapoint (dense with at least
    2 (D + 1) chains, else diagonal; kept where it is not positive definite), and the state and
    gradient in the new coordinates (``g`` is the gradient in the old ``v``)."""
    C, B, D = x.shape
    if C < 4:
        return m, chol, v, g
    grad_u = torch.linalg.solve_triangular(chol.transpose(-1, -2), g.unsqueeze(-1), upper=True).squeeze(-1)
    xd = x.double()
    mean = xd.mean(0)
    c = xd - mean
    cov = torch.einsum("cbi,cbj->bij", c, c) / (C - 1)
    diag = torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
    cov = cov if C >= 2 * (D + 1) else diag
    cov = C / (C + 5) * cov + 5 / (C + 5) * 1e-3 * diag  # shrunk, as Stan does [3]
    new, info = torch.linalg.cholesky_ex(cov)
    ok = (info == 0) & torch.isfinite(new).flatten(1).all(-1) & (cov.diagonal(dim1=-2, dim2=-1) > 0).all(-1)
    chol = torch.where(ok[:, None, None], new.to(x.dtype), chol)
    m = torch.where(ok[:, None], mean.to(x.dtype), m)
    v = torch.linalg.solve_triangular(chol, (x - m).unsqueeze(-1), upper=False).squeeze(-1)
    return m, chol, v, (chol.transpose(-1, -2) @ grad_u.unsqueeze(-1)).squeeze(-1)


def drift_caveats(z: torch.Tensor) -> List[str]:
    """The drift check of the module docstring, one sentence if it fails."""
    B = z.numel()
    bound = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - 5e-4 / B)))
    worst = float(z.abs().max())
    if worst > bound:
        return [f"the chains' log density still drifted after warm-up (z = {worst:.1f} > "
                f"{bound:.1f}): the draws may not be from the posterior; raise warmup"]
    return []


class Densities:
    """``log p(x, z)`` and the proposals' densities at given ``u`` ``[n, B, D]`` for the
    datapoints ``idx``, in chunks of ``chunk`` chains; every model evaluation is counted."""

    def __init__(self, problem: Problem, idx, chunk: int):
        self.problem, self.idx, self.chunk = problem, idx, chunk
        self._paths: Dict[Any, Path] = {}
        self.evaluations = 0

    def path(self, n: int, start: str = "prior") -> Path:
        if (n, start) not in self._paths:
            self._paths[n, start] = Path(self.problem, start, n, self.idx)
        return self._paths[n, start]

    def joint(self, u: torch.Tensor):
        """``log p(x, T(u))`` and ``log |det dT/du|`` (float64, ``-inf`` where not finite)."""
        out = []
        for part in u.split(self.chunk):
            _, j, lj = self.path(len(part)).densities(part)
            self.evaluations += len(part)
            j = torch.where(torch.isfinite(j), j, torch.full_like(j, -math.inf)).double()
            out.append((j, (j.new_zeros(j.shape) + lj).double()))
        return torch.cat([a for a, _ in out]), torch.cat([b for _, b in out])

    def log_jac(self, u: torch.Tensor) -> torch.Tensor:
        parts = [self.path(len(p)).transformed(p)[1] for p in u.split(self.chunk)]
        return torch.cat([u.new_zeros(len(p), u.shape[1]).double() + lj
                          for p, lj in zip(u.split(self.chunk), parts)])

    def relabel(self, u: torch.Tensor, perm) -> torch.Tensor:
        """``u`` of the draws with their exchangeable components permuted by ``perm``."""
        sym, out = self.problem.target.symmetries, []
        p = torch.tensor(perm, device=u.device)
        for part in u.split(self.chunk):
            path = self.path(len(part))
            values, _ = path.transformed(part)
            values = {n: v.index_select(sym[n] % v.dim(), p) if n in sym else v
                      for n, v in values.items()}
            out.append(path.constrained(values))
        return torch.cat(out)


def relabellings(problem: Problem, dens: Densities, u: torch.Tensor) -> list:
    """The ``C!`` permutations of the exchangeable components (global scope), else the identity."""
    sym = problem.target.symmetries
    if problem.local or not sym:
        return [None]
    values, _ = dens.path(1).transformed(u[:1])
    sizes = {values[n].shape[d] for n, d in sym.items() if n in values}
    if len(sizes) != 1:
        raise ValueError(f"symmetric sites {dict(sym)} disagree on the number of components")
    (C,) = sizes
    if C > 7:
        raise ValueError(f"{C} components give {math.factorial(C)} relabellings; too many to symmetrise")
    return list(itertools.permutations(range(C)))


class Gaussian:
    """``N(m, S)`` in ``u``, fitted to draws ``[n, B, D]`` per datapoint (float64)."""

    def __init__(self, u: torch.Tensor):
        n, B, D = u.shape
        x = u.double()
        self.mean = x.mean(0)
        c = x - self.mean
        cov = torch.einsum("nbi,nbj->bij", c, c) / (n - 1)
        cov = cov + 1e-10 * torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
        self.chol, info = torch.linalg.cholesky_ex(cov)
        if (info != 0).any() or not torch.isfinite(self.chol).all():
            raise RuntimeError("the posterior draws are degenerate (their covariance is singular): "
                               "the chains did not move; lower step_size or raise warmup")
        self.dist = MultivariateNormal(self.mean, scale_tril=self.chol)
        self.dtype = u.dtype

    def sample(self, n: int) -> torch.Tensor:
        return self.dist.sample((n,)).to(self.dtype)

    def log_density(self, dens: Densities, u: torch.Tensor) -> torch.Tensor:
        """Its density at ``z = T(u)``, in ``z``: ``log N(u) - log |det dT/du|``."""
        return self.dist.log_prob(u.double()) - dens.log_jac(u)


class Guide:
    """The guide as the proposal."""

    def __init__(self, dens: Densities):
        self.dens = dens

    def sample(self, n: int):
        """``n`` guide draws ``u``, with ``log p(x, z)`` and ``log q(z)`` there."""
        us, joints, logq = [], [], []
        for k in range(0, n, self.dens.chunk):
            path = Path(self.dens.problem, "guide", min(self.dens.chunk, n - k), self.dens.idx)
            u = path.pack(path.initial)
            q, j, _ = path.densities(u)
            self.dens.evaluations += len(u)
            us.append(u)
            joints.append(torch.where(torch.isfinite(j), j, torch.full_like(j, -math.inf)).double())
            logq.append(q.double())
        return torch.cat(us), torch.cat(joints), torch.cat(logq)

    def log_density(self, dens: Densities, u: torch.Tensor) -> torch.Tensor:
        out = []
        for part in u.split(dens.chunk):
            values, _ = dens.path(len(part)).transformed(part)
            out.append(dens.path(len(part), "guide").guide_density(values).double())
        return torch.cat(out)


def proposal_densities(problem: Problem, proposal, dens: Densities, u: torch.Tensor,
                       perms: list) -> torch.Tensor:
    """``log g(σ z)`` ``[len(perms), n, B]`` at every relabelling ``σ`` of the draws ``u``."""
    return torch.stack([proposal.log_density(dens, u if p is None else dens.relabel(u, p))
                        for p in perms])
