"""The geometric path of the annealing estimators, laid out for HMC: its densities for any
model/guide pair, in an unconstrained space, on ``[C, B, D]`` tensors.

For a start density ``s(z)`` -- the guide ``q(z | x)`` or the prior ``p(z)`` -- and the
unnormalised posterior ``p(x, z)``, the path is

    f_beta(z) = s(z)^(1 - beta) p(x, z)^beta,    0 = beta_0 < ... < beta_T = 1

with ``Z_0 = 1`` and ``Z_T = p(x)`` [1, 2]. Latents with a constrained support are moved to
``R^D`` with Pyro's ``biject_to``: ``z = T(u)``, and in ``u`` every ``f_beta`` gains the same
``log |det dT/du|``, which therefore cancels from every ratio ``f_beta' / f_beta`` and only
shapes the HMC moves.

``log p(x, z)`` comes from the replay primitive (:func:`inference.replay.log_weights` with
``proposal="values"``), so the model runs as every estimator runs it: on the chunk's
datapoints the way its data plate is written (:func:`inference.plates.on_datapoints`), with its
keyword arguments, and with the discrete sites it marks for enumeration summed out per
datapoint. ``log s(z)`` is the prior's terms of that same trace, or the guide run on the same
datapoints at the same values. A guide whose distributions do not depend on the latent values
(an amortized encoder, a mean-field guide: the usual case) is traced once per chunk and its
distributions reused at every evaluation -- checked, not assumed: with gradients and at a
shifted point; any other guide is re-run at each evaluation.

The potential HMC moves on -- ``log f_beta``, its gradient and ``log p(x, z) - log s(z)`` -- is
compiled by default (the estimators' ``jit=True``): the densities of an evaluation are
recorded as one graph once per chunk shape and reused by every chunk of that shape, which
removes Pyro's Python from the hundreds of evaluations that follow (:mod:`inference.compiled_path`).
Each chunk checks the graph against the eager potential at a point of its own before using
it, else runs eagerly; on CPU the two agree bit for bit. ``jit=False`` runs every evaluation
eagerly.

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Grosse, Maddison, Salakhutdinov (2013), Annealing between distributions by averaging
    moments, NeurIPS (the geometric path).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Dict, List, Optional, Tuple, Union

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform

from inference.compiled_path import Graphs, agree, frozen, leaves
from inference.problem import NotApplicable, Problem
from inference.replay import NotEnumerable, _site_log_density, in_plate, log_weights, sample_sites
from inference.sampling import guide_trace
from inference.target import unwrapped


def draw(problem: Problem, count: int, proposal: str, idx, values=None):
    """``(log w, model trace, guide trace)`` of the replay primitive on the datapoints ``idx``."""
    p = problem
    return log_weights(p.target, p.data, count, max_plate_nesting=p.max_plate_nesting,
                       proposal=proposal, local=p.local, indices=idx, fixed=p.fixed,
                       values=values, with_traces=True)


def latents(problem: Problem, model_tr) -> List[Tuple[str, Dict[str, Any]]]:
    """The model's latent sites the path moves: all of them (global scope) or those in the data
    plate (local scope); sites summed out by enumeration are not latent values of the trace."""
    plate = problem.target.data_plate
    return [(n, s) for n, s in sample_sites(model_tr, latent_only=True)
            if s["infer"].get("_enumerate_dim") is None
            and (not problem.local or in_plate(s, plate) is not None)]


def check_continuous(problem: Problem, method: str, what: str) -> None:
    """Refuse a discrete latent the model does not sum out by enumeration (one line)."""
    idx = torch.arange(min(2, len(problem.data[0])), device=problem.data[0].device) \
        if problem.local else None
    try:
        _, model_tr, _ = draw(problem, 1, "prior", idx)
    except NotEnumerable as err:
        raise NotApplicable(f"site {err.site!r} depends on a discrete latent enumerated outside "
                            f"the data plate: {method} needs continuous latents; use 'is-guide'"
                            ) from None
    for name, site in latents(problem, model_tr):
        if site["fn"].support.is_discrete:
            raise NotApplicable(
                f"latent site {name!r} is discrete: {what} needs continuous latents; mark it for "
                "enumeration inside the data plate (pyro.infer.config_enumerate) or use 'is-guide'")


def guide_start(problem: Problem, path: Path, idx: Optional[torch.Tensor],
                point: bool = True) -> torch.Tensor:
    """Where to start, ``[C, B, D]`` in the path's coordinates: with ``point``, an autoguide's
    median (global scope); else one draw of the guide per chain; else (a guide that cannot
    propose every latent) the path's own draw from the prior."""
    tgt = problem.target
    guide = unwrapped(tgt.guide)
    try:
        if point and isinstance(guide, AutoGuide) and not problem.local:
            with poutine.block(), torch.no_grad():
                median = guide.median(*problem.data, **dict(tgt.kwargs))
            values = {n: torch.broadcast_to(median[n].detach(), path.initial_values[n].shape)
                      for n, *_ in path.sites}
        else:
            _, model_tr, _ = draw(problem, path.count, "guide", idx)
            values = {n: model_tr.nodes[n]["value"].detach() for n, *_ in path.sites}
        start = path.constrained(values)
    except (ValueError, RuntimeError, KeyError, NotImplementedError):
        return path.pack(path.initial)
    return start if torch.isfinite(start).all() else path.pack(path.initial)


