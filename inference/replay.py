"""The one replay primitive every estimator uses.

:func:`log_weights` draws ``K`` particles from a proposal under an extra particle plate,
replays the model on them, and returns the log importance weights

    log w_k = log p(x, z_k) - log r(z_k),    z_k ~ r

with ``r`` the guide (``proposal="guide"``), the prior (``proposal="prior"``: the latent
terms cancel and ``log w = log p(x | z)``), or given values (``proposal="values"``: ``log w``
is the joint density at the values, for quadrature and the annealing estimators). Whatever
the proposal, discrete sites the model marks for parallel enumeration and the proposal leaves
are summed out of the weights per datapoint, as :class:`~pyro.infer.TraceEnum_ELBO` does.

Two scopes, read off the trace rather than the model's name:

* **local** -- weights keep the data plate: shape ``[K, B]``, one weight per particle *and*
  datapoint, so that ``log p(x_n)`` is estimated per datapoint. Sites outside the data plate
  must be observed (e.g. globals held fixed with ``fixed=``) and are left out: they are
  constant given the globals.
* **global** -- one weight per particle over the whole data: shape ``[K]``.

Site log densities are summed over every dimension but the particle dimension (and the
data-plate dimension, in local scope), with masks applied; plate scaling is ignored in local
scope (the weights are per datapoint) and kept in global scope. Both traces first pass
:func:`inference.plates.vouch`: a site scaled by anything but the library's own choice of
datapoints (a ``subsample_size`` inside the model, ``poutine.scale``) is refused.

An autoguide samples an **auxiliary** latent (``infer={"is_auxiliary": True}``) and maps it to
the model's latents through ``Delta`` sites carrying the log-Jacobian as their density; the
guide's log density is the sum over both, as in :class:`~pyro.infer.Trace_ELBO`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing

from inference.plates import on_datapoints, vouch
from inference.sites import in_plate, sample_sites
from inference.target import Target, subsampled

PARTICLES = "_particles"


def _site_log_density(site, *, local: bool, ndim: int, data_plate: Optional[str],
                      scaled: bool = True) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    lp = scale_and_mask(lp, site["scale"] if scaled and not local else 1.0, site["mask"])
    if not isinstance(lp, torch.Tensor):
        lp = torch.as_tensor(lp)
    stray = [(d, n) for d, n in _left_of_particles(lp.shape, ndim) if n > 1]
    if stray:
        raise ValueError(_stray_dims(site["name"], lp.shape, ndim))
    lp = lp.reshape(lp.shape[max(0, lp.dim() - ndim):])
    lp = lp.reshape((1,) * (ndim - lp.dim()) + lp.shape)
    keep = {0}
    if local:
        keep.add(ndim + in_plate(site, data_plate))
    summed = [d for d in range(ndim) if d not in keep]
    lp = lp.sum(summed, keepdim=True) if summed else lp
    return lp.reshape(lp.shape[0], -1) if local else lp.reshape(-1)


def _left_of_particles(shape, ndim: int):
    """``(dim, size)`` of a batch shape's dims left of the particle plate (dim ``-ndim``)."""
    return [(d, shape[d]) for d in range(-len(shape), -ndim)]


def _stray_dims(name: str, shape, ndim: int) -> str:
    return (
        f"site {name!r} has a log density of batch shape {tuple(shape)}, with dims left of the "
        f"particle plate (dim {-ndim}) that no plate or enumeration declares: estimates "
        "evaluate many particles at once in dims on the left, and this tensor code moved them "
        "(w.unsqueeze, (X @ w.unsqueeze(-1)).squeeze(-1), einsum('nd,...d->...n'), "
        "torch.stack over datapoints); write X @ w as (X * w).sum(-1) with w of shape "
        "[..., 1, D], index and sum from the right, and declare other dims with pyro.plate or "
        ".to_event()"
    )


def _vectorized(fn: Callable[..., Any], num: int, dim: int) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        with pyro.plate(PARTICLES, num, dim=dim):
            return fn(*args)

    return wrapped


def _prepared(target: Target, data, num_particles: int, dim: int, indices, fixed):
    """``(model, guide, data)`` as every replay runs them: on the datapoints ``indices``, with
    ``fixed`` held, under the particle plate at ``dim``."""
    handler, data = on_datapoints(target, data, indices)
    # params stop at the model and guide (their values unchanged): no handler here uses them,
    # and each would otherwise pass through every handler below (pyro.module: one per weight)
    model, guide = (poutine.block(fn, hide_types=["param"]) for fn in (target.model, target.guide))
    if fixed:
        model, guide = poutine.condition(model, fixed), poutine.condition(guide, fixed)
    model = _vectorized(subsampled(model, handler), num_particles, dim)
    guide = _vectorized(subsampled(guide, handler), num_particles, dim)
    return model, guide, data


