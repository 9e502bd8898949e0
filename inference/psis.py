"""Pareto smoothed importance sampling (PSIS) [1] in numpy, with no dependence on arviz.

PSIS replaces the ``M`` largest of ``K`` importance weights by the expected order statistics of
a generalized Pareto distribution (GPD) fitted to them, and reports the fitted shape ``k-hat``
as a diagnostic. The conventions here are those of Vehtari et al.'s reference code and of
arviz 0.2x's ``psislw(log_weights, reff=1)``, which the project's k-hat has always matched:

* tail length ``M = ceil(min(K / 5, 3 sqrt K))``;
* the cutoff is the ``(M+1)``-th largest log weight (after shifting the largest to 0), raised to
  ``log`` of the smallest normal float; the tail is the weights strictly above it, so ties at
  the cutoff shorten the tail, and a tail of 4 or fewer weights gives ``k = inf`` (no smoothing);
* the fit is Zhang and Stephens' empirical-Bayes estimator [2] with ``m = 30 + floor(sqrt M)``
  grid points, its shape shrunk towards 0.5 by a prior worth 10 observations [1], on the
  excesses over the cutoff computed without cancellation (:func:`excess`; the reference code
  and arviz subtract two exponentials, which differs where the weights are nearly equal);
* the smoothed tail is the fitted quantiles at ``(i - 1/2) / M``, capped at the largest raw
  weight; the result is normalised to ``logsumexp = 0``.

The arviz 1.x line (``arviz_stats``) has a different convention (``M = floor(...)``, no floor on
the cutoff, NaN or an error where the tail is tied) and its ``psislw`` takes *log-likelihoods*:
it smooths ``-ary``. Computing PSIS here keeps the k-hat the same on every Python and arviz.

References

[1] Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto Smoothed Importance Sampling, JMLR.
[2] Zhang, Stephens (2009), A new and efficient estimation method for the generalized Pareto
    distribution, Technometrics.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

#: the cutoff's floor: log of the smallest normal float64
LOG_TINY = math.log(np.finfo(np.float64).tiny)


def tail_length(num_samples: int) -> int:
    """PSIS's tail length ``M`` for ``K`` iid draws (relative efficiency 1)."""
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples))))


def gpd_fit(y: np.ndarray) -> Tuple[float, float]:
    """``(k, sigma)`` of a GPD fitted to ``y`` (1-D, ascending, positive) [2], ``k`` shrunk
    towards 0.5 by a prior worth 10 observations [1]; ``sigma`` is the unshrunk fit's scale."""
    n = len(y)
    m = 30 + int(n**0.5)
    # a grid over b = -k / sigma from quantile-based guesses
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b /= 3 * y[int(n / 4 + 0.5) - 1]
    b += 1 / y[-1]
    k = np.log1p(-b[:, None] * y).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1)  # profile log-likelihood at each b
    with np.errstate(over="ignore"):  # far-off grid points: weight 1 / inf = 0
        weight = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weight >= 10 * np.finfo(float).eps
    if not np.all(keep):
        weight, b = weight[keep], b[keep]
    weight /= weight.sum()
    b_post = np.sum(b * weight)
    k_post = np.log1p(-b_post * y).mean()
    sigma = -k_post / b_post
    return (n * k_post + 10 * 0.5) / (n + 10), sigma


def gpd_quantile(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    """Quantiles of a GPD with location 0 at probabilities ``p`` in (0, 1)."""
    if sigma <= 0:
        return np.full_like(p, np.nan)
    if abs(k) < np.finfo(float).eps:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-k * np.log1p(-p)) / k


def _tail(shifted_top: np.ndarray, num_tail: int) -> Tuple[np.ndarray, float]:
    """The tail (ascending, ``log w`` shifted so the largest is 0) and the cutoff, from the
    ``num_tail + 1`` largest shifted log weights of a row, descending."""
    cutoff = max(shifted_top[num_tail], LOG_TINY)  # builtin max: a NaN cutoff stays NaN
    tail = shifted_top[:num_tail]
    return tail[tail > cutoff][::-1], cutoff


def khat_from_top(top: np.ndarray, num_samples: int) -> float:
    """k-hat of a row of ``num_samples`` log weights from its ``M + 1`` largest (descending):
    all that PSIS reads to fit the tail."""
    num_tail = tail_length(num_samples)
    tail, cutoff = _tail(top[: num_tail + 1] - top[0], num_tail)
    if len(tail) <= 4:
        return math.inf
    return gpd_fit(excess(tail, cutoff))[0]


def excess(tail: np.ndarray, cutoff: float) -> np.ndarray:
    """The tail's weights in excess of the cutoff's, ``exp(tail) - exp(cutoff)``, computed as
    ``exp(cutoff) expm1(tail - cutoff)``: the plain difference loses ``log10`` of the ratio of
    weight to excess in digits (nearly equal weights, 1e-12 apart, keep 4 of 16), and the GPD
    fit's k-hat inherits that error in full; this form keeps every digit."""
    return math.exp(cutoff) * np.expm1(tail - cutoff)


def psis_smooth(log_weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed log weights (normalised, ``logsumexp = 0`` along the last axis) and the
    k-hat of each row of ``log_weights`` (``[..., K]``). Equals arviz 0.2x's
    ``psislw(log_weights, reff=1)``; tied weights in the tail may swap their smoothed values."""
    lw = np.array(log_weights, dtype=np.float64)  # a copy
    shape = lw.shape
    rows = lw.reshape(-1, shape[-1])
    khat = np.empty(rows.shape[0])
    num_tail = tail_length(shape[-1])
    for i, x in enumerate(rows):
        x -= np.max(x)
        order = np.argsort(-x, kind="stable")  # descending; ties keep their order
        tail, cutoff = _tail(x[order[: num_tail + 1]], num_tail)
        n = len(tail)
        if n <= 4:
            khat[i] = math.inf
        else:
            k, sigma = gpd_fit(excess(tail, cutoff))
            khat[i] = k
            if np.isfinite(k):
                probs = np.arange(0.5, n) / n
                with np.errstate(over="ignore"):  # quantiles past the largest float
                    smoothed = np.log(gpd_quantile(probs, k, sigma) + np.exp(cutoff))
                x[order[:n][::-1]] = np.minimum(smoothed, 0.0)  # capped at the largest raw weight
        x -= _logsumexp(x)
    return lw, khat.reshape(shape[:-1])


def _logsumexp(x: np.ndarray) -> float:
    top = np.max(x)
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(x - top))))
