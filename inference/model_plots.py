"""Each zoo model's own views for the compare report: ``MODEL_PLOTS[name](entry, data)``
returns ``{file stem: matplotlib figure}`` (latent spaces, decoded grids, clusters, weights)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List

import numpy as np
import pyro
import torch

from inference.teaching import responsibilities


def _guide_site(entry, data, site: str):
    """The guide's distribution at ``site`` on the full data (params from the param store)."""
    tr = pyro.poutine.trace(pyro.poutine.block(entry.guide, hide_types=["param"])).get_trace(*data)
    return tr.nodes[site]["fn"]


def _deep_latent_plots(entry, data):
    """Latent means coloured by digit class, decoded z grid, reconstructions."""
    import matplotlib.pyplot as plt

    (x,) = data
    figs = {}
    z = _guide_site(entry, data, "z").mean.reshape(len(x), -1)
    labels = entry.load_labels()[: len(x)].numpy() if hasattr(entry, "load_labels") else None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    zn = z.numpy()
    sc = ax.scatter(zn[:, 0], zn[:, min(1, zn.shape[1] - 1)], s=6, c=labels, cmap="tab10",
                    vmin=-0.5, vmax=9.5)
    if labels is not None:
        fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set(xlabel="z[0]", ylabel="z[1]", title=f"{entry.name}: guide means of the data")
    fig.tight_layout()
    figs["latent"] = fig

    side = int(round(math.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        return figs
    if z.shape[1] == 2:  # decoder means on a grid of normal quantiles, a gap between tiles
        n = 12
        axis = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.04, 0.96, n))
        grid = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="xy"), -1).reshape(-1, 2)
        tiles = torch.nn.functional.pad(entry.mean_pixels(grid).reshape(n, n, side, side), (0, 1, 0, 1))
        imgs = tiles.permute(0, 2, 1, 3).reshape(n * (side + 1), n * (side + 1))
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(imgs.numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[], title=f"{entry.name}: decoder means over a z grid "
                                           "(z[0] left to right, z[1] bottom to top)")
        fig.tight_layout()
        figs["decoded"] = fig
    m = min(10, len(x))
    pairs = (x[:m].numpy(), entry.mean_pixels(z[:m]).numpy())
    fig, axes = plt.subplots(2, m, figsize=(1.1 * m, 2.6), squeeze=False)
    for i in range(m):
        for row, imgs in enumerate(pairs):
            axes[row, i].imshow(imgs[i].reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].set(xticks=[], yticks=[])
    axes[0, 0].set_ylabel("data")
    axes[1, 0].set_ylabel("decoded")
    fig.suptitle(f"{entry.name}: reconstructions (decoder mean at the guide mean)")
    figs["reconstructions"] = fig
    return figs


def _gmm_plots(entry, data):
    """Data (first two dims) coloured by most probable component, component ellipses and
    the fitted mixture density (marginal in those dims)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    (x,) = data
    p = entry.params_from_guide()
    w, locs = p["weights"].cpu(), p["locs"].cpu()
    sd = p["variances"].cpu().sqrt().expand_as(locs)
    comp = torch.distributions.Normal(locs[:, :2], sd[:, :2])
    lab = responsibilities(x, p).argmax(-1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if x.shape[1] < 2:
        g = torch.linspace(float(x.min()) - 1, float(x.max()) + 1, 400)
        dens = (w * comp.log_prob(g[:, None]).exp()).sum(-1)
        ax.hist(x[:, 0].numpy(), bins=30, density=True, color="0.8")
        ax.plot(g.numpy(), dens.numpy(), "k")
        ax.set(xlabel="x[0]", title="gmm: fitted density")
        return {"clusters": fig}
    lo, hi = x[:, :2].min(0).values - 1, x[:, :2].max(0).values + 1
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 150), torch.linspace(lo[1], hi[1], 150),
                            indexing="xy")
    g = torch.stack([gx, gy], -1)[..., None, :]
    dens = (w.log() + comp.log_prob(g).sum(-1)).logsumexp(-1).exp()
    ax.contour(gx.numpy(), gy.numpy(), dens.numpy(), levels=8, colors="0.6", linewidths=0.7)
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), c=lab.numpy(), cmap="tab10", vmin=-0.5,
               vmax=9.5, s=10)
    for k, ((mx, my), (sx, sy), wk) in enumerate(zip(locs[:, :2].tolist(), sd[:, :2].tolist(),
                                                   w.tolist())):
        for r in (1, 2):
            ax.add_patch(Ellipse((mx, my), 2 * r * sx, 2 * r * sy, fill=False,
                                 color=plt.get_cmap("tab10")(k % 10), lw=1))
        ax.plot(mx, my, "x", color="k", ms=8)
        ax.annotate(f"w={wk:.2f}", (mx, my), xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.set(xlabel="x[0]", ylabel="x[1]", title="gmm: clusters (1 and 2 sd) and fitted density")
    fig.tight_layout()
    return {"clusters": fig}


def _map_l2_plots(entry, data):
    """Guide mean +- 2 sd per weight, the exact posterior's, and scikit-learn's Ridge."""
    import matplotlib.pyplot as plt

    X, y = data
    q = _guide_site(entry, data, "w")
    mean, sd = q.mean.reshape(-1).numpy(), q.variance.reshape(-1).clamp(min=0).sqrt().numpy()
    idx = np.arange(len(mean), dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(idx - 0.12, mean, yerr=2 * sd, fmt="o", capsize=3, label="guide mean +- 2 sd")
    if entry.likelihood == "gaussian":
        pm, pc = entry.posterior(X, y)
        ax.errorbar(idx + 0.12, pm.numpy(), yerr=2 * pc.diagonal().sqrt().numpy(), fmt="s",
                    color="k", capsize=3, ms=4, label="exact posterior mean +- 2 sd")
    if entry.ridge_alpha is not None:
        from sklearn.linear_model import Ridge

        coef = Ridge(alpha=entry.ridge_alpha, fit_intercept=False).fit(X.numpy(), y.numpy()).coef_
        ax.plot(idx, coef, "x", color="r", ms=9, mew=2,
                label=f"Ridge(alpha={entry.ridge_alpha:.3g})")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xticks(idx, _feature_names(entry, len(mean)), rotation=45)
    ax.set(ylabel="weight", title="map_l2: weights vs scikit-learn Ridge, posterior intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return {"weights": fig}


def _feature_names(entry, p: int) -> List[str]:
    from sklearn import datasets

    names = list(getattr(datasets, f"load_{entry.dataset}")().feature_names)
    return names if len(names) == p else [f"w[{i}]" for i in range(p)]


#: The model's own views: name -> function(entry, data) -> {file stem: figure}.
MODEL_PLOTS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "vae": _deep_latent_plots,
    "dlvm": _deep_latent_plots,
    "gmm": _gmm_plots,
    "map_l2": _map_l2_plots,
}
