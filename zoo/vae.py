"""Variational autoencoder: the deep latent variable model with an amortized guide.

Same generative model as :mod:`zoo.dlvm` (Kingma & Welling [1], see
:class:`zoo._deep.DeepLatentModel`), but ``q(z_n | x_n)`` is computed from ``x_n`` by an
encoder network shared by all datapoints, trained jointly with the decoder by the
reparameterized ELBO gradient [1, 2].

Notebook helpers: :func:`encode`, :func:`decode` and :func:`interpolate` (the latent space),
:func:`flip_pixels` and :func:`random_images` (out-of-distribution images), and
:func:`fit_local_guides` -- free per-datapoint Gaussians fitted to the vae's frozen decoder, the
best the encoder could have done within the same family, so ``ELBO(local) - ELBO(encoder)`` is
the amortization gap [3].

[3] Cremer, Li, Duvenaud (2018), Inference Suboptimality in Variational Autoencoders, ICML.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

import inference
from zoo._deep import DeepLatentModel, decode, flip_pixels, mlp, random_images  # noqa: F401
from zoo.base import QUICK, Job, register
from zoo.dlvm import fit_guides


@register
class VAE(DeepLatentModel):
    """Variational autoencoder with a Gaussian encoder.

    Generative story (Kingma & Welling [1])::

        z_n ~ Normal(0, I_L)                                  n = 1..N
        x_n ~ Bernoulli(logits = decoder(z_n))                (independent pixels)

    Guide (amortized, reparameterized [1, 2])::

        (mu, s) = encoder(x_n)
        z_n ~ Normal(mu, diag(sigma^2)),  sigma = softplus(s) + min_scale

    The encoder is an MLP ``D -> reversed(hidden) -> 2 L`` (tanh), registered as
    ``pyro.module("encoder", ...)``; ``min_scale`` floors sigma so that the guide
    cannot collapse to a point and the ELBO stays finite.

    Args:
        latent_dim: L, dimension of z (default 2: plots, and the evidence by quadrature).
        hidden: widths of the hidden layers (tanh) of the decoder, mirrored in the
            encoder; default ``(128,)``.
        data_dim: D, pixels per datapoint: 64 for the default digits, 784 for MNIST.
        likelihood: ``"bernoulli"`` (binary pixels, default) or ``"gaussian"``
            (``x_n ~ Normal(sigmoid(decoder(z_n)), sigma0^2 I)``: a squared-error
            reconstruction term, pixels in [0, 1]).
        sigma0: standard deviation of the Gaussian likelihood (default 0.1).
        seed: seed of the decoder's and encoder's initial weights (the global RNG is
            not touched).
        min_scale: floor added to the encoder's standard deviations (default 1e-3).

    References:
        [1] D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
        [2] D. J. Rezende, S. Mohamed, D. Wierstra. Stochastic Backpropagation and
            Approximate Inference in Deep Generative Models. ICML 2014.
    """

    name = "vae"
    summary = "variational autoencoder: deep latent variable model with an amortized MLP encoder"
    # No ais in the job: chains for every one of the 1797 digits over the K grid and three
    # seeds would cost more than the rest of the job (what AIS costs on this model:
    # benchmarks/RESULTS.md, section 5). Its tests run it on 10 digits.
    job = Job(steps=5000, lr=0.01, batch_size=128, scope="local",
              methods=("exact", "elbo", "is-guide", "is-prior"),
              why="amortized encoder; per-datapoint evidence, exact reference by 2-D quadrature",
              quick=dict(QUICK, steps=300, batch_size=100, subset=300,
                         estimate_options={"quadrature_points": 32}))

    def __init__(
        self,
        latent_dim: int = 2,
        hidden: Sequence[int] = (128,),
        data_dim: int = 64,
        likelihood: str = "bernoulli",
        sigma0: float = 0.1,
        seed: int = 0,
        min_scale: float = 1e-3,
    ):
        super().__init__(latent_dim, hidden, data_dim, likelihood, sigma0, seed)
        if min_scale <= 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        self.min_scale = float(min_scale)
        # seed + 1: the encoder's draws differ from the decoder's.
        sizes = (self.data_dim, *reversed(self.hidden), 2 * self.latent_dim)
        self.encoder = mlp(sizes, seed=self.seed + 1)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1) as idx:
            loc, scale = self.encode(x[idx])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor):
        """The guide's mean and standard deviation of ``q(z | x)``, each ``[..., L]``."""
        loc, s = self.encoder(x).split(self.latent_dim, dim=-1)
        return loc, softplus(s) + self.min_scale

    def networks(self) -> Dict[str, nn.Module]:
        return {"decoder": self.decoder, "encoder": self.encoder}


# ------------------------------------------------------ notebook helpers: latent space, the gap
def encode(entry, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The amortized guide's mean and standard deviation of ``q(z | x)`` for a ``vae``, each
    ``[N, L]`` (no gradient)."""
    if not hasattr(entry, "encoder"):
        raise ValueError(f"{entry!r} has no encoder; encode needs an amortized guide (zoo 'vae')")
    dev = next(entry.encoder.parameters()).device
    with torch.no_grad():
        return entry.encode(x.to(dev))


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
) -> Tuple[Any, "inference.FitResult"]:
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
    start = None
    if init == "encoder":
        vae.to(inference.target.resolve_device(device))
        start = encode(vae, data[0].to(inference.target.resolve_device(device)))
    return fit_guides(vae, data, steps=steps, lr=lr, num_particles=num_particles, init=start,
                      seed=seed, device=device)
