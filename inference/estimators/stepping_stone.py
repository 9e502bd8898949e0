"""``stepping-stone``: the evidence from power posteriors on a temperature ladder, as a product
of importance ratios (stepping-stone sampling) or as an integral (thermodynamic integration).

Along the path ``f_b(z) = s(z)^(1 - b) p(x, z)^b`` of :mod:`inference.path`, ``s`` the prior
(the power posteriors ``p(z) p(x | z)^b`` of [1, 2]) or the guide (a reference distribution,
the generalized stepping-stone of [3]), ``Z_0 = 1`` and ``Z_1 = p(x)``. With
``l(z) = log p(x, z) - log s(z)`` and draws ``z_k^t`` of ``f_{b_t} / Z_{b_t}``:

``rule="stepping-stone"`` [1]: ``log Z = sum_{t=1..T} log r_t``, each ratio ``Z_{b_t} / Z_{b_{t-1}}``
an importance average under the previous power posterior,
``r_t = (1/K) sum_k exp((b_t - b_{t-1}) l(z_k^{t-1}))``;

``rule="ti"`` [2, 4]: ``d log Z_b / db = E_b[l]``, so ``log Z = int_0^1 E_b[l] db``, by the
trapezoid rule on the ladder; ``diagnostics["ti_simpson"]`` is the composite Simpson rule on the
same points, and their difference estimates the trapezoid's discretisation error.

**Draws.** K independent chains start at exact draws of ``s`` and at each temperature make
``moves`` HMC transitions leaving ``f_b`` invariant (:mod:`inference.hmc`, the annealing
estimators' sampler), in coordinates whitened by a mass matrix: each half of the chains by the
covariance of the other half at that temperature, which does not
depend on its own states (with the chains' own covariance, AIS on the same chains came out 3
nats high on the 30-D LogGamma at 128 temperatures). The step size, jittered by U(0.5, 1.5)
per chain and capped at a quarter period of a whitened Gaussian (``pi / 2`` per trajectory),
is adapted towards ``target_accept``.

**Error.** The chains are dealt into ``groups`` batches; the delete-one-batch jackknife [5] of
the estimate over these independent batches is its standard error: the Monte Carlo error of
chains at equilibrium at every temperature. It cannot see chains that trail the ladder (too
few moves: both rules come out low), nor TI's discretisation. Caveats say so where the draws
show it: (i) the same chains give an AIS estimate (``diagnostics["ais"]``), unbiased for ``Z``
at or out of equilibrium [6]; more than 3 combined stderr from it, the chains lag -- and where
its weights' k-hat is above ``AIS_KHAT`` nothing vouches for the equilibrium; (ii) the rule on
every other temperature (``diagnostics["half_ladder"]``, the same draws) moves the estimate by
more than its stderr and 3 stderr of the change: the ladder is too coarse; (iii) TI's
``|trapezoid - Simpson|`` above its stderr; (iv) a stone's weights with an ESS below
``MIN_ESS``. Not every lag is seen: with the default ladder the 4-mode LogGamma in 5-D came
out 2-4 stderr low with no caveat (``moves=20`` fixes it; benchmarks/RESULTS.md).

Options: ``rule``, ``temperatures`` (T, or the list of b's), ``schedule`` (default
``"power"``: ``(t/T)^(1/0.3)``, the quantiles of Beta(0.3, 1) of [1]), ``start`` (``"prior"``
or ``"guide"``), ``moves``, ``groups``, and HMC's ``leapfrog_steps``, ``step_size`` (the
first), ``target_accept``, ``jit`` (:mod:`inference.estimators.ais`). K is the number of chains
per datapoint (local scope) or in all (global scope). Cost per chain: ``1 + T' (1 + moves
leapfrog_steps)`` evaluations of ``log p(x, z)`` with its gradient, ``T' = T - 1``
(stepping-stone: no draws at b = 1) or ``T`` (TI): :meth:`SteppingStone.evaluations`.

References

[1] Xie, Lewis, Fan, Kuo, Chen (2011), Improving marginal likelihood estimation for Bayesian
    phylogenetic model selection, Systematic Biology.
[2] Friel, Pettitt (2008), Marginal likelihood estimation via power posteriors, JRSS B.
[3] Fan, Wu, Chen, Kuo, Lewis (2011), Choosing among partition models in Bayesian
    phylogenetics, Molecular Biology and Evolution.
[4] Gelman, Meng (1998), Simulating normalizing constants: from importance sampling to bridge
    sampling to path sampling, Statistical Science.
[5] Efron, Stein (1981), The jackknife estimate of variance, Annals of Statistics.
[6] Neal (2001), Annealed importance sampling, Statistics and Computing.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pyro
import torch

from inference.annealing import (CHECKS, OPTIONS, Path, check_options, check_target, chunks,
                                 schedule)
from inference.compiled_path import Graphs, frozen
from inference.estimators.ais import jit_diagnostics
from inference.problem import Estimator, NotApplicable, Problem, integer, one_of, register
from inference.estimators.nested import ensemble_cholesky
from inference.hmc import adapt_step_size, transition
from inference.weights import MIN_ESS, WeightStats, pareto_khat

RULES = ("stepping-stone", "ti")
#: above this PSIS k-hat the AIS cross-check's standard error is not trusted [6]
AIS_KHAT = 0.7
#: the step size's adaptation rate (:func:`inference.hmc.adapt_step_size`)
RATE = 0.5


@register
class SteppingStone(Estimator):
    name = "stepping-stone"
    summary = "power posteriors on a temperature ladder with HMC: stepping-stone ratios or TI"
    weighted = False
    min_samples = 2
    options = dict(OPTIONS, rule="stepping-stone", temperatures=32, schedule="power",
                   start="prior", moves=5, groups=10)
    checks = dict(CHECKS, rule=one_of(*RULES), moves=integer(1), groups=integer(2))

    def evaluations(self, num_samples: int, **options: Any) -> float:
        o = {**self.options, **options}
        T = len(schedule(o["temperatures"], o["schedule"])) - 1
        drawn = T if o["rule"] == "ti" else T - 1
        return num_samples * (1 + drawn * (1 + int(o["moves"]) * int(o["leapfrog_steps"])))

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:
        o = {**self.options, **options}
        check_options(o["start"], o["leapfrog_steps"], o["step_size"], o["target_accept"])
        K = problem.num_samples
        if K < self.min_samples:
            raise ValueError(f"stepping-stone needs K >= {self.min_samples} chains (num_samples) "
                             f"for its stderr, got {K}")
        betas = schedule(o["temperatures"], o["schedule"])
        check_target(problem, o["start"])
        plan_, (kc, bc) = chunks(problem, o["start"])
        G = min(int(o["groups"]), K)
        graphs = Graphs() if o["jit"] else None
        # parameters frozen while HMC runs: constants of the compiled graphs
        with pyro.validation_enabled(False), frozen(problem.target.networks.values()):
            parts = [_ladder(problem, idx, counts, betas, G, o, graphs) for idx, counts in plan_]
        res = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "acceptance"}
        acc = torch.stack([p["acceptance"] for p in parts]).mean(0)
        value, err = res["value"], res["stderr"]
        total_err = float(err.pow(2).sum().sqrt())
        diag = dict(rule=o["rule"], temperatures=len(betas) - 1, moves=int(o["moves"]), groups=G,
                    stepping_stone=float(res["ss"].sum()), ti=float(res["ti"].sum()),
                    ti_simpson=float(res["simpson"].sum()), half_ladder=float(res["half"].sum()),
                    half_ladder_stderr=float(res["refine_stderr"].pow(2).sum().sqrt()),
                    ais=float(res["ais"].sum()),
                    ais_stderr=float(res["ais_stderr"].pow(2).sum().sqrt()),
                    ais_khat=float(res["ais_khat"].max()), stone_ess_min=float(res["ess"].min()),
                    acceptance=acc.tolist(),
                    acceptance_mean=float(acc.mean()) if len(acc) else math.nan,
                    evaluations=self.evaluations(K, **o), chunk_particles=kc, chunk_datapoints=bc,
                    **jit_diagnostics(graphs))
        if o["rule"] == "ti" and not math.isfinite(diag["ti"]):
            raise NotApplicable("rule='ti': log p(x, z) - log s(z) is not finite at some draws, so "
                                "E_b[l] diverges near b = 0; use rule='stepping-stone'")
        out = dict(num_samples=K, log_evidence=float(value.sum()), stderr=total_err,
                   ess=float(res["ess"].mean()), khat=math.nan, diagnostics=diag,
                   caveats=_caveats(diag, float(value.sum()), total_err))
        if problem.local:
            out.update(per_datapoint=value, stderr_per_datapoint=err, ess_per_datapoint=res["ess"],
                       khat_per_datapoint=torch.full_like(value, math.nan))
        return out


def _caveats(d: Dict[str, Any], value: float, err: float) -> list:
    out = []
    if not d["ais_khat"] <= AIS_KHAT:
        out.append(f"the chains' equilibrium along the ladder cannot be checked: the AIS weights "
                   f"of the same chains are too heavy-tailed (k-hat {d['ais_khat']:.2f}); raise "
                   "moves, temperatures or K")
    elif abs(value - d["ais"]) > 3 * math.hypot(err, d["ais_stderr"]):
        gap = abs(value - d["ais"]) / math.hypot(err, d["ais_stderr"])
        out.append(f"the chains lag behind the ladder: {d['rule']} and AIS on the same chains "
                   f"differ by {gap:.1f} combined stderr; raise moves or temperatures")
    moved = abs(value - d["half_ladder"])
    if moved > max(err, 3 * d["half_ladder_stderr"]):
        out.append(f"halving the ladder moves the estimate by {moved:.3g} (its stderr {err:.3g}): "
                   "the ladder is too coarse; raise temperatures")
    if d["stone_ess_min"] < MIN_ESS and d["rule"] == "stepping-stone":
        out.append(f"a stone's weights have ESS {d['stone_ess_min']:.3g} below {MIN_ESS:g}: "
                   "raise temperatures")
    if d["rule"] == "ti" and abs(d["ti"] - d["ti_simpson"]) > err:
        out.append(f"TI's discretisation (trapezoid - Simpson = {d['ti'] - d['ti_simpson']:.3g}) "
                   "exceeds its stderr: raise temperatures")
    return out


def _ladder(problem: Problem, idx, counts, betas: torch.Tensor, G: int, o: Dict[str, Any],
            graphs: Optional[Graphs]):
    """Every chain of one chunk of datapoints along the ladder; per-datapoint results."""
    K, T = problem.num_samples, len(betas) - 1
    last = T if o["rule"] == "ti" else T - 1  # the last temperature drawn at
    half = sorted(set(range(0, T, 2)) | {T})
    nxt = {a: b for a, b in zip(half, half[1:])}
    sums, ais, accept, first = None, WeightStats(K), [], 0
    for count in counts:
        path = Path(problem, o["start"], count, idx, graphs)
        x = path.pack(path.initial)
        dev = x.device
        gid = torch.div(torch.arange(first, first + count, device=dev) * G, K, rounding_mode="floor")
        first += count
        if sums is None:
            sums = {k: torch.full((T + 1, G, path.B), 0.0 if k == "l" else -math.inf,
                                  dtype=torch.float64, device=dev) for k in ("ss", "ss2", "hf", "l")}
        step = torch.full((path.B,), float(o["step_size"]), dtype=x.dtype, device=dev)
        log_w = torch.zeros(count, path.B, dtype=torch.float64, device=dev)
        acc, cap = [], math.pi / 2 / int(o["leapfrog_steps"])  # whitened: a quarter period
        for t in range(last + 1):
            chol = _metric(x) if t > 0 else [torch.diag_embed(torch.ones_like(x[0]))] * 2
            pot = _whitened(path.potential(float(betas[t])), chol, count // 2)
            y = _apply(chol, x, count // 2, inverse=True)
            f, g, diff = pot(y)
            for _ in range(int(o["moves"]) if t > 0 else 0):
                jitter = step * (0.5 + torch.rand(count, path.B, dtype=x.dtype, device=dev))
                y, f, g, diff, prob = transition(y, f, g, diff, pot, jitter, int(o["leapfrog_steps"]))
                step = adapt_step_size(step, prob, o["target_accept"], rate=RATE).clamp(max=cap)
                acc.append(prob.mean())
            x = _apply(chol, y, count // 2)
            d = torch.nan_to_num(diff.double(), nan=-math.inf)
            sums["l"][t].index_add_(0, gid, d)
            if t < T:
                a = float(betas[t + 1] - betas[t]) * d
                log_w += a
                for k, v in (("ss", a), ("ss2", 2 * a)):
                    sums[k][t] = torch.logaddexp(sums[k][t], _group_lse(v, gid, G))
                if t in nxt:
                    v = float(betas[nxt[t]] - betas[t]) * d
                    sums["hf"][t] = torch.logaddexp(sums["hf"][t], _group_lse(v, gid, G))
        ais.update(log_w)
        accept.append(torch.stack(acc).cpu() * count if acc else torch.zeros(0))
    sizes = torch.bincount(torch.arange(K) * G // K, minlength=G).to(dev, torch.float64)
    res = _rules(sums, sizes, betas.to(dev), half, o["rule"])
    ess = torch.exp(2 * sums["ss"][:T].logsumexp(1) - sums["ss2"][:T].logsumexp(1)).min(0).values
    res.update(ais=ais.log_mean(), ais_stderr=ais.is_stderr(),
               ais_khat=pareto_khat(ais.top, K, problem.memory_budget), ess=ess,
               acceptance=sum(accept) / K)
    return res


def _metric(x: torch.Tensor):
    """The Cholesky factors of the two halves' mass matrices: each the other half's covariance."""
    return [ensemble_cholesky(x[x.shape[0] // 2:]), ensemble_cholesky(x[:x.shape[0] // 2])]


def _apply(chol, x: torch.Tensor, h: int, inverse: bool = False, transpose: bool = False):
    """``chol[0] x`` on the first ``h`` chains, ``chol[1] x`` on the rest (``chol^-1`` or
    ``chol^T``)."""
    out = []
    for c, part in zip(chol, (x[:h], x[h:])):
        if inverse:
            out.append(torch.linalg.solve_triangular(c, part.permute(1, 2, 0), upper=False)
                       .permute(2, 0, 1))
        else:
            out.append(torch.einsum("bde,cbd->cbe" if transpose else "bed,cbd->cbe", c, part))
    return torch.cat(out)


def _whitened(potential, chol, h: int):
    """``potential`` in the coordinates ``y = chol^-1 x`` (module docstring)."""

    def fn(y):
        f, g, d = potential(_apply(chol, y, h))
        return f, _apply(chol, g, h, transpose=True), d

    return fn


def _group_lse(v: torch.Tensor, gid: torch.Tensor, G: int) -> torch.Tensor:
    """``logsumexp`` of ``v [C, B]`` over the chains of each group: ``[G, B]``."""
    m = torch.full((G, v.shape[1]), -math.inf, dtype=v.dtype, device=v.device)
    m = m.scatter_reduce(0, gid.unsqueeze(-1).expand_as(v), v, "amax")
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m + torch.zeros_like(m).index_add(0, gid, torch.exp(v - m[gid])).log()


def _rules(sums, sizes, betas, half, rule: str) -> Dict[str, torch.Tensor]:
    """The estimate of ``rule`` with its jackknife standard error over the groups, the other
    estimates of the same draws, per datapoint (module docstring)."""
    G, T, K = len(sizes), len(betas) - 1, sizes.sum()

    def ss(s, n, rows, key="ss"):  # sum over stones of the log mean weight
        return (s[key][rows].logsumexp(1) - n.log()).sum(0)

    def trapezoid(s, n, points):
        m = s["l"][points].sum(1) / n
        return (betas[points].diff().unsqueeze(-1) * (m[1:] + m[:-1]) / 2).sum(0)

    nan = torch.full_like(sums["l"][0, 0], math.nan)
    out = dict(ss=ss(sums, K, list(range(T))), ti=nan, simpson=nan)
    if rule == "ti":
        def fn(s, n):  # the rule on the whole ladder and on every other temperature
            return torch.stack([trapezoid(s, n, list(range(T + 1))), trapezoid(s, n, half)])
        out.update(simpson=_simpson(sums["l"].sum(1) / K, betas))
    else:
        def fn(s, n):
            return torch.stack([ss(s, n, list(range(T))), ss(s, n, half[:-1], "hf")])
    value = fn(sums, K)
    loo = torch.stack([fn({k: v[:, torch.arange(G, device=v.device) != g] for k, v in sums.items()},
                          K - sizes[g]) for g in range(G)])
    loo = torch.cat([loo, (loo[:, 0] - loo[:, 1]).unsqueeze(1)], 1)
    err = ((G - 1) / G * (loo - loo.mean(0)).pow(2).sum(0)).sqrt()
    out.update(value=value[0], half=value[1], stderr=err[0], refine_stderr=err[2])
    if rule == "ti":
        out["ti"] = value[0]
    return out


def _simpson(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Composite Simpson's rule on uneven points ``x [P]`` of ``m [P, B]``: pairs of intervals,
    a last odd one by the trapezoid."""
    total, i = torch.zeros_like(m[0]), 0
    while i + 2 < len(x):
        h0, h1 = x[i + 1] - x[i], x[i + 2] - x[i + 1]
        total = total + (h0 + h1) / 6 * ((2 - h1 / h0) * m[i] + (h0 + h1) ** 2 / (h0 * h1) * m[i + 1]
                                         + (2 - h0 / h1) * m[i + 2])
        i += 2
    if i + 1 < len(x):
        total = total + (x[i + 1] - x[i]) * (m[i] + m[i + 1]) / 2
    return total
