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

With ``jit=True`` (opt-in, as Pyro's own HMC ``jit_compile``) the densities of a chunk are
compiled once by ``torch.jit.trace`` for its shapes, which removes the Python of Pyro's
tracing from the hundreds of evaluations that follow; the compiled densities are kept only if
they agree with the eager ones at a second point, else the chunk runs eagerly. A model whose
Python control flow depends on the latent values should not use it.

References

[1] Neal (2001), Annealed importance sampling, Statistics and Computing.
[2] Grosse, Maddison, Salakhutdinov (2013), Annealing between distributions by averaging
    moments, NeurIPS (the geometric path).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform

from inference.estimators import NotApplicable, Problem
from inference.plates import trace_on
from inference.replay import PARTICLES, _site_log_density, in_plate, log_weights, sample_sites


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


class Path:
    """The geometric path on ``count`` chains for datapoints ``idx`` (local) or the whole data
    (global), in unconstrained coordinates flattened to ``[C, B, D]``."""

    def __init__(self, problem: Problem, start: str, count: int, idx: Optional[torch.Tensor],
                 jit: bool = False):
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
        self._compiled = self._compile() if jit else None

    @property
    def compiled(self) -> bool:
        """Whether this chunk's densities run compiled (``jit=True`` and the check passed)."""
        return self._compiled is not None

    def _densities(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, j, lj = self.densities(flat)
        return s, j, j.new_zeros(j.shape) + lj  # the log-Jacobian a tensor even where it is 0

    def _compile(self):
        """A ``torch.jit.trace`` of :meth:`densities` for this chunk, or ``None`` where tracing
        fails or the traced densities differ from the eager ones at a shifted point. The
        parameters are constants of the trace (they do not change while estimating): their
        gradients are off while it is made and while it runs."""
        state = pyro.get_param_store().get_state()["params"]
        weights = [w for w in state.values() if w.requires_grad] + [
            w for net in self.problem.target.networks.values() for w in net.parameters()
            if w.requires_grad]
        flat = self.pack(self.initial)
        try:
            with _frozen(weights), warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")  # the tracer's notes on Pyro's Python
                traced = torch.jit.trace(self._densities, (flat.clone().requires_grad_(True),),
                                         check_trace=False)
                probe = (flat + 0.5).requires_grad_(True)
                agree = all(torch.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
                            for a, b in zip(self._densities(probe), traced(probe)))
        except Exception:  # noqa: BLE001 -- whatever the tracer cannot follow runs eagerly
            return None
        if not agree:
            return None

        def run(flat):
            with _frozen(weights):
                return traced(flat)

        return run

    def pack(self, us: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([us[n].reshape(self.count, self.B, -1) for n, *_ in self.sites], -1)

    def unpack(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, _, pos, shape in self.sites:
            size = shape[2:].numel() if pos is not None else shape[1:].numel()
            u = flat[..., i:i + size].reshape(shape)
            out[name] = u.movedim(1, pos) if pos is not None else u
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
        joint = joint.reshape(self.count, self.B)
        return self._start(values, model_tr).reshape(self.count, self.B), joint, log_jac

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
        return sum(self._density(s) for s in sites)

    def _density(self, site) -> torch.Tensor:
        p = self.problem
        return _site_log_density(site, local=p.local, ndim=p.max_plate_nesting + 1,
                                 data_plate=p.target.data_plate)

    def _guide_trace(self, values):
        """The guide on the chunk's datapoints at ``values``, under the particle plate."""
        p = self.problem
        guide = poutine.condition(p.target.guide, {**(p.fixed or {}), **values})
        count, dim = self.count, -(p.max_plate_nesting + 1)

        def vectorized(*args):
            with pyro.plate(PARTICLES, count, dim=dim):
                return guide(*args)

        return trace_on(vectorized, p.target, p.data, self.idx)

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
        ``beta`` a number or a ``[C, B]`` tensor."""

        def fn(flat: torch.Tensor):
            with torch.enable_grad():
                flat = flat.detach().requires_grad_(True)
                start, joint, log_jac = (self._compiled or self.densities)(flat)
                b = torch.as_tensor(beta, dtype=joint.dtype, device=joint.device)
                f = (1 - b) * start + b * joint + log_jac
                (grad,) = torch.autograd.grad(f.sum(), flat)
            bad = ~torch.isfinite(f)
            f = torch.where(bad, torch.full_like(f, -math.inf), f.detach())
            return f, grad, (joint - start).detach()

        return fn


@contextlib.contextmanager
def _frozen(weights: List[torch.Tensor]):
    """``weights`` without gradients inside (constants of a trace), with them again after."""
    for w in weights:
        w.requires_grad_(False)
    try:
        yield
    finally:
        for w in weights:
            w.requires_grad_(True)


def _identity(t) -> bool:
    """Whether a ``biject_to`` transform is the identity (of real or real-vector supports)."""
    t = getattr(t, "base_transform", t)
    return isinstance(t, ComposeTransform) and not t.parts


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the last bit (infinities and NaNs where the other has them too)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
