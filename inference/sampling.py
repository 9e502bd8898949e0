"""What the sampling estimators share: stream K particles' log weights through the one replay
primitive (:func:`inference.replay.log_weights`) in memory-planned chunks, reduce them with
:class:`~inference.weights.WeightStats`, and attach the standard error, ESS and PSIS k-hat.

:func:`sampled` is all an importance-sampling estimator needs: its proposal (``"guide"`` or
``"prior"``), the statistic of the weights (``"mean"``: ``(1/K) sum_k log w_k``;
``"log_mean"``: ``log (1/K) sum_k w_k``) and, optionally, a correction added to every log
weight (the symmetrised proposal of ``is-guide``).

**Sharded** (``estimate(distributed=True)``, :mod:`inference.distributed`). Local scope: the
chunks of datapoints of the one-process plan are dealt to the ranks, chunk ``b`` to rank
``b % P``, each seeded from ``(seed, its first index)``; the per-datapoint statistics are
gathered in order, so every value is the same on any number of processes. Global scope:
``log w_k = G_k + sum_r S_rk``, the sites outside the data plate (the same on every rank:
the particles are shared) plus each rank's unscaled data-plate terms on its shard
``idx[rank::P]``, summed by an all-reduce before any log-sum-exp; a proposal that draws
latents per datapoint cannot share its particles and is refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import pyro
import pyro.poutine as poutine
import torch

from inference import distributed as parallel
from inference.problem import NotApplicable, Problem
from inference.plates import on_datapoints
from inference.replay import PARTICLES, _traced, in_plate, log_weights, sample_sites
from inference.target import num_datapoints, subsampled
from inference.weights import WeightStats, pareto_khat, stream

#: statistic name -> (value, standard error) of a :class:`WeightStats`
STATISTICS: Dict[str, Callable[[WeightStats], Any]] = {
    "mean": lambda s: (s.mean(), s.mean_stderr()),
    "log_mean": lambda s: (s.log_mean(), s.is_stderr()),
}

#: ``correction(problem, count, guide_trace)`` -> a log-weight term per particle
Correction = Callable[[Problem, int, Any], torch.Tensor]


def sampled(problem: Problem, proposal: str, statistic: str,
            correction: Optional[Correction] = None) -> Dict[str, Any]:
    """The :class:`inference.Estimate` fields of ``statistic`` over K particles from ``proposal``.

    With ``proposal="guide"`` the guide is first checked to have a density at every latent
    (:class:`~inference.estimators.NotApplicable` otherwise)."""
    tgt, data, mpn, local = problem.target, problem.data, problem.max_plate_nesting, problem.local
    fixed, K, budget = problem.fixed, problem.num_samples, problem.memory_budget

    kept: list = []  # with keep_weights: (datapoint chunk, log weights), the pilot first

    def weights(start, count, idx):
        kw = dict(max_plate_nesting=mpn, proposal=proposal, local=local, indices=idx, fixed=fixed)
        if correction is None:
            lw = log_weights(tgt, data, count, **kw)
        else:
            lw, _, guide_tr = log_weights(tgt, data, count, with_traces=True, **kw)
            lw = lw + correction(problem, count, guide_tr)
        if problem.keep_weights:
            kept.append((idx, lw))
        return lw

    if proposal == "guide":
        check_proposal(problem)
    N, world = num_datapoints(data), problem.world
    if world is None or not local:
        if world is not None:  # global: the pilot (first call) on all data, as in one process
            weights = _global_shards(problem, proposal, correction, weights)
        stats, (kc, bc) = stream(weights, K, N if local else None, budget, data[0].device)
        value, err, ess, khat = _summaries(stats, statistic, K, budget)
    else:
        stats, (kc, bc) = stream(weights, K, N, budget, data[0].device,
                                 dealt=(world, problem.seed))
        mine = [[t.cpu() for t in _summaries([st], statistic, K, budget)] for st in stats]
        parts = parallel.gather(mine, world)  # rank r ran chunks r, r + P, r + 2P, ...
        chunks = [parts[g % world.size][g // world.size]
                  for g in range(sum(map(len, parts)))]
        value, err, ess, khat = (torch.cat([c[j] for c in chunks]).to(data[0].device)
                                 for j in range(4))
    fields = dict(
        num_samples=K,
        log_evidence=float(value.sum()),
        stderr=float(err.pow(2).sum().sqrt()),
        ess=float(ess.mean()),
        khat=float(khat.nan_to_num(-math.inf, posinf=math.inf).max())
        if not khat.isnan().all() else math.nan,
        diagnostics={"chunk_particles": kc, "chunk_datapoints": bc},
    )
    if local:
        fields.update(per_datapoint=value, stderr_per_datapoint=err,
                      ess_per_datapoint=ess, khat_per_datapoint=khat)
    if problem.keep_weights:
        fields["log_weights"] = _assemble(kept[1:], local)  # the first call is stream's pilot
    return fields


def _summaries(stats, statistic: str, K: int, budget: int):
    """Per datapoint: the statistic, its standard error, the ESS and the PSIS k-hat."""
    pairs = [STATISTICS[statistic](s) for s in stats]
    value = torch.cat([v for v, _ in pairs])
    err = torch.cat([e for _, e in pairs])
    ess = torch.cat([s.ess() for s in stats])
    top = torch.cat([s.top for s in stats], 1)
    khat = pareto_khat(top, K, budget)
    # A datapoint masked out of the model has equal weights: no tail, no k-hat to speak of.
    khat = torch.where((top == top[:1]).all(0), torch.full_like(khat, math.nan), khat)
    return value, err, ess, khat


def _global_shards(problem: Problem, proposal: str, correction: Optional[Correction], pilot):
    """Global-scope ``weights`` of a sharded estimate: every rank draws the same particles,
    replays the model on its shard ``idx[rank::size]`` and sums the data plate's terms across
    ranks; the first call (:func:`~inference.weights.stream`'s pilot) runs ``pilot`` on all
    the data, so the chunk plan and the particles are those of one process."""
    tgt, data, world = problem.target, problem.data, problem.world
    mine = parallel.shard(torch.arange(num_datapoints(data), device=data[0].device), world)
    if len(mine) == 0:  # known to every rank alike: all refuse
        raise ValueError(f"{num_datapoints(data)} datapoints cannot be shared by {world.size} "
                         "processes in global scope; start fewer processes")
    calls = []

    def weights(start, count, idx):
        calls.append(count)
        if len(calls) == 1:
            return pilot(start, count, idx)
        (rest, inside), model_tr, guide_tr = log_weights(
            tgt, data, count, max_plate_nesting=problem.max_plate_nesting, proposal=proposal,
            local=False, indices=mine, with_traces=True, split=True)
        if len(calls) == 2:
            _check_shared(problem, model_tr if proposal == "prior" else guide_tr, proposal)
        if correction is not None:
            rest = rest + correction(problem, count, guide_tr)
        return rest + parallel.all_sum(inside, world)

    return weights


def _check_shared(problem: Problem, trace, proposal: str) -> None:
    """The particles are shared only if the proposal draws nothing per datapoint."""
    for name, site in sample_sites(trace, latent_only=True):
        if in_plate(site, problem.target.data_plate) is not None and \
                site["infer"].get("enumerate") != "parallel":
            raise ValueError(
                f"the {proposal} draws {name!r} per datapoint: in global scope the processes can "
                "share only particles of global latents; use scope='local' or run without "
                "distributed=True")


def _assemble(chunks, local: bool) -> torch.Tensor:
    """The ``[K, N]`` (local) or ``[K]`` (global) log weights from the chunks in stream order:
    particle chunks within datapoint chunks."""
    if not local:
        return torch.cat([lw for _, lw in chunks])
    columns, current, parts = [], None, []
    for idx, lw in chunks:
        if current is not None and idx is not current:
            columns.append(torch.cat(parts))
            parts = []
        current = idx
        parts.append(lw)
    columns.append(torch.cat(parts))
    return torch.cat(columns, 1)


def guide_trace(problem: Problem, count: int, idx: Optional[torch.Tensor],
                values: Optional[Dict[str, torch.Tensor]] = None):
    """The guide on the datapoints ``idx`` (``None``: all) under a particle plate of ``count``,
    conditioned on the values held fixed and on ``values``: the guide's half of
    :func:`inference.replay.log_weights`, which draws the same particles."""
    p = problem
    given = {**(p.fixed or {}), **(values or {})}
    guide = poutine.condition(p.target.guide, given) if given else p.target.guide
    handler, data = on_datapoints(p.target, p.data, idx)
    dim = -(p.max_plate_nesting + 1)

    def vectorized(*args):
        with pyro.plate(PARTICLES, count, dim=dim):
            return guide(*args)

    return _traced(subsampled(vectorized, handler), *data)


def check_proposal(problem: Problem) -> None:
    """The guide must have a density at every latent to importance-sample with: a ``Delta`` is
    one only where the guide draws an auxiliary latent it transforms (an autoguide). Read off
    one guide trace with one particle on two datapoints (the model's replay is the pilot's)."""
    data = problem.data
    idx = torch.arange(min(num_datapoints(data), 2), device=data[0].device) if problem.local else None
    sites = list(sample_sites(guide_trace(problem, 1, idx), latent_only=True))
    if any(site["infer"].get("is_auxiliary") for _, site in sites):
        return
    for name, site in sites:
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, pyro.distributions.Delta):
            raise NotApplicable(
                f"the guide's site {name!r} is a point mass (Delta): it has no density to "
                "importance-sample with; fit a guide with a density or use method='is-prior'"
            )
