"""``smc``: tempered sequential Monte Carlo for the global evidence ``log p(X)``.

K particles start at ``s`` (the guide, default, or the prior) and move along the geometric path
``f_beta = s^(1 - beta) p(X, .)^beta`` of :mod:`inference.annealing`. At each stage [1, 2]:

1. the next temperature is chosen by bisection so that the conditional ESS of the incremental
   weights ``w_i = exp((beta' - beta) (log p(X, z_i) - log s(z_i)))``,
   ``CESS = (sum_i W_i w_i)^2 / sum_i W_i w_i^2`` (``W`` the normalised weights), is
   ``ess_target`` (a fraction) [3] -- or ``beta' = 1`` where that stays above it;
2. ``log Z += log sum_i W_i w_i``, and ``W_i ∝ W_i w_i``;
3. where the ESS ``1 / sum_i W_i^2`` falls below ``resample_threshold * K``, the particles are
   resampled (systematic resampling) and the weights reset to ``1 / K``;
4. every particle makes ``moves`` HMC transitions leaving ``f_beta'`` invariant
   (:mod:`inference.hmc`), the step size adapted per run towards ``target_accept``.

The temperatures (step 1) and step sizes (step 4) are chosen once, by a pilot run whose
estimate is discarded, and every run follows them. On a schedule fixed in advance
``Z_hat = exp(log Z)`` is unbiased for ``p(X)`` [1]; chosen from a run's own particles it is
consistent but not unbiased [4]: on ``normal-mean`` of :mod:`inference.pack` from the prior
(K = 15, 20 runs, 300 seeds) the mean of ``Z_hat / Z`` was ``exp(0.027 +- 0.009)``, and on 50
local latents in global scope (K = 300) ``log Z`` was 0.6 nats low, 11 stderr (issue 25).
:attr:`unbiased` stays False: the resampling is still adaptive, and on 30 latents (K = 50 to
200, 64 runs) the pilot's schedule was still 4-5 stderr low at some seeds, unexplained.
``runs`` independent runs (vectorized together) give the estimate ``log mean_r Z_hat_r`` and
its standard error by the delta method across runs -- a standard deviation of a few runs'
skewed ``Z_hat_r``: with the default 4 runs the engine's ESS rule never vouches for it
(normal-mean, K = 30: |z| < 2 in 82 of 100 seeds), with 10 it under-covered (86 of 100 within
2 stderr) and with 20 it covered (287 of 300; ``ppzoo calibrate``, benchmarks/RESULTS.md), so
below ``MIN_RUNS`` runs a caveat says the stderr is not vouched for; map_l2 (below) spreads by 0.5 nats in
``log Z``, and 8 runs were 4 stderr off where 32 were within one. ``diagnostics`` holds every
run's estimate, the pilot's temperatures, the resamplings, the HMC acceptance and the summed
bias of ``log mean`` (:func:`~inference.weights.log_mean_bias`). Cost:
``(runs + 1) x K x stages x moves x (leapfrog_steps + 1)`` evaluations of ``log p(X, z)`` and
its gradient. Global scope only (per-datapoint evidence: ``ais``).

The start is the prior by default: the conditional ESS only sees where the particles are, so
from a guide narrower than the posterior it takes too few stages (map_l2 on 100 diabetes
points with a 300-step full Gaussian guide: 3-5 stages, 0.48 nats low, 3.7 stderr; from the
prior 10-12 stages and within 1.5 stderr over three seeds).

References

[1] Del Moral, Doucet, Jasra (2006), Sequential Monte Carlo samplers, JRSS B.
[2] Jasra, Stephens, Doucet, Tsagaris (2011), Inference for Lévy-driven stochastic volatility
    models via adaptive sequential Monte Carlo, Scandinavian Journal of Statistics.
[3] Zhou, Johansen, Aston (2016), Toward automatic model comparison: an adaptive sequential
    Monte Carlo approach, Journal of Computational and Graphical Statistics.
[4] Beskos, Jasra, Kantas, Thiery (2016), On the convergence of adaptive sequential Monte Carlo
    methods, Annals of Applied Probability.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch

from inference.annealing import CHECKS, OPTIONS, Path, check_target, check_options, plan
from inference.compiled_path import Graphs, frozen
from inference.problem import Estimator, NotApplicable, Problem, integer, number, register
from inference.estimators.ais import jit_diagnostics
from inference.hmc import transition
from inference.sampling import check_finite
from inference.weights import WeightStats, bias_caveats, log_mean_bias

MAX_STAGES = 2000
#: fewer independent runs than this give a stderr that under-covers (``ppzoo calibrate``)
MIN_RUNS = 20


@register
class SMC(Estimator):
    name = "smc"
    summary = "tempered SMC for log p(X): adaptive temperatures, resampling, HMC moves"
    options = dict(OPTIONS, start="prior", runs=4, moves=5, ess_target=0.5,
                   resample_threshold=0.5)
    checks = dict(CHECKS, runs=integer(1), moves=integer(1), ess_target=number(0, 1),
                  resample_threshold=number(0, 1, closed="high"))
    unbiased = False  # adaptive resampling; see the module docstring

    def evaluations(self, num_samples: int, **options: Any) -> None:
        return None  # the number of stages is chosen as it runs

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        if problem.local:
            raise NotApplicable("smc estimates the global evidence log p(X): use scope='global', "
                                "or method='ais' for per-datapoint log p(x_n)")
        o = {**self.options, **options}
        check_options(o["start"], o["leapfrog_steps"], o["step_size"], o["target_accept"])
        if not (0 < o["ess_target"] < 1 and 0 < o["resample_threshold"] <= 1):
            raise ValueError("ess_target must be in (0, 1) and resample_threshold in (0, 1]")
        if int(o["runs"]) < 1 or int(o["moves"]) < 1:
            raise ValueError("runs and moves must be >= 1")
        check_target(problem, o["start"])
        K, R = problem.num_samples, int(o["runs"])
        chunk, _ = plan(dataclasses.replace(problem, num_samples=R * K), o["start"])
        per_chunk = max(1, chunk // K)
        log_z, resampled, acc = [], [], []
        graphs = Graphs() if o["jit"] else None
        with pyro.validation_enabled(False):
            with frozen(problem.target.networks.values()):
                # its choices, not its estimate (module docstring)
                pilot = _smc(problem, 1, o, graphs)[-1]
            for first in range(0, R, per_chunk):
                with frozen(problem.target.networks.values()):
                    out = _smc(problem, min(per_chunk, R - first), o, graphs, pilot)
                for store, value in zip((log_z, resampled, acc), out):
                    store.append(value)
        log_z = torch.cat(log_z).double()
        st = WeightStats(R)
        st.update(log_z.unsqueeze(-1))
        check_finite(problem, st.log_mean(), "prior")
        stderr = float(st.is_stderr())
        bias = log_mean_bias(st.is_stderr())
        return dict(num_samples=K, log_evidence=float(st.log_mean()), stderr=stderr,
                    ess=float(st.ess()), khat=math.nan,
                    caveats=bias_caveats(bias, stderr) + runs_caveats(R),
                    diagnostics=dict(runs=log_z.tolist(), stages=[len(pilot.betas)] * R,
                                     temperatures=pilot.betas,
                                     resamplings=torch.cat(resampled).tolist(),
                                     acceptance_mean=float(torch.cat(acc).mean()), bias=bias,
                                     **jit_diagnostics(graphs)))


@dataclasses.dataclass
class Schedule:
    """The choices of an adaptive run, stage by stage: the temperature reached and the step
    size of each HMC move."""

    betas: List[float] = dataclasses.field(default_factory=list)
    steps: List[List[float]] = dataclasses.field(default_factory=list)


def runs_caveats(runs: int) -> Tuple[str, ...]:
    """Why a stderr from ``runs`` independent runs is not vouched for: too few to cover."""
    if runs >= MIN_RUNS:
        return ()
    return (f"{runs} runs: a stderr from fewer than {MIN_RUNS} runs under-covers (calibrated: "
            f"86% within 2 stderr at 10 runs); use runs={MIN_RUNS} or more",)


def _smc(problem: Problem, R: int, o: Dict[str, Any], graphs=None,
         fixed: Optional[Schedule] = None):
    """``R`` runs of K particles each, vectorized (particle ``r * K + i``): adaptive (``fixed``
    ``None``; its choices recorded when ``R == 1``) or following the :class:`Schedule`
    ``fixed``; ``graphs``: the compiled densities (:mod:`inference.compiled_path`). Returns
    ``log Z`` per run, resamplings per run, the mean acceptance of each move, and the schedule
    followed."""
    K = problem.num_samples
    path = Path(problem, o["start"], R * K, None, graphs)
    x = path.pack(path.initial)
    _, _, diff = path.potential(0.0)(x)
    dtype, dev = diff.dtype, diff.device
    beta = torch.zeros(R, dtype=torch.float64, device=dev)
    log_z = torch.zeros(R, dtype=torch.float64, device=dev)
    log_W = torch.full((R, K), -math.log(K), dtype=torch.float64, device=dev)
    step = torch.full((R,), float(o["step_size"]), dtype=dtype, device=dev)
    resampled = torch.zeros(R, dtype=torch.long)
    accept, record = [], Schedule()
    for stage in range(MAX_STAGES if fixed is None else len(fixed.betas)):
        if fixed is None and (beta >= 1).all():
            break
        d = diff.reshape(R, K).double()
        d = torch.where(torch.isfinite(d), d, torch.full_like(d, -math.inf))
        if fixed is None:
            delta = _next_increment(log_W, d, 1 - beta, o["ess_target"])
        else:
            delta = fixed.betas[stage] - beta
        inc = log_W + delta.unsqueeze(-1) * d
        log_z = log_z + torch.where(delta > 0, inc.logsumexp(-1), torch.zeros_like(log_z))
        log_W = inc - inc.logsumexp(-1, keepdim=True)
        beta = torch.where(delta >= 1 - beta, torch.ones_like(beta), beta + delta)
        low = torch.exp(-torch.logsumexp(2 * log_W, -1)) < o["resample_threshold"] * K
        record.betas.append(float(beta[0]))
        record.steps.append([])
        if low.any():
            idx = _systematic(log_W, low)
            flat = (idx + K * torch.arange(R, device=dev).unsqueeze(-1)).reshape(-1)
            x, diff = x[flat], diff[flat]
            log_W = torch.where(low.unsqueeze(-1), torch.full_like(log_W, -math.log(K)), log_W)
            resampled += low.long().cpu()
        b = beta.to(dtype).repeat_interleave(K).unsqueeze(-1)
        pot = path.potential(b)
        f, g, diff = pot(x)
        for move in range(int(o["moves"])):
            if fixed is not None:
                step = torch.full_like(step, fixed.steps[stage][move])
            record.steps[-1].append(float(step[0]))
            eps = step.repeat_interleave(K).unsqueeze(-1)
            x, f, g, diff, prob = transition(x, f, g, diff, pot, eps, int(o["leapfrog_steps"]))
            mean = prob.reshape(R, K).mean(-1)
            step = (step * torch.exp(2.0 * (mean - o["target_accept"]))).clamp(1e-4, 10.0)
            accept.append(mean.mean().reshape(1))
    else:
        if fixed is None:
            raise RuntimeError(f"smc did not reach temperature 1 in {MAX_STAGES} stages; lower "
                               "ess_target or start from a better guide")
    return log_z, resampled, torch.cat(accept) if accept else torch.zeros(0), record


def _next_increment(log_W, d, room, target: float, iters: int = 50) -> torch.Tensor:
    """Per run, the largest ``delta <= room`` whose conditional ESS fraction is >= ``target``
    (bisection; ``room`` itself where that already holds)."""

    def cess(delta):
        a = log_W + delta.unsqueeze(-1) * d
        c = torch.exp(2 * a.logsumexp(-1) - (log_W + 2 * delta.unsqueeze(-1) * d).logsumexp(-1))
        return torch.nan_to_num(c, nan=0.0)

    lo, hi = torch.zeros_like(room), room.clone()
    done = cess(hi) >= target
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = cess(mid) >= target
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(done, room, torch.where(room > 0, lo.clamp(min=1e-12), room))


def _systematic(log_W, rows) -> torch.Tensor:
    """Systematic resampling indices ``[R, K]`` for the runs in ``rows``; the identity elsewhere."""
    R, K = log_W.shape
    W = log_W.exp()
    cdf = W.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    u = (torch.rand(R, 1, dtype=W.dtype, device=W.device) + torch.arange(K, device=W.device)) / K
    idx = torch.searchsorted(cdf, u).clamp(max=K - 1)
    keep = torch.arange(K, device=W.device).expand(R, K)
    return torch.where(rows.unsqueeze(-1), idx, keep)
