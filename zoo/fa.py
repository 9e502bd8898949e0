"""Factor analysis / probabilistic PCA: a latent variable model whose evidence is exact in any
latent dimension.

Generative story (``L`` factors, ``D`` observed dimensions, ``N`` datapoints) [1, 2]::

    z_n ~ Normal(0, I_L)                                   n = 1..N
    x_n ~ Normal(W z_n + mu, diag(psi))

``W [D, L]``, ``mu [D]`` and ``psi [D]`` are parameters (point-estimated by SVI, not latents),
so every latent is local. Integrating ``z_n`` out gives the marginal [2, Sec. 12.2.4]

    x_n ~ Normal(mu, W W^T + diag(psi))

-- the exact ``log p(x_n)`` per datapoint for any ``L`` (:meth:`FactorAnalysis.log_evidence`),
the reference 2-D quadrature cannot give -- and the exact Gaussian posterior

    z_n | x_n ~ Normal(S W^T Psi^-1 (x_n - mu), S),    S = (I_L + W^T Psi^-1 W)^-1

(:meth:`FactorAnalysis.posterior`). ``psi = sigma^2 1`` is probabilistic PCA [3].

Guides, both amortized and linear in ``x_n``, ``m_n = A x_n + b``:

* ``"amortized"`` (default): ``q(z_n | x_n) = Normal(m_n, C C^T)`` with one learned
  lower-triangular ``C`` -- it contains the exact posterior (:meth:`set_exact_guide`);
* ``"meanfield"``: ``q(z_n | x_n) = Normal(m_n, diag(s^2))`` -- it cannot represent the
  posterior's correlations, a deliberately imperfect guide.

Default data: scikit-learn's 8x8 digits [4] as continuous 64-D data, pixels ``/ 16`` (in
[0, 1]). ``psi`` is floored at ``min_noise`` (three digits pixels are always 0).

References:
    [1] D. J. Bartholomew (1987). Latent Variable Models and Factor Analysis. Griffin.
    [2] C. M. Bishop (2006). Pattern Recognition and Machine Learning. Springer.
    [3] M. E. Tipping, C. M. Bishop (1999). Probabilistic principal component analysis. JRSS B.
    [4] E. Alpaydin, C. Kaynak (1998). Optical Recognition of Handwritten Digits. UCI.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from zoo.base import QUICK, Data, Job, Simulated, ZooModel, check_file, check_rows, register


@register
class FactorAnalysis(ZooModel):
    """Factor analysis ``x_n ~ N(W z_n + mu, diag(psi))``, ``z_n ~ N(0, I_L)`` (module docstring).

    :param int latent_dim: ``L`` (default 10).
    :param int data_dim: ``D`` (64 for the default digits).
    :param str guide: ``"amortized"`` (full shared covariance) or ``"meanfield"`` (diagonal).
    :param float min_noise: floor of every ``psi`` (a variance).
    :param float init_scale: initial scale of ``W``'s entries and of the guide's sds.
    :param int seed: seed of ``W``'s initial values (the global RNG is not touched).
    """

    name = "fa"
    summary = "factor analysis / PPCA: exact log p(x_n) and posterior in any latent dimension"
    default_data = "scikit-learn's 8x8 digits, 1797 x 64, pixels / 16 (continuous)"
    references = ("closed-form evidence per datapoint", "closed-form posterior")
    # AIS on 500 digits with 20 temperatures: on all 1797 with 100 temperatures each seed's
    # estimate at K = 100 would take a large share of the whole job's time.
    job = Job(steps=2000, lr=0.02, batch_size=256, scope="local", num_samples=(1, 10, 100),
              methods=("exact", "elbo", "is-guide", "is-prior", "ais"), subset=500,
              estimate_options={"temperatures": 20},
              test_methods=("exact", "is-guide"),  # ais: minutes an estimate
              why="closed-form per-datapoint evidence in 10 latent dimensions: the reference "
                  "quadrature cannot give; AIS against importance sampling",
              quick=dict(QUICK, steps=300, subset=200, estimate_options={"temperatures": 10}))

    def __init__(self, latent_dim: int = 10, data_dim: int = 64, guide: str = "amortized",
                 min_noise: float = 1e-2, init_scale: float = 0.1, seed: int = 0):
        if guide not in ("amortized", "meanfield"):
            raise ValueError(f"guide={guide!r}: use 'amortized' or 'meanfield'")
        if int(latent_dim) < 1 or int(data_dim) < 1:
            raise ValueError(f"latent_dim={latent_dim}, data_dim={data_dim}: both must be >= 1")
        if not (min_noise > 0 and init_scale > 0):
            raise ValueError("min_noise and init_scale must be positive")
        self.latent_dim, self.data_dim = int(latent_dim), int(data_dim)
        self.guide_type, self.min_noise = guide, float(min_noise)
        self.init_scale, self.seed = float(init_scale), int(seed)

    def __repr__(self) -> str:
        return f"zoo.get('fa', latent_dim={self.latent_dim}, guide={self.guide_type!r})"

    # ---------------------------------------------------------------- model and guide
    def _params(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        D, L = self.data_dim, self.latent_dim

        def init_W():
            g = torch.Generator().manual_seed(self.seed)
            return (self.init_scale * torch.randn(D, L, generator=g)).to(x)

        W = pyro.param("W", init_W)
        mu = pyro.param("mu", lambda: x.mean(0).detach().clone())
        psi = pyro.param("psi", lambda: x.var(0).detach().clamp(min=2 * self.min_noise),
                         constraint=constraints.greater_than(self.min_noise))
        return W, mu, psi

    def model(self, x: torch.Tensor) -> None:
        W, mu, psi = self._params(x)
        prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim]).to_event(1)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1) as idx:
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ W.T + mu, psi.sqrt()).to_event(1), obs=x[idx])

    def guide(self, x: torch.Tensor) -> None:
        L = self.latent_dim
        A = pyro.param("A", lambda: x.new_zeros(L, self.data_dim))
        b = pyro.param("b", lambda: x.new_zeros(L))
        with pyro.plate(self.data_plate, x.shape[0], dim=-1) as idx:
            loc = x[idx] @ A.T + b
            if self.guide_type == "amortized":
                tril = pyro.param("C", lambda: self.init_scale * torch.eye(L, dtype=x.dtype,
                                  device=x.device), constraint=constraints.lower_cholesky)
                q = dist.MultivariateNormal(loc, scale_tril=tril)
            else:
                sd = pyro.param("s", lambda: x.new_full((L,), self.init_scale),
                                constraint=constraints.positive)
                q = dist.Normal(loc, sd).to_event(1)
            pyro.sample("z", q)

    # ---------------------------------------------------------------- exact references
    def fitted(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W, mu, psi)`` from Pyro's param store, detached, in float64."""
        return tuple(pyro.param(n).detach().double() for n in ("W", "mu", "psi"))

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_n)`` per datapoint, ``[N]`` (their sum is ``log p(X)``): the marginal
        ``N(mu, W W^T + diag(psi))`` at the params in Pyro's param store, in float64."""
        self.check_data(x)
        W, mu, psi = self._fitted_for(x)
        cov = W @ W.T + torch.diag(psi)
        return dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x.double())

    def posterior(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior of ``z_n``: means ``[N, L]`` and the shared covariance ``[L, L]``
        (float64), at the params in Pyro's param store."""
        self.check_data(x)
        W, mu, psi = self._fitted_for(x)
        Wp = W / psi.unsqueeze(-1)  # Psi^-1 W
        prec = torch.eye(self.latent_dim, dtype=W.dtype, device=W.device) + W.T @ Wp
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        return (x.double() - mu) @ Wp @ cov, cov

    def set_exact_guide(self, x: torch.Tensor) -> None:
        """Set the ``"amortized"`` guide's params to the exact posterior (its family contains
        it): ``A = S W^T Psi^-1``, ``b = -A mu``, ``C = chol(S)``."""
        if self.guide_type != "amortized":
            raise ValueError("only the 'amortized' guide contains the exact posterior")
        W, mu, psi = self._fitted_for(x)
        _, cov = self.posterior(x)
        A = cov @ (W / psi.unsqueeze(-1)).T
        store = pyro.get_param_store()
        for name, value, constraint in (("A", A, constraints.real), ("b", -A @ mu, constraints.real),
                                        ("C", torch.linalg.cholesky(cov), constraints.lower_cholesky)):
            store.__delitem__(name) if name in store else None
            pyro.param(name, value.to(x), constraint=constraint)

    def set_params(self, W: torch.Tensor, mu: torch.Tensor, psi: torch.Tensor) -> None:
        """Put ``W``, ``mu``, ``psi`` in Pyro's param store (e.g. those :meth:`simulate` drew)."""
        store = pyro.get_param_store()
        for name in ("W", "mu", "psi"):
            if name in store:
                del store[name]
        pyro.param("W", W.clone())
        pyro.param("mu", mu.clone())
        pyro.param("psi", psi.clone(), constraint=constraints.greater_than(self.min_noise))

    def _fitted_for(self, x: torch.Tensor):
        if "W" not in pyro.get_param_store():
            with pyro.poutine.block():
                self._params(x)  # the initial values, as the model would create them
        return self.fitted()

    # ---------------------------------------------------------------- data
    def load_data(self, path: Optional[str] = None, device: Any = "cpu") -> Data:
        """The digits (``[1797, 64]``, pixels / 16), or a CSV of ``D`` numeric columns at
        ``path`` (an optional header line), used as is."""
        if path is None:
            from sklearn.datasets import load_digits

            x = torch.as_tensor(load_digits().data / 16.0, dtype=torch.get_default_dtype())
        else:
            import warnings

            import numpy as np

            expected = f"a numeric CSV of {self.data_dim} columns"
            check_file(path, expected, text=True)
            try:
                with warnings.catch_warnings():  # an empty table is refused below instead
                    warnings.simplefilter("ignore")
                    table = np.genfromtxt(path, delimiter=",", skip_header=0, ndmin=2)
                x = torch.as_tensor(table, dtype=torch.get_default_dtype())
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: not {expected} ({err})")
            if len(x) and torch.isnan(x[0]).all():
                x = x[1:]  # a header line
            if len(x) == 0:
                raise ValueError(f"{path} holds no data rows; expected {expected}")
        x = x.to(device)
        self.check_data(x)
        return (x,)

    def check_data(self, *data: torch.Tensor) -> None:
        check_rows(data, "fa", self.data_dim, "build the model with the matching data_dim")

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, mean: bool = False) -> Data:
        """``num`` points from the fitted model: ``z ~ N(0, I_L)``, then
        ``x ~ N(W z + mu, diag(psi))`` (with ``mean``: ``W z + mu``), as ``(x,)``."""
        g = torch.Generator().manual_seed(seed)
        W, mu, psi = (t.detach().cpu() for t in self.fitted())
        z = torch.randn(num, self.latent_dim, generator=g, dtype=W.dtype)
        x = z @ W.T + mu
        if not mean:
            x = x + psi.sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
        return (x.float(),)

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """``W ~ N(0, 1)``, ``mu ~ N(0, 1)``, ``psi ~ Uniform(0.1, 0.5)``, ``z_n`` from the prior and
        ``x_n`` from the likelihood, from a private ``torch.Generator(seed)``. ``params`` holds
        the latents ``z`` and the parameters ``W, mu, psi`` (see :meth:`set_params`)."""
        g = torch.Generator().manual_seed(seed)
        D, L = self.data_dim, self.latent_dim
        W = torch.randn(D, L, generator=g)
        mu = torch.randn(D, generator=g)
        psi = 0.1 + 0.4 * torch.rand(D, generator=g)
        z = torch.randn(num_data, L, generator=g)
        x = z @ W.T + mu + psi.sqrt() * torch.randn(num_data, D, generator=g)
        return Simulated(data=(x,), params={"z": z, "W": W, "mu": mu, "psi": psi})

    # ---------------------------------------------------------------- report view
    def views(self, *data) -> Dict[str, Any]:
        """The report's view: the loadings ``W[:, j]`` as images (square ``D``), and the noise
        variances ``psi``."""
        import matplotlib.pyplot as plt

        W, _, psi = self._fitted_for(data[0])
        m = min(self.latent_dim, 10)
        side = int(round(self.data_dim ** 0.5))
        fig, axes = plt.subplots(1, m + 1, figsize=(1.3 * (m + 1), 1.8), squeeze=False)
        for j in range(m):
            ax = axes[0, j]
            if side * side == self.data_dim:
                lim = float(W[:, j].abs().max()) or 1.0
                ax.imshow(W[:, j].reshape(side, side).cpu().numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
                ax.set(xticks=[], yticks=[])
            else:
                ax.bar(range(self.data_dim), W[:, j].cpu().numpy())
                ax.set(xlabel="feature", ylabel="loading")
            ax.set_title(f"W[:, {j}]", fontsize=7)
        axes[0, m].plot(psi.cpu().numpy(), ".")
        axes[0, m].set_title("psi", fontsize=7)
        axes[0, m].set_xlabel("feature", fontsize=6)
        axes[0, m].set_ylabel("noise variance", fontsize=6)
        fig.suptitle("fa: loadings and noise variances")
        fig.tight_layout()
        return {"loadings": fig}
