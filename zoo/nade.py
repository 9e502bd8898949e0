"""Autoregressive models of binary images with an exact likelihood: NADE and its two baselines.

By the chain rule every distribution over ``D`` binary pixels factorises as

    p(x) = prod_d p(x_d | x_<d),

and a fully general table of those conditionals has ``2^D - 1`` numbers. Three families, from
cheapest to richest, each a Pyro model with no latent variables (so its guide is empty and
``log p(x)`` is exact: every estimator returns it with zero spread):

``kind="independent"``
    ``p(x_d = 1) = sigmoid(b_d)``: independent pixels, ``D`` parameters -- the baseline every
    model must beat.
``kind="fvsbn"``
    the fully-visible sigmoid belief net, a logistic autoregression [2]:
    ``p(x_d = 1 | x_<d) = sigmoid(b_d + sum_{j<d} W_dj x_j)``, ``D (D + 1) / 2`` parameters.
``kind="nade"``
    NADE [1]: a hidden layer shared across the conditionals,
    ``h_d = sigmoid(c + W[:, <d] x_<d)``, ``p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d)``;
    ``2 D H + D + H`` parameters, and all ``D`` conditionals of a datapoint in ``O(D H)`` by a
    running sum over pixels.

``fvsbn`` and ``independent`` are also zoo entries of their own (the same classes with the
kind fixed), so that the compare job fits all three for its baseline ladder.

Sampling is pixel by pixel (:meth:`AutoregressiveImages.sample`), vectorized over images.
Default data: the binarised scikit-learn digits, as for ``dlvm`` and ``vae``.

References

[1] Larochelle, Murray (2011), The Neural Autoregressive Distribution Estimator, AISTATS.
[2] Frey (1998), Graphical Models for Machine Learning and Digital Communication, MIT Press.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from zoo._deep import load_digits, load_mnist
from zoo.base import QUICK, Job, Simulated, ZooModel, check_rows, register

KINDS = ("nade", "fvsbn", "independent")


class _Conditionals(nn.Module):
    """The logits of ``p(x_d = 1 | x_<d)`` for every pixel ``d`` of ``x [..., D]``."""

    def __init__(self, kind: str, data_dim: int, hidden: int, seed: int):
        super().__init__()
        self.kind = kind
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.b = nn.Parameter(torch.zeros(data_dim))
            if kind == "fvsbn":
                self.W = nn.Parameter(torch.zeros(data_dim, data_dim))
            elif kind == "nade":
                self.W = nn.Parameter(torch.randn(hidden, data_dim) / data_dim**0.5)
                self.c = nn.Parameter(torch.zeros(hidden))
                self.V = nn.Parameter(torch.randn(data_dim, hidden) / hidden**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "independent":
            return self.b.expand(x.shape)
        if self.kind == "fvsbn":
            return self.b + x @ torch.tril(self.W, -1).T
        # a_d = c + sum_{j<d} W[:, j] x_j: an exclusive running sum over pixels, [..., D, H]
        contrib = x.unsqueeze(-1) * self.W.T
        a = self.c + contrib.cumsum(-2) - contrib
        return self.b + (torch.sigmoid(a) * self.V).sum(-1)


@register
class AutoregressiveImages(ZooModel):
    """An autoregressive model of binary images with an exact likelihood (module docstring).

    :param str kind: ``"nade"`` (default), ``"fvsbn"`` or ``"independent"``.
    :param int hidden: NADE's hidden units H.
    :param int data_dim: D, pixels per image (64 for the digits, 784 for MNIST).
    :param int seed: seed of the initial weights (the global RNG is not touched).
    """

    name = "nade"
    summary = "autoregressive binary images, exact likelihood: NADE, FVSBN or independent pixels"
    default_data = "scikit-learn's 8x8 digits, binarised at pixel >= 8 of 16 (as dlvm/vae)"
    references = ("exact: the likelihood itself (no latents)",)
    job = Job(steps=2000, lr=0.01, batch_size=128, scope="local", methods=("exact",),
              why="no latent variables: log p(x) is exact, the ladder's explicit-density rung",
              quick=dict(QUICK, steps=300, subset=300))

    def __init__(self, kind: str = "nade", hidden: int = 64, data_dim: int = 64, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; use one of {', '.join(KINDS)}")
        if int(hidden) < 1 or int(data_dim) < 1:
            raise ValueError(f"hidden={hidden}, data_dim={data_dim}: both must be positive")
        self.kind, self.hidden, self.data_dim, self.seed = kind, int(hidden), int(data_dim), int(seed)
        self.net = _Conditionals(kind, self.data_dim, self.hidden, self.seed)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "options", {}).items())
        return f"zoo.get({self.name!r}{', ' if options else ''}{options})"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def model(self, x: torch.Tensor) -> None:
        pyro.module("nade", self.net)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1) as idx:
            xb = x[idx]
            pyro.sample("x", dist.Bernoulli(logits=self.net(xb)).to_event(1), obs=xb)

    def guide(self, x: torch.Tensor) -> None:
        """No latent variables: nothing to infer."""

    def networks(self) -> Dict[str, nn.Module]:
        return {"nade": self.net}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_n)`` per image, ``[N]``."""
        return dist.Bernoulli(logits=self.net(x)).to_event(1).log_prob(x)

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, mean: bool = False):
        """``num`` images drawn pixel by pixel from the fitted model, as ``(x,)`` (a private
        generator: the global RNG is untouched). With ``mean``: each pixel's probability
        ``p(x_d = 1 | x_<d)`` along the drawn images."""
        g = torch.Generator().manual_seed(seed)
        dev = self.net.b.device
        x = torch.zeros(num, self.data_dim, device=dev)
        probs = torch.zeros(num, self.data_dim)
        for d in range(self.data_dim):  # each pixel needs the ones before it
            probs[:, d] = torch.sigmoid(self.net(x)[:, d]).cpu()
            x[:, d] = torch.bernoulli(probs[:, d], generator=g).to(dev)
        return (probs,) if mean else (x.cpu(),)

    def load_data(self, path: Optional[str] = None, device: Any = "cpu"):
        """The binarised digits (default) or a local MNIST file (``data_dim=784``), as ``(x,)``."""
        x = load_digits(True) if path is None else load_mnist(path, True)
        self.check_data(x)
        return (x.to(device),)

    def check_data(self, *data: torch.Tensor) -> None:
        x = check_rows(data, self.name, self.data_dim, "flatten images to rows")
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(f"{self.name} needs binary 0/1 float pixels; binarise first, e.g. "
                             "(x > 0.5).float()")

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """Images drawn from the model at its initial weights (seeded by ``seed``)."""
        fresh = AutoregressiveImages(self.kind, self.hidden, self.data_dim, self.seed)
        return Simulated(data=fresh.sample(num_data, seed), params={})

    def views(self, *data) -> Dict[str, Any]:
        """The report's view: random draws from the fitted model next to data."""
        import matplotlib.pyplot as plt

        (x,) = data
        side = int(round(self.data_dim**0.5))
        if side * side != self.data_dim:
            return {}
        (draws,) = self.sample(10, seed=0)
        fig, axes = plt.subplots(2, 10, figsize=(11, 2.6), squeeze=False)
        for i in range(10):
            for row, imgs in enumerate((x[:10], draws)):
                if i < len(imgs):
                    axes[row, i].imshow(imgs[i].reshape(side, side).numpy(), cmap="gray_r",
                                        vmin=0, vmax=1)
                axes[row, i].set(xticks=[], yticks=[])
        axes[0, 0].set_ylabel("data")
        axes[1, 0].set_ylabel("drawn")
        fig.suptitle(f"nade ({self.kind}): data and draws, pixel by pixel, from the fitted model")
        return {"samples": fig}


