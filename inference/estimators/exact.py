"""``exact``: exact and near-exact references for ``log p(x)``.

* **closed form** (global scope): the target's ``log_evidence(*data)``, e.g. the Gaussian
  linear model's ``N(y | 0, s^2 X X^T + noise^2 I)``. A ``log_evidence`` that returns one value
  per datapoint (shape ``[N]``, summing to ``log p(X)``) also serves local scope when no
  global latent is held fixed, e.g. factor analysis's ``N(x_n | mu, W W^T + diag(psi))``.
* **the likelihood** (local scope, no latents at all): ``log p(x_n)`` is the model's own
  density, e.g. an autoregressive model's.
* **enumeration** (local scope, discrete local latents): every discrete site is enumerated
  in parallel (:func:`pyro.poutine.enum`) and ``log p(x_n) = logsumexp_z log p(x_n, z)``.
* **quadrature** (local scope, one continuous local latent of dimension 1 or 2): a midpoint
  rule on a local grid of ``n^d`` points per datapoint, centred on the guide's mean with
  half-width ``RADIUS * INFLATE`` guide standard deviations (wider than the guide, which
  under-disperses [1]). A grid whose posterior sits within a few of its cells (the guide was
  far too wide) moves to the posterior's mean and sds, computed on the grid itself; datapoints
  whose grid is still too coarse (halving it changes the result by more than ``REFINE_TOL``)
  get finer grids, up to ``REFINE_MAX`` times finer. A coarse **far field** over
  ``PRIOR_RADIUS`` prior sds, each cell weighted by its area outside the local grid, adds the
  mass the local grid does not reach: a decoder that saturates gives the posterior a plateau
  or a second mode far from its peak (digits vae: local grids alone missed up to 6 nats on
  one datapoint; with the far field the hardest datapoints are within 0.03 nats of a
  1400 x 1400 grid over the prior). The far field is coarse: a narrow mode far from the guide
  is found but not resolved.
  Its own error check is reported in ``diagnostics``: the change when the grid is halved
  (``halved_grid_diff_max``), the share of local mass in the outermost ring of cells
  (``boundary_mass_max``), the far field's share (``far_field_mass_max``), all maxima over
  datapoints, and the passes and refinements it took. A result that fails them (non-finite,
  or halving the finest grid moves a datapoint by more than ``CHECK_TOL``) is an error, never
  a reference. The grid's scale is the guide's; a point-mass guide (an autoguide's ``Delta``)
  starts from the prior instead.

[1] Blei, Kucukelbir, McAuliffe (2017), Variational Inference: A Review for Statisticians.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate

from inference.problem import ChecksFailed, Estimator, NotApplicable, Problem, integer, register
from inference.replay import in_plate, log_weights, sample_sites
from inference.plates import trace_on
from inference.scope import first
from inference.target import num_datapoints
from inference.weights import stream

INFLATE = 2.0
RADIUS = 6.0
MAX_RECENTRING = 6
MIN_CELLS = 6.0
REFINE_TOL = 1e-3
REFINE_MAX = 4
PRIOR_RADIUS = 7.0
CHECK_TOL = 0.01  # nats: the most halving the finest grid may change a datapoint by


@register
class Exact(Estimator):
    name = "exact"
    summary = "closed form (global), enumeration or 1-2-D quadrature (local): the reference"
    reference = True
    weighted = False
    options = {"quadrature_points": 64}
    checks = {"quadrature_points": integer(1)}

    def evaluations(self, num_samples: int, **options: Any) -> None:
        return None  # the reference, drawn as the zero line

    def run(self, problem: Problem, quadrature_points: int = 64, **options: Any) -> Dict[str, Any]:
        p = problem
        return exact_estimate(p.target, p.data, p.scope, p.max_plate_nesting, p.fixed,
                              p.memory_budget, quadrature_points)


def exact_estimate(tgt, data, scope, mpn, fixed, budget, points) -> Dict[str, Any]:
    if scope == "global":
        value = tgt.log_evidence(*data) if tgt.log_evidence is not None else None
        if value is None:
            raise NotApplicable(
                f"{tgt.name} has no closed-form evidence in global scope; exact references exist for "
                "closed-form models, and in local scope by enumeration or quadrature"
            )
        value = (value.detach().double() if isinstance(value, torch.Tensor)
                 else torch.as_tensor(value, dtype=torch.float64))  # a float stays a float64
        return dict(num_samples=0, log_evidence=float(value.sum()), stderr=0.0,
                    ess=math.nan, khat=math.nan)
    per = _closed_form_per_datapoint(tgt, data) if not fixed else None
    if per is not None:
        return _local_fields(per, {})
    with torch.no_grad():
        tr = trace_on(poutine.condition(tgt.model, fixed) if fixed else tgt.model, tgt, data,
                      first(data))
    latents = [site for _, site in sample_sites(tr, latent_only=True)]
    if not latents:  # nothing to integrate: log p(x_n) is the likelihood itself
        per, diag = _likelihood(tgt, data, mpn, fixed, budget), {}
    elif all(s["fn"].has_enumerate_support for s in latents):
        # every latent enumerated and summed out inside the replay primitive's weights
        enumerated = dataclasses.replace(tgt, model=config_enumerate(tgt.model, "parallel"))
        per, diag = _likelihood(enumerated, data, mpn, fixed, budget), {}
    elif len(latents) == 1 and _latent_size(latents[0]) in (1, 2) and not _real(latents[0]):
        raise NotApplicable(
            f"quadrature integrates over a latent with real support; {latents[0]['name']!r} has "
            f"support {latents[0]['fn'].support}: sample it on the real line (e.g. a Normal "
            "log-rate and exp() in the likelihood) or use method='is-guide'"
        )
    elif len(latents) == 1 and _latent_size(latents[0]) in (1, 2):
        per, diag = _quadrature(tgt, data, mpn, fixed, budget, latents[0], points)
        _check_quadrature(tgt, per, diag)
    else:
        raise NotApplicable(
            f"no exact reference for {tgt.name} in local scope: enumeration needs every local latent "
            "discrete, quadrature one continuous local latent of dimension 1 or 2"
        )
    return _local_fields(per, diag)


def _closed_form_per_datapoint(tgt, data) -> Optional[torch.Tensor]:
    """The target's ``log_evidence`` where it gives one value per datapoint, else ``None``."""
    if tgt.log_evidence is None:
        return None
    value = tgt.log_evidence(*data)
    n = num_datapoints(data)
    if isinstance(value, torch.Tensor) and value.shape == (n,):
        return value.detach().double()
    return None


