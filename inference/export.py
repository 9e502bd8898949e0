"""A fitted model in ArviZ: draws from the fitted guide and per-datapoint log-likelihoods.

:func:`to_arviz` draws ``num_samples`` latent values from the fitted guide (one vectorized pass
per chunk of draws), replays the model on each, and returns

* ``posterior`` -- the guide's draws of every latent the guide samples, with dims
  ``(chain, draw, ...)`` (one chain);
* ``log_likelihood`` -- ``log p(x_n | z)`` of every observed site, summed per datapoint:
  ``(chain, draw, datapoint)``;
* ``observed_data`` -- the data tensors;

as an ``InferenceData`` on arviz 0.2x and an ``xarray.DataTree`` on arviz 1.x, so that
``az.summary``, ``az.loo`` and ``az.compare`` run on a zoo model or a user's pair alike.

The draws come from the variational posterior, not from MCMC: PSIS-LOO on them [1] is as good
as the guide, and its own k-hat per datapoint says where it is not. For the importance weights
of an evidence estimate, use ``inference.estimate(..., keep_weights=True).log_weights``.

[1] Vehtari, Gelman, Gabry (2017), Practical Bayesian model evaluation using leave-one-out
    cross-validation and WAIC, Statistics and Computing.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import numpy as np
import pyro
import torch

from inference.replay import PARTICLES, _site_log_density, in_plate, log_weights, sample_sites
from inference.target import as_data, as_target, num_datapoints, resolve_device
from inference.weights import bytes_allocated


def to_arviz(target: Any, data: Any, num_samples: int = 1000, *, seed: int = 0,
             device: Any = "cpu", memory_budget: int = 64 << 20):
    """Posterior draws from the fitted guide and pointwise log-likelihoods as arviz data.

    :param target: a zoo entry, a ``(model, guide)`` pair or an :class:`inference.Target`, with
        its fitted params in Pyro's param store.
    :param data: the data tensors.
    :param num_samples: draws from the guide.
    :param seed: seeds the draws.
    :param memory_budget: bytes one chunk of draws may allocate.
    :returns: ``arviz.InferenceData`` (arviz 0.2x) or ``xarray.DataTree`` (arviz 1.x).
    """
    try:
        import arviz as az
    except ImportError:  # pragma: no cover - arviz is a dev dependency
        raise ImportError("to_arviz needs arviz: pip install arviz") from None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    tgt = as_target(target)
    data = as_data(tgt, data, resolve_device(device))
    if tgt.data_plate is None:
        raise ValueError("pointwise log-likelihoods need a data plate; set data_plate on the Target")
    mpn = tgt.plate_nesting(data)
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        _, nbytes = bytes_allocated(lambda: _draws(tgt, data, 2, mpn))
        chunk = max(1, min(num_samples, int(memory_budget // max(nbytes / 2, 1))))
        parts = [_draws(tgt, data, min(chunk, num_samples - s), mpn)
                 for s in range(0, num_samples, chunk)]
    posterior = {k: np.concatenate([p[0][k] for p in parts])[None] for k in parts[0][0]}
    loglik = {k: np.concatenate([p[1][k] for p in parts])[None] for k in parts[0][1]}
    observed = {f"data{i}" if len(data) > 1 else "x": t.detach().cpu().numpy()
                for i, t in enumerate(data)}
    if "posterior" in inspect.signature(az.from_dict).parameters:  # arviz 0.2x
        return az.from_dict(posterior=posterior, log_likelihood=loglik, observed_data=observed)
    return az.from_dict({"posterior": posterior, "log_likelihood": loglik,
                         "observed_data": observed})


def _draws(tgt, data, count: int, mpn: int):
    """``count`` guide draws: ``({latent: [count, ...]}, {observed site: [count, N]})``."""
    _, model_tr, guide_tr = log_weights(tgt, data, count, max_plate_nesting=mpn, local=False,
                                        with_traces=True)
    latents: Dict[str, np.ndarray] = {}
    for name, site in sample_sites(guide_tr, latent_only=True):
        if site["infer"].get("is_auxiliary"):
            continue
        latents[name] = _per_draw(site, count, mpn)
    loglik: Dict[str, np.ndarray] = {}
    for name, site in sample_sites(model_tr):
        if site["is_observed"] and in_plate(site, tgt.data_plate) is not None:
            lp = _site_log_density(site, local=True, ndim=mpn + 1, data_plate=tgt.data_plate)
            loglik[name] = lp.expand(count, num_datapoints(data)).double().cpu().numpy()
    if not loglik:
        raise ValueError(f"the model has no observed site in plate {tgt.data_plate!r}: no "
                         "pointwise log-likelihood to export")
    return latents, loglik


def _per_draw(site, count: int, mpn: int) -> np.ndarray:
    """A site's value with the draws first and the particle plate's broadcast dims dropped."""
    value = site["value"]
    event = site["fn"].event_dim
    dim: Optional[int] = None
    for frame in site["cond_indep_stack"]:
        if frame.name == PARTICLES:
            dim = value.dim() - event + frame.dim
    value = value.unsqueeze(0).expand(count, *value.shape) if dim is None else value.movedim(dim, 0)
    batch = value.shape[1 : value.dim() - event]
    keep = [i + 1 for i, s in enumerate(batch) if s != 1]
    value = value.reshape(count, *[value.shape[i] for i in keep], *value.shape[value.dim() - event:])
    return value.detach().double().cpu().numpy()
