"""What the annealing estimators (``ais``, ``bdmc``, ``smc``) share: the geometric path between
a start distribution and the posterior, in an unconstrained space, for any model/guide pair.

For a start density ``s(z)`` -- the guide ``q(z | x)`` or the prior ``p(z)`` -- and the
unnormalised posterior ``p(x, z)``, the path is

    f_beta(z) = s(z)^(1 - beta) p(x, z)^beta,    0 = beta_0 < ... < beta_T = 1

with ``Z_0 = 1`` and ``Z_T = p(x)`` [1]. Latents with a constrained support are moved to
``R^D`` with Pyro's ``biject_to``: ``z = T(u)``, and in ``u`` every ``f_beta`` gains the same
``log |det dT/du|``, which therefore cancels from every ratio ``f_beta' / f_beta`` and only
shapes the HMC moves. The densities come from the replay primitive
(:func:`inference.replay.log_weights` with ``proposal="values"``) and the guide replayed at the
same values, per ``(chain, datapoint)`` in local scope and per chain in global scope.

:class:`Path` holds the layout: all latents of a chunk flattened into one ``[C, B, D]`` tensor
(``B = 1`` in global scope) that :mod:`inference.hmc` moves. :func:`schedule` makes the
temperatures; :func:`check_target` refuses what they cannot vouch for.

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Grosse, Maddison, Salakhutdinov (2013), Annealing between distributions by averaging
    moments, NeurIPS (the geometric path).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to

from inference.estimators import NotApplicable, Problem
from inference.hmc import adapt_step_size, transition
from inference.sampling import check_proposal
from inference.replay import (PARTICLES, _site_log_density, in_plate, log_weights,
                              sample_sites)
from inference.target import SubsampleAt, subsampled
from inference.weights import WeightStats, bytes_allocated, pareto_khat, plan_chunks

#: the options every annealing estimator shares, with their defaults
OPTIONS = {"temperatures": 100, "schedule": "sigmoid", "start": "guide", "leapfrog_steps": 5,
           "step_size": 0.1, "target_accept": 0.65}


def schedule(temperatures: Union[int, Sequence[float]], kind: str = "sigmoid") -> torch.Tensor:
    """``beta_0 = 0 < ... < beta_T = 1`` (float64). ``temperatures`` is ``T`` (then ``kind`` is
    ``"linear"`` or ``"sigmoid"``: ``sigma(delta (2t/T - 1))`` rescaled to [0, 1], ``delta = 4``,
    as in Wu et al. 2017) or the list of temperatures itself."""
    if not isinstance(temperatures, int):
        beta = torch.as_tensor([float(b) for b in temperatures], dtype=torch.float64)
        if beta.dim() != 1 or len(beta) < 2 or beta[0] != 0 or beta[-1] != 1 or (beta.diff() <= 0).any():
            raise ValueError("temperatures must increase strictly from 0 to 1, e.g. "
                             f"[0, 0.1, 0.5, 1]; got {temperatures!r}")
        return beta
    if isinstance(temperatures, bool) or temperatures < 1:
        raise ValueError(f"temperatures must be an integer >= 1 or a list, got {temperatures!r}")
    t = torch.linspace(0, 1, temperatures + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(4.0 * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"schedule={kind!r}: use 'linear', 'sigmoid' or a list of temperatures")


def check_options(start: str, leapfrog_steps: int, step_size: float, target_accept: float) -> None:
    if start not in ("guide", "prior"):
        raise ValueError(f"start={start!r}: use 'guide' or 'prior'")
    if int(leapfrog_steps) < 1 or not step_size > 0 or not 0 < target_accept < 1:
        raise ValueError("leapfrog_steps must be >= 1, step_size > 0 and 0 < target_accept < 1")


def check_target(problem: Problem, start: str) -> None:
    """Refuse what the annealing estimators cannot vouch for: discrete latents (HMC moves need
    a density in ``R^D``), a guide without a density to start from, and a guide start on a
    target with exchangeable components (the guide sits on one of the ``C!`` relabelled modes,
    and chains started there would miss the others: ``log C!`` too low)."""
    if start == "guide":
        check_proposal(problem)
        if not problem.local and problem.target.symmetries:
            raise NotApplicable(
                f"{problem.target.name} has exchangeable components {sorted(problem.target.symmetries)}: "
                "a guide start sees one relabelled mode and would be up to log C! too low; "
                "use start='prior'")
    _, model_tr, _ = _draw(problem, 1, "prior", _first(problem))
    for name, site in _latents(problem, model_tr):
        if site["fn"].support.is_discrete:
            raise NotApplicable(
                f"latent site {name!r} is discrete: annealing moves continuous latents with HMC; "
                "sum it out in the model (e.g. gmm assignments='marginal') or use 'is-guide'")


def _first(problem: Problem) -> Optional[torch.Tensor]:
    return torch.arange(min(2, len(problem.data[0])), device=problem.data[0].device) if problem.local else None


def _draw(problem: Problem, count: int, proposal: str, idx):
    p = problem
    return log_weights(p.target, p.data, count, max_plate_nesting=p.max_plate_nesting,
                       proposal=proposal, local=p.local, indices=idx, fixed=p.fixed,
                       with_traces=True)


def _latents(problem: Problem, model_tr) -> List[Tuple[str, Dict[str, Any]]]:
    plate = problem.target.data_plate
    return [(n, s) for n, s in sample_sites(model_tr, latent_only=True)
            if not problem.local or in_plate(s, plate) is not None]


class Path:
    """The geometric path on ``count`` chains for datapoints ``idx`` (local) or the whole data
    (global), in unconstrained coordinates flattened to ``[C, B, D]``."""

    def __init__(self, problem: Problem, start: str, count: int, idx: Optional[torch.Tensor]):
        self.problem, self.start, self.count, self.idx = problem, start, count, idx
        _, model_tr, guide_tr = _draw(problem, count, start, idx)
        source = guide_tr if start == "guide" else model_tr
        self.sites = []  # (name, transform, data position, moved shape of u)
        self.initial, self.initial_values = {}, {}
        for name, site in _latents(problem, model_tr):
            if site["fn"].support.is_discrete:
                raise NotApplicable(f"latent site {name!r} is discrete: annealing needs "
                                    "continuous latents; sum it out or use 'is-guide'")
            if start == "guide" and name not in source.nodes:
                raise NotApplicable(f"the guide has no site {name!r} to start from; "
                                    "use start='prior'")
            value = source.nodes[name]["value"].detach()
            self.initial_values[name] = value
            transform = biject_to(site["fn"].support)
            u = transform.inv(value)
            event = len(site["fn"].event_shape)
            pos = None
            if problem.local:
                pos = u.dim() - event + in_plate(site, problem.target.data_plate)
                u = u.movedim(pos, 1)
            self.sites.append((name, transform, pos, u.shape))
            self.initial[name] = u
        if start == "guide":
            for name, site in sample_sites(guide_tr, latent_only=True):
                if site["infer"].get("is_auxiliary"):
                    raise NotApplicable(f"the guide's auxiliary site {name!r} has no density at "
                                        "given latents; use start='prior'")
        self.B = 1 if idx is None else len(idx)

    def pack(self, us: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([us[n].reshape(self.count, self.B, -1) for n, *_ in self.sites], -1)

    def unpack(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, _, pos, shape in self.sites:
            size = shape[2:].numel() if pos is not None else shape[1:].numel()
            u = flat[..., i:i + size].reshape(shape)
            out[name] = u.movedim(1, pos) if pos is not None else u
            i += size
        return out

    def constrained(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Pack given constrained latent values (already ``[C, ...]``) into ``[C, B, D]``."""
        us = {}
        for name, transform, pos, _ in self.sites:
            u = transform.inv(values[name])
            us[name] = u.movedim(pos, 1) if pos is not None else u
        return self.pack(us)

    def densities(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log s(z), log p(x, z), log |det dT/du|)`` at ``flat`` (``[C, B, D]``), each ``[C, B]``."""
        p = self.problem
        us = self.unpack(flat)
        values, log_jac = {}, 0.0
        for name, transform, pos, _ in self.sites:
            values[name] = transform(us[name])
            lj = transform.log_abs_det_jacobian(us[name], values[name])
            lj = lj.reshape(lj.shape[:1] + (-1,)) if pos is None else lj.movedim(pos, 1)
            log_jac = log_jac + lj.reshape(self.count, self.B, -1).sum(-1)
        joint, model_tr, _ = log_weights(
            p.target, p.data, self.count, max_plate_nesting=p.max_plate_nesting,
            proposal="values", values=values, local=p.local, indices=self.idx, fixed=p.fixed,
            with_traces=True)
        joint = joint.reshape(self.count, self.B)
        if self.start == "prior":
            sites = [s for n, s in sample_sites(model_tr) if n in values]
        else:
            sites = self._guide_sites(values)
        start = sum(self._density(s) for s in sites)
        return start.reshape(self.count, self.B), joint, log_jac

    def _density(self, site) -> torch.Tensor:
        p = self.problem
        return _site_log_density(site, local=p.local, ndim=p.max_plate_nesting + 1,
                                 data_plate=p.target.data_plate)

    def _guide_sites(self, values):
        p = self.problem
        guide = p.target.guide
        if p.fixed:
            guide = poutine.condition(guide, p.fixed)
        guide = poutine.condition(subsampled(guide, SubsampleAt(p.target.data_plate, self.idx)),
                                  values)
        count, dim = self.count, -(p.max_plate_nesting + 1)

        def vectorized(*args):
            with pyro.plate(PARTICLES, count, dim=dim):
                return guide(*args)

        tr = poutine.trace(vectorized).get_trace(*p.data)
        return [s for n, s in sample_sites(tr) if n in values]

    def potential(self, beta: Union[float, torch.Tensor]):
        """``u -> (log f_beta, its gradient, log p(x, z) - log s(z))`` for :mod:`inference.hmc`;
        ``beta`` a number or a ``[C, B]`` tensor."""

        def fn(flat: torch.Tensor):
            with torch.enable_grad():
                flat = flat.detach().requires_grad_(True)
                start, joint, log_jac = self.densities(flat)
                b = torch.as_tensor(beta, dtype=joint.dtype, device=joint.device)
                f = (1 - b) * start + b * joint + log_jac
                (grad,) = torch.autograd.grad(f.sum(), flat)
            bad = ~torch.isfinite(f)
            f = torch.where(bad, torch.full_like(f, -math.inf), f.detach())
            return f, grad, (joint - start).detach()

        return fn


def plan(problem: Problem, start: str, per_chain: float = 4.0) -> Tuple[int, int]:
    """``(chains, datapoints)`` per chunk: one potential evaluation (forward and backward) on a
    pilot of 8 chains measured with :func:`~inference.weights.bytes_allocated`, times
    ``per_chain`` for the state HMC keeps, fitted to the memory budget."""
    N = len(problem.data[0]) if problem.local else None
    k0 = min(problem.num_samples, 8)
    idx = torch.arange(min(N, 64), device=problem.data[0].device) if N else None
    path = Path(problem, start, k0, idx)
    flat = path.pack(path.initial)
    _, nbytes = bytes_allocated(lambda: path.potential(0.5)(flat))
    per_unit = per_chain * nbytes / (k0 * (len(idx) if N else 1))
    return plan_chunks(problem.num_samples, N, per_unit, problem.memory_budget)


def fields(stats: List[WeightStats], problem: Problem, sign: float = 1.0,
           diagnostics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The :class:`inference.Estimate` fields of ``sign * log mean w`` per datapoint chunk."""
    K = problem.num_samples
    value = sign * torch.cat([s.log_mean() for s in stats])
    err = torch.cat([s.is_stderr() for s in stats])
    ess = torch.cat([s.ess() for s in stats])
    khat = pareto_khat(torch.cat([s.top for s in stats], 1), K, problem.memory_budget)
    out = dict(num_samples=K, log_evidence=float(value.sum()),
               stderr=float(err.pow(2).sum().sqrt()), ess=float(ess.mean()),
               khat=float(khat.max()), diagnostics=dict(diagnostics or {}))
    if problem.local:
        out.update(per_datapoint=value, stderr_per_datapoint=err, ess_per_datapoint=ess,
                   khat_per_datapoint=khat)
    return out


