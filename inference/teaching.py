"""Helpers for the coursework notebooks (``notebooks/``): measurements the notebooks show, kept
here so that the notebooks hold only the story and the plots, and so that they are tested.

* **MAP path** -- :func:`map_path` fits ``map_l2``'s MAP guide over a grid of prior scales;
  :func:`ridge_path` is scikit-learn's ridge path at the matching ``alpha = noise^2 / s^2`` [1].
* **Gradient variance** -- :func:`gradient_draws` repeats an ELBO's gradient estimate at fixed
  parameters (no optimiser step); :func:`gradient_variance` summarises the draws per param. With
  enumerated discrete sites (``TraceEnum_ELBO``) the discrete sum is exact; sampled discrete
  sites (``Trace_ELBO``) add a score-function term [2, 3].
* **Plots** -- :func:`ellipse`, the ``n``-sd contour of a 2-D Gaussian.
* **Mixtures** -- :func:`em_gmm` (scikit-learn's EM, diagonal covariances [4]),
  :func:`responsibilities` ``p(z_n = k | x_n, params)`` under ``gmm``'s parameters, and
  :func:`match_components` (the component permutation closest to a reference).
* **Amortization** -- :func:`fit_local_guides` fits a free Gaussian ``q(z_n)`` per datapoint to
  a fitted ``vae``'s frozen decoder: the best the encoder could have done within the same
  family, so ``ELBO(local) - ELBO(encoder)`` is the amortization gap [5].
* **Latent space** -- :func:`encode`, :func:`decode`, :func:`interpolate` for ``vae``/``dlvm``.
* **Anomaly scores** -- :func:`roc` (ROC curve and its area, ties counted one half), and two
  ways to make out-of-distribution images: :func:`flip_pixels`, :func:`random_images`.

References

[1] Hoerl & Kennard (1970), Ridge regression: biased estimation for nonorthogonal problems.
[2] Williams (1992), Simple statistical gradient-following algorithms for connectionist
    reinforcement learning (the score-function estimator).
[3] Ranganath, Gerrish, Blei (2014), Black Box Variational Inference, AISTATS.
[4] Dempster, Laird, Rubin (1977), Maximum likelihood from incomplete data via the EM algorithm.
[5] Cremer, Li, Duvenaud (2018), Inference Suboptimality in Variational Autoencoders, ICML.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

import zoo
from inference.svi import LOSSES, FitResult, fit
from inference.target import as_data, as_target, resolve_device


def _coef_columns(p: int):
    return [f"w{j}" for j in range(p)]


# ------------------------------------------------------------------------------ MAP = ridge
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
        entry = zoo.get("map_l2", prior_scale=float(s), noise=noise, guide="map")
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": (lr_end / lr) ** (1.0 / steps)})
        res = fit(entry, (X, y), steps=steps, optim=optim, seed=seed, device=device,
                  progress=False, clear=(i == 0 or not warm_start))
        w = pyro.param("w_loc").detach().cpu().double().tolist()
        rows.append([float(s), entry.ridge_alpha, *w, float(res.losses["loss"].iloc[-1])])
    return pd.DataFrame(rows, columns=["prior_scale", "alpha", *_coef_columns(X.shape[1]), "loss"])


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

    :param loss: ``"trace"`` or ``"traceenum"``; default the zoo entry's ``loss``.
    :param num_particles: particles per estimate (vectorized).
    :param params: names to keep (default: every param that receives a gradient).
    :returns: ``{name: float64 tensor [num_draws, *shape]}`` of gradients with respect to the
        unconstrained values.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 to measure a variance, got {num_draws}")
    tgt = as_target(target)
    data = as_data(tgt, data, device)
    loss = loss or (tgt.entry.loss if tgt.entry is not None else "trace")
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


# ----------------------------------------------------------------------------------- mixtures
def em_gmm(x: torch.Tensor, K: int, *, seed: int = 0, n_init: int = 5,
           tol: float = 1e-8, max_iter: int = 2000) -> Dict[str, Any]:
    """Maximum-likelihood Gaussian mixture with diagonal covariances by EM [4], scikit-learn's
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


# ------------------------------------------------------------------------------ amortization
def _deep_options(entry) -> Dict[str, Any]:
    return dict(latent_dim=entry.latent_dim, hidden=entry.hidden, data_dim=entry.data_dim,
                likelihood=entry.likelihood, sigma0=entry.sigma0, seed=entry.seed)


