"""Estimators of the log marginal likelihood ``log p(x)``, side by side.

Methods (all built on :func:`inference.replay.log_weights`):

``elbo``
    The K-sample Monte Carlo ELBO, ``(1/K) sum_k log w_k`` with ``z_k ~ q`` -- the quantity
    :class:`~pyro.infer.Trace_ELBO` optimises; a lower bound in expectation.
``is-guide``
    Importance sampling with the guide as proposal, ``log (1/K) sum_k w_k``: the IWAE bound
    [1], a lower bound in expectation that increases with K to ``log p(x)``.
``is-prior``
    Plain Monte Carlo with the prior as proposal, ``w_k = p(x | z_k)``, ``z_k ~ p(z)``.
``exact``
    Closed form, enumeration or quadrature (:mod:`inference.exact`).

In **local** scope the estimate is per datapoint, ``log p(x_n)``, from a ``[K, N]`` weight
matrix reduced over K per datapoint -- never one joint weight over the batch. In **global**
scope it is ``log p(X)`` from one weight per particle. The scope defaults to local when
every latent lives in the data plate, global otherwise; ``scope="local"`` on a model with
both global and local latents holds the globals at ``fixed`` (default: the guide's point
estimate, :func:`point_estimate`).

**Label switching.** A mixture's posterior is invariant under permuting components, but a
guide sits on one of the ``C!`` modes, so ``is-guide`` would estimate the evidence of one
mode: too low by up to ``log C!``. For sites declared in ``symmetries``, the proposal is
symmetrised [2], ``q_s(θ) = (1/C!) sum_σ q(σθ)``: the weight uses ``q_s`` evaluated at all
``C!`` permutations of the draw. Since ``p(x, σθ) = p(x, θ)`` under exchangeable priors,
``E_q[p / q_s] = p(x)``: unbiased, and it equals the one-mode estimate plus ``log C!`` when the
modes do not overlap.

References

[1] Burda, Grosse, Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR.
[2] Frühwirth-Schnatter (2004), Estimating marginal likelihoods for mixture and Markov
    switching models using bridge sampling techniques, Econometrics Journal.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Dict, Optional

import pyro
import torch

from inference.exact import exact_estimate, latent_sites, point_estimate
from inference.replay import guide_log_density, log_weights, sample_sites
from inference.target import as_data, as_target, num_datapoints, resolve_device
from inference.weights import pareto_khat, stream

METHODS = ("elbo", "is-guide", "is-prior", "exact")
#: default chunk budget per device type: on CPU, chunks that stay near the caches are fastest
#: (digits vae, K=1000: 64 MiB 1.39 s, 256 MiB 1.68 s, 1 GiB 1.84 s); a GPU wants large chunks.
DEFAULT_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimate of ``log p(x)``.

    :ivar log_evidence: the estimate of the total ``log p(X)`` (sum over datapoints in local scope).
    :ivar stderr: its standard error (0 for exact methods).
    :ivar ess: effective sample size of the weights (mean over datapoints in local scope).
    :ivar khat: PSIS Pareto k-hat of the log weights (max over datapoints); above 0.7 the
        estimate is unreliable.
    :ivar per_datapoint: ``log p(x_n)`` per datapoint (local scope), else ``None``; likewise
        ``stderr_per_datapoint``, ``ess_per_datapoint``, ``khat_per_datapoint``.
    :ivar diagnostics: method-specific checks (e.g. the quadrature's own error estimate).
    """

    method: str
    scope: str
    num_samples: int
    log_evidence: float
    stderr: float
    ess: float
    khat: float
    seconds: float
    num_datapoints: int
    per_datapoint: Optional[torch.Tensor] = None
    stderr_per_datapoint: Optional[torch.Tensor] = None
    ess_per_datapoint: Optional[torch.Tensor] = None
    khat_per_datapoint: Optional[torch.Tensor] = None
    diagnostics: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def mean_per_datapoint(self) -> float:
        return self.log_evidence / self.num_datapoints


