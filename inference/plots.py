"""Matplotlib views of :func:`inference.compare` tables and fit histories, and :func:`ellipse`
(the ``n``-sd contour of a 2-D Gaussian) for drawing posteriors and guides."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from inference.compare import summarise


def _axes(ax, **kw):
    if ax is None:
        fig, ax = plt.subplots(**kw)
        return fig, ax
    return ax.figure, ax


def plot_estimates(df: pd.DataFrame, ax=None, title: Optional[str] = None):
    """Estimate of log p(x) vs K per method (mean over seeds, error bars: 2 x mean stderr),
    with the exact reference as a horizontal line where there is one. Methods whose every point
    falls below the frame are named in a note instead of the legend."""
    fig, ax = _axes(ax, figsize=(7.5, 4))
    s = summarise(df[df["K"] > 0])
    ref = df["reference"].dropna()
    reference = float(ref.iloc[0]) if len(ref) else None
    bottom = _zoom(ax, s, reference)
    for method, part in s.groupby("method"):
        label = method if bottom is None or (part["estimate"] >= bottom).any() else None
        ax.errorbar(part["K"], part["estimate"], yerr=2 * part["stderr"].fillna(0), marker="o",
                    capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="exact reference")
    ax.set_xscale("log")
    ax.set_xlabel("K (samples per estimate)")
    n = _num_datapoints(df)
    ax.set_ylabel(f"log p(x), nats summed over {n} datapoints" if n else "log p(x), nats")
    if title:
        ax.set_title(title)
    ax.legend(title="error bars: 2 stderr", fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def _num_datapoints(df: pd.DataFrame) -> Optional[int]:
    ok = df[(df["per_datapoint"] != 0) & df["per_datapoint"].notna()]
    return int(round(ok["estimate"].iloc[0] / ok["per_datapoint"].iloc[0])) if len(ok) else None


def _zoom(ax, summary: pd.DataFrame, reference: Optional[float]) -> Optional[float]:
    """Frame the guide-based estimates and the reference: prior Monte Carlo at small K can be
    orders of magnitude lower and would flatten everything else. Points below are noted under
    the axes; returns the frame's bottom (``None`` if nothing to frame)."""
    guided = summary[summary["method"].isin(["elbo", "is-guide"])]["estimate"]
    values = list(guided) + ([reference] if reference is not None else [])
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 1e-3 * max(1.0, abs(hi)))
    bottom = lo - 1.5 * pad
    ax.set_ylim(bottom, hi + 0.5 * pad)
    below = summary[summary["estimate"] < bottom]
    if len(below):
        ax.annotate("below the frame: " + ", ".join(
                        f"{m} K={k} ({v:.4g})"
                        for m, k, v in zip(below["method"], below["K"], below["estimate"])),
                    xy=(0.0, -0.22), xycoords="axes fraction", fontsize=7, color="0.3",
                    va="top", wrap=True)
    return bottom