class Path:
    """The geometric path on ``count`` chains for datapoints ``idx`` (local) or the whole data
    (global), in unconstrained coordinates flattened to ``[C, B, D]``."""

    def __init__(self, problem: Problem, start: str, count: int, idx: Optional[torch.Tensor],
                 graphs: Optional[Graphs] = None):
        self.problem, self.start, self.count, self.idx = problem, start, count, idx
        _, model_tr, guide_tr = draw(problem, count, start, idx)
        source = guide_tr if start == "guide" else model_tr
        self.sites = []  # (name, transform, data position, moved shape of u)
        self.initial, self.initial_values = {}, {}
        for name, site in latents(problem, model_tr):
            if site["fn"].support.is_discrete:
                raise NotApplicable(f"latent site {name!r} is discrete: annealing needs "
                                    "continuous latents; sum it out or use 'is-guide'")
            if start == "guide" and name not in source.nodes:
                raise NotApplicable(f"the guide has no site {name!r} to start from; "
                                    "use start='prior'")
            value = source.nodes[name]["value"].detach()
            self.initial_values[name] = value
            transform = biject_to(site["fn"].support)
            u = transform.inv(value)
            event = len(site["fn"].event_shape)
            pos = None
            if problem.local:
                pos = u.dim() - event + in_plate(site, problem.target.data_plate)
                u = u.movedim(pos, 1)
            self.sites.append((name, transform, pos, u.shape))
            self.initial[name] = u
        self._start_sites = None
        if start == "guide":
            for name, site in sample_sites(guide_tr, latent_only=True):
                if site["infer"].get("is_auxiliary"):
                    raise NotApplicable(f"the guide's auxiliary site {name!r} has no density at "
                                        "given latents; use start='prior'")
            self._start_sites = self._fixed_guide()
        self.B = 1 if idx is None else len(idx)
        self.graphs, self._decided = graphs, {}
        starts = [] if self._start_sites is None else [
            (s["fn"], s["mask"], s["scale"]) for s in self._start_sites.values()]
        self._inputs = leaves([idx, [t for _, t, *_ in self.sites], starts])

    def frozen(self):
        """Parameters without gradients while HMC runs (:func:`inference.compiled_path.frozen`):
        constants of the compiled graphs; eagerly, nothing differentiates them either."""
        return frozen(self.problem.target.networks.values())

    def _compiled_for(self, flat: torch.Tensor):
        """This chunk's compiled densities for the shape of ``flat``, or ``None``: recorded once
        per signature by :class:`~inference.compiled_path.Graphs`, used only if the potential they
        give -- value, gradient and ``log p - log s`` -- agrees with the eager one at a point
        of this chunk's own (``flat + 0.5``, ``beta = 0.5``: both terms count)."""
        key = (flat.shape, flat.stride())
        if key in self._decided:
            return self._decided[key]
        inputs = (flat.detach(), *self._inputs)
        graph = self.graphs.get(self._traceable, inputs)
        reason = "recording failed"
        if graph is not None:
            probe, half = flat.detach() + 0.5, torch.tensor(0.5, dtype=torch.float64,
                                                            device=flat.device)
            compiled = lambda u: graph(u, *self._inputs)  # noqa: E731
            try:
                ok = agree(self._potential(probe, half, compiled), self._potential(probe, half))
                reason = None if ok else "the compiled densities differed from the eager ones"
            except Exception as err:  # noqa: BLE001 -- a graph that cannot run here runs eagerly
                reason = f"the compiled densities failed: {type(err).__name__}: {err}"[:300]
        self.graphs.ran(reason is None, reason)
        self._decided[key] = graph if reason is None else None
        return self._decided[key]

    def _traceable(self, flat: torch.Tensor, *inputs: torch.Tensor):
        """:meth:`densities` as a tuple of tensors, with the chunk's own tensors (``inputs``: its
        datapoints, the start's and the bijections' tensors) named as arguments, so that a
        recording takes them as inputs (the recorder follows tensors by identity)."""
        start, joint, log_jac = self.densities(flat)
        return (start, joint) if isinstance(log_jac, float) else (start, joint, log_jac)

    def pack(self, us: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([us[n].reshape(self.count, self.B, -1) for n, *_ in self.sites], -1)

    def unpack(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, _, pos, shape in self.sites:  # no-op slices, reshapes and moves skipped:
            size = shape[2:].numel() if pos is not None else shape[1:].numel()  # each would be
            u = flat if size == flat.shape[-1] else flat[..., i:i + size]  # one more node to
            u = u if u.shape == shape else u.reshape(shape)  # differentiate
            out[name] = u.movedim(1, pos) if pos not in (None, 1) else u
            i += size
        return out

    def constrained(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Pack given constrained latent values (already ``[C, ...]``) into ``[C, B, D]``."""
        us = {}
        for name, transform, pos, _ in self.sites:
            u = transform.inv(values[name])
            us[name] = u.movedim(pos, 1) if pos is not None else u
        return self.pack(us)

    def transformed(self, flat: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Any]:
        """The latent values ``z = T(u)`` at ``flat`` ``[C, B, D]`` and ``log |det dT/du|``
        ``[C, B]`` (the number 0 where every transform is the identity)."""
        us = self.unpack(flat)
        values, log_jac = {}, 0.0
        for name, transform, pos, _ in self.sites:
            values[name] = transform(us[name])
            if _identity(transform):
                continue  # its log-Jacobian is 0
            lj = transform.log_abs_det_jacobian(us[name], values[name])
            lj = lj.reshape(lj.shape[:1] + (-1,)) if pos is None else lj.movedim(pos, 1)
            log_jac = log_jac + lj.reshape(self.count, self.B, -1).sum(-1)
        return values, log_jac

    def densities(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log s(z)``, ``log p(x, z)``, ``log |det dT/du|``, each ``[C, B]``, at ``flat`` ``[C, B, D]``."""
        values, log_jac = self.transformed(flat)
        joint, model_tr, _ = draw(self.problem, self.count, "values", self.idx, values)
        start, shape = self._start(values, model_tr), (self.count, self.B)
        return _shaped(start, shape), _shaped(joint, shape), log_jac

    def guide_density(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``log q(z)`` ``[C, B]`` at the latent values ``z`` (a path with ``start="guide"``)."""
        return self._start(values, None).reshape(self.count, self.B)

    def _start(self, values, model_tr) -> torch.Tensor:
        if self.start == "prior":
            sites = [s for n, s in sample_sites(model_tr) if n in values]
        elif self._start_sites is not None:
            sites = [dict(s, value=values[n]) for n, s in self._start_sites.items()]
        else:
            sites = [s for n, s in sample_sites(self._guide_trace(values)) if n in values]
        parts = [self._density(s) for s in sites]
        return functools.reduce(operator.add, parts) if parts else 0

    def _density(self, site) -> torch.Tensor:
        p = self.problem
        return _site_log_density(site, local=p.local, ndim=p.max_plate_nesting + 1,
                                 data_plate=p.target.data_plate)

    def _guide_trace(self, values):
        """The guide on the chunk's datapoints at ``values``, under the particle plate."""
        return guide_trace(self.problem, self.count, self.idx, values)

    def _fixed_guide(self) -> Optional[Dict[str, Dict[str, Any]]]:
        """The guide's sites ``{name: site}`` from one trace, if its distributions do not depend
        on the latent values (so that ``site["fn"].log_prob(z)`` is ``log q(z)`` at any ``z``);
        ``None`` otherwise. Checked twice: no gradient flows from the values into the
        distributions, and the reused distributions give the guide's own density at a shifted
        point (which also catches dependence that gradients cannot see)."""
        names = [n for n, *_ in self.sites]
        with torch.enable_grad():
            leaves = {n: v.clone().requires_grad_(True) for n, v in self.initial_values.items()}
            tr = self._guide_trace(leaves)
            lp = sum(tr.nodes[n]["fn"].log_prob(leaves[n].detach()).sum() for n in names)
            if isinstance(lp, torch.Tensor) and lp.requires_grad:
                grads = torch.autograd.grad(lp, list(leaves.values()), allow_unused=True)
                if any(g is not None for g in grads):
                    return None
        with torch.no_grad():
            sites = {n: s for n, s in sample_sites(self._guide_trace(self.initial_values))
                     if n in self.initial_values}
            shifted = {n: t(t.inv(self.initial_values[n]) + 0.5) for n, t, *_ in self.sites}
            fresh = sum(self._density(s) for n, s in sample_sites(self._guide_trace(shifted))
                        if n in shifted)
            reused = sum(self._density(dict(s, value=shifted[n])) for n, s in sites.items())
        if not isinstance(fresh, torch.Tensor) or not _same(fresh, reused):
            return None
        return sites

    def potential(self, beta: Union[float, torch.Tensor]):
        """``u -> (log f_beta, its gradient, log p(x, z) - log s(z))`` for :mod:`inference.hmc`;
        ``beta`` a number or a ``[C, B]`` tensor. The densities run compiled where
        :attr:`graphs` is given and the graph checks out (:mod:`inference.compiled_path`), else
        eagerly: the same numbers either way."""
        b = beta if isinstance(beta, torch.Tensor) else torch.tensor(
            float(beta), dtype=torch.float64, device=self.problem.data[0].device)

        coefs = {}  # (b, 1 - b) in the densities' dtype, made once

        def fn(flat: torch.Tensor):
            graph = None if self.graphs is None else self._compiled_for(flat)
            if graph is None:
                return self._potential(flat, b, coefs=coefs)
            return self._potential(flat, b, lambda u: graph(u, *self._inputs), coefs)

        return fn

    def _potential(self, flat: torch.Tensor, b: torch.Tensor, densities=None, coefs=None):
        """The potential at ``flat`` for ``beta = b``, from :meth:`densities` or a compiled
        graph of them (``(log s, log p)``, and ``log |det dT/du|`` unless it is 0)."""
        with torch.enable_grad():
            flat = flat.detach().requires_grad_(True)
            start, joint, *log_jac = (densities or self._traceable)(flat)
            coefs = {} if coefs is None else coefs
            if joint.dtype not in coefs:
                bt = torch.as_tensor(b, dtype=joint.dtype, device=joint.device)
                coefs[joint.dtype] = (bt, 1 - bt)
            bt, rest = coefs[joint.dtype]
            f = rest * start + bt * joint
            for lj in log_jac:
                f = f + lj
            (grad,) = torch.autograd.grad(f.sum(), flat)
        f = torch.nan_to_num(f.detach(), nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
        return f, grad, (joint - start).detach()


def _shaped(t: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    return t if t.shape == shape else t.reshape(shape)


def _identity(t) -> bool:
    """Whether a ``biject_to`` transform is the identity (of real or real-vector supports)."""
    t = getattr(t, "base_transform", t)
    return isinstance(t, ComposeTransform) and not t.parts


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the last bit (infinities and NaNs where the other has them too)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
