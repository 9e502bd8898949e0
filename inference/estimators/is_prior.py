"""``is-prior``: plain Monte Carlo with the prior as proposal.

    p_hat(x) = (1/K) sum_k p(x | z_k),    z_k ~ p(z)

unbiased for ``p(x)`` (so ``log p_hat`` is biased low, by Jensen), needs no guide, and fails
in high dimension: the prior rarely proposes where the posterior is, so the weights are
dominated by one draw (ESS near 1, k-hat far above 0.7) [1].

References

[1] MacKay (2003), Information Theory, Inference, and Learning Algorithms, ch. 29.
"""

from __future__ import annotations

from typing import Any, Dict

from inference.problem import Estimator, Problem, register
from inference.sampling import sampled


@register
class PriorImportance(Estimator):
    name = "is-prior"
    summary = "log mean of p(x | z) over K prior draws (unbiased in p; fails in high dimension)"
    shardable = True
    unbiased = True

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        return sampled(problem, "prior", "log_mean")