def anneal(path: Path, betas: torch.Tensor, x: torch.Tensor, leapfrog_steps: int,
           step_size: float, target_accept: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Annealed importance sampling along ``betas`` (increasing: forward, from the start to
    the posterior; decreasing: reverse) from states ``x`` exact at ``betas[0]``:

        log w = sum_t (beta_t - beta_{t-1}) (log p(x, z_{t-1}) - log s(z_{t-1}))

    with ``z_t`` an HMC transition leaving ``f_{beta_t}`` invariant (none after the last
    temperature: it would not change ``w``). Returns ``log w`` ``[C, B]`` and the mean
    acceptance of each transition ``[T - 1]``."""
    step = torch.full((path.B,), float(step_size), dtype=x.dtype, device=x.device)
    _, _, diff = path.potential(float(betas[0]))(x)
    log_w = torch.zeros_like(diff)
    accept = []
    for t in range(1, len(betas)):
        log_w = log_w + float(betas[t] - betas[t - 1]) * diff
        if t == len(betas) - 1:
            break
        pot = path.potential(float(betas[t]))
        f, g, diff = pot(x)
        x, f, g, diff, prob = transition(x, f, g, diff, pot, step, int(leapfrog_steps))
        step = adapt_step_size(step, prob, target_accept)
        accept.append(prob.mean())
    acc = torch.stack(accept) if accept else x.new_zeros(0)
    return log_w, acc


def chunks(problem: Problem, start: str):
    """``(idx, count)`` per chunk of the plan: datapoint indices (``None`` in global scope) and
    a number of chains; with the plan ``(chains, datapoints)``."""
    kc, bc = plan(problem, start)
    K = problem.num_samples
    groups = (torch.arange(len(problem.data[0]), device=problem.data[0].device).split(bc)
              if problem.local else [None])
    return [(idx, [min(kc, K - s) for s in range(0, K, kc)]) for idx in groups], (kc, bc)
