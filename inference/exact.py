"""Exact and near-exact references for ``log p(x)``, and reading latents off a trace.

* **closed form** (global scope): the entry's ``log_evidence(*data)``, e.g. the Gaussian
  linear model's ``N(y | 0, s^2 X X^T + noise^2 I)``.
* **enumeration** (local scope, discrete local latents): every discrete site is enumerated
  in parallel (:func:`pyro.poutine.enum`) and ``log p(x_n) = logsumexp_z log p(x_n, z)``.
* **quadrature** (local scope, one continuous local latent of dimension 1 or 2): a midpoint
  rule on a grid of ``n^d`` points per datapoint. The first grid is centred on the guide's mean
  with half-width ``RADIUS * INFLATE`` guide standard deviations (wider than the guide, which
  under-disperses [1]). A grid that does not fit its posterior -- mass in its outermost cells,
  or within a few cells -- moves to the posterior mean and ``RADIUS * INFLATE`` posterior sds,
  from moments computed on the grid itself, until all fit (at most ``MAX_RECENTRING`` passes):
  a guide far too narrow or too wide still gives a sound grid.
  Its own error check is reported in ``diagnostics``: the change when the grid is halved
  (``halved_grid_diff_max``) and the share of mass in the outermost ring of cells
  (``boundary_mass_max``), both maxima over datapoints, and the passes it took.

[1] Blei, Kucukelbir, McAuliffe (2017), Variational Inference: A Review for Statisticians.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from pyro.distributions.util import scale_and_mask

from inference.replay import in_plate, log_weights, sample_sites
from inference.target import SubsampleAt, Target, num_datapoints, subsampled
from inference.weights import stream

INFLATE = 2.0
RADIUS = 6.0
MAX_RECENTRING = 6
EDGE_MASS = 1e-6
MIN_CELLS = 6.0


def _trace(fn, data, indices, plate) -> Any:
    return poutine.trace(subsampled(fn, SubsampleAt(plate, indices))).get_trace(*data)


def _first(data, n: int = 2) -> torch.Tensor:
    return torch.arange(min(num_datapoints(data), n), device=data[0].device)


def latent_sites(tgt: Target, data) -> Tuple[List[str], List[str]]:
    """Names of the model's latent sites inside (local) and outside (global) the data plate,
    read off one prior trace on two datapoints."""
    with poutine.block(), torch.no_grad():
        tr = _trace(tgt.model, data, _first(data) if tgt.data_plate else None, tgt.data_plate)
    local, glob = [], []
    for name, site in sample_sites(tr, latent_only=True):
        (local if in_plate(site, tgt.data_plate) is not None else glob).append(name)
    return local, glob


def point_estimate(tgt: Target, data, names: List[str]) -> Dict[str, torch.Tensor]:
    """The guide's point estimate of the global sites ``names``: a point mass's value, else the
    guide distribution's mean (or the average of 1000 draws where the mean is not available)."""
    with poutine.block(), torch.no_grad():
        tr = _trace(tgt.guide, data, _first(data) if tgt.data_plate else None, tgt.data_plate)
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


def exact_estimate(tgt, data, scope, mpn, fixed, budget, points) -> Dict[str, Any]:
    if scope == "global":
        value = tgt.entry.log_evidence(*data) if tgt.entry is not None else None
        if value is None:
            raise ValueError(
                f"{tgt.name} has no closed-form evidence in global scope; exact references exist for "
                "closed-form models, and in local scope by enumeration or quadrature"
            )
        return dict(num_samples=0, log_evidence=float(value), stderr=0.0, ess=math.nan, khat=math.nan)
    with torch.no_grad():
        tr = _trace(poutine.condition(tgt.model, fixed) if fixed else tgt.model, data,
                    _first(data), tgt.data_plate)
    latents = [site for _, site in sample_sites(tr, latent_only=True)]
    if latents and all(s["fn"].has_enumerate_support for s in latents):
        per, diag = _enumerate(tgt, data, mpn, fixed), {}
    elif len(latents) == 1 and _latent_size(latents[0]) in (1, 2):
        per, diag = _quadrature(tgt, data, mpn, fixed, budget, latents[0], points)
    else:
        raise ValueError(
            f"no exact reference for {tgt.name} in local scope: enumeration needs every local latent "
            "discrete, quadrature one continuous local latent of dimension 1 or 2"
        )
    zeros = torch.zeros_like(per)
    nan = torch.full_like(per, math.nan)
    return dict(num_samples=0, log_evidence=float(per.sum()), stderr=0.0, ess=math.nan,
                khat=math.nan, per_datapoint=per, stderr_per_datapoint=zeros,
                ess_per_datapoint=nan, khat_per_datapoint=nan, diagnostics=diag)


