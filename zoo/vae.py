"""Variational autoencoder: the deep latent variable model with an amortized guide.

Same generative model as :mod:`zoo.dlvm` (Kingma & Welling [1], see
:class:`zoo._deep.DeepLatentModel`), but ``q(z_n | x_n)`` is computed from ``x_n`` by an
encoder network shared by all datapoints, trained jointly with the decoder by the
reparameterized ELBO gradient [1, 2].
"""

from __future__ import annotations

from typing import Dict, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from zoo._deep import DeepLatentModel, mlp
from zoo.base import register


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