def _local_fields(per: torch.Tensor, diag: Dict[str, Any]) -> Dict[str, Any]:
    zeros = torch.zeros_like(per)
    nan = torch.full_like(per, math.nan)
    return dict(num_samples=0, log_evidence=float(per.sum()), stderr=0.0, ess=math.nan,
                khat=math.nan, per_datapoint=per, stderr_per_datapoint=zeros,
                ess_per_datapoint=nan, khat_per_datapoint=nan, diagnostics=diag)


def _likelihood(tgt, data, mpn, fixed, budget) -> torch.Tensor:
    """``log p(x_n)`` of a model with no local latents but those it enumerates, chunked over
    datapoints."""
    def weights(start, count, idx):
        return log_weights(tgt, data, count, max_plate_nesting=mpn, proposal="prior",
                           indices=idx, fixed=fixed).double()

    stats, _ = stream(weights, 1, num_datapoints(data), budget, data[0].device)
    return torch.cat([s.lse for s in stats])


def _check_quadrature(tgt, per: torch.Tensor, diag: Dict[str, float]) -> None:
    """A reference is never returned when its own checks fail."""
    checks = (diag["halved_grid_diff_max"], diag["far_field_halved_diff_max"],
              diag["boundary_mass_max"])
    if (torch.isfinite(per).all() and all(map(math.isfinite, checks))
            and max(checks[:2]) <= CHECK_TOL):
        return
    raise ChecksFailed(
        f"the quadrature reference for {tgt.name} failed its own checks (halving the grid changes "
        f"a datapoint by {checks[0]:.3g} nats, halving the far field by {checks[1]:.3g}, "
        f"outer-ring mass {checks[2]:.3g}, {int((~torch.isfinite(per)).sum())} non-finite "
        "datapoints): it is not returned; raise quadrature_points, or fit a guide nearer the "
        "posterior (the grid starts there)"
    )


