"""PSIS (:mod:`inference.psis`) against an independent reference written out plainly here, and
against whichever arviz is installed (0.2x on Python <= 3.11, 1.x on 3.12+).

Rows cover heavy tails (k > 0.7), light tails (bounded weights, k < 0), ties (all tied, ties at
the cutoff, ties below it), -inf weights (a few, half, all but 3) and nearly equal weights;
both the k-hat and the smoothed log weights are compared.
"""

import math
from importlib.metadata import version

import numpy as np
import pytest
from scipy.special import logsumexp

from inference.psis import psis_smooth, tail_length

ARVIZ_1 = int(version("arviz").split(".")[0]) >= 1


def _rows(K: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(K) * 2
    rows = {
        "normal": normal,
        "heavy": rng.standard_t(1.5, K),
        "very heavy": rng.standard_normal(K) * 300,
        "light (bounded weights)": np.log(rng.uniform(size=K)),
        "light (Gaussian weights)": -(rng.standard_normal(K) ** 2),
        "all tied": np.ones(K),
        "ties at the cutoff": np.round(normal),
        "ties below the cutoff": np.where(normal < np.median(normal), np.round(normal), normal),
        "nearly equal": rng.standard_normal(K) * 1e-12,
    }
    for name, frac in [("-inf few", 0.1), ("-inf half", 0.5)]:
        row = rng.standard_normal(K) * 2
        row[rng.permutation(K)[: int(frac * K)]] = -math.inf
        rows[name] = row
    row = rng.standard_normal(K)
    row[3:] = -math.inf
    rows["-inf all but 3"] = row
    return rows


def _reference_psis(lw: np.ndarray):
    """PSIS for one row as in Vehtari et al. (2024), Appendix and their reference code, with a
    per-grid-point loop for Zhang and Stephens' fit: returns (smoothed log weights, k-hat)."""
    K = len(lw)
    M = math.ceil(min(0.2 * K, 3 * math.sqrt(K)))
    x = lw - lw.max()
    cutoff = max(np.sort(x)[K - M - 1], math.log(np.finfo(float).tiny))
    in_tail = np.flatnonzero(x > cutoff)
    n = len(in_tail)
    out = x.copy()
    if n <= 4:
        return out - logsumexp(out), math.inf
    in_tail = in_tail[np.argsort(x[in_tail], kind="stable")]  # ascending
    # the excess over the cutoff without cancellation (the published code subtracts two
    # exponentials: see _cancellation)
    y = math.exp(cutoff) * np.expm1(x[in_tail] - cutoff)
    m = 30 + int(math.sqrt(n))
    xstar = y[int(n / 4 + 0.5) - 1]  # first quartile
    theta = np.array([1 / y[-1] + (1 - math.sqrt(m / (j - 0.5))) / (3 * xstar)
                      for j in range(1, m + 1)])
    ell = np.empty(m)
    for j, t in enumerate(theta):
        kj = np.mean(np.log1p(-t * y))
        ell[j] = n * (math.log(-t / kj) - kj - 1)
    with np.errstate(over="ignore"):
        w = np.array([1 / np.sum(np.exp(ell - ell[j])) for j in range(m)])
    keep = w >= 10 * np.finfo(float).eps
    w, theta = w[keep] / w[keep].sum(), theta[keep]
    t = np.sum(w * theta)
    k = np.mean(np.log1p(-t * y))
    sigma = -k / t
    k = (n * k + 10 * 0.5) / (n + 10)  # the weakly informative prior
    if np.isfinite(k):
        for i, pos in enumerate(in_tail):
            p = (i + 0.5) / n
            with np.errstate(over="ignore"):
                q = sigma / k * (np.float64(1 - p) ** -k - 1)
            out[pos] = min(math.log(q + math.exp(cutoff)), 0.0)
    return out - logsumexp(out), k


def _assert_same_smoothing(raw, got, ref):
    """Equal smoothed weights; tied raw weights in the tail may swap values, so compare sorted
    values and check that the smoothing keeps the raw order."""
    np.testing.assert_allclose(np.sort(got), np.sort(ref), rtol=0, atol=1e-9)
    order = np.lexsort((got, raw))  # by raw weight, ties by smoothed weight
    ordered = got[order]
    assert np.all(np.isneginf(ordered) == np.isneginf(raw[order]))
    assert np.all(np.diff(ordered[np.isfinite(ordered)]) >= 0)


def _assert_same_khat(got, ref, name, abs_tol=1e-12):
    if np.isfinite(ref):
        assert got == pytest.approx(ref, rel=1e-9, abs=abs_tol), name
    else:
        assert got == ref, name


def _cancellation(lw: np.ndarray) -> float:
    """How far a k-hat fitted to ``exp(x) - exp(cutoff)`` (the published code's and arviz's
    excesses) can sit from one fitted to the exact excesses: each excess ``y_i`` carries an
    absolute rounding error of about ``eps exp(0)`` from the two exponentials (each below 1),
    a relative one of ``eps / y_i``, and k-hat, a mean of ``log1p(-b y_i)`` with ``b`` of the
    order ``1 / y``, moves by about the largest relative error. Eight times that bound: tiny
    for weights that differ (``y`` of order 1), about 2e-3 for weights 1e-12 apart, whose
    excesses keep four significant digits in the subtracted form."""
    K = len(lw)
    x = np.sort(lw - lw.max())[::-1]
    M = math.ceil(min(0.2 * K, 3 * math.sqrt(K)))
    cutoff = max(x[M], math.log(np.finfo(float).tiny))
    y = math.exp(cutoff) * np.expm1(x[:M][x[:M] > cutoff] - cutoff)
    if len(y) == 0 or not np.all(np.isfinite(y)):
        return 0.0
    return 8 * np.finfo(float).eps / y.min()


@pytest.mark.parametrize("K", [5, 20, 25, 100, 1000, 3000])
def test_psis_smooth_equals_plain_reference(K):
    rows = _rows(K, seed=K)
    lw = np.stack(list(rows.values()))
    smoothed, khat = psis_smooth(lw)
    assert smoothed.shape == lw.shape and khat.shape == (len(rows),)
    for i, name in enumerate(rows):
        ref_lw, ref_k = _reference_psis(lw[i])
        _assert_same_khat(khat[i], ref_k, name)
        _assert_same_smoothing(lw[i], smoothed[i], ref_lw)
    if K >= 100:  # the cases the test is meant to tell apart
        k = dict(zip(rows, khat))
        assert k["heavy"] > 0.7 and k["very heavy"] > 0.7
        assert k["light (bounded weights)"] < 0 and k["light (Gaussian weights)"] < 0.5
        assert k["all tied"] == math.inf and k["-inf all but 3"] == math.inf


@pytest.mark.parametrize("K", [100, 900, 2500])
def test_psis_smooth_equals_installed_arviz(K):
    """arviz 0.2x: ``psislw(log_weights, reff=1)`` has the same conventions: every row agrees.
    arviz 1.x (``arviz_stats``): ``psislw`` takes log-likelihoods and smooths their negation, so
    it is called on ``-log_weights``; its tail has ``floor`` (not ``ceil``) of the same length,
    no floor on the cutoff, and NaN or an error where the tail is tied, so rows are compared
    where the two conventions coincide: K whose tail lengths agree, and rows whose ``M + 1``
    largest weights are distinct and finite -- heavy, light, tied below the cutoff and a few
    -inf weights among them."""
    rows = _rows(K, seed=K + 1)
    lw = np.stack(list(rows.values()))
    smoothed, khat = psis_smooth(lw)
    if not ARVIZ_1:
        import arviz as az

        with np.errstate(all="ignore"):  # arviz's fit overflows on the extreme rows
            ref_lw, ref_k = az.psislw(lw.copy(), reff=1.0)
        names = list(rows)
    else:
        from arviz_stats.base import array_stats

        m_1x = int(math.floor(3 * math.sqrt(K)) if K > 225 else math.floor(K / 5))
        if m_1x != tail_length(K):
            pytest.skip(f"arviz 1.x's tail for K={K} is {m_1x}, PSIS's {tail_length(K)}")
        names = [n for n in rows if _distinct_finite_tail(rows[n])]
        assert {"heavy", "light (bounded weights)", "ties below the cutoff", "-inf few"} <= set(names)
        idx = [list(rows).index(n) for n in names]
        ref_lw, ref_k = array_stats.psislw(-lw[idx], r_eff=1.0)
        lw, smoothed, khat = lw[idx], smoothed[idx], khat[idx]
        # the pitfall: without the negation it fits the other tail. Weights U ~ uniform have a
        # bounded tail (k < 0); 1 / U, which it would fit instead, has a Pareto tail (k = 1, shrunk a little by the prior).
        light = names.index("light (bounded weights)")
        _, wrong_k = array_stats.psislw(lw[light], r_eff=1.0)
        assert khat[light] < 0 and wrong_k > 0.5
    for i, name in enumerate(names):  # arviz subtracts exponentials (_cancellation)
        _assert_same_khat(khat[i], ref_k[i], name, abs_tol=max(1e-12, _cancellation(lw[i])))
        _assert_same_smoothing(lw[i], smoothed[i], ref_lw[i])


def _distinct_finite_tail(row):
    top = np.sort(row)[::-1][: tail_length(len(row)) + 1]
    return bool(np.all(np.isfinite(top)) and np.all(np.diff(top) < 0)
                and top[-1] - top[0] > math.log(np.finfo(float).tiny))


def test_excess_over_the_cutoff_keeps_every_digit():
    """The GPD is fitted to ``exp(x) - exp(cutoff)``. For weights 1e-12 apart the plain
    difference keeps about 4 significant digits (the fresh-clone k-hat mismatches of numpy 2.4,
    whose SIMD exp differs from libm's by an ulp, came from there); :func:`excess` must match
    50-digit arithmetic to a few ulps, where the plain difference is off by > 1e-6."""
    from inference.psis import excess

    mpmath = pytest.importorskip("mpmath")  # installed with torch (sympy needs it)

    mpmath.mp.dps = 50
    rng = np.random.default_rng(1)
    x = np.sort(rng.standard_normal(40) * 1e-12)
    x -= x.max()
    cutoff = float(x[0])
    tail = x[1:]
    exact = np.array([float(mpmath.exp(mpmath.mpf(t)) - mpmath.exp(mpmath.mpf(cutoff)))
                      for t in tail])
    np.testing.assert_allclose(excess(tail, cutoff), exact, rtol=1e-14)
    plain = np.exp(tail) - np.exp(cutoff)
    assert np.max(np.abs(plain / exact - 1)) > 1e-6
