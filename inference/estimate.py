"""Estimate ``log p(x)`` with any registered method (:mod:`inference.estimators`).

Built in, one file each under ``inference/estimators/``:

``elbo``
    The K-sample Monte Carlo ELBO, ``(1/K) sum_k log w_k`` with ``z_k ~ q``: a lower bound.
``is-guide``
    Importance sampling with the guide as proposal, ``log (1/K) sum_k w_k``: the IWAE bound,
    increasing with K to ``log p(x)``; mixtures' proposals are symmetrised over relabellings.
``is-prior``
    Plain Monte Carlo with the prior as proposal, ``w_k = p(x | z_k)``, ``z_k ~ p(z)``.
``exact``
    Closed form, enumeration or quadrature.
``ais``, ``bdmc``, ``smc``
    Annealing from the guide (or the prior) to the posterior with HMC moves.
``laplace``, ``harmonic-mean``, ``bridge``, ``chib``
    From the posterior's mode or from HMC draws of it.
``nested``
    Nested sampling over the prior, constrained random-walk moves.
``stepping-stone``
    Power posteriors on a temperature ladder with HMC: stepping-stone ratios or thermodynamic
    integration.

Each file's docstring tells its estimator's story; ``ppzoo list --methods`` prints the one-line
``summary`` of every registered method.

:func:`estimate` checks the arguments and the data, settles the scope (:mod:`inference.scope`:
per datapoint, ``log p(x_n)`` from a ``[K, N]`` weight matrix, or global, ``log p(X)`` from one
weight per particle), seeds, and hands a :class:`~inference.estimators.Problem` to the method.
"""

from __future__ import annotations

import numbers
import time
from typing import Any, Dict, Optional

import pyro
import torch

from inference import distributed as parallel
from inference import estimators
from inference.problem import Problem
from inference.results import Estimate
from inference.plates import resolve
from inference.scope import resolve_scope
from inference.state import load_fitted
from inference.target import as_data, as_target, num_datapoints, resolve_device
from inference.weights import stderr_caveats

#: the built-in methods (those of ``inference/estimators/``); :func:`methods` lists every
#: registered one, a user's own too
METHODS = ("elbo", "is-guide", "is-prior", "exact", "ais", "bdmc", "smc", "laplace",
           "harmonic-mean", "bridge", "chib", "nested", "stepping-stone")


def methods() -> tuple:
    """Every registered method, the built-in ones first (:mod:`inference.estimators`)."""
    return estimators.names()


#: the largest K: memory stays within the budget up to here (the PSIS tail keeps 3 sqrt(K)
#: weights per datapoint: 95,000 at 1e9)
MAX_SAMPLES = 10**9

#: default chunk budget per device type: on CPU, chunks that stay near the caches are fastest
#: (the budgets measured: benchmarks/RESULTS.md, section 1); a GPU wants large chunks.
DEFAULT_BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30}


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
    keep_weights: bool = False,
    kwargs: Optional[Dict[str, Any]] = None,
    distributed: bool = False,
    **options: Any,
) -> Estimate:
    """Estimate ``log p(data)`` under ``target`` with ``method`` and ``num_samples`` (K).

    :param target: a zoo entry, a ``(model, guide)`` pair, an :class:`inference.Target`, or the
        :class:`~inference.FitResult` of :func:`inference.fit` (its own fitted params are loaded
        into a cleared param store, whatever was fitted since); otherwise the params are read
        from Pyro's param store.
    :param method: a registered method: ``"elbo"``, ``"is-guide"``, ``"is-prior"``,
        ``"exact"``, or one added with :func:`inference.estimators.register`.
    :param num_samples: K, particles per datapoint (local) or in all (global); K >= 1.
    :param scope: ``"local"`` (per datapoint) or ``"global"``; default from the trace.
    :param seed: seeds the particles.
    :param device: ``"cpu"`` or ``"cuda"``.
    :param memory_budget: bytes one chunk of particles may allocate; K is processed in chunks
        with streaming reductions, so any K runs in this budget. Default: ``DEFAULT_BUDGET``
        for the device (64 MiB on CPU, 1 GiB on CUDA).
    :param fixed: values of global latents to hold fixed in local scope.
    :param keep_weights: also return every log weight (``Estimate.log_weights``; K x N numbers,
        so mind the memory for large K).
    :param kwargs: keyword arguments for every call of model and guide (``model(*data, **kwargs)``).
    :param distributed: share the work among the processes ``torchrun`` started
        (:mod:`inference.distributed`; one process without it): local scope deals datapoints
        in blocks seeded by their index, so the values do not depend on the number of
        processes; global scope sums each particle's per-shard terms across processes. Every
        rank returns the whole Estimate. For ``elbo``, ``is-guide`` and ``is-prior``.
    :param options: the method's own options, e.g. ``quadrature_points=64`` (grid points per
        latent axis of ``exact``'s quadrature). Options of other registered methods are
        accepted and ignored, so one set of options serves a whole comparison.
    """
    est = estimators.get(method)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples (K) must be an integer >= 1, got {num_samples!r}")
    if num_samples > MAX_SAMPLES:
        raise ValueError(f"num_samples (K) = {num_samples} is above the maximum {MAX_SAMPLES:.0e}: "
                         "the k-hat's tail alone would hold 3 sqrt(K) weights per datapoint; "
                         "use fewer samples, or seeds for repeats")
    num_samples = int(num_samples)
    if scope not in (None, "local", "global"):
        raise ValueError(f"scope must be 'local', 'global' or None, got {scope!r}")
    known = estimators.all_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"estimate() got unknown option(s) {unknown}; the registered methods "
                        f"take {sorted(known) or 'none'}")
    estimators.check_options(options)
    own = {k: v for k, v in options.items() if k in est.options}
    tgt = as_target(target, **({"kwargs": kwargs} if kwargs else {}))
    dev = resolve_device(device)
    world = None
    if distributed:
        if not est.shardable:
            raise ValueError(f"method {method!r} cannot be sharded across processes (these can: "
                             f"{[m for m in methods() if estimators.get(m).shardable]}); run it "
                             "without distributed=True")
        if keep_weights:
            raise ValueError("keep_weights gathers K x N weights on one process; run without "
                             "distributed=True to keep them")
        world, dev = parallel.setup(dev)
    if memory_budget is None:
        memory_budget = DEFAULT_BUDGET.get(dev.type, DEFAULT_BUDGET["cpu"])
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    data = as_data(tgt, data, dev)
    load_fitted(target, dev)
    tgt = resolve(tgt, data)
    mpn = tgt.plate_nesting(data)
    scope, fixed = resolve_scope(tgt, data, scope, fixed)
    problem = Problem(target=tgt, data=data, scope=scope, max_plate_nesting=mpn, fixed=fixed,
                      num_samples=num_samples, memory_budget=memory_budget,
                      keep_weights=keep_weights, world=world, seed=seed)
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        fields = est.run(problem, **own)
    seconds = time.perf_counter() - t0
    caveats = tuple(fields.pop("caveats", ()))
    if est.weighted and not est.reference:
        caveats += stderr_caveats(fields["khat"], fields["ess"], num_samples)
    return Estimate(method=method, scope=scope, num_datapoints=num_datapoints(data),
                    seconds=seconds, caveats=caveats, **fields)