def _check_local_site(name: str, site: Dict[str, Any], data_plate: Optional[str], where: str,
                      fixed: Optional[Dict[str, Any]] = None) -> bool:
    """Whether a local-scope site counts; raises for a global latent."""
    if in_plate(site, data_plate) is not None:
        return True
    if site["is_observed"]:
        return False
    if site["infer"].get("is_auxiliary") and fixed and _aux_of_fixed(name, fixed):
        return False  # an autoguide's unconstrained draw of a global held fixed
    if site["infer"].get("is_auxiliary"):
        raise ValueError(
            f"the guide draws latents jointly through its auxiliary site {name!r} outside plate "
            f"{data_plate!r}: per-datapoint weights need a guide that factorises over datapoints "
            "(AutoNormal, or your own); use scope='global'"
        )
    raise ValueError(
        f"{where} site {name!r} is a global latent (outside plate {data_plate!r}): per-datapoint "
        "log p(x_n) is only defined with the globals held fixed; pass fixed={...} or use "
        "scope='global'"
    )


def _aux_of_fixed(name: str, fixed: Dict[str, Any]) -> bool:
    """AutoNormal's auxiliary site of a latent ``x`` is ``x_unconstrained``."""
    return name.endswith("_unconstrained") and name[: -len("_unconstrained")] in fixed


def _traced(fn, *data):
    try:
        return poutine.trace(fn).get_trace(*data)
    except (RuntimeError, ValueError) as err:
        text = str(err)
        if isinstance(err, ValueError) and "Shape mismatch inside plate" not in text:
            raise
        if not any(word in text.lower() for word in ("shape", "dimension", "size")):
            raise
        raise ValueError(
            f"the model or guide failed under a particle plate ({text.splitlines()[0]}); "
            "estimates evaluate many particles at once, so tensor code must broadcast over "
            "extra dims on the left: write X @ w as (X * w).sum(-1) with w of shape [..., 1, D], "
            "index from the right (x[..., i], .sum(-1)), and sample per-component parameters "
            "as one vector (dist.Normal(0, 10).expand([C]).to_event(1), not in a plate of "
            "components) to pick them with Vindex(locs)[..., a]"
        ) from None


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
    split: bool = False,
):
    """Log importance weights of ``num_particles`` particles (see the module docstring).

    :param indices: datapoints to use (the data plate's subsample); ``None`` for all.
    :param fixed: values that condition model and guide (globals held fixed).
    :param values: for ``proposal="values"``, the latent values, already with the particle
        dimension in front.
    :param split: (global scope, on a shard ``indices`` of the datapoints) return the weights
        as two ``[K]`` parts: the sites outside the data plate, and the unscaled sum of the
        data plate's sites over the shard -- summed across shards, the second is the full
        data's (:mod:`inference.distributed`).
    :returns: ``[K, B]`` (local) or ``[K]`` (global) log weights; with ``with_traces``, also
        the model and guide traces.
    """
    dim = -(max_plate_nesting + 1)
    ours = indices is not None and target.data_plate is not None
    model, guide, data = _prepared(target, data, num_particles, dim, indices, fixed)

    guide_tr = None
    if proposal == "values":
        model = poutine.condition(model, values)
    # sites marked for enumeration that the proposal (or the values) leaves are summed out
    model = poutine.enum(model, first_available_dim=dim - 1)
    if proposal == "guide":
        guide_tr = _traced(guide, *data)
        model_tr = _traced(poutine.replay(model, trace=guide_tr), *data)
    elif proposal in ("prior", "values"):
        model_tr = _traced(model, *data)
    else:
        raise ValueError(f"unknown proposal {proposal!r}")
    vouch(model_tr, target, ours, "model")
    if guide_tr is not None:
        vouch(guide_tr, target, ours, "guide")

    ndim = -dim
    density = dict(local=local, ndim=ndim, data_plate=target.data_plate)
    total = inside = 0.0  # split: the data plate's sites go to ``inside``

    def shared(site) -> bool:
        return split and in_plate(site, target.data_plate) is not None

    summed, enumerated = _summed_out(model_tr, target, local, ndim)
    if summed is not None:
        total, inside = (0.0, summed) if split else (summed, 0.0)
    for name, site in sample_sites(model_tr):
        if local and not _check_local_site(name, site, target.data_plate, "model"):
            continue
        if name in enumerated:
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
        if shared(site):
            inside = inside + _site_log_density(site, **density, scaled=False)
        else:
            total = total + _site_log_density(site, **density)
    if guide_tr is not None:
        for name, site in sample_sites(guide_tr, latent_only=True):
            if local and not _check_local_site(name, site, target.data_plate, "guide", fixed):
                continue
            if name not in model_tr.nodes and not site["infer"].get("is_auxiliary"):
                raise ValueError(f"guide site {name!r} is not in the model; rename or remove it")
            if shared(site):
                inside = inside - _site_log_density(site, **density, scaled=False)
            else:
                total = total - _site_log_density(site, **density)
    if split:
        total = _pair(total, inside)
    if not isinstance(total, torch.Tensor) and not split:
        raise ValueError("the model has no sample sites to weigh")
    if with_traces:
        return total, model_tr, guide_tr
    return total


