"""Bayesian linear / logistic regression with a Gaussian prior: MAP is L2-regularised MLE.

(Longer than 300 lines on purpose: a zoo model is one file that holds everything about it --
model, guides, data, simulator, exact references, report views, compare settings and notebook
helpers.)

Generative story (``P`` features, ``N`` datapoints, no intercept -- the data are standardised)::

    w   ~ Normal(0, s^2 I_P)
    y_n ~ Normal(x_n . w, noise^2)           (likelihood="gaussian")
    y_n ~ Bernoulli(logits = x_n . w)        (likelihood="logistic")

MAP = ridge.  -log p(w | y) = ||y - X w||^2 / (2 noise^2) + ||w||^2 / (2 s^2) + const; times
2 noise^2 this is ridge's ||y - X w||^2 + alpha ||w||^2 with alpha = noise^2 / s^2 [1].
Logistic: -log p(w | y) = sum_n logloss_n + ||w||^2 / (2 s^2); times s^2 this is scikit-learn's
LogisticRegression objective ||w||^2 / 2 + C sum_n logloss_n with C = s^2 [2].

Gaussian likelihood, exact references [3, Sec. 3.3]: posterior covariance
``S = (X^T X / noise^2 + I / s^2)^-1``, mean ``S X^T y / noise^2``; evidence
``y ~ Normal(0, s^2 X X^T + noise^2 I_N)``.

References:
    [1] Hoerl & Kennard (1970), Ridge regression: biased estimation for nonorthogonal problems.
    [2] scikit-learn, ``sklearn.linear_model.LogisticRegression`` (l2 penalty).
    [3] Bishop (2006), Pattern Recognition and Machine Learning.
    [4] Efron, Hastie, Johnstone & Tibshirani (2004), Least angle regression (diabetes data).
    [5] Street, Wolberg & Mangasarian (1993), Wisconsin diagnostic breast cancer data.

Notebook helpers: :func:`map_path` fits the MAP guide over a grid of prior scales;
:func:`ridge_path` is scikit-learn's ridge path at the matching ``alpha = noise^2 / s^2`` [1].
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import inference
from zoo.base import (
    QUICK, Job, Simulated, ZooModel, check_file, check_float32, check_tensors, register,
)

_DATASETS = {"diabetes": 10, "breast_cancer": 30}  # name -> number of features


def _standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(0)) / a.std(0)


@register
class MapL2(ZooModel):
    """Bayesian linear (or logistic) regression, ``w ~ N(0, s^2 I)``; MAP is ridge regression.

    Data are ``(X, y)`` with ``X`` of shape ``[N, P]`` and ``y`` of shape ``[N]``. The weights
    ``w`` (site ``"w"``, event dim 1) are the only latent; datapoints live in the ``"data"`` plate.

    :param float prior_scale: prior standard deviation ``s`` of every weight.
    :param float noise: observation noise sd (fixed, known; gaussian likelihood only). The default
        0.7 is about the residual sd of least squares on the standardised diabetes data (0.69).
    :param str likelihood: ``"gaussian"`` (linear regression) or ``"logistic"`` (``y`` in {0, 1}).
    :param str guide: ``"map"`` -- point mass ``Delta(w_loc)``, so SVI computes the MAP estimate,
        i.e. ridge regression with ``alpha = noise^2 / s^2`` (see :attr:`ridge_alpha`) or l2
        logistic regression with scikit-learn's ``C = s^2`` (see :attr:`sklearn_C`);
        ``"gaussian"`` -- full-covariance ``MultivariateNormal(w_loc, scale_tril=diag(w_scale)
        w_unit_tril)`` (``w_unit_tril`` lower triangular with unit diagonal), which contains the
        exact posterior of the gaussian likelihood; ``"meanfield"`` --
        diagonal ``Normal(w_loc, w_scale)``. Initialisation is deterministic: ``w_loc = 0``,
        scales ``init_scale * s``.
    :param str dataset: default data set for :meth:`load_data`: ``"diabetes"`` (gaussian, the
        default for it) or ``"breast_cancer"`` (the default for logistic).
    :param int num_features: ``P``; ``None`` infers it from the data (and :meth:`simulate` uses the
        default data set's ``P``). When set, :meth:`check_data` enforces it.
    :param float init_scale: initial guide scale, as a fraction of ``prior_scale``.

    The gaussian likelihood has exact references: :meth:`posterior` and :meth:`log_evidence`
    (closed form). The logistic one has none (its ``references`` is empty).
    """

    name = "map_l2"
    summary = "Bayesian linear/logistic regression, Gaussian prior; MAP = ridge / L2 logistic"
    default_data = "scikit-learn diabetes (442 x 10, standardised) or breast cancer (569 x 30)"
    references = ("closed-form evidence", "closed-form posterior")
    symmetries = {}
    # 3000 steps of 16 particles reach the optimum: the ELBO 0.005 nats under log p(X), guide
    # sds 0.95-1.02 of the exact ones (1500 steps of one particle stopped 0.8 nats short).
    job = Job(options={"guide": "gaussian"}, steps=3000, lr=0.05, lr_decay=0.02,
              num_particles=16, scope="global", test_fraction=0.0,
              methods=("exact", "elbo", "is-guide", "is-prior", "ais"),
              why="full-covariance Gaussian guide: its family contains the exact posterior, and "
                  "the evidence has a closed form",
              quick=dict(QUICK, steps=400, methods=("exact", "elbo", "is-guide", "is-prior")))

    def __init__(
        self,
        prior_scale: float = 1.0,
        noise: float = 0.7,
        likelihood: str = "gaussian",
        guide: str = "map",
        dataset: Optional[str] = None,
        num_features: Optional[int] = None,
        init_scale: float = 0.1,
    ):
        if likelihood not in ("gaussian", "logistic"):
            raise ValueError(f"likelihood={likelihood!r}: use 'gaussian' or 'logistic'")
        if guide not in ("map", "gaussian", "meanfield"):
            raise ValueError(f"guide={guide!r}: use 'map', 'gaussian' or 'meanfield'")
        if dataset is None:
            dataset = "diabetes" if likelihood == "gaussian" else "breast_cancer"
        if dataset not in _DATASETS:
            raise ValueError(f"dataset={dataset!r}: use one of {sorted(_DATASETS)}")
        if likelihood == "logistic" and dataset == "diabetes":
            raise ValueError("the diabetes target is continuous: use likelihood='gaussian' or"
                             " dataset='breast_cancer'")
        if not (prior_scale > 0 and noise > 0 and init_scale > 0):
            raise ValueError("prior_scale, noise and init_scale must be positive")
        self.prior_scale = float(prior_scale)
        self.noise = float(noise)
        self.likelihood = likelihood
        self.guide_type = guide
        self.dataset = dataset
        self.num_features = num_features
        self.init_scale = float(init_scale)
        if likelihood == "logistic":
            self.references = ()

    # ---------------------------------------------------------------- model and guide
    def model(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        P = X.shape[-1]
        s = torch.as_tensor(self.prior_scale, dtype=X.dtype, device=X.device)
        w = pyro.sample("w", dist.Normal(torch.zeros_like(s), s).expand([P]).to_event(1))
        with pyro.plate(self.data_plate, X.shape[0], dim=-1) as idx:
            eta = (X[idx] * w).sum(-1)  # w may be [K, 1, P] under a particle plate
            if self.likelihood == "gaussian":
                fn = dist.Normal(eta, torch.as_tensor(self.noise, dtype=X.dtype, device=X.device))
            else:
                fn = dist.Bernoulli(logits=eta)
            pyro.sample("y", fn, obs=y[idx])
        return w

    def guide(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        P = X.shape[-1]
        scale = self.init_scale * self.prior_scale
        loc = pyro.param("w_loc", lambda: X.new_zeros(P))
        if self.guide_type == "map":
            q = dist.Delta(loc).to_event(1)
        else:
            sd = pyro.param("w_scale", lambda: X.new_full((P,), scale),
                            constraint=constraints.positive)
            if self.guide_type == "gaussian":
                # the scale and the correlations learn apart, as in Pyro's AutoMultivariateNormal:
                # a free lower-Cholesky factor at lr 0.05 lets its off-diagonal entries run away
                # on the correlated diabetes features (condition number 1e11, loss -3e18).
                unit = pyro.param("w_unit_tril", lambda: torch.eye(P, dtype=X.dtype,
                                  device=X.device), constraint=constraints.unit_lower_cholesky)
                q = dist.MultivariateNormal(loc, scale_tril=sd.unsqueeze(-1) * unit)
            else:
                q = dist.Normal(loc, sd).to_event(1)
        return pyro.sample("w", q)

    def guide_moments(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The fitted guide's mean ``[P]`` and covariance ``[P, P]`` of ``w``, read from Pyro's
        param store (zero covariance for the point mass)."""
        loc = pyro.param("w_loc").detach()
        if self.guide_type == "map":
            return loc, torch.zeros(loc.shape * 2, dtype=loc.dtype, device=loc.device)
        sd = pyro.param("w_scale").detach()
        if self.guide_type == "gaussian":
            tril = sd.unsqueeze(-1) * pyro.param("w_unit_tril").detach()
            return loc, tril @ tril.T
        return loc, torch.diag(sd**2)

    # ---------------------------------------------------------------- exact references
    @property
    def ridge_alpha(self) -> Optional[float]:
        """``alpha`` of ``sklearn.linear_model.Ridge(fit_intercept=False)`` whose solution is the
        MAP: ``noise^2 / s^2``. ``None`` for the logistic likelihood (see :attr:`sklearn_C`)."""
        return self.noise**2 / self.prior_scale**2 if self.likelihood == "gaussian" else None

    @property
    def sklearn_C(self) -> Optional[float]:
        """``C`` of ``sklearn.linear_model.LogisticRegression(fit_intercept=False)`` (l2) whose
        solution is the MAP: ``s^2``. ``None`` for the gaussian likelihood."""
        return self.prior_scale**2 if self.likelihood == "logistic" else None

    def posterior(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior ``(mean [P], covariance [P, P])`` of ``w`` (gaussian likelihood),
        computed in float64 and returned in ``X``'s dtype."""
        if self.likelihood != "gaussian":
            raise NotImplementedError("the logistic posterior has no closed form")
        self.check_data(X, y)
        Xd, yd = X.double(), y.double()
        prec = Xd.T @ Xd / self.noise**2
        prec = prec + torch.eye(X.shape[1], dtype=Xd.dtype, device=X.device) / self.prior_scale**2
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        mean = cov @ (Xd.T @ yd) / self.noise**2
        return mean.to(X.dtype), cov.to(X.dtype)

    def log_evidence(self, X: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Exact ``log p(y | X)`` (gaussian likelihood): ``y ~ N(0, s^2 X X^T + noise^2 I)``,
        computed in float64 and returned in ``X``'s dtype. ``None`` for the logistic likelihood."""
        if self.likelihood != "gaussian":
            return None
        self.check_data(X, y)
        Xd, yd = X.double(), y.double()
        eye = torch.eye(X.shape[0], dtype=Xd.dtype, device=X.device)
        cov = self.prior_scale**2 * Xd @ Xd.T + self.noise**2 * eye
        return dist.MultivariateNormal(torch.zeros_like(yd), cov).log_prob(yd).to(X.dtype)

    @classmethod
    def report_notes(cls, rows, options):
        """Whether the fit reached the exact posterior, measured by this run's ELBO gap."""
        elbo = rows[(rows["method"] == "elbo") & (rows["K"] == rows["K"].max())]
        if options.get("guide") != "gaussian" or not len(elbo) or elbo["error"].isna().all():
            return []
        gap = -float(elbo["error"].mean())
        verdict = ("so the fit reached it (the gap is within a few hundredths of a nat)"
                   if gap < 0.05 else "so this fit has not reached the optimum: run more steps "
                   "or particles (the full job's 3000 steps of 16 particles get within 0.01)")
        return [f"The full-covariance guide's family contains the exact posterior, where the ELBO "
                f"equals log p(X). In this run the ELBO (K = {int(elbo['K'].iloc[0])}) sits "
                f"{gap:.3f} nats below it, {verdict}."]

    # ---------------------------------------------------------------- report view
    def views(self, *data) -> Dict[str, Any]:
        """The report's view: guide mean +- 2 sd per weight, the exact posterior's, and scikit-learn's Ridge."""
        import matplotlib.pyplot as plt

        X, y = data
        q = self.guide_distribution(data, "w")
        mean, sd = q.mean.reshape(-1).numpy(), q.variance.reshape(-1).clamp(min=0).sqrt().numpy()
        idx = np.arange(len(mean), dtype=float)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.errorbar(idx - 0.12, mean, yerr=2 * sd, fmt="o", capsize=3, label="guide mean +- 2 sd")
        if self.likelihood == "gaussian":
            pm, pc = self.posterior(X, y)
            ax.errorbar(idx + 0.12, pm.numpy(), yerr=2 * pc.diagonal().sqrt().numpy(), fmt="s",
                        color="k", capsize=3, ms=4, label="exact posterior mean +- 2 sd")
        if self.ridge_alpha is not None:
            from sklearn.linear_model import Ridge

            coef = Ridge(alpha=self.ridge_alpha, fit_intercept=False).fit(X.numpy(), y.numpy()).coef_
            ax.plot(idx, coef, "x", color="r", ms=9, mew=2,
                    label=f"Ridge(alpha={self.ridge_alpha:.3g})")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_xticks(idx, self.feature_names(len(mean)), rotation=45)
        ax.set(xlabel="feature (standardised)", ylabel="regression weight w",
               title="map_l2: weights vs scikit-learn Ridge, posterior intervals")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return {"weights": fig}

    def feature_names(self, p: int) -> List[str]:
        """Names of the default data set's ``p`` features (``w[i]`` if it has another number)."""
        from sklearn import datasets

        names = list(getattr(datasets, f"load_{self.dataset}")().feature_names)
        return names if len(names) == p else [f"w[{i}]" for i in range(p)]

    # ---------------------------------------------------------------- data
    def load_data(self, path: Optional[str] = None, device: Any = "cpu") -> Tuple[torch.Tensor, ...]:
        """The default data set, or a user's CSV at ``path`` (features then target in the last
        column, comma separated, an optional header line; used as is -- standardise it yourself).

        ``"diabetes"`` [4] (scikit-learn's bundled copy, raw units): every column of ``X`` is
        standardised to mean 0 and sd 1, and ``y`` (disease progression) is centred and divided
        by its sd, so no intercept is needed and ``noise`` is in units of ``sd(y)``.
        ``"breast_cancer"`` [5]: ``X`` standardised the same way, ``y`` in {0, 1} (1 = benign).
        """
        if path is None:
            from sklearn import datasets

            if self.dataset == "diabetes":
                Xn, yn = datasets.load_diabetes(return_X_y=True, scaled=False)
                yn = _standardise(yn)
            else:
                Xn, yn = datasets.load_breast_cancer(return_X_y=True)
            Xn = _standardise(Xn)
        else:
            Xn, yn = _read_csv(path)
        X = torch.as_tensor(Xn, dtype=torch.get_default_dtype(), device=device)
        y = torch.as_tensor(yn, dtype=torch.get_default_dtype(), device=device)
        self.check_data(X, y)
        return X, y

    def check_data(self, *data: torch.Tensor) -> None:
        if len(data) != 2:
            raise ValueError(f"{self.name} takes data (X, y), got {len(data)} tensors")
        check_tensors(data)
        X, y = data
        if X.dim() != 2:
            raise ValueError(f"X must be 2-D [N, P] (one row per datapoint), got shape "
                             f"{tuple(X.shape)}; for a single feature use X.reshape(-1, 1)")
        if y.dim() != 1:
            raise ValueError(f"y must be 1-D [N], got shape {tuple(y.shape)}; for one target "
                             f"column use y.reshape(-1)")
        if not (X.is_floating_point() and y.is_floating_point()):
            raise ValueError("X and y must be floating-point tensors; convert with .float()")
        if self.num_features is not None and X.shape[1] != self.num_features:
            raise ValueError(f"X has {X.shape[1]} features but num_features={self.num_features};"
                             " pass matching data or construct with num_features=None")
        if self.likelihood == "logistic" and not ((y == 0) | (y == 1)).all():
            raise ValueError("the logistic likelihood needs y in {0, 1}; recode the labels, e.g."
                             " y = (y == positive_label).float()")

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, mean: bool = False, X: Optional[torch.Tensor] = None):
        """Responses of the fitted regression at inputs ``X`` (default: the first ``num`` rows of
        the default data): ``w`` at the guide's mean, then ``y ~ N(X w, noise^2)`` or
        ``Bernoulli(sigmoid(X w))`` (with ``mean``: ``X w`` or ``sigmoid(X w)``), as ``(X, y)``."""
        g = torch.Generator().manual_seed(seed)
        X = (self.load_data()[0][:num] if X is None else X).detach().cpu().double()
        w = self.guide_moments()[0].detach().cpu().double()
        eta = X @ w
        if self.likelihood == "gaussian":
            y = eta if mean else eta + self.noise * torch.randn(eta.shape, generator=g, dtype=eta.dtype)
        else:
            p = torch.sigmoid(eta)
            y = p if mean else torch.bernoulli(p, generator=g)
        return X.float(), y.float()

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """``X ~ N(0, 1)`` entrywise, ``w`` from the prior, ``y`` from the likelihood, all drawn
        from a private ``torch.Generator`` seeded with ``seed`` (the global RNG is untouched).
        ``P`` is ``num_features``, else the default data set's."""
        P = self.num_features or _DATASETS[self.dataset]
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(num_data, P, generator=g)
        w = self.prior_scale * torch.randn(P, generator=g)
        eta = X @ w
        if self.likelihood == "gaussian":
            y = eta + self.noise * torch.randn(num_data, generator=g)
        else:
            y = torch.bernoulli(torch.sigmoid(eta), generator=g)
        return Simulated(data=(X, y), params={"w": w})


def _read_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    check_file(path, "a CSV of numbers with the features in the first columns and the target "
               "in the last", text=True)
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # a BOM is not data
        first = f.readline().split(",")
    try:
        [float(v) for v in first]
        header = 0
    except ValueError:  # a non-numeric first line is a header
        header = 1
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not warned about
            warnings.simplefilter("ignore")
            table = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=header,
                               encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: could not parse as a numeric CSV (comma separated, at most"
                         f" one header line, same number of columns on every row): {err}") from None
    if table.shape[0] == 0 or table.shape[1] < 2:
        raise ValueError(f"{path}: need at least one row and two columns (features, then the"
                         f" target last), got shape {table.shape}")
    check_float32(table, path)
    return table[:, :-1], table[:, -1]


# ---------------------------------------------------------------- notebook helpers: MAP = ridge
def _coef_columns(p: int):
    return [f"w{j}" for j in range(p)]


def ridge_path(X: torch.Tensor, y: torch.Tensor, alphas: Iterable[float]) -> pd.DataFrame:
    """scikit-learn's ``Ridge(alpha, fit_intercept=False)`` coefficients for each ``alpha``
    (float64): one row per alpha, columns ``alpha, w0, ..., w{P-1}``."""
    from sklearn.linear_model import Ridge

    Xn = X.detach().cpu().double().numpy()
    yn = y.detach().cpu().double().numpy()
    rows = []
    for a in alphas:
        coef = Ridge(alpha=float(a), fit_intercept=False).fit(Xn, yn).coef_
        rows.append([float(a), *coef])
    return pd.DataFrame(rows, columns=["alpha", *_coef_columns(Xn.shape[1])])


def map_path(
    X: torch.Tensor,
    y: torch.Tensor,
    prior_scales: Sequence[float],
    *,
    noise: float = 0.7,
    steps: int = 500,
    lr: float = 0.05,
    lr_end: float = 1e-4,
    warm_start: bool = True,
    seed: int = 0,
    device: Any = "cpu",
) -> pd.DataFrame:
    """MAP estimates of ``map_l2`` (gaussian likelihood, ``guide="map"``) for each prior scale,
    by full-batch SVI with Adam, the learning rate decayed geometrically from ``lr`` to
    ``lr_end``. With ``warm_start`` each fit starts from the previous scale's solution (give the
    scales in increasing order: the path then starts at ``w = 0``).

    :returns: one row per prior scale: ``prior_scale, alpha`` (= ``noise^2 / s^2``, the matching
        ridge penalty), ``w0, ..., w{P-1}`` and ``loss`` (the final negative log joint).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows = []
    pyro.clear_param_store()
    for i, s in enumerate(prior_scales):
        entry = MapL2(prior_scale=float(s), noise=noise, guide="map")
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": (lr_end / lr) ** (1.0 / steps)})
        res = inference.fit(entry, (X, y), steps=steps, optim=optim, seed=seed, device=device,
                  progress=False, clear=(i == 0 or not warm_start))
        w = pyro.param("w_loc").detach().cpu().double().tolist()
        rows.append([float(s), entry.ridge_alpha, *w, float(res.losses["loss"].iloc[-1])])
    return pd.DataFrame(rows, columns=["prior_scale", "alpha", *_coef_columns(X.shape[1]), "loss"])