# ------------------------------------------------- the ladder's two lower rungs, as zoo entries
def _entry_of_kind(cls_name: str, kind: str, summary: str, job: Job) -> type:
    """``zoo.get("nade", kind=kind)`` as a zoo entry of its own, named ``kind``: the compare
    job fits it beside NADE (its options: ``data_dim``, ``seed``)."""

    def __init__(self, data_dim: int = 64, seed: int = 0):
        AutoregressiveImages.__init__(self, kind, 1, data_dim, seed)

    return register(type(cls_name, (AutoregressiveImages,), {
        "__init__": __init__,
        "__doc__": f'``zoo.get("nade", kind="{kind}")`` as a zoo entry of its own.',
        "name": kind, "summary": summary, "job": job, "__module__": __name__}))


FVSBN = _entry_of_kind(
    "FVSBN", "fvsbn", "fully-visible sigmoid belief net: a logistic autoregression on binary pixels",
    Job(steps=2000, lr=0.01, batch_size=128, scope="local", methods=("exact",),
        why="logistic autoregression, D (D + 1) / 2 weights: the ladder's middle rung",
        quick=dict(QUICK, steps=300, subset=300)))
IndependentPixels = _entry_of_kind(
    "IndependentPixels", "independent",
    "independent Bernoulli pixels, D parameters: the baseline every image model must beat",
    Job(steps=1000, lr=0.05, batch_size=128, scope="local", methods=("exact",),
        why="independent pixels: the ladder's lowest rung", quick=dict(QUICK, steps=300, subset=300)))
