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
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from inference import distributed as parallel
from inference.problem import NotApplicable, Problem
from inference.plates import first, on_datapoints
from inference.replay import PARTICLES, _traced, in_plate, log_weights, sample_sites
from inference.target import num_datapoints, subsampled
from inference.weights import WeightStats, bias_caveats, log_mean_bias, pareto_khat, stream

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
        value, err, ess, khat = _summaries(stats, statistic, K, budget,
                                           lambda v: check_finite(problem, v, proposal))
    else:
        stats, (kc, bc) = stream(weights, K, N, budget, data[0].device,
                                 dealt=(world, problem.seed))
        mine = [[t.cpu() for t in _summaries([st], statistic, K, budget)] for st in stats]
        parts = parallel.gather(mine, world)  # rank r ran chunks r, r + P, r + 2P, ...
        chunks = [parts[g % world.size][g // world.size]
                  for g in range(sum(map(len, parts)))]
        value, err, ess, khat = (torch.cat([c[j] for c in chunks]).to(data[0].device)
                                 for j in range(4))
    check_finite(problem, value, proposal)  # sharded: each rank's part unchecked until here
    fields = dict(
        num_samples=K,
        log_evidence=float(value.sum()),
        stderr=float(err.pow(2).sum().sqrt()),
        ess=float(ess.mean()),
        khat=float(khat.nan_to_num(-math.inf, posinf=math.inf).max())
        if not khat.isnan().all() else math.nan,
        diagnostics={"chunk_particles": kc, "chunk_datapoints": bc},
    )
    if statistic == "log_mean":
        fields["diagnostics"]["bias"] = log_mean_bias(err)
        fields["caveats"] = bias_caveats(fields["diagnostics"]["bias"], fields["stderr"])
    if local:
        fields.update(per_datapoint=value, stderr_per_datapoint=err,
                      ess_per_datapoint=ess, khat_per_datapoint=khat)
    if problem.keep_weights:
        fields["log_weights"] = _assemble(kept[1:], local)  # the first call is stream's pilot
    return fields


def _summaries(stats, statistic: str, K: int, budget: int, check=None):
    """Per datapoint: the statistic, its standard error, the ESS and the PSIS k-hat (``check``,
    if given, sees the statistic first)."""
    pairs = [STATISTICS[statistic](s) for s in stats]
    value = torch.cat([v for v, _ in pairs])
    if check is not None:
        check(value)
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
                values: Optional[Dict[str, torch.Tensor]] = None, handler=None):
    """The guide on the datapoints ``idx`` (``None``: all) under a particle plate of ``count``,
    conditioned on the values held fixed and on ``values`` (and run under ``handler``, a
    messenger, if given): the guide's half of :func:`inference.replay.log_weights`, which draws
    the same particles."""
    p = problem
    given = {**(p.fixed or {}), **(values or {})}
    guide = poutine.condition(p.target.guide, given) if given else p.target.guide
    at, data = on_datapoints(p.target, p.data, idx)
    dim = -(p.max_plate_nesting + 1)

    def vectorized(*args):
        with pyro.plate(PARTICLES, count, dim=dim):
            return guide(*args)

    traced = subsampled(vectorized, at)
    return _traced(handler(traced) if handler is not None else traced, *data)


def check_finite(problem: Problem, value: torch.Tensor, proposal: str) -> None:
    """Refuse an estimate that is NaN or ``+inf`` (per datapoint in local scope), naming the
    first site of a replay whose log density is: a weight of ``-inf`` (a particle where the
    model has no mass) is an answer, NaN and ``+inf`` never are."""
    bad = (value.isnan() | (value == math.inf)).reshape(-1)
    if not bad.any():
        return
    first = int(bad.nonzero()[0])
    kind = "NaN" if value.reshape(-1)[first].isnan() else "+inf"
    idx, where = None, ""
    if problem.local:
        idx = torch.tensor([first], device=problem.data[0].device)
        where = f" for {int(bad.sum())} of {bad.numel()} datapoints (the first: {first})"
    raise ValueError(
        f"the estimate is {kind}{where}: {_nonfinite_site(problem, proposal, idx)} a log density "
        "of NaN or +inf at some particles (a NaN or infinite parameter, a negative or zero "
        "scale, the log of a negative number, a pyro.factor of +inf); -inf (no mass there) is "
        "allowed, NaN and +inf are not: make every log density finite or -inf where the "
        "proposal puts particles")


