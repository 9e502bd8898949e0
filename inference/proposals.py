"""The proposals ``bridge`` and ``chib`` compare the posterior draws of
:mod:`inference.posterior` with, and the densities they need at given points.

Points are ``u`` ``[n, B, D]`` in the unconstrained space of :class:`inference.path.Path`
(``z = T(u)``). :class:`Densities` evaluates ``log p(x, z)`` there (each point counted as one
evaluation) and ``log |det dT/du|``. A proposal's ``log_density`` is its density *in z*, so
that ``log p(x, z) - log g(z)`` does not depend on the parametrisation: for the Gaussian
fitted in ``u`` it is ``log N(u; m, S) - log |det dT/du|``; for the guide, ``log q(z)``.

**Relabelling.** For a target whose ``symmetries`` declare exchangeable components (global
scope), :func:`relabellings` lists the ``C!`` permutations and :meth:`Densities.relabel` maps
draws to their relabelled copies (through ``z``: the simplex of mixture weights is not
permuted coordinate-wise in ``u``); the estimators symmetrise over them, as ``is-guide``
does [1].

References

[1] Frühwirth-Schnatter (2004), Estimating marginal likelihoods for mixture and Markov
    switching models using bridge sampling techniques, Econometrics Journal.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict

import torch
from torch.distributions import MultivariateNormal

from inference.problem import Problem
from inference.path import Path


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
    """``N(m, S)`` in ``u``, fitted to draws ``[n, B, D]`` per datapoint (float64): ``S`` their
    covariance shrunk towards its diagonal by ``5 / (n + 5)``, so that fewer draws than
    dimensions still give a proposal."""

    def __init__(self, u: torch.Tensor):
        n, B, D = u.shape
        x = u.double()
        self.mean = x.mean(0)
        c = x - self.mean
        cov = torch.einsum("nbi,nbj->bij", c, c) / (n - 1)
        diag = torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
        cov = n / (n + 5) * cov + 5 / (n + 5) * diag + 1e-10 * diag  # positive definite for n < D
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
