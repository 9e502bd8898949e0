"""Shared pieces of the deep latent variable models ``dlvm`` and ``vae``.

(Longer than 300 lines on purpose: a zoo model is one file that holds everything about it --
model, guides, data, simulator, exact references, report views, compare settings and notebook
helpers.)

* :func:`mlp` -- a seeded multilayer perceptron builder.
* :class:`DeepLatentModel` -- the generative model of Kingma & Welling [1]: a
  standard normal latent ``z`` per datapoint and a neural-network decoder giving the
  pixel likelihood. ``dlvm`` and ``vae`` subclass it and differ only in the guide.
* The data loaders: scikit-learn's bundled 8x8 digits (the default, no network
  needed) and a user's local MNIST file (IDX or ``.npz``).
* The models' own views for the compare report (:meth:`DeepLatentModel.views`: latent space,
  decoded grid, reconstructions) and notebook helpers: :func:`decode`, :func:`posterior_grid`
  (the exact posterior of one image on a grid), and two ways to make
  out-of-distribution images for anomaly detection, :func:`flip_pixels`, :func:`random_images`.

References:
    [1] D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
    [2] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to
        document recognition. Proc. IEEE 86(11), 1998 (MNIST; IDX format described at
        http://yann.lecun.com/exdb/mnist/).
    [3] E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine
        Learning Repository, 1998 (the 8x8 digits shipped with scikit-learn).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from zoo import base
from zoo.base import Data, Simulated, ZooModel, check_bytes, check_file, check_rows, check_size

#: Digits pixels are integers 0..16; a pixel is "on" when it is at least this value.
DIGITS_THRESHOLD = 8
#: MNIST pixels scaled to [0, 1] are "on" when strictly above this value.
MNIST_THRESHOLD = 0.5
MNIST_FORMATS = (
    "an MNIST images file in IDX format (e.g. train-images-idx3-ubyte, optionally .gz)"
    " or a .npz archive holding the images (key 'x_train', or 'x', or the first array)"
)
# IDX type codes -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def mlp(sizes: Sequence[int], seed: int = 0, activation=nn.Tanh) -> nn.Sequential:
    """Linear layers of widths ``sizes[0] -> ... -> sizes[-1]`` with ``activation``
    between them (none after the last). Weights are drawn with PyTorch's default
    initialisation under ``torch.manual_seed(seed)`` inside :func:`torch.random.fork_rng`,
    so the global RNG is left untouched. Works on inputs with any leading dims."""
    layers = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i > 0:
                layers.append(activation())
            layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- data
def load_digits(binarise: bool = True) -> torch.Tensor:
    """scikit-learn's 8x8 digits [3] as a float32 ``[1797, 64]`` tensor: binarised
    (pixel >= ``DIGITS_THRESHOLD`` = 8 of 16 -> 1, else 0) or scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    x = torch.as_tensor(_load().data, dtype=torch.float32)
    return (x >= DIGITS_THRESHOLD).float() if binarise else x / 16.0


def load_labels() -> torch.Tensor:
    """The digit classes 0..9 of :func:`load_digits`, a LongTensor ``[1797]`` (for plots)."""
    from sklearn.datasets import load_digits as _load

    return torch.as_tensor(_load().target, dtype=torch.long)


def _read_idx(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # decompressed up to the bound: a gzip bomb stops there
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflate.decompress(raw, base.MAX_DATA_BYTES + 1)
        except zlib.error as e:
            raise ValueError(f"{path}: corrupt gzip file ({e})") from None
        check_bytes(len(raw), path, "decompresses to at least" if inflate.unconsumed_tail
                    else "decompresses to")
        if not inflate.eof:
            raise ValueError(f"{path}: corrupt gzip file (it ends before its stream does)")
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file; expected {MNIST_FORMATS}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} but the file holds {len(body)} data bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _read_npz(path: str) -> np.ndarray:
    """The images of an .npz archive: key 'x_train', or 'x', or the first array."""
    from zoo.datafiles import read_npz

    def images(keys):
        return [next((k for k in ("x_train", "x") if k in keys), keys[0])]

    return next(iter(read_npz(path, MNIST_FORMATS, images).values()))