def _nonfinite_site(problem: Problem, proposal: str, idx) -> str:
    """``"site 'x' of the model has"`` for the first site with a NaN or ``+inf`` log density in a
    replay of 256 particles on the datapoints ``idx`` (``"some site has"`` if none shows)."""
    if proposal not in ("guide", "prior"):
        return "some site has"
    p = problem
    _, model_tr, guide_tr = log_weights(p.target, p.data, min(p.num_samples, 256),
                                        max_plate_nesting=p.max_plate_nesting, proposal=proposal,
                                        local=p.local, indices=idx, fixed=p.fixed,
                                        with_traces=True)
    for where, tr in (("guide", guide_tr), ("model", model_tr)):
        for name, site in sample_sites(tr) if tr is not None else ():
            lp = site["fn"].log_prob(site["value"])
            if (lp.isnan() | (lp == math.inf)).any():
                return f"site {name!r} of the {where} has"
    return "some site has"


def check_proposal(problem: Problem) -> None:
    """The guide must have a density at every latent to importance-sample with
    (:class:`~inference.estimators.NotApplicable` otherwise), read off one trace that tracks
    which sites depend on the guide's auxiliary sites (:class:`_Auxiliary`):

    * an auxiliary site (``infer={"is_auxiliary": True}``) is a density over the latents only
      through ``Delta`` sites, its deterministic images carrying the log-Jacobian (as Pyro's
      autoguides map theirs): a latent drawn from a distribution *given* an auxiliary draw
      has the marginal ``q(z) = E_u[q(z | u)]``, which the weights do not compute;
    * a ``Delta`` is a density only as such an image: any other point mass (``AutoDelta``,
      also inside an ``AutoGuideList``; ``AutoLaplaceApproximation``'s MAP point, an auxiliary
      ``Delta`` itself) has none."""
    tgt, data = problem.target, problem.data
    idx = first(data) if problem.local else None
    sliced = problem.local and tgt.data_access == "whole"  # chunks are passed as slices
    sites = _Auxiliary()
    try:
        tr = guide_trace(problem, 1, idx, handler=sites)
    except ValueError as err:
        if sliced and "Shape mismatch inside plate" in str(err):
            raise NotApplicable(_UNSLICEABLE) from None
        raise
    if sliced and any(f.name == tgt.data_plate and f.size != len(idx)
                      for _, site in sample_sites(tr, latent_only=True)
                      for f in site["cond_indep_stack"]):
        raise NotApplicable(_UNSLICEABLE)
    for name, (auxiliary, point, depends) in sites.sites.items():
        if point and (auxiliary or not depends):
            raise NotApplicable(
                f"the guide's site {name!r} is a point mass (Delta: AutoDelta, an "
                "AutoLaplaceApproximation before .laplace_approximation(), a MAP fit): it has no "
                "density to importance-sample with; fit a guide with a density for it (AutoNormal) "
                "or use method='is-prior'")
        if depends and not auxiliary and not point:
            raise NotApplicable(
                f"the guide draws {name!r} given its auxiliary site(s) {sorted(depends)}: "
                f"q({name}) is then a marginal over them that the weights do not compute; sample "
                f"{name!r} from a distribution of its own (or map the auxiliary draw to it through "
                "a Delta carrying the log-Jacobian, as autoguides do), or use method='is-prior'")


_UNSLICEABLE = (
    "the model uses its data whole (obs=x, not indexed by the plate) and the guide keeps "
    "parameters per datapoint: per-datapoint estimates pass the datapoints in slices, whose "
    "rows the guide cannot pick; index the data with the plate, `with pyro.plate('data', "
    "len(x)) as idx: ... obs=x[idx]`, or use scope='global' (or method='is-prior')")


class _Auxiliary(Messenger):
    """Records, per latent site of a guide, ``(auxiliary, point mass, the auxiliary sites its
    distribution or value depends on)``, by tracking the auxiliary draws' provenance
    (:mod:`pyro.ops.provenance`) through the guide's code."""

    def __init__(self):
        super().__init__()
        self.sites: Dict[str, Any] = {}

    def _pyro_post_sample(self, msg) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        value = detach_provenance(msg["value"])
        depends = get_provenance(msg["value"]) | get_provenance(msg["fn"].log_prob(value))
        auxiliary = bool(msg["infer"].get("is_auxiliary"))
        self.sites[msg["name"]] = (auxiliary, _point_mass(msg["fn"]), depends)
        msg["value"] = ProvenanceTensor(value, frozenset({msg["name"]})) if auxiliary else value


def _point_mass(fn) -> bool:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)