def _real(site) -> bool:
    support = site["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _latent_size(site) -> int:
    shape = site["fn"].event_shape
    return int(shape.numel()) if len(shape) <= 1 else -1


def _grid(points: int, dim: int, device) -> Tuple[torch.Tensor, float]:
    axis = (torch.arange(points, device=device, dtype=torch.float64) + 0.5) / points
    axis = (2 * axis - 1) * RADIUS
    mesh = torch.stack(torch.meshgrid(*([axis] * dim), indexing="ij"), -1).reshape(-1, dim)
    return mesh, 2 * RADIUS / points


def _quadrature(tgt, data, mpn, fixed, budget, site, points) -> Tuple[torch.Tensor, Dict[str, float]]:
    name, dim = site["name"], _latent_size(site)
    scalar = len(site["fn"].event_shape) == 0
    n, dev = num_datapoints(data), data[0].device
    dtype = site["value"].dtype  # the latent's own (the data may hold integer counts)
    data_dim = in_plate(site, tgt.data_plate)

    def sweep(grid, step, box, indices, moments=False, outside=None):
        """``log p(x_n)`` by the midpoint rule on ``z = centre + scale * u``, ``u`` on ``grid``,
        for the datapoints ``indices``. With ``outside`` (``(lo, hi)``, ``[n, dim]`` each), a
        cell counts only its area outside that box, and not at all if centred inside it. With ``moments``, the :class:`WeightStats`
        of ``[1 + 2 dim, B]`` columns per chunk: log weights, and the same plus
        ``j log(u + RADIUS + 1)`` (j = 1, 2; positive on the grid)."""
        centre, scale = box

        def weights(start, count, idx):
            u = grid[start : start + count, None, :]  # [count, 1, dim]
            z = centre[idx] + scale[idx] * u  # [count, B, dim]
            shape = [count] + [1] * mpn + list(site["fn"].event_shape)
            shape[1 + mpn + data_dim] = len(idx)  # the data plate where the model has it
            value = (z.squeeze(-1) if scalar else z).reshape(shape).to(dtype)
            lw = log_weights(tgt, data, count, max_plate_nesting=mpn, proposal="values",
                             indices=idx, fixed=fixed, values={name: value}).double()
            width = scale[idx] * step
            if outside is None:
                lw = lw + width.log().sum(-1)
            else:
                lo, hi = outside[0][idx], outside[1][idx]
                inside = ((z + width / 2).minimum(hi) - (z - width / 2).maximum(lo)).clamp(min=0)
                area = (width.prod(-1) - inside.prod(-1)).clamp(min=0)
                # a cell centred inside the box would count the box's density (a sharp peak
                # there) over its area outside: left to the finer far grids of the refinement
                area = torch.where(((z > lo) & (z < hi)).all(-1), 0.0, area)
                lw = lw + area.log()
            if not moments:
                return lw
            t = (u + RADIUS + 1).log().expand(-1, lw.shape[1], -1).movedim(-1, 1)  # [count, dim, B]
            return torch.cat([lw, (lw.unsqueeze(1) + t).flatten(1),
                              (lw.unsqueeze(1) + 2 * t).flatten(1)], 1)

        stats, _ = stream(weights, grid.shape[0], n, budget, dev, indices=indices)
        return stats if moments else torch.cat([s.lse for s in stats])

    def rule(points, box, indices):
        """The estimate on ``points`` per axis, on half as many, and the outer ring's share."""
        grid, step = _grid(points, dim, dev)
        full = sweep(grid, step, box, indices)
        half = sweep(*_grid(max(points // 2, 2), dim, dev), box, indices)
        edge = (grid.abs() >= RADIUS - step).any(-1)
        ring = sweep(grid[edge], step, box, indices)
        return full, (full - half).abs(), (ring - full).exp()

    everyone = torch.arange(n, device=dev)
    grid, step = _grid(points, dim, dev)
    guide = _site_moments(tgt.guide, tgt, data, fixed, name, dim, scalar)
    prior = _site_moments(tgt.model, tgt, data, fixed, name, dim, scalar)
    start = guide or prior
    if start is None:
        raise NotApplicable(f"quadrature over {name!r} needs the guide's or the prior's mean and sd "
                         "of it, and neither distribution has them; use method='is-guide'")
    box, passes = (start[0].clone(), INFLATE * start[1]), 0  # the guide's mean, INFLATE sds a unit
    todo = everyone  # each pass sweeps only the grids the last one moved
    for passes in range(1, MAX_RECENTRING + 1):
        stats = sweep(grid, step, box, todo, moments=True)
        (centre, scale), moved = _recentre((box[0][todo], box[1][todo]), stats, dim, step)
        box[0][todo], box[1][todo] = centre, scale
        todo = todo[moved]
        if not len(todo):
            break
    full, halved, ring = rule(points, box, everyone)
    # Datapoints whose grid is too coarse for their posterior get finer grids of their own.
    finest, todo = points, everyone[halved > REFINE_TOL]
    refined = len(todo)
    while len(todo) and finest < REFINE_MAX * points:
        finest *= 2
        full[todo], halved[todo], ring[todo] = rule(finest, box, todo)
        todo = todo[halved[todo] > REFINE_TOL]
    # The far field: a coarse grid over PRIOR_RADIUS prior sds, each cell counting its area
    # outside the datapoint's local grid, for the mass the local grid does not reach (module
    # docstring); none where the prior has no mean or sd. A far cell as wide as the local
    # grid, straddling a sharp peak, would count the peak's density over its area outside
    # the grid: the far field is refined, like the local grid, until halving it no longer
    # moves the total.
    far, far_halved, far_points = None, torch.zeros_like(full), points
    if prior is not None:
        local = (box[0] - box[1] * RADIUS, box[0] + box[1] * RADIUS)
        wide = (prior[0], prior[1] * (PRIOR_RADIUS / RADIUS))

        def far_rule(points, indices):
            """The far field on ``points`` per axis, and how much halving it moves the total."""
            fine = sweep(*_grid(points, dim, dev), wide, indices, outside=local)
            coarse = sweep(*_grid(max(points // 2, 2), dim, dev), wide, indices, outside=local)
            near = full[indices]
            return fine, (torch.logaddexp(near, fine) - torch.logaddexp(near, coarse)).abs()

        far, far_halved = far_rule(points, everyone)
        todo = everyone[far_halved > REFINE_TOL]
        while len(todo) and far_points < REFINE_MAX * points:
            far_points *= 2
            far[todo], far_halved[todo] = far_rule(far_points, todo)
            todo = todo[far_halved[todo] > REFINE_TOL]
    total = full if far is None else torch.logaddexp(full, far)
    return total, {
        "halved_grid_diff_max": float(halved.max()),
        "boundary_mass_max": float(ring.max()),
        "far_field_mass_max": math.nan if far is None else float((far - total).exp().max()),
        "far_field_halved_diff_max": float(far_halved.max()),
        "recentring_passes": passes,
        "refined_datapoints": refined,
        "finest_points": finest,
        "far_field_points": far_points,
    }


def _site_moments(fn, tgt, data, fixed, name, dim, scalar) -> Optional[Tuple[Any, Any]]:
    """Mean and sd (``[n, dim]`` each, float64) of site ``name`` in ``fn`` (the guide or the
    model, with ``fixed`` held), traced on every datapoint; ``None`` where ``fn`` has no such
    site or its distribution no mean or sd."""
    fn = poutine.condition(fn, fixed) if fixed else fn
    with torch.no_grad():
        site = trace_on(fn, tgt, data,
                        torch.arange(num_datapoints(data), device=data[0].device)).nodes.get(name)
    if site is None:
        return None
    try:
        mean, sd = _flat_moments(site["fn"], dim, scalar)
    except NotImplementedError:
        return None
    if not (torch.isfinite(mean).all() and torch.isfinite(sd).all() and (sd > 0).all()):
        return None  # a point mass (an autoguide's Delta) or a degenerate fit: no grid to start
    return mean, sd


def _flat_moments(fn, dim: int, scalar: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """A per-datapoint distribution's mean and sd as ``[n, dim]`` float64 tensors."""
    mean, sd = fn.mean.expand(fn.shape()), fn.stddev.expand(fn.shape())
    if scalar:
        mean, sd = mean.unsqueeze(-1), sd.unsqueeze(-1)
    return mean.reshape(-1, dim).double(), sd.reshape(-1, dim).double()


def _recentre(box, stats, dim: int, step: float):
    """Move the local grids that are too coarse for their posterior, from the posterior's
    moments on the grid (``stats`` of a moments sweep). Returns the new box and which grids
    moved.

    * mass within ``MIN_CELLS`` effective cells per axis or fewer (the guide was far too wide):
      centre on the posterior mean, ``INFLATE`` posterior sds per unit (at least a few old
      cells);
    * no mass at all (every weight underflowed): widen 4x in place.

    Grids are never widened to reach mass beyond their edge: that is the far field's job.
    Widening to reach a plateau or a distant mode costs the peak the resolution it needs (vae
    digits: errors up to 0.07 nats against a brute-force grid, where the far field keeps them
    under 0.03).
    """
    centre, scale = box
    k = 1 + 2 * dim
    lse = torch.cat([s.lse.reshape(k, -1) for s in stats], 1)
    cells = torch.cat([s.ess().reshape(k, -1)[0] for s in stats])
    m1 = (lse[1 : 1 + dim] - lse[0]).exp().T  # E[u + R + 1], [n, dim]
    m2 = (lse[1 + dim :] - lse[0]).exp().T
    mean_u = m1 - RADIUS - 1
    sd_u = (m2 - m1**2).clamp(min=0).sqrt()
    lost = ~torch.isfinite(m1 + m2).all(-1, keepdim=True)
    few_cells = (cells <= MIN_CELLS**dim).unsqueeze(-1) & ~lost
    ratio = torch.where(few_cells, INFLATE * sd_u.clamp(min=step / RADIUS), 1.0)
    ratio = torch.where(lost, 4.0, ratio)
    mean_u = torch.where(few_cells, mean_u, 0.0)
    return (centre + scale * mean_u, scale * ratio), (few_cells | lost).squeeze(-1)