def load_mnist(path: str, binarise: bool = True) -> torch.Tensor:
    """A local MNIST images file as a float32 ``[N, 784]`` tensor (any ``[N, ...]`` image
    shape is flattened). Pixels are scaled to [0, 1] (divided by 255 when larger than 1;
    integer pixels must be 0/1 or reach at least 128 of 255) and, if ``binarise``, set to 1 where above ``MNIST_THRESHOLD`` = 0.5.

    Raises ``FileNotFoundError`` if ``path`` does not exist, ``ValueError`` if it is not
    one of the expected formats or holds unusable values."""
    path = os.fspath(path)
    check_file(path, MNIST_FORMATS)
    a = _read_npz(path) if path.endswith(".npz") else _read_idx(path)
    if a.dtype.kind not in "uif":
        raise ValueError(f"{path}: images have dtype {a.dtype}; expected numbers")
    if a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(
            f"{path}: array of shape {a.shape} is not a stack of images [N, H, W] or [N, D]"
            " (a 1-D IDX file holds labels: pass the *-images-idx3-ubyte file)"
        )
    x = torch.as_tensor(a.astype(np.float32)).reshape(a.shape[0], -1)
    if not torch.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"{path}: pixel values must be finite and non-negative")
    top = float(x.max())
    if a.dtype.kind in "ui" and 1 < top < 128:
        # 0..255 pixels that never reach half brightness: another scale (the 8x8 digits'
        # 0..16?) that dividing by 255 would binarise to all zeros.
        raise ValueError(f"{path}: integer pixels range 0..{top:g}, not 0..255 (nor 0/1); "
                         "rescale them to [0, 1] first (e.g. x / x.max()) and save as floats")
    if top > 1:
        x = x / 255.0
    if x.max() > 1:
        raise ValueError(f"{path}: pixel values exceed 255; expected 0..255 or [0, 1]")
    return (x > MNIST_THRESHOLD).float() if binarise else x


