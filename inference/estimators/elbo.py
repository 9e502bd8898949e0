"""``elbo``: the K-sample Monte Carlo evidence lower bound.

    ELBO_K = (1/K) sum_k log w_k,    log w_k = log p(x, z_k) - log q(z_k),    z_k ~ q

the quantity :class:`~pyro.infer.Trace_ELBO` optimises [1]. Its expectation is a lower bound
on ``log p(x)``, below it by ``KL(q(z) || p(z | x))``; more samples shrink its spread, not that
gap. The standard error is ``sd(log w) / sqrt(K)``.

References

[1] Jordan, Ghahramani, Jaakkola, Saul (1999), An Introduction to Variational Methods for
    Graphical Models, Machine Learning.
"""

from __future__ import annotations

from typing import Any, Dict

from inference.problem import Estimator, Problem, register
from inference.sampling import sampled


@register
class ELBO(Estimator):
    name = "elbo"
    summary = "mean of log w over K guide draws: the ELBO Trace_ELBO optimises (a lower bound)"
    weighted = False
    consistent = False  # E_q[log w] <= log p(x) at every K
    shardable = True

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        return sampled(problem, "guide", "mean")
