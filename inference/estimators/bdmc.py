"""``bdmc``: bidirectional Monte Carlo -- stochastic lower and upper bounds on ``log p(x)`` for
data simulated from the model.

Forward AIS (:mod:`inference.estimators.ais`) from the start ``s`` to the posterior gives
weights with ``E[w] = p(x)``, so ``log (1/K) sum_k w_k`` is a stochastic lower bound. Reverse
AIS runs the same chain backwards, ``beta_T = 1 > ... > beta_0 = 0``, from an exact posterior
sample ``z_T ~ p(z | x)``; its weights

    log w_rev = sum_{t=T..1} (beta_{t-1} - beta_t) (log p(x, z_t) - log s(z_t))

have ``E[w_rev] = 1 / p(x)`` [1], so ``-log (1/K) sum_k w_rev,k`` is a stochastic upper bound.
An exact posterior sample is what simulated data gives for free: draw ``z ~ p(z)``, then
``x ~ p(x | z)``, and ``z`` is an exact draw from ``p(z | x)`` [2, 3]. All K reverse chains of a
datapoint start at that one ``z``.

Pass the latents that drew the data as ``latents={site: value}`` (a zoo model's
``simulate(n).params``; values without the chain dimension, datapoints along the data plate),
with the model's parameters at the values that simulated the data. The estimate is the
forward (lower) bound with its standard error; ``diagnostics`` holds ``lower``, ``upper``,
``gap = upper - lower`` (totals) and ``upper_per_datapoint``, ``gap_per_datapoint``
(tensors, local scope), and the HMC acceptance of both directions. The gap bounds the error
of either bound (up to their standard errors) and shrinks to 0 as T grows [2].

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Grosse, Ghahramani, Adams (2015), Sandwiching the marginal likelihood using bidirectional
    Monte Carlo, arXiv:1511.02543.
[3] Wu, Burda, Salakhutdinov, Grosse (2017), On the Quantitative Analysis of Decoder-Based
    Generative Models, ICLR.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import pyro
import torch

from inference.annealing import (CHECKS, OPTIONS, Path, anneal, check_target, check_options,
                                 chunks, fields, schedule)
from inference.compiled_path import Graphs
from inference.problem import Estimator, NotApplicable, Problem, register
from inference.estimators.ais import acceptance, annealing_cost, jit_diagnostics
from inference.weights import WeightStats


@register
class BDMC(Estimator):
    name = "bdmc"
    summary = "forward and reverse AIS on simulated data: a sandwich lower <= log p(x) <= upper"
    options = dict(OPTIONS, latents=None)
    checks = CHECKS
    unbiased = True  # its value is the forward AIS bound

    def evaluations(self, num_samples: int, **options: Any) -> float:
        return 2 * num_samples * annealing_cost({**OPTIONS, **options})

    def run(self, problem: Problem, latents: Optional[Dict[str, torch.Tensor]] = None,
            **options: Any) -> Dict[str, Any]:
        if latents is None:
            raise NotApplicable(
                "bdmc needs the exact latents that simulated the data: pass "
                "latents=simulate(n).params with data simulated from the model at its params")
        o = {**OPTIONS, **options}
        check_options(o["start"], o["leapfrog_steps"], o["step_size"], o["target_accept"])
        betas = schedule(o["temperatures"], o["schedule"])
        check_target(problem, o["start"])
        plan_, (kc, bc) = chunks(problem, o["start"])
        K = problem.num_samples
        fwd, rev, acc_f, acc_r, weight = [], [], 0.0, 0.0, 0
        graphs = Graphs() if o["jit"] else None
        with pyro.validation_enabled(False):
            for idx, counts in plan_:
                sf, sr = WeightStats(K), WeightStats(K)
                for count in counts:
                    path = Path(problem, o["start"], count, idx, graphs)
                    args = (o["leapfrog_steps"], o["step_size"], o["target_accept"])
                    log_w, a = anneal(path, betas, path.pack(path.initial), *args)
                    sf.update(log_w)
                    exact = path.constrained(_posterior_draw(path, latents, idx))
                    log_w, r = anneal(path, betas.flip(0), exact, *args)
                    sr.update(log_w)
                    n = count * path.B
                    acc_f, acc_r, weight = acc_f + a * n, acc_r + r * n, weight + n
                fwd.append(sf)
                rev.append(sr)
        lower = fields(fwd, problem)
        upper = fields(rev, problem, sign=-1.0)
        diag = {f"forward_{k}": v for k, v in acceptance(acc_f, weight).items()}
        diag.update({f"reverse_{k}": v for k, v in acceptance(acc_r, weight).items()})
        diag.update(lower=lower["log_evidence"], upper=upper["log_evidence"],
                    gap=upper["log_evidence"] - lower["log_evidence"],
                    lower_stderr=lower["stderr"], upper_stderr=upper["stderr"],
                    bias=lower["diagnostics"]["bias"], upper_bias=upper["diagnostics"]["bias"],
                    temperatures=len(betas) - 1, chunk_particles=kc, chunk_datapoints=bc,
                    **jit_diagnostics(graphs))
        if problem.local:
            diag.update(upper_per_datapoint=upper["per_datapoint"],
                        gap_per_datapoint=upper["per_datapoint"] - lower["per_datapoint"])
        lower["diagnostics"] = diag
        return lower


def _posterior_draw(path: Path, latents, idx) -> Dict[str, torch.Tensor]:
    """The simulating latents, for the chunk's datapoints, repeated for every chain."""
    out = {}
    for name, _, pos, _ in path.sites:
        if name not in latents:
            raise ValueError(f"latents has no site {name!r}; pass every latent that simulated "
                             f"the data (got {sorted(latents)})")
        template = path.initial_values[name]
        v = torch.as_tensor(latents[name], dtype=template.dtype, device=template.device)
        if pos is not None:  # the data plate's dim, counted from the right
            v = v.index_select(pos - template.dim() + v.dim(), idx)
        try:
            out[name] = v.expand(template.shape)
        except RuntimeError:
            raise ValueError(f"latents[{name!r}] has shape {tuple(latents[name].shape)}; expected "
                             f"the site's value on the whole data, like {tuple(template.shape[1:])}"
                             " per chain") from None
    return out
