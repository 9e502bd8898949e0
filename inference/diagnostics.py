"""Generic diagnostics for any model/guide pair: the spread of ELBO gradients, and ROC curves of
anomaly scores.

* **Gradient variance** -- :func:`gradient_draws` repeats an ELBO's gradient estimate at fixed
  parameters (no optimiser step); :func:`gradient_variance` summarises the draws per param. With
  enumerated discrete sites (``TraceEnum_ELBO``) the discrete sum is exact; sampled discrete
  sites (``Trace_ELBO``) add a score-function term [1, 2].
* **Anomaly scores** -- :func:`roc` (ROC curve and its area, ties counted one half), for a score
  such as ``-log p(x)`` from :func:`inference.estimate`.

References

[1] Williams (1992), Simple statistical gradient-following algorithms for connectionist
    reinforcement learning (the score-function estimator).
[2] Ranganath, Gerrish, Blei (2014), Black Box Variational Inference, AISTATS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd
import pyro
import torch

from inference.svi import LOSSES
from inference.target import as_data, as_target


# ------------------------------------------------------------------------ gradient variance
def gradient_draws(
    target: Any,
    data: Any,
    num_draws: int = 100,
    *,
    loss: Optional[str] = None,
    num_particles: int = 1,
    params: Optional[Sequence[str]] = None,
    seed: int = 0,
    device: Any = "cpu",
) -> Dict[str, torch.Tensor]:
    """``num_draws`` independent estimates of the gradient of the loss (negative ELBO) with
    respect to each param, at the param store's current values; the values are not changed.
    Params the guide creates on its first call are created with their initial values.

    :param loss: ``"trace"`` or ``"traceenum"``; default the target's ``loss``.
    :param num_particles: particles per estimate (vectorized).
    :param params: names to keep (default: every param that receives a gradient).
    :returns: ``{name: float64 tensor [num_draws, *shape]}`` of gradients with respect to the
        unconstrained values.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 to measure a variance, got {num_draws}")
    tgt = as_target(target)
    data = as_data(tgt, data, device)
    loss = loss or tgt.loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
    elbo = LOSSES[loss](num_particles=num_particles, vectorize_particles=True,
                        max_plate_nesting=tgt.plate_nesting(data))
    store = pyro.get_param_store()
    pyro.set_rng_seed(seed)
    draws: Dict[str, list] = {}
    try:
        for i in range(num_draws):
            for _, p in store.named_parameters():
                p.grad = None
            elbo.loss_and_grads(tgt.model, tgt.guide, *data)
            got = {n: p.grad for n, p in store.named_parameters() if p.grad is not None}
            if params is not None:
                missing = set(params) - set(got)
                if missing:
                    raise ValueError(f"no gradient for {sorted(missing)}; params with one: "
                                     f"{sorted(got)}")
                got = {n: got[n] for n in params}
            if i == 0:
                draws = {n: [] for n in got}
            for n in draws:
                g = got.get(n)
                draws[n].append(torch.zeros_like(store.get_param(n)) if g is None else g)
    finally:
        for _, p in store.named_parameters():
            p.grad = None
    return {n: torch.stack(v).detach().cpu().double() for n, v in draws.items()}


def gradient_variance(draws: Dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per param: ``size``, ``mean_norm`` (norm of the mean gradient), ``variance`` (sum over
    coordinates of the per-coordinate variance of one draw: the expected squared distance of a
    draw from the mean) and ``snr = mean_norm / sqrt(variance)``."""
    rows = []
    for name, g in draws.items():
        flat = g.reshape(g.shape[0], -1)
        mean = flat.mean(0)
        var = float(flat.var(0, unbiased=True).sum())
        norm = float(mean.norm())
        rows.append({"param": name, "size": flat.shape[1], "mean_norm": norm, "variance": var,
                     "snr": norm / var**0.5 if var > 0 else float("inf")})
    return pd.DataFrame(rows, columns=["param", "size", "mean_norm", "variance", "snr"])



# ----------------------------------------------------------------------------- anomaly scores
@dataclasses.dataclass(frozen=True)
class ROC:
    """A receiver operating characteristic: false and true positive rates at every threshold
    (decreasing), from ``(0, 0)`` to ``(1, 1)``, and the area under the curve."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def roc(normal_scores: Any, anomalous_scores: Any) -> ROC:
    """ROC of a score where **higher means more anomalous** (e.g. ``-log p(x)``): flagging every
    point with score ``>= t`` gives ``tpr(t)`` on the anomalies and ``fpr(t)`` on the normal
    points. The area (trapezoids) is ``P(s_anomalous > s_normal) + P(equal) / 2``."""
    s0 = np.asarray(torch.as_tensor(normal_scores).detach().cpu(), dtype=np.float64).ravel()
    s1 = np.asarray(torch.as_tensor(anomalous_scores).detach().cpu(), dtype=np.float64).ravel()
    if s0.size == 0 or s1.size == 0:
        raise ValueError("roc needs at least one normal and one anomalous score")
    if not (np.isfinite(s0).all() and np.isfinite(s1).all()):
        raise ValueError("scores must be finite")
    thresholds = np.unique(np.concatenate([s0, s1]))[::-1]
    # counts of scores >= t, for each threshold t (decreasing)
    tp = s1.size - np.searchsorted(np.sort(s1), thresholds, side="left")
    fp = s0.size - np.searchsorted(np.sort(s0), thresholds, side="left")
    tpr = np.concatenate([[0.0], tp / s1.size])
    fpr = np.concatenate([[0.0], fp / s0.size])
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return ROC(fpr=fpr, tpr=tpr, thresholds=np.concatenate([[np.inf], thresholds]), auc=auc)



__all__ = ["gradient_draws", "gradient_variance", "ROC", "roc"]