class NotEnumerable(ValueError):
    """A site depends on a discrete latent enumerated outside the data plate (``.site``)."""

    def __init__(self, site: str, message: str):
        super().__init__(message)
        self.site = site

def _pair(total, inside) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(total, inside)`` as tensors of one shape."""
    if not isinstance(inside, torch.Tensor):
        raise ValueError("the model has no sample sites in the data plate to shard")
    return (torch.zeros_like(inside) if not isinstance(total, torch.Tensor) else total), inside


def _enum_sizes(trace) -> Dict[int, set]:
    """``{dim: sizes}`` of the dims :func:`pyro.poutine.enum` gave the trace's enumerated
    sites (a dim :func:`pyro.markov` recycles may serve several)."""
    out: Dict[int, set] = {}
    for _, site in sample_sites(trace):
        d = site["infer"].get("_enumerate_dim")
        if d is not None:
            out.setdefault(d, set()).add(site["value"].shape[d])
    return out


def _enumerated(site, ndim: int, enum: Dict[int, set]) -> bool:
    """Whether a site's log density depends on enumerated values: dims left of the particles,
    each one that :func:`pyro.poutine.enum` allocated (``enum``, :func:`_enum_sizes`); any
    other dim there is tensor code that moved the particles, refused (:func:`_stray_dims`)."""
    fn, value = site["fn"], site["value"]
    shape = torch.broadcast_shapes(fn.batch_shape,
                                   value.shape[: value.dim() - len(fn.event_shape)])
    left = [(d, n) for d, n in _left_of_particles(shape, ndim) if n > 1]
    if any(n not in enum.get(d, ()) for d, n in left):
        raise ValueError(_stray_dims(site["name"], shape, ndim))
    return bool(left)


def _summed_out(model_tr, target: Target, local: bool, ndim: int):
    """The log density of the sites that depend on enumerated discrete latents, those latents
    summed out per datapoint (``[K, B]`` local, ``[K]`` global), as :class:`TraceEnum_ELBO`
    does: by Pyro's tensor message passing (:func:`pyro.ops.contract.contract_to_tensor`) over
    the trace's packed log densities, so that the dims :func:`pyro.markov` recycles (an HMM's
    chain) are told apart, and plates nested in the data plate are product-contracted after
    their sums; ``None`` if nothing is enumerated. Every enumerated site must sit in the data
    plate (then the sum factorises over datapoints). Returns it and the names of the sites in
    it."""
    enum = _enum_sizes(model_tr)
    sites = [(n, s) for n, s in sample_sites(model_tr) if _enumerated(s, ndim, enum)]
    if not sites:
        return None, set()
    for name, site in sites:
        if in_plate(site, target.data_plate) is None:
            raise NotEnumerable(
                name,
                f"site {name!r} depends on an enumerated latent outside the data plate: only "
                "per-datapoint discrete latents are summed out; give the guide the discrete site",
            )
    model_tr.symbolize_dims()
    symbol = model_tr.plate_to_symbol
    kept = [symbol[PARTICLES]] + ([symbol[target.data_plate]] if local else [])
    tree: "OrderedDict[frozenset, list]" = OrderedDict()
    for name, site in sites:
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
        lp = packed.pack(lp, site["infer"]["_dim_to_symbol"])
        ordinal = frozenset(symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        tree.setdefault(ordinal, []).append(lp)
    sizes = {symbol[f.name]: f.size for _, site in sites for f in site["cond_indep_stack"]
             if f.vectorized}
    for terms in tree.values():
        for t in terms:
            sizes.update(zip(t._pyro_dims, t.shape))
    sum_dims = set(sizes) - set(symbol.values())
    out = contract_to_tensor(tree, sum_dims, frozenset(kept), ring=LogRing(dim_to_size=sizes))
    out = out.permute([out._pyro_dims.index(k) for k in kept])  # the particles first
    return (out if local else out.reshape(-1)), {n for n, _ in sites}


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
