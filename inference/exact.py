"""Exact and near-exact references for ``log p(x)``, and reading latents off a trace.

* **closed form** (global scope): the entry's ``log_evidence(*data)``, e.g. the Gaussian
  linear model's ``N(y | 0, s^2 X X^T + noise^2 I)``.
* **enumeration** (local scope, discrete local latents): every discrete site is enumerated
  in parallel (:func:`pyro.poutine.enum`) and ``log p(x_n) = logsumexp_z log p(x_n, z)``.
* **quadrature** (local scope, one continuous local latent of dimension 1 or 2): a midpoint
  rule on a grid of ``n^d`` points centred on the guide's mean with half-width ``RADIUS`` guide
  standard deviations (``INFLATE`` times wider than the guide, which under-disperses [1]).
  Its own error check is reported in ``diagnostics``: the change when the grid is halved
  (``halved_grid_diff_max``) and the share of mass in the outermost ring of cells
  (``boundary_mass_max``), both maxima over datapoints.

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

    def centre(idx):
        """Guide mean and sd of the latent for datapoints ``idx``, ``[B, dim]`` each."""
        guide = poutine.condition(tgt.guide, fixed) if fixed else tgt.guide
        g = _trace(guide, data, idx, tgt.data_plate).nodes.get(name)
        fn = g["fn"] if g is not None else _trace(tgt.model, data, idx, tgt.data_plate).nodes[name]["fn"]
        mean, sd = fn.mean.expand(fn.shape()), fn.stddev.expand(fn.shape())
        if scalar:
            mean, sd = mean.unsqueeze(-1), sd.unsqueeze(-1)
        return mean.reshape(-1, dim).double(), INFLATE * sd.reshape(-1, dim).double()

    def run(grid: torch.Tensor, step: float) -> torch.Tensor:
        def weights(start, count, idx):
            mean, sd = centre(idx)
            z = mean + sd * grid[start : start + count, None, :]  # [count, B, dim]
            log_cell = (sd * step).log().sum(-1)
            value = (z.squeeze(-1) if scalar else z).to(data[0].dtype)
            lw = log_weights(tgt, data, count, max_plate_nesting=mpn, proposal="values",
                             indices=idx, fixed=fixed, values={name: value})
            return lw.double() + log_cell

        stats, _ = stream(weights, grid.shape[0], n, budget, dev)
        return torch.cat([s.lse for s in stats])

    grid, step = _grid(points, dim, dev)
    full = run(grid, step)
    half = run(*_grid(max(points // 2, 2), dim, dev))
    edge = (grid.abs() >= RADIUS - step).any(-1)
    ring = run(grid[edge], step)
    return full, {
        "halved_grid_diff_max": float((full - half).abs().max()),
        "boundary_mass_max": float((ring - full).exp().max()),
    }