def _latent_size(site) -> int:
    shape = site["fn"].event_shape
    return int(shape.numel()) if len(shape) <= 1 else -1


def _enumerate(tgt, data, mpn, fixed) -> torch.Tensor:
    model = config_enumerate(poutine.condition(tgt.model, fixed) if fixed else tgt.model, "parallel")
    tr = poutine.trace(poutine.enum(model, first_available_dim=-(mpn + 1))).get_trace(*data)
    total = torch.zeros(())
    for name, site in sample_sites(tr):
        data_dim = in_plate(site, tgt.data_plate)
        if data_dim is None:
            continue  # fixed globals: constant per datapoint
        if not site["is_observed"] and sum(f.vectorized for f in site["cond_indep_stack"]) > 1:
            raise ValueError(f"enumerated site {name!r} sits in a plate nested in the data plate")
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
        others = [d for d in range(-mpn, 0) if d != data_dim and lp.dim() >= -d]
        total = total.to(lp.device) + (lp.sum(others, keepdim=True) if others else lp)
    total = total.reshape((1,) * max(0, mpn - total.dim()) + total.shape)
    total = total.movedim(data_dim, -1)
    return total.reshape(-1, total.shape[-1]).logsumexp(0).double()


def _grid(points: int, dim: int, device) -> Tuple[torch.Tensor, float]:
    axis = (torch.arange(points, device=device, dtype=torch.float64) + 0.5) / points
    axis = (2 * axis - 1) * RADIUS
    mesh = torch.stack(torch.meshgrid(*([axis] * dim), indexing="ij"), -1).reshape(-1, dim)
    return mesh, 2 * RADIUS / points