def estimate(
    target: Any,
    data: Any,
    method: str = "is-guide",
    num_samples: int = 1000,
    *,
    scope: Optional[str] = None,
    seed: int = 0,
    device: Any = "cpu",
    memory_budget: Optional[int] = None,
    fixed: Optional[Dict[str, torch.Tensor]] = None,
    quadrature_points: int = 64,
) -> Estimate:
    """Estimate ``log p(data)`` under ``target`` with ``method`` and ``num_samples`` (K).

    :param target: a zoo entry, a ``(model, guide)`` pair, or an :class:`inference.Target`; its
        params (fitted or loaded) are read from Pyro's param store.
    :param method: one of ``"elbo"``, ``"is-guide"``, ``"is-prior"``, ``"exact"``.
    :param num_samples: K, particles per datapoint (local) or in all (global); K >= 1.
    :param scope: ``"local"`` (per datapoint) or ``"global"``; default from the trace.
    :param seed: seeds the particles.
    :param device: ``"cpu"`` or ``"cuda"``.
    :param memory_budget: bytes one chunk of particles may allocate; K is processed in chunks
        with streaming reductions, so any K runs in this budget. Default: ``DEFAULT_BUDGET``
        for the device (64 MiB on CPU, 1 GiB on CUDA).
    :param fixed: values of global latents to hold fixed in local scope.
    :param quadrature_points: grid points per latent axis for the quadrature reference.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (K) must be an integer >= 1, got {num_samples!r}")
    if scope not in (None, "local", "global"):
        raise ValueError(f"scope must be 'local', 'global' or None, got {scope!r}")
    tgt = as_target(target)
    dev = resolve_device(device)
    if memory_budget is None:
        memory_budget = DEFAULT_BUDGET.get(dev.type, DEFAULT_BUDGET["cpu"])
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    data = as_data(tgt, data, dev)
    mpn = tgt.plate_nesting(data)
    local_names, global_names = latent_sites(tgt, data)
    scope = scope or ("global" if global_names or tgt.data_plate is None else "local")
    if scope == "local":
        if tgt.data_plate is None:
            raise ValueError("per-datapoint estimates need a data plate; set data_plate on the Target")
        if global_names and not local_names:
            raise ValueError(
                f"every latent of {tgt.name} ({', '.join(global_names)}) is global: log p(X) does not "
                "factorise over datapoints, so there is no per-datapoint estimate; use scope='global'"
            )
        if global_names:
            fixed = dict(fixed) if fixed else point_estimate(tgt, data, global_names)
    else:
        fixed = None
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        if method == "exact":
            fields = exact_estimate(tgt, data, scope, mpn, fixed, memory_budget, quadrature_points)
        else:
            fields = _sampled(tgt, data, method, num_samples, scope, mpn, fixed, memory_budget)
    seconds = time.perf_counter() - t0
    return Estimate(method=method, scope=scope, num_datapoints=num_datapoints(data),
                    seconds=seconds, **fields)


def _sampled(tgt, data, method, K, scope, mpn, fixed, budget) -> Dict[str, Any]:
    local = scope == "local"
    proposal = "prior" if method == "is-prior" else "guide"
    symmetric = method == "is-guide" and not local and bool(tgt.symmetries)

    def weights(start, count, idx):
        kw = dict(max_plate_nesting=mpn, proposal=proposal, local=local, indices=idx, fixed=fixed)
        if not symmetric:
            return log_weights(tgt, data, count, **kw)
        lw, _, guide_tr = log_weights(tgt, data, count, with_traces=True, **kw)
        return lw + _symmetrisation(tgt, data, count, guide_tr, mpn)

    if proposal == "guide":
        _check_proposal(tgt, data, mpn, local, fixed)
    stats, (kc, bc) = stream(weights, K, num_datapoints(data) if local else None, budget, data[0].device)
    if method == "elbo":
        value = torch.cat([s.mean() for s in stats])
        err = torch.cat([s.mean_stderr() for s in stats])
    else:
        value = torch.cat([s.log_mean() for s in stats])
        err = torch.cat([s.is_stderr() for s in stats])
    ess = torch.cat([s.ess() for s in stats])
    khat = pareto_khat(torch.cat([s.top for s in stats], 1), K, budget)
    fields = dict(
        num_samples=K,
        log_evidence=float(value.sum()),
        stderr=float(err.pow(2).sum().sqrt()),
        ess=float(ess.mean()),
        khat=float(khat.max()),
        diagnostics={"chunk_particles": kc, "chunk_datapoints": bc},
    )
    if local:
        fields.update(per_datapoint=value, stderr_per_datapoint=err,
                      ess_per_datapoint=ess, khat_per_datapoint=khat)
    return fields


def _check_proposal(tgt, data, mpn, local, fixed) -> None:
    """The guide must have a density to importance-sample with."""
    idx = torch.arange(min(num_datapoints(data), 2), device=data[0].device) if local else None
    _, _, guide_tr = log_weights(tgt, data, 1, max_plate_nesting=mpn, local=local,
                                 indices=idx, fixed=fixed, with_traces=True)
    for name, site in sample_sites(guide_tr, latent_only=True):
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, pyro.distributions.Delta):
            raise ValueError(
                f"the guide's site {name!r} is a point mass (Delta): it has no density to "
                "importance-sample with; fit a guide with a density or use method='is-prior'"
            )


def _symmetrisation(tgt, data, count, guide_tr, mpn) -> torch.Tensor:
    """``log q(θ) - log q_s(θ)`` for the symmetrised proposal (module docstring)."""
    values = {name: site["value"] for name, site in sample_sites(guide_tr, latent_only=True)}
    sizes = {values[n].shape[d] for n, d in tgt.symmetries.items() if n in values}
    if len(sizes) != 1:
        raise ValueError(f"symmetric sites {dict(tgt.symmetries)} disagree on the number of components")
    (C,) = sizes
    if C > 7:
        raise ValueError(f"{C} components give {math.factorial(C)} permutations; too many to symmetrise")
    perms = list(itertools.permutations(range(C)))
    log_q = []
    for perm in perms:
        p = torch.tensor(perm, device=data[0].device)
        permuted = {
            n: v.index_select(tgt.symmetries[n] % v.dim(), p) if n in tgt.symmetries else v
            for n, v in values.items()
        }
        log_q.append(guide_log_density(tgt, data, count, permuted, max_plate_nesting=mpn))
    log_q = torch.stack(log_q)
    return log_q[0] - (log_q.logsumexp(0) - math.log(len(perms)))