def encode(entry, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The amortized guide's mean and standard deviation of ``q(z | x)`` for a ``vae``, each
    ``[N, L]`` (no gradient)."""
    if not hasattr(entry, "encoder"):
        raise ValueError(f"{entry!r} has no encoder; encode needs an amortized guide (zoo 'vae')")
    dev = next(entry.encoder.parameters()).device
    with torch.no_grad():
        return entry.encode(x.to(dev))


def decode(entry, z: torch.Tensor) -> torch.Tensor:
    """Mean pixel values ``E[x | z]`` under the decoder of a ``vae``/``dlvm`` (Bernoulli: the
    probabilities ``sigmoid(logits)``; Gaussian: the mean), for ``z`` of shape ``[..., L]``."""
    dev = next(entry.decoder.parameters()).device
    with torch.no_grad():
        return entry.mean_pixels(z.to(dev))


def interpolate(entry, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decoded means along the straight line between the encoder means of two images:
    ``[steps, D]``, first row ``decode(mu(x_a))``, last ``decode(mu(x_b))``."""
    mu, _ = encode(entry, torch.stack([x_a, x_b]))
    t = torch.linspace(0, 1, steps, device=mu.device, dtype=mu.dtype)[:, None]
    return decode(entry, (1 - t) * mu[0] + t * mu[1])


def fit_local_guides(
    vae,
    data: Any,
    *,
    steps: int = 500,
    lr: float = 0.02,
    num_particles: int = 1,
    init: str = "encoder",
    seed: int = 0,
    device: Any = "cpu",
) -> Tuple[Any, FitResult]:
    """Per-datapoint Gaussian guides ``q(z_n) = N(m_n, diag(s_n^2))`` fitted to the fitted
    ``vae``'s decoder, which is copied and frozen: a ``dlvm`` entry with the same architecture
    whose decoder does not train. Full-batch SVI with Adam.

    ``init="encoder"`` starts every ``q(z_n)`` at the encoder's ``q(z | x_n)``, so the fit can
    only improve on the amortized guide; ``init="prior"`` starts at ``dlvm``'s default.

    :returns: ``(dlvm_entry, fit_result)``; the fitted ``z_loc``/``z_scale`` are in Pyro's
        param store, so ``inference.estimate(dlvm_entry, data, ...)`` evaluates them.
    """
    if init not in ("encoder", "prior"):
        raise ValueError(f"init={init!r}: use 'encoder' or 'prior'")
    data = data if isinstance(data, (tuple, list)) else (data,)
    (x,) = data
    local = zoo.get("dlvm", **_deep_options(vae))
    local.decoder.load_state_dict(vae.decoder.state_dict())
    local.decoder.requires_grad_(False).eval()  # not registered with pyro.module: frozen
    dev = resolve_device(device)
    local.to(dev)
    pyro.clear_param_store()
    if init == "encoder":
        vae.to(dev)
        loc, scale = encode(vae, x.to(dev))
        pyro.param("z_loc", loc.clone())
        pyro.param("z_scale", scale.clone(), constraint=dist.constraints.positive)
    res = fit(local, data, steps=steps, lr=lr, num_particles=num_particles, seed=seed,
              device=dev, progress=False, clear=False)
    return local, res


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


def flip_pixels(x: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Binary images with a random ``fraction`` of each image's pixels flipped (exactly
    ``round(fraction * D)`` per image), drawn with a private generator."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    k = int(round(fraction * d))
    idx = torch.rand(n, d, generator=g).argsort(-1)[:, :k].to(x.device)
    out = x.clone()
    out.scatter_(1, idx, 1 - out.gather(1, idx))
    return out


def random_images(num: int, like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``num`` binary images of independent pixels, each pixel on with the probability of the
    same pixel in ``like`` (``[N, D]`` binary): matches the average image, has no strokes."""
    g = torch.Generator().manual_seed(seed)
    p = like.detach().float().mean(0).cpu().expand(num, -1)
    return torch.bernoulli(p, generator=g).to(like)


__all__ = [
    "ridge_path", "map_path", "ellipse", "gradient_draws", "gradient_variance", "em_gmm",
    "responsibilities", "match_components", "encode", "decode", "interpolate",
    "fit_local_guides", "ROC", "roc", "flip_pixels", "random_images",
]
