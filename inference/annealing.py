"""What the annealing estimators (``ais``, ``bdmc``, ``smc``) share besides the path itself
(:mod:`inference.path`: the densities of ``f_beta = s^(1 - beta) p(x, .)^beta`` for any
model/guide pair, laid out as one ``[C, B, D]`` tensor that :mod:`inference.hmc` moves):
:func:`schedule` makes the temperatures, :func:`check_target` refuses what they cannot vouch
for, :func:`plan` and :func:`chunks` fit chains and datapoints to the memory budget,
:func:`anneal` runs AIS along a schedule (forward or reverse) and :func:`fields` turns the
final weights into an :class:`inference.Estimate`'s fields.

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Wu, Burda, Salakhutdinov, Grosse (2017), On the Quantitative Analysis of Decoder-Based
    Generative Models, ICLR (the sigmoid schedule).
[3] Xie, Lewis, Fan, Kuo, Chen (2011), Improving marginal likelihood estimation for Bayesian
    phylogenetic model selection, Systematic Biology (the power schedule).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from inference.problem import NotApplicable, Problem, integer, number, one_of
from inference.hmc import adapt_step_size, transition
from inference.path import Path, draw, latents
from inference.replay import NotEnumerable
from inference.sampling import check_finite, check_proposal
from inference.weights import (WeightStats, bias_caveats, bytes_allocated, log_mean_bias,
                               pareto_khat, plan_chunks)

#: the options every annealing estimator shares, with their defaults
OPTIONS = {"temperatures": 100, "schedule": "sigmoid", "start": "guide", "leapfrog_steps": 5,
           "step_size": 0.1, "target_accept": 0.65, "jit": True}


def _temperatures(value: Any) -> bool:
    try:
        schedule(value)
    except (ValueError, TypeError):
        return False
    return True


#: what each shared option must be (:func:`inference.estimators.check_options`)
CHECKS = {"temperatures": (_temperatures, "an integer >= 1 or a list increasing strictly "
                                          "from 0 to 1, e.g. [0, 0.1, 0.5, 1]"),
          "schedule": one_of("sigmoid", "linear", "power"), "start": one_of("guide", "prior"),
          "leapfrog_steps": integer(1), "step_size": number(0),
          "target_accept": number(0, 1)}


def schedule(temperatures: Union[int, Sequence[float]], kind: str = "sigmoid") -> torch.Tensor:
    """``beta_0 = 0 < ... < beta_T = 1`` (float64). ``temperatures`` is ``T`` (then ``kind`` is
    ``"linear"``, ``"sigmoid"``: ``sigma(delta (2t/T - 1))`` rescaled to [0, 1], ``delta = 4``,
    as in Wu et al. 2017 [2], or ``"power"``: ``(t/T)^(1/0.3)``, the quantiles of Beta(0.3, 1)
    of Xie et al. 2011 [3]) or the list of temperatures itself."""
    if not isinstance(temperatures, int):
        beta = torch.as_tensor([float(b) for b in temperatures], dtype=torch.float64)
        if beta.dim() != 1 or len(beta) < 2 or beta[0] != 0 or beta[-1] != 1 or (beta.diff() <= 0).any():
            raise ValueError("temperatures must increase strictly from 0 to 1, e.g. "
                             f"[0, 0.1, 0.5, 1]; got {temperatures!r}")
        return beta
    if isinstance(temperatures, bool) or not isinstance(temperatures, int) or temperatures < 1:
        raise ValueError(f"temperatures must be an integer >= 1 or a list, got {temperatures!r}")
    t = torch.linspace(0, 1, temperatures + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(4.0 * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    if kind == "power":
        return t ** (1 / 0.3)
    raise ValueError(f"schedule={kind!r}: use 'linear', 'sigmoid', 'power' or a list of temperatures")


def check_options(start: str, leapfrog_steps: int, step_size: float, target_accept: float) -> None:
    if start not in ("guide", "prior"):
        raise ValueError(f"start={start!r}: use 'guide' or 'prior'")
    if int(leapfrog_steps) < 1 or not step_size > 0 or not 0 < target_accept < 1:
        raise ValueError("leapfrog_steps must be >= 1, step_size > 0 and 0 < target_accept < 1")


def check_target(problem: Problem, start: str) -> None:
    """Refuse what the annealing estimators cannot vouch for: discrete latents not summed out
    by enumeration (HMC moves need a density in ``R^D``), a guide without a density to start
    from, and a guide start on a target with exchangeable components (the guide sits on one of
    the ``C!`` relabelled modes, and chains started there would miss the others: ``log C!``
    too low)."""
    if start == "guide":
        check_proposal(problem)
        if not problem.local and problem.target.symmetries:
            raise NotApplicable(
                f"{problem.target.name} has exchangeable components {sorted(problem.target.symmetries)}: "
                "a guide start sees one relabelled mode and would be up to log C! too low; "
                "use start='prior'")
    try:
        _, model_tr, _ = draw(problem, 1, "prior", _first(problem))
    except NotEnumerable as err:
        raise NotApplicable(
            f"site {err.site!r} is or depends on a discrete latent enumerated outside the data "
            "plate: annealing sums out only per-datapoint discrete latents; sample it in the "
            "guide and use 'is-guide'") from None
    for name, site in latents(problem, model_tr):
        if site["fn"].support.is_discrete:
            raise NotApplicable(
                f"latent site {name!r} is discrete: annealing moves continuous latents with HMC; "
                "mark it for enumeration inside the data plate (pyro.infer.config_enumerate, "
                "e.g. gmm assignments='enumerate'), sum it out in the model, or use 'is-guide'")


def _first(problem: Problem) -> Optional[torch.Tensor]:
    return torch.arange(min(2, len(problem.data[0])), device=problem.data[0].device) if problem.local else None


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
    """The :class:`inference.Estimate` fields of ``sign * log mean w`` per datapoint chunk, with
    the summed bias of the log-means (:func:`~inference.weights.log_mean_bias`)."""
    K = problem.num_samples
    value = sign * torch.cat([s.log_mean() for s in stats])
    check_finite(problem, sign * value, "prior")
    err = torch.cat([s.is_stderr() for s in stats])
    ess = torch.cat([s.ess() for s in stats])
    khat = pareto_khat(torch.cat([s.top for s in stats], 1), K, problem.memory_budget)
    bias = log_mean_bias(err, sign)
    stderr = float(err.pow(2).sum().sqrt())
    out = dict(num_samples=K, log_evidence=float(value.sum()), stderr=stderr,
               ess=float(ess.mean()), khat=float(khat.max()),
               diagnostics=dict(diagnostics or {}, bias=bias), caveats=bias_caveats(bias, stderr))
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
    accept = []
    with path.frozen():
        _, _, diff = path.potential(float(betas[0]))(x)
        log_w = torch.zeros_like(diff)
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
