"""Matplotlib views of :func:`inference.compare` tables and fit histories, and :func:`ellipse`
(the ``n``-sd contour of a 2-D Gaussian) for drawing posteriors and guides."""

from __future__ import annotations

import math
from typing import Optional

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
    with the exact reference as a horizontal line where there is one."""
    fig, ax = _axes(ax, figsize=(6, 4))
    s = summarise(df[df["K"] > 0])
    for method, part in s.groupby("method"):
        ax.errorbar(part["K"], part["estimate"], yerr=2 * part["stderr"].fillna(0), marker="o",
                    capsize=3, label=method)
    ref = df["reference"].dropna()
    if len(ref):
        ax.axhline(float(ref.iloc[0]), color="k", ls="--", lw=1, label="exact")
    _zoom(ax, s, float(ref.iloc[0]) if len(ref) else None)
    ax.set_xscale("log")
    ax.set_xlabel("K (samples)")
    ax.set_ylabel("log p(x) estimate")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def _zoom(ax, summary: pd.DataFrame, reference: Optional[float]) -> None:
    """Frame the guide-based estimates and the reference: prior Monte Carlo at small K can be
    orders of magnitude lower and would flatten everything else. Points below are noted."""
    guided = summary[summary["method"].isin(["elbo", "is-guide"])]["estimate"]
    values = list(guided) + ([reference] if reference is not None else [])
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 1e-3 * max(1.0, abs(hi)))
    bottom = lo - 1.5 * pad
    ax.set_ylim(bottom, hi + 0.5 * pad)
    below = summary[summary["estimate"] < bottom]
    if len(below):
        ax.annotate(f"{len(below)} point(s) below the frame: "
                    + ", ".join(f"{m} K={k}" for m, k in zip(below["method"], below["K"])),
                    xy=(0.02, 0.02), xycoords="axes fraction", fontsize=7, color="0.3")


def plot_diagnostics(df: pd.DataFrame, title: Optional[str] = None):
    """Effective sample size (as a fraction of K) and PSIS k-hat vs K per method."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    s = summarise(df[df["K"] > 0])
    drawn = 0
    for method, part in s.groupby("method"):
        a1.plot(part["K"], part["ess"] / part["K"], marker="o", label=method)
        finite = part[part["khat"].map(math.isfinite)]
        a2.plot(finite["K"], finite["khat"], marker="o", label=method)
        drawn += len(finite)
    a1.set(xscale="log", xlabel="K", ylabel="ESS / K", title="effective sample size")
    a2.axhline(0.7, color="r", ls=":", lw=1, label="k = 0.7")
    a2.set(xlabel="K", ylabel="k-hat (max over datapoints)", title="PSIS k-hat")
    if drawn:  # a k-hat needs K >= 5 and a tail of more than 4 weights
        a2.set_xscale("log")
    else:
        a2.text(0.5, 0.5, "no k-hat: too few samples\nto fit the tail (K < 25)",
                transform=a2.transAxes, ha="center", va="center", color="0.4")
    a1.legend()
    a2.legend()
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
    wall-clock seconds (left) and evaluations of ``log p(x, z)`` per datapoint (right, from each
    estimator's :meth:`~inference.estimators.Estimator.evaluations` at ``options``; methods
    whose cost is adaptive are left out there). Estimators are compared at equal cost: lower
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
        if method in estimators.names():
            cost = [estimators.get(method).evaluations(int(k), **(options or {})) for k in s["K"]]
            if all(c is not None for c in cost):
                a2.plot(cost, s["abs_error"], marker="o", color=line.get_color(), label=method)
    a1.set(xscale="log", yscale="log", xlabel="seconds", ylabel="|estimate - exact| (nats)",
           title="error vs wall-clock time")
    a2.set(xscale="log", xlabel="evaluations of log p(x, z) per datapoint",
           title="error vs likelihood evaluations")
    a1.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