def _quadrature(tgt, data, mpn, fixed, budget, site, points) -> Tuple[torch.Tensor, Dict[str, float]]:
    name, dim = site["name"], _latent_size(site)
    scalar = len(site["fn"].event_shape) == 0
    n, dev = num_datapoints(data), data[0].device
    grid, step = _grid(points, dim, dev)
    edge = (grid.abs() >= RADIUS - step).any(-1)

    def sweep(grid: torch.Tensor, step: float, box, moments: bool = False):
        """``log p(x_n)`` by the midpoint rule on ``z = centre + scale * u``, ``u`` on ``grid``.
        With ``moments``, the :class:`WeightStats` of ``[1 + 2 dim + 1, B]`` columns per chunk:
        log weights, the same plus ``j log(u + RADIUS + 1)`` (j = 1, 2; positive on the grid),
        and those of the outermost ring of cells alone."""
        centre, scale = box

        def weights(start, count, idx):
            u = grid[start : start + count, None, :]  # [count, 1, dim]
            z = centre[idx] + scale[idx] * u  # [count, B, dim]
            value = (z.squeeze(-1) if scalar else z).to(data[0].dtype)
            lw = log_weights(tgt, data, count, max_plate_nesting=mpn, proposal="values",
                             indices=idx, fixed=fixed, values={name: value})
            lw = lw.double() + (scale[idx] * step).log().sum(-1)
            if not moments:
                return lw
            t = (u + RADIUS + 1).log().expand(-1, lw.shape[1], -1).movedim(-1, 1)  # [count, dim, B]
            ring = torch.where(edge[start : start + count, None], lw, -math.inf)
            return torch.cat([lw, (lw.unsqueeze(1) + t).flatten(1),
                              (lw.unsqueeze(1) + 2 * t).flatten(1), ring], 1)

        stats, _ = stream(weights, grid.shape[0], n, budget, dev)
        return stats if moments else torch.cat([s.lse for s in stats])

    box, passes = _guide_box(tgt, data, fixed, name, dim, scalar), 0
    for passes in range(1, MAX_RECENTRING + 1):
        box, settled = _recentre(box, sweep(grid, step, box, moments=True), dim, step)
        if settled:
            break
    full = sweep(grid, step, box)
    half = sweep(*_grid(max(points // 2, 2), dim, dev), box)
    ring = sweep(grid[edge], step, box)
    return full, {
        "halved_grid_diff_max": float((full - half).abs().max()),
        "boundary_mass_max": float((ring - full).exp().max()),
        "recentring_passes": passes,
    }


def _guide_box(tgt, data, fixed, name, dim, scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first grid per datapoint: the guide's mean, and ``INFLATE`` guide sds per unit of the
    grid (the prior's where the guide lacks the site), ``[n, dim]`` each."""
    idx = torch.arange(num_datapoints(data), device=data[0].device)
    guide = poutine.condition(tgt.guide, fixed) if fixed else tgt.guide
    with torch.no_grad():
        site = _trace(guide, data, idx, tgt.data_plate).nodes.get(name)
        if site is None:
            site = _trace(tgt.model, data, idx, tgt.data_plate).nodes[name]
    fn = site["fn"]
    mean, sd = fn.mean.expand(fn.shape()), fn.stddev.expand(fn.shape())
    if scalar:
        mean, sd = mean.unsqueeze(-1), sd.unsqueeze(-1)
    return mean.reshape(-1, dim).double(), INFLATE * sd.reshape(-1, dim).double()


def _recentre(box, stats, dim: int, step: float):
    """Move the grids that do not fit their posterior, from the posterior's moments on the grid
    (``stats`` of a moments sweep). Returns the new box and whether every grid fitted.

    A grid fits when its outermost ring of cells holds less than ``EDGE_MASS`` of the mass and
    the mass spreads over more than ``MIN_CELLS`` effective cells per axis; it then stays. Else:

    * mass spread evenly over the grid (the posterior is far wider): centre on the posterior
      mean, ``4 * INFLATE`` posterior sds per unit;
    * mass at the edge: centre on the posterior mean and widen 1.5x -- no more, so that a peaked
      posterior with wide tails keeps the resolution its peak needs;
    * mass within a few cells: centre on the posterior mean, ``INFLATE`` posterior sds per unit
      (at least a few old cells);
    * no mass at all (every weight underflowed): widen 4x in place.
    """
    centre, scale = box
    k = 1 + 2 * dim + 1
    lse = torch.cat([s.lse.reshape(k, -1) for s in stats], 1)
    cells = torch.cat([s.ess().reshape(k, -1)[0] for s in stats])
    m1 = (lse[1 : 1 + dim] - lse[0]).exp().T  # E[u + R + 1], [n, dim]
    m2 = (lse[1 + dim : 1 + 2 * dim] - lse[0]).exp().T
    mean_u = m1 - RADIUS - 1
    sd_u = (m2 - m1**2).clamp(min=0).sqrt()
    at_edge = ((lse[-1] - lse[0]).exp() >= EDGE_MASS).unsqueeze(-1)
    few_cells = (cells <= MIN_CELLS**dim).unsqueeze(-1)
    even = (sd_u > RADIUS / 12**0.5).any(-1, keepdim=True)  # uniform on the grid: R / sqrt(3)
    lost = ~torch.isfinite(m1 + m2).all(-1, keepdim=True)
    ratio = torch.where(few_cells, INFLATE * sd_u.clamp(min=step / RADIUS), 1.0)
    ratio = torch.where(at_edge, torch.where(even, 4 * INFLATE * sd_u, 1.5), ratio)
    ratio = torch.where(lost, 4.0, ratio)
    mean_u = torch.where(lost | ~(at_edge | few_cells), 0.0, mean_u)
    fits = ~(at_edge | few_cells | lost)
    return (centre + scale * mean_u, scale * ratio), bool(fits.all())