# ---------------------------------------------------------------------------- model
class DeepLatentModel(ZooModel):
    """Deep latent variable model of Kingma & Welling [1] (shared by ``dlvm``/``vae``)::

        z_n ~ Normal(0, I_L)                                    n = 1..N
        x_nj ~ Bernoulli(logits = decoder(z_n)_j)               (likelihood="bernoulli")
        x_n ~ Normal(sigmoid(decoder(z_n)), sigma0^2 I_D)        (likelihood="gaussian")

    The decoder is an MLP ``L -> hidden -> D`` with tanh activations, a point-estimated
    network registered as ``pyro.module("decoder", ...)``. The Gaussian likelihood
    with fixed ``sigma0`` is a squared-error reconstruction loss scaled by
    ``1 / (2 sigma0^2)``; its mean passes through a sigmoid since pixels lie in [0, 1].

    Args (subclasses document them again):
        latent_dim: L, dimension of z (2: the latent space can be plotted and the
            evidence computed by quadrature).
        hidden: widths of the hidden layers of the networks.
        data_dim: D, pixels per datapoint (64 for the digits, 784 for MNIST).
        likelihood: ``"bernoulli"`` (binary pixels) or ``"gaussian"`` (pixels in [0, 1]).
        sigma0: standard deviation of the Gaussian likelihood (unused for Bernoulli).
        seed: seed of the network initialisation (the global RNG is not touched).
    """

    default_data = (
        "scikit-learn's 8x8 handwritten digits, 1797 x 64, binarised at pixel >= 8 of 16"
        " (scaled to [0, 1] for likelihood='gaussian')"
    )
    #: per-datapoint log p(x) by quadrature over z (inference.exact), for latent_dim <= 2
    references = ("quadrature evidence (latent_dim <= 2)",)
    symmetries: Dict[str, int] = {}
    data_plate = "data"
    max_plate_nesting = 1

    def __init__(
        self,
        latent_dim: int = 2,
        hidden: Sequence[int] = (128,),
        data_dim: int = 64,
        likelihood: str = "bernoulli",
        sigma0: float = 0.1,
        seed: int = 0,
    ):
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if sigma0 <= 0:
            raise ValueError(f"sigma0 must be positive, got {sigma0}")
        self.latent_dim, self.data_dim = int(latent_dim), int(data_dim)
        self.hidden = tuple(int(h) for h in hidden)
        if min((self.latent_dim, self.data_dim) + self.hidden) < 1:
            raise ValueError(f"latent_dim={latent_dim}, data_dim={data_dim} and hidden="
                             f"{list(hidden)} must all be positive integers")
        sizes = (self.latent_dim, *self.hidden, self.data_dim)
        weights = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        check_size(f"hidden={list(self.hidden)}, latent_dim={self.latent_dim}, data_dim="
                   f"{self.data_dim} ({weights:.3g} weights a network)", 2 * weights,
                   "choose smaller layers")
        self.likelihood, self.sigma0, self.seed = likelihood, float(sigma0), int(seed)
        self.decoder = self._new_decoder()
        if self.latent_dim > 2:
            self.references = ()

    def _new_decoder(self) -> nn.Module:
        net = mlp((self.latent_dim, *self.hidden, self.data_dim), seed=self.seed)
        return nn.Sequential(net, nn.Sigmoid()) if self.likelihood == "gaussian" else net

    def _likelihood(self, out: torch.Tensor) -> dist.TorchDistribution:
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.sigma0).to_event(1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.latent_dim]).to_event(1)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1) as idx:
            z = pyro.sample("z", prior)
            pyro.sample("x", self._likelihood(self.decoder(z)), obs=x[idx])

    def mean_pixels(self, z: torch.Tensor) -> torch.Tensor:
        """``E[x | z]``: the Bernoulli probabilities, or the Gaussian mean (already in [0, 1])."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def networks(self) -> Dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def load_data(self, path: Optional[str] = None, device: Any = "cpu") -> Data:
        """The digits (default) or a local MNIST file (see :func:`load_mnist`), as ``(x,)``.
        Binarised for the Bernoulli likelihood, scaled to [0, 1] for the Gaussian one.
        MNIST needs a model built with ``data_dim=784``."""
        binarise = self.likelihood == "bernoulli"
        x = load_digits(binarise) if path is None else load_mnist(path, binarise)
        return (x.to(device),)

    @staticmethod
    def load_labels() -> torch.Tensor:
        """Digit classes of the default data, for colouring latent-space plots."""
        return load_labels()

    def check_data(self, *data: torch.Tensor) -> None:
        x = check_rows(data, self.name, self.data_dim,
                       "flatten images to rows and build the model with the matching data_dim, "
                       f"e.g. zoo.get({self.name!r}, data_dim=784) for MNIST")
        if self.likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
            raise ValueError(
                "the Bernoulli likelihood needs binary 0/1 pixels, x holds other values;"
                " binarise it first, e.g. (x > 0.5).float(), or use likelihood='gaussian'"
            )

    def views(self, *data) -> Dict[str, Any]:
        """The report's views: guide means coloured by digit class, decoder means over a z grid
        (2-D latents), reconstructions."""
        import matplotlib.pyplot as plt

        (x,) = data
        figs = {}
        z = self.guide_distribution(data, "z").mean.reshape(len(x), -1)
        labels = self.load_labels()[: len(x)].numpy() if True else None
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        zn = z.numpy()
        sc = ax.scatter(zn[:, 0], zn[:, min(1, zn.shape[1] - 1)], s=6, c=labels, cmap="tab10",
                        vmin=-0.5, vmax=9.5)
        if labels is not None:
            fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
        ax.set(xlabel="z[0]", ylabel="z[1]", title=f"{self.name}: guide means of the data")
        fig.tight_layout()
        figs["latent"] = fig

        side = int(round(math.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            return figs
        if z.shape[1] == 2:  # decoder means on a grid of normal quantiles, a gap between tiles
            n = 12
            axis = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.04, 0.96, n))
            grid = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="xy"), -1).reshape(-1, 2)
            tiles = torch.nn.functional.pad(self.mean_pixels(grid).reshape(n, n, side, side), (0, 1, 0, 1))
            imgs = tiles.permute(0, 2, 1, 3).reshape(n * (side + 1), n * (side + 1))
            fig, ax = plt.subplots(figsize=(5.5, 5.8))
            ax.imshow(imgs.numpy(), cmap="gray_r", vmin=0, vmax=1)
            centres = [(side + 1) * i + side / 2 for i in range(n)]
            labels = [f"{v:.1f}" for v in axis.tolist()]
            ax.set_xticks(centres, labels, fontsize=7)
            ax.set_yticks(centres, labels[::-1], fontsize=7)
            ax.set(xlabel="z[0] (prior quantiles 4% ... 96%)", ylabel="z[1]",
                   title=f"{self.name}: decoder means E[x | z] over a grid of z")
            fig.tight_layout()
            figs["decoded"] = fig
        n = 8  # new images from the fitted model: draws, and the means they were drawn from
        (draws,), (means,) = self.sample(n * n, seed=0), self.sample(n * n, seed=0, mean=True)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.9))
        for ax, imgs, what in ((axes[0], draws, "random draws x ~ p(x | z)"),
                               (axes[1], means, "their means E[x | z]")):
            tiles = torch.nn.functional.pad(imgs.reshape(n, n, side, side), (0, 1, 0, 1))
            ax.imshow(tiles.permute(0, 2, 1, 3).reshape(n * (side + 1), n * (side + 1)).numpy(),
                      cmap="gray_r", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[], title=what)
        fig.suptitle(f"{self.name}: new images from the fitted model, z ~ N(0, I) (same z on "
                     "both sides)")
        fig.tight_layout()
        figs["samples"] = fig
        m = min(10, len(x))
        pairs = (x[:m].numpy(), self.mean_pixels(z[:m]).numpy())
        fig, axes = plt.subplots(2, m, figsize=(1.1 * m, 2.6), squeeze=False)
        for i in range(m):
            for row, imgs in enumerate(pairs):
                axes[row, i].imshow(imgs[i].reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
                axes[row, i].set(xticks=[], yticks=[])
        axes[0, 0].set_ylabel("data")
        axes[1, 0].set_ylabel("decoded")
        fig.suptitle(f"{self.name}: reconstructions (decoder mean at the guide mean)")
        figs["reconstructions"] = fig
        return figs

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, mean: bool = False) -> Data:
        """``num`` images from the fitted decoder: ``z ~ N(0, I)``, then ``x ~ p(x | z)`` (with
        ``mean``: the pixel means ``E[x | z]``), as ``(x,)``."""
        g = torch.Generator().manual_seed(seed)
        dev = next(self.decoder.parameters()).device
        z = torch.randn(num, self.latent_dim, generator=g).to(dev)
        means = self.mean_pixels(z).cpu()
        if mean:
            return (means,)
        if self.likelihood == "bernoulli":
            return (torch.bernoulli(means, generator=g),)
        return (means + self.sigma0 * torch.randn(means.shape, generator=g),)

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """``z`` from the prior and ``x`` from the decoder at its initial weights (drawn with
        this model's ``seed``, whatever training has done since), using a private
        ``torch.Generator(seed)``: the global RNG is untouched."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num_data, self.latent_dim, generator=g)
        with torch.no_grad():
            out = self._new_decoder()(z)
            if self.likelihood == "bernoulli":
                x = torch.bernoulli(torch.sigmoid(out), generator=g)
            else:
                x = out + self.sigma0 * torch.randn(out.shape, generator=g)
        return Simulated(data=(x,), params={"z": z})


# ------------------------------------------------- notebook helpers: decoding, anomalous images
def decode(entry, z: torch.Tensor) -> torch.Tensor:
    """Mean pixel values ``E[x | z]`` under the decoder of a ``vae``/``dlvm`` (Bernoulli: the
    probabilities ``sigmoid(logits)``; Gaussian: the mean), for ``z`` of shape ``[..., L]``."""
    dev = next(entry.decoder.parameters()).device
    with torch.no_grad():
        return entry.mean_pixels(z.to(dev))


def posterior_grid(entry, x: torch.Tensor, limit: float = 4.0, points: int = 121):
    """The exact posterior ``p(z | x)`` of one image ``x [D]`` under a 2-D ``vae``/``dlvm``
    decoder, on a ``points x points`` grid over ``[-limit, limit]^2`` (no guide involved):
    ``(axis [points], log_density [points, points], log_px)``. ``log_density[i, j]`` is at
    ``z = (axis[j], axis[i])`` and integrates to one by the midpoint rule, whose sum also gives
    ``log_px``: a check on the quadrature reference where the posterior sits inside the grid."""
    if entry.latent_dim != 2:
        raise ValueError(f"posterior_grid needs latent_dim=2, got {entry.latent_dim}")
    dev = next(entry.decoder.parameters()).device
    axis = torch.linspace(-limit, limit, points, device=dev)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_joint = (entry._likelihood(entry.decoder(z)).log_prob(x.to(dev))
                     + dist.Normal(0.0, 1.0).log_prob(z).sum(-1))
    log_px = torch.logsumexp(log_joint, 0) + 2 * torch.log(axis[1] - axis[0])
    return axis.cpu(), (log_joint - log_px).reshape(points, points).cpu(), float(log_px)


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

