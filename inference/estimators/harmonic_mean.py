"""``harmonic-mean``: the harmonic mean estimator, kept as a cautionary tale.

Since ``E_{p(z | x)}[1 / p(x | z)] = int p(z) dz / p(x) = 1 / p(x)``, the harmonic mean of the
likelihood over posterior draws estimates the evidence [1]:

    log p_hat(x) = -log (1/K) sum_k 1 / p(x | z_k),    z_k ~ p(z | x).

It needs nothing but posterior draws and likelihood values, which made it popular, and it is
useless: ``1 / p(x | z)`` is largest where the posterior has almost no mass and the prior has
much, so its variance under the posterior, ``int p(z)^2 / (p(x | z) p(x)) dz - 1/p(x)^2``, is
infinite whenever the prior has heavier tails than the posterior -- the usual case [1, 2].
The estimate then converges like a stable law of index below 2, far too slowly to use, and
typically far too high, since the draws almost never visit the low-likelihood regions that
dominate the mean; Neal called it "the worst Monte Carlo method ever" [3]. Its ``stderr`` (the
delta method's, from the draws' ``1 / p(x | z)``) is reported but means nothing: every
estimate carries a caveat saying so and is never vouched for. ``ppzoo bench`` shows it
failing against the truth; use ``is-guide``, ``ais`` or ``bridge`` instead.

The posterior draws come from the engine's HMC (:mod:`inference.hmc`) on the posterior in
the unconstrained space (:class:`inference.path.Path` at ``beta = 1``): ``min(K, chains)``
chains (256 by default) started at draws of the guide (or of the prior, if the guide cannot propose), ``warmup``
transitions adapting the step size towards ``target_accept``, then ``ceil(K / chains)``
transitions each, the first K draws kept. Local scope runs the chains per datapoint, with any
global latents held fixed. Cost: ``C x (1 + (warmup + ceil(K / C)) x (leapfrog_steps + 1))``
evaluations of ``log p(x, z)`` and its gradient, ``C = min(K, chains)``.

References

[1] Newton, Raftery (1994), Approximate Bayesian inference with the weighted likelihood
    bootstrap, JRSS B 56, 3-48 (and its discussion).
[2] Raftery, Newton, Satagopan, Krivitsky (2007), Estimating the integrated likelihood via
    posterior simulation using the harmonic mean identity, Bayesian Statistics 8.
[3] Neal (2008), The harmonic mean of the likelihood: worst Monte Carlo method ever,
    radfordneal.wordpress.com.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import pyro
import torch

from inference.annealing import chunks
from inference.problem import Estimator, Problem, register
from inference.hmc import adapt_step_size, transition
from inference.path import Path, check_continuous, guide_start
from inference.weights import WeightStats, pareto_khat

CAVEAT = ("the harmonic mean estimator has infinite variance whenever the prior is wider than "
          "the posterior (Newton & Raftery 1994; Neal 2008): its stderr means nothing and the "
          "estimate is typically far too high")

#: 256 chains: a transition costs about the same for 16 chains as for 256 (it is one vectorized
#: replay), so wide is cheap per evaluation, and fewer transitions per chain follow the warm-up
OPTIONS = {"chains": 256, "warmup": 100, "leapfrog_steps": 5, "step_size": 0.1,
           "target_accept": 0.65}


@register
class HarmonicMean(Estimator):
    name = "harmonic-mean"
    summary = "harmonic mean of p(x | z) over K HMC posterior draws: infinite variance (a warning)"
    weighted = False
    options = dict(OPTIONS)

    def evaluations(self, num_samples: int, **options: Any) -> float:
        o = {**OPTIONS, **options}
        chains = min(num_samples, int(o["chains"]))
        per_chain = -(-num_samples // chains)
        return float(chains * (1 + (int(o["warmup"]) + per_chain) * (int(o["leapfrog_steps"]) + 1)))

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        o = {**OPTIONS, **options}
        if int(o["chains"]) < 1 or int(o["warmup"]) < 0 or int(o["leapfrog_steps"]) < 1 \
                or not o["step_size"] > 0 or not 0 < o["target_accept"] < 1:
            raise ValueError("chains >= 1, warmup >= 0, leapfrog_steps >= 1, step_size > 0 and "
                             "0 < target_accept < 1 are needed")
        check_continuous(problem, "harmonic-mean", "HMC")
        K = problem.num_samples
        C = min(K, int(o["chains"]))
        per_chain = -(-K // C)
        plan, _ = chunks(dataclasses.replace(problem, num_samples=C), "prior")
        stats, accept = [], []
        with pyro.validation_enabled(False):
            for idx, counts in plan:
                loglik = torch.cat([_draws(problem, idx, count, per_chain, o, accept)
                                    for count in counts], 1)  # [per_chain, C, B]
                st = WeightStats(K)
                st.update(-loglik.reshape(-1, loglik.shape[-1])[:K])
                stats.append(st)
        value = -torch.cat([s.log_mean() for s in stats])
        err = torch.cat([s.is_stderr() for s in stats])
        ess = torch.cat([s.ess() for s in stats])
        khat = pareto_khat(torch.cat([s.top for s in stats], 1), K, problem.memory_budget)
        acc = torch.stack(accept)
        fields: Dict[str, Any] = dict(
            num_samples=K, log_evidence=float(value.sum()), stderr=float(err.pow(2).sum().sqrt()),
            ess=float(ess.mean()), khat=float(khat.max()), caveats=(CAVEAT,),
            diagnostics={"acceptance_mean": float(acc.mean()), "chains": C,
                         "draws_per_chain": per_chain, "warmup": int(o["warmup"])})
        if problem.local:
            fields.update(per_datapoint=value, stderr_per_datapoint=err, ess_per_datapoint=ess,
                          khat_per_datapoint=khat)
        return fields


def _draws(problem: Problem, idx, count: int, per_chain: int, o: Dict[str, Any], accept: list):
    """``log p(x | z)`` at ``per_chain`` HMC draws of ``count`` chains: ``[per_chain, count, B]``."""
    path = Path(dataclasses.replace(problem, num_samples=count), "prior", count, idx)
    x = guide_start(problem, path, idx, point=False)
    potential = path.potential(1.0)
    f, g, loglik = potential(x)
    step = torch.full((path.B,), float(o["step_size"]), dtype=x.dtype, device=x.device)
    out = []
    for t in range(int(o["warmup"]) + per_chain):
        x, f, g, loglik, prob = transition(x, f, g, loglik, potential, step, int(o["leapfrog_steps"]))
        if t < int(o["warmup"]):
            step = adapt_step_size(step, prob, float(o["target_accept"]))
        else:
            out.append(loglik)
            accept.append(prob.mean())
    return torch.stack(out)