def plot_diagnostics(df: pd.DataFrame, title: Optional[str] = None):
    """Effective sample size (as a fraction of K) and PSIS k-hat vs K per method. Methods that
    share their weights (elbo and is-guide both weigh the same guide draws) are drawn once, and
    k-hat is on a scale linear within [-1, 1] and logarithmic beyond, against its threshold
    ``min(1 - 1/log10(K), 0.7)``."""
    from inference.weights import khat_threshold

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    s = summarise(df[df["K"] > 0])
    local = "scope" in df and (df["scope"] == "local").any()
    groups: dict = {}
    for method, part in s.groupby("method", sort=False):
        values = np.nan_to_num(part[["K", "ess", "khat"]].to_numpy(dtype=float), nan=-1.0, posinf=-2.0)
        key = tuple(np.round(values, 9).ravel())
        groups.setdefault(key, (part, []))[1].append(method)
    drawn = 0
    for part, methods in groups.values():
        label = " = ".join(methods) + (" (same draws)" if len(methods) > 1 else "")
        a1.plot(part["K"], part["ess"] / part["K"], marker="o", label=label)
        finite = part[part["khat"].map(math.isfinite)]
        if len(finite):
            a2.plot(finite["K"], finite["khat"], marker="o", label=label)
        drawn += len(finite)
    per = " (mean over datapoints)" if local else ""
    a1.set(xscale="log", xlabel="K (samples per estimate)", ylabel=f"ESS / K{per}",
           title="effective sample size", ylim=(0, 1.05))
    all_k = sorted(set(s["K"].astype(int)))
    a1.set_xticks(all_k, [str(k) for k in all_k])
    a1.minorticks_off()
    a2.set(xlabel="K (samples per estimate)",
           ylabel="k-hat (worst datapoint)" if local else "k-hat", title="PSIS k-hat")
    if drawn:  # a k-hat needs K >= 5 and a tail of more than 4 weights
        ks = sorted(set(s["K"][s["khat"].map(math.isfinite)].astype(int)))
        grid = np.geomspace(ks[0] / 1.5, ks[-1] * 1.5, 50)
        a2.plot(grid, [khat_threshold(int(k)) for k in grid], "r:", lw=1.5,
                label="threshold min(1 - 1/log10 K, 0.7)")
        finite = s["khat"][s["khat"].map(math.isfinite)]
        a2.set_yscale("symlog", linthresh=1.0, linscale=2.0)
        top = max(1.5, float(finite.max()) * 2)
        a2.set_ylim(min(-0.6, float(finite.min()) - 0.1), top)
        ticks = [t for t in (-0.5, 0, 0.5, 0.7, 1, 2, 5, 10, 20, 50, 100, 1000) if t <= top]
        a2.set_yticks(ticks, [f"{t:g}" for t in ticks])
        a2.set_xscale("log")
        a2.set_xlim(ks[0] / 1.6, ks[-1] * 1.6)
        a2.set_xticks(ks, [str(k) for k in ks])
        a2.minorticks_off()
        a2.legend(fontsize=8)
    else:
        a2.text(0.5, 0.5, "no k-hat: too few samples\nto fit the tail (K < 25)",
                transform=a2.transAxes, ha="center", va="center", color="0.4")
    a1.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_losses(losses: pd.DataFrame, ax=None, title: Optional[str] = None):
    """Training curve: loss per datapoint (negative ELBO) per step, with a running mean."""
    fig, ax = _axes(ax, figsize=(6, 3.5))
    y = losses["loss_per_datapoint"]
    ax.plot(losses["step"], y, alpha=0.3, lw=0.8, label="per step")
    ax.plot(losses["step"], y.rolling(max(1, len(y) // 50), min_periods=1).mean(), label="running mean")
    ax.set(xlabel="step", ylabel="-ELBO / datapoint")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def ellipse(mean: Any, cov: Any, num_sd: float = 2.0, num_points: int = 100) -> np.ndarray:
    """Points ``[num_points, 2]`` on the ``num_sd`` standard-deviation contour of a 2-D Gaussian
    with ``mean [2]`` and covariance ``cov [2, 2]`` (for plots)."""
    m = np.asarray(torch.as_tensor(mean).detach().cpu(), dtype=np.float64)
    c = np.asarray(torch.as_tensor(cov).detach().cpu(), dtype=np.float64)
    if m.shape != (2,) or c.shape != (2, 2):
        raise ValueError(f"need mean [2] and cov [2, 2], got {m.shape} and {c.shape}")
    vals, vecs = np.linalg.eigh(c)
    t = np.linspace(0, 2 * np.pi, num_points)
    circle = np.stack([np.cos(t), np.sin(t)], -1)
    return m + num_sd * (circle * np.sqrt(np.clip(vals, 0, None))) @ vecs.T



def plot_cost(df: pd.DataFrame, options: Optional[dict] = None, title: Optional[str] = None):
    """Absolute error against the exact reference vs cost, per method (mean over seeds per K):
    wall-clock seconds (left) and evaluations of ``log p(x, z)`` per datapoint (right: the
    rows' own ``evaluations`` column where there is one, as ``ppzoo bench`` records, else each
    estimator's :meth:`~inference.estimators.Estimator.evaluations` at ``options``; methods
    whose cost is not known are left out there). Estimators are compared at equal cost: lower
    and to the left is better. ``None`` without a reference."""
    from inference import estimators

    rows = df[(df["K"] > 0) & df["error"].notna()]
    if not len(rows):
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for method, part in rows.groupby("method"):
        g = part.assign(abs_error=part["error"].abs()).groupby("K", sort=True)
        s = g.agg(seconds=("seconds", "mean"), abs_error=("abs_error", "mean")).reset_index()
        line, = a1.plot(s["seconds"], s["abs_error"], marker="o", label=method)
        if "evaluations" in part.columns and part["evaluations"].notna().all():
            cost = list(g["evaluations"].mean())
        elif method in estimators.names():
            cost = [estimators.get(method).evaluations(int(k), **(options or {})) for k in s["K"]]
        else:
            cost = [None]
        if all(c is not None for c in cost):
                a2.plot(cost, s["abs_error"], marker="o", color=line.get_color(), label=method)
    a1.set(xscale="log", yscale="log", xlabel="seconds", ylabel="|estimate - exact| (nats)",
           title="error vs wall-clock time")
    a2.set(xscale="log", xlabel="evaluations of log p(x, z) per datapoint",
           ylabel="|estimate - exact| (nats)", title="error vs likelihood evaluations")
    a1.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(cals: Dict[str, Any], title: Optional[str] = None, clip: float = 6.0):
    """One method's calibration on several targets (``{target: inference.Calibration}``):
    the histogram of its z-scores (all targets together; vouched and not vouched stacked)
    against the N(0, 1) density, |z| beyond ``clip`` counted at the edges (left); and the
    coverage of ``|z| < 1, 2, 3`` against its nominal rate per target, over the vouched seeds,
    with exact 95% intervals, on the diagonal where the stderr is right (right)."""
    from inference.calibrate import LEVELS, nominal

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    zs = [(np.clip(c.z, -clip, clip), c.vouched) for c in cals.values()]
    z = np.concatenate([v for v, _ in zs]) if zs else np.zeros(0)
    ok = np.concatenate([w for _, w in zs]) if zs else np.zeros(0, bool)
    finite = np.isfinite(z)
    bins = np.linspace(-clip, clip, 49)
    a1.hist([z[finite & ok], z[finite & ~ok]], bins=bins, stacked=True, density=False,
            label=["vouched", "not vouched"], color=["C0", "0.7"])
    grid = np.linspace(-clip, clip, 200)
    width = bins[1] - bins[0]
    a1.plot(grid, finite.sum() * width * np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), "k--",
            lw=1.2, label="N(0, 1)")
    a1.set(xlabel=f"z = (estimate - truth) / stderr (clipped at ±{clip:g})", ylabel="seeds",
           title=f"z over {len(cals)} target(s), {int(finite.sum())} estimates")
    if (~finite).any():
        a1.annotate(f"{int((~finite).sum())} with no z (NaN stderr)", xy=(0.02, 0.95),
                    xycoords="axes fraction", fontsize=8, va="top")
    a1.legend(fontsize=8)
    x = np.array([nominal(c) for c in LEVELS])
    a2.plot([0.6, 1.0], [0.6, 1.0], "k:", lw=1)
    for i, (name, c) in enumerate(cals.items()):
        cov = c.coverages(vouched=True)
        if cov[0].n == 0:
            continue
        rate = np.array([v.rate for v in cov])
        err = np.array([[v.rate - v.low for v in cov], [v.high - v.rate for v in cov]])
        a2.errorbar(x + 0.004 * (i - len(cals) / 2), rate, yerr=err, marker="o", capsize=2,
                    lw=1, label=name)
    a2.set(xlabel="nominal rate of |z| < 1, 2, 3", ylabel="observed (vouched seeds)",
           title="coverage vs nominal", xlim=(0.6, 1.02), ylim=(0, 1.02))
    a2.set_xticks(x, [f"{v:.3f}" for v in x])
    if len(a2.get_legend_handles_labels()[0]):
        a2.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
