"""``ais``: annealed importance sampling from a start distribution to the posterior.

Along the geometric path ``f_beta(z) = s(z)^(1 - beta) p(x, z)^beta``, ``0 = beta_0 < ... <
beta_T = 1`` (:mod:`inference.annealing`), with the start ``s`` the guide (default) or the
prior, each chain draws ``z_0 ~ s`` and moves ``z_t ~ T_t(z_{t-1}, .)`` by HMC transitions
leaving ``f_{beta_t}`` invariant (:mod:`inference.hmc`); its weight

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) (log p(x, z_{t-1}) - log s(z_{t-1}))

has ``E[w] = p(x)`` [1]. So ``log (1/K) sum_k w_k`` over K chains is, like IWAE, a stochastic
lower bound on ``log p(x)`` -- but its gap shrinks with T at a fixed K, where the guide's own
gap only shrinks as ``log K`` [2, 3]. ``T = 1`` is ``is-guide`` (or ``is-prior``).

K is the number of chains per datapoint (local scope: ``log p(x_n)`` with any globals held
fixed) or in all (global scope). The standard error, ESS and PSIS k-hat are those of the K final
weights, as for importance sampling; the diagnostics add the HMC acceptance at each temperature
(``acceptance``, a list) and its mean and minimum. Cost: ``K x T x (leapfrog_steps + 1)``
evaluations of ``log p(x, z)``, ``log s(z)`` and their gradient per datapoint.

Options: ``temperatures`` (T, or the list of betas), ``schedule`` (``"sigmoid"`` [2] or
``"linear"``), ``start`` (``"guide"`` or ``"prior"``), ``leapfrog_steps``, ``step_size`` (the
initial one, then adapted per temperature and datapoint towards ``target_accept``), ``jit``
(default ``True``: each chunk's potential runs as a compiled graph, recorded once per chunk
shape and checked against the eager potential before each chunk uses it, the same numbers as
eager; ``False``: eager throughout; :mod:`inference.compiled_path`). ``diagnostics`` count the
chunks that ran compiled (``jit_chunks``) and those that fell back to eager
(``jit_fallbacks``, with ``jit_fallback_reason``).

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Wu, Burda, Salakhutdinov, Grosse (2017), On the Quantitative Analysis of Decoder-Based
    Generative Models, ICLR.
[3] Burda, Grosse, Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR.
"""

from __future__ import annotations

from typing import Any, Dict

import pyro
import torch

from inference.annealing import (CHECKS, OPTIONS, Path, anneal, check_options, check_target,
                                 chunks, fields, schedule)
from inference.compiled_path import Graphs
from inference.problem import Estimator, Problem, register
from inference.weights import WeightStats


@register
class AIS(Estimator):
    name = "ais"
    summary = "annealed importance sampling, start -> posterior with HMC: a lower bound tight in T"
    options = dict(OPTIONS)
    checks = CHECKS
    unbiased = True

    def evaluations(self, num_samples: int, **options: Any) -> float:
        return num_samples * annealing_cost({**OPTIONS, **options})

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        o = {**OPTIONS, **options}
        check_options(o["start"], o["leapfrog_steps"], o["step_size"], o["target_accept"])
        betas = schedule(o["temperatures"], o["schedule"])
        check_target(problem, o["start"])
        plan_, (kc, bc) = chunks(problem, o["start"])
        stats, acc, weight = [], 0.0, 0
        graphs = Graphs() if o["jit"] else None
        with pyro.validation_enabled(False):
            for idx, counts in plan_:
                st = WeightStats(problem.num_samples)
                for count in counts:
                    path = Path(problem, o["start"], count, idx, graphs)
                    log_w, a = anneal(path, betas, path.pack(path.initial), o["leapfrog_steps"],
                                      o["step_size"], o["target_accept"])
                    st.update(log_w)
                    acc, weight = acc + a * count * path.B, weight + count * path.B
                stats.append(st)
        diag = acceptance(acc, weight)
        diag.update(temperatures=len(betas) - 1, chunk_particles=kc, chunk_datapoints=bc,
                    **jit_diagnostics(graphs))
        return fields(stats, problem, diagnostics=diag)


def annealing_cost(o: Dict[str, Any]) -> int:
    """Evaluations (with gradient) per chain: one at the start of each of the ``T - 1``
    transitions plus its leapfrog steps, and the first one."""
    T = len(schedule(o["temperatures"], o["schedule"])) - 1
    return 1 + (T - 1) * (int(o["leapfrog_steps"]) + 1)


def jit_diagnostics(graphs) -> Dict[str, Any]:
    """What ran compiled (:meth:`inference.compiled_path.Graphs.diagnostics`); ``jit_chunks = 0``
    with ``jit=False``."""
    return graphs.diagnostics() if graphs is not None else dict(jit_chunks=0)


def acceptance(total, weight) -> Dict[str, Any]:
    """HMC acceptance per transition, its mean and minimum (NaN without transitions)."""
    acc = torch.as_tensor(total, dtype=torch.float64) / max(weight, 1)
    if acc.numel() == 0:
        return dict(acceptance=[], acceptance_mean=float("nan"), acceptance_min=float("nan"))
    return dict(acceptance=acc.tolist(), acceptance_mean=float(acc.mean()),
                acceptance_min=float(acc.min()))
