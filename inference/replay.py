"""The one replay primitive every estimator uses.

:func:`log_weights` draws ``K`` particles from a proposal under an extra particle plate,
replays the model on them, and returns the log importance weights

    log w_k = log p(x, z_k) - log r(z_k),    z_k ~ r

with ``r`` the guide (``proposal="guide"``), the prior (``proposal="prior"``: the latent
terms cancel and ``log w = log p(x | z)``), or given values (``proposal="values"``: ``log w``
is the joint density at the values, for quadrature).

Two scopes, read off the trace rather than the model's name:

* **local** -- weights keep the data plate: shape ``[K, B]``, one weight per particle *and*
  datapoint, so that ``log p(x_n)`` is estimated per datapoint. Sites outside the data plate
  must be observed (e.g. globals held fixed with ``fixed=``) and are left out: they are
  constant given the globals.
* **global** -- one weight per particle over the whole data: shape ``[K]``.

Site log densities are summed over every dimension but the particle dimension (and the
data-plate dimension, in local scope), with masks applied; plate scaling is ignored in local
scope (the weights are per datapoint) and kept in global scope.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from inference.target import SubsampleAt, Target, subsampled

PARTICLES = "_particles"


def sample_sites(trace, latent_only: bool = False) -> Iterable[Tuple[str, Dict[str, Any]]]:
    """``(name, site)`` of a trace's sample sites, plates' subsample sites left out; with
    ``latent_only``, the unobserved ones alone."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            if not (latent_only and site["is_observed"]):
                yield name, site


def in_plate(site: Dict[str, Any], plate: Optional[str]) -> Optional[int]:
    """The dim of plate ``plate`` in ``site``'s plate stack, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame.dim
    return None


def _site_log_density(site, *, local: bool, ndim: int, data_plate: Optional[str]) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    lp = scale_and_mask(lp, 1.0 if local else site["scale"], site["mask"])
    if not isinstance(lp, torch.Tensor):
        lp = torch.as_tensor(lp)
    if lp.dim() > ndim:
        raise ValueError(
            f"site {site['name']!r} has batch shape {tuple(lp.shape)} with more dims than "
            f"max_plate_nesting={ndim - 1} allows; declare its dims with pyro.plate or .to_event()"
        )
    lp = lp.reshape((1,) * (ndim - lp.dim()) + lp.shape)
    keep = {0}
    if local:
        keep.add(ndim + in_plate(site, data_plate))
    summed = [d for d in range(ndim) if d not in keep]
    lp = lp.sum(summed, keepdim=True) if summed else lp
    return lp.reshape(lp.shape[0], -1) if local else lp.reshape(-1)


def _vectorized(fn: Callable[..., Any], num: int, dim: int) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        with pyro.plate(PARTICLES, num, dim=dim):
            return fn(*args)

    return wrapped


def _check_local_site(name: str, site: Dict[str, Any], data_plate: Optional[str], where: str) -> bool:
    """Whether a local-scope site counts; raises for a global latent."""
    if in_plate(site, data_plate) is not None:
        return True
    if site["is_observed"]:
        return False
    raise ValueError(
        f"{where} site {name!r} is a global latent (outside plate {data_plate!r}): per-datapoint "
        "log p(x_n) is only defined with the globals held fixed; pass fixed={...} or use "
        "scope='global'"
    )


def log_weights(
    target: Target,
    data: Tuple[torch.Tensor, ...],
    num_particles: int,
    *,
    max_plate_nesting: int,
    proposal: str = "guide",
    local: bool = True,
    indices: Optional[torch.Tensor] = None,
    fixed: Optional[Dict[str, torch.Tensor]] = None,
    values: Optional[Dict[str, torch.Tensor]] = None,
    with_traces: bool = False,
):
    """Log importance weights of ``num_particles`` particles (see the module docstring).

    :param indices: datapoints to use (the data plate's subsample); ``None`` for all.
    :param fixed: values that condition model and guide (globals held fixed).
    :param values: for ``proposal="values"``, the latent values, already with the particle
        dimension in front.
    :returns: ``[K, B]`` (local) or ``[K]`` (global) log weights; with ``with_traces``, also
        the model and guide traces.
    """
    dim = -(max_plate_nesting + 1)
    handler = SubsampleAt(target.data_plate, indices)
    model, guide = target.model, target.guide
    if fixed:
        model, guide = poutine.condition(model, fixed), poutine.condition(guide, fixed)
    model = _vectorized(subsampled(model, handler), num_particles, dim)
    guide = _vectorized(subsampled(guide, handler), num_particles, dim)

    guide_tr = None
    if proposal == "guide":
        guide_tr = poutine.trace(guide).get_trace(*data)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*data)
    elif proposal == "prior":
        model_tr = poutine.trace(model).get_trace(*data)
    elif proposal == "values":
        model_tr = poutine.trace(poutine.condition(model, values)).get_trace(*data)
    else:
        raise ValueError(f"unknown proposal {proposal!r}")

    ndim = -dim
    density = dict(local=local, ndim=ndim, data_plate=target.data_plate)
    total = 0.0
    for name, site in sample_sites(model_tr):
        if local and not _check_local_site(name, site, target.data_plate, "model"):
            continue
        observed = site["is_observed"] or (proposal == "values" and name in values)
        if proposal == "prior" and not observed:
            continue  # p(z) / p(z) cancels
        if proposal == "guide" and not observed and name not in guide_tr.nodes:
            raise ValueError(
                f"the guide has no site {name!r} that the model samples: importance sampling with "
                "the guide needs it to propose every latent; add it to the guide or use "
                "method='is-prior'"
            )
        total = total + _site_log_density(site, **density)
    if guide_tr is not None:
        for name, site in sample_sites(guide_tr, latent_only=True):
            if local and not _check_local_site(name, site, target.data_plate, "guide"):
                continue
            if name not in model_tr.nodes and not site["infer"].get("is_auxiliary"):
                raise ValueError(f"guide site {name!r} is not in the model; rename or remove it")
            total = total - _site_log_density(site, **density)
    if not isinstance(total, torch.Tensor):
        raise ValueError("the model has no sample sites to weigh")
    if with_traces:
        return total, model_tr, guide_tr
    return total


def guide_log_density(
    target: Target,
    data: Tuple[torch.Tensor, ...],
    num_particles: int,
    values: Dict[str, torch.Tensor],
    *,
    max_plate_nesting: int,
) -> torch.Tensor:
    """``log q(values)`` summed per particle (global scope): the guide replayed at ``values``."""
    dim = -(max_plate_nesting + 1)
    guide = _vectorized(target.guide, num_particles, dim)
    tr = poutine.trace(poutine.condition(guide, values)).get_trace(*data)
    total = 0.0
    for name, site in sample_sites(tr):
        if name in values:
            total = total + _site_log_density(site, local=False, ndim=-dim, data_plate=None)
    return total
