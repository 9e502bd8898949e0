"""Which latents a model has, and the scope of an evidence estimate.

* **local** -- ``log p(x_n)`` per datapoint. Defined when every latent lives in the data plate;
  with global latents too, the globals are held fixed (``fixed=``, default: the guide's point
  estimate, :func:`point_estimate`) and the estimate is of ``log p(x_n | globals)``.
* **global** -- ``log p(X)`` over the whole data set, one weight per particle.

:func:`resolve_scope` picks the default from a trace (local when every latent is in the data
plate, global otherwise) and checks an explicit choice; every estimator receives its result.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pyro.poutine as poutine
import torch

import pyro

from inference import plates
from inference.plates import first
from inference.replay import in_plate, sample_sites
from inference.target import Target, unwrapped


def latent_sites(tgt: Target, data, trace=None) -> Tuple[List[str], List[str]]:
    """Names of the model's latent sites inside (local) and outside (global) the data plate,
    read off one prior trace on two datapoints (``trace``, if given: :func:`first_trace`'s)."""
    tr = first_trace(tgt, data)[0] if trace is None else trace
    local, glob = [], []
    for name, site in sample_sites(tr, latent_only=True):
        (local if in_plate(site, tgt.data_plate) is not None else glob).append(name)
    return local, glob


def first_trace(tgt: Target, data):
    """``(trace, sliced)``: a prior trace of the model on its first two datapoints (all of them
    without a data plate), or, for a model using its data whole that fails on a slice of them,
    on all of them (``sliced`` False)."""
    try:
        with poutine.block(), torch.no_grad():
            idx = first(data) if tgt.data_plate else None
            return plates.trace_on(tgt.model, tgt, data, idx), idx is not None
    except (ValueError, RuntimeError):
        if tgt.data_access != "whole":
            raise
    with poutine.block(), torch.no_grad():
        return plates.trace_on(tgt.model, tgt, data, None), False


def point_estimate(tgt: Target, data, names: List[str]) -> Dict[str, torch.Tensor]:
    """The guide's point estimate of the global sites ``names``: a point mass's value, else the
    guide distribution's mean (or the average of 1000 draws where the mean is not available);
    an autoguide's median."""
    guide = unwrapped(tgt.guide)
    if isinstance(guide, pyro.infer.autoguide.AutoGuide):
        with poutine.block(), torch.no_grad():
            median = guide.median(*data, **dict(tgt.kwargs))
        return {name: median[name].detach() for name in names}
    with poutine.block(), torch.no_grad():
        tr = plates.trace_on(tgt.guide, tgt, data, first(data) if tgt.data_plate else None)
        out = {}
        for name in names:
            if name not in tr.nodes:
                raise ValueError(f"the guide has no site {name!r} to fix it at; pass fixed={{...}}")
            fn = tr.nodes[name]["fn"]
            try:
                out[name] = fn.mean.detach()
            except NotImplementedError:
                out[name] = fn.sample((1000,)).mean(0)
            if not torch.isfinite(out[name]).all():
                out[name] = tr.nodes[name]["value"].detach()
    return out


def resolve_scope(
    tgt: Target, data, scope: Optional[str], fixed: Optional[Dict[str, torch.Tensor]]
) -> Tuple[str, Optional[Dict[str, torch.Tensor]]]:
    """``(scope, fixed)``: the scope asked for (or the default read off a trace), and in local
    scope the values the global latents are held at (``None`` when there are none)."""
    tr, sliced = first_trace(tgt, data)
    local_names, global_names = latent_sites(tgt, data, tr)
    unknown = sorted(set(fixed or ()) - set(global_names))
    if unknown:
        raise ValueError(f"fixed={{...}} names {unknown}, not global latent sites of {tgt.name} "
                         f"(those are {global_names or 'none'}): name only sites outside the "
                         "data plate")
    scope = scope or ("global" if global_names or tgt.data_plate is None
                      or _joint_auxiliary(tgt, data) else "local")
    if scope == "global":
        if fixed:
            raise ValueError("fixed={...} holds globals fixed for per-datapoint estimates; "
                             "log p(X) integrates over them: drop fixed, or pass scope='local'")
        return scope, None
    if tgt.data_plate is None:
        raise ValueError("per-datapoint estimates need a data plate; set data_plate on the Target")
    plates.check_sliceable(tgt, data, tr if sliced else None)  # chunks are passed as slices
    if global_names and not local_names:
        raise ValueError(
            f"every latent of {tgt.name} ({', '.join(global_names)}) is global: log p(X) does not "
            "factorise over datapoints, so there is no per-datapoint estimate; use scope='global'"
        )
    if global_names:
        return scope, dict(fixed) if fixed else point_estimate(tgt, data, global_names)
    return scope, fixed


def _joint_auxiliary(tgt: Target, data) -> bool:
    """Whether the guide draws local latents through one auxiliary site outside the data plate
    (AutoDiagonalNormal, AutoMultivariateNormal): then only a global estimate is defined."""
    with poutine.block(), torch.no_grad():
        tr = plates.trace_on(tgt.guide, tgt, data, None)
    return any(site["infer"].get("is_auxiliary") and in_plate(site, tgt.data_plate) is None
               for _, site in sample_sites(tr, latent_only=True))
