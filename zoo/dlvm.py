"""Deep latent variable model fitted with classic (non-amortized) variational inference.

The generative model is Kingma & Welling's [1] (see :class:`zoo._deep.DeepLatentModel`);
the guide gives every datapoint its own free Gaussian ``q(z_n) = N(m_n, diag(s_n^2))``,
the mean-field family of classic VI [2], while the decoder is a point estimate. It is
the baseline the amortized :mod:`zoo.vae` is compared with: same model, same ELBO,
but 2 L free parameters per datapoint instead of a shared encoder.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import inference
from zoo._deep import DeepLatentModel
from zoo.base import QUICK, Job, register


@register
class DLVM(DeepLatentModel):
    """Deep latent variable model with a per-datapoint mean-field Gaussian guide.

    Generative story (Kingma & Welling [1])::

        z_n ~ Normal(0, I_L)                                  n = 1..N
        x_n ~ Bernoulli(logits = decoder(z_n))                (independent pixels)

    Guide::

        z_n ~ Normal(z_loc[n], diag(z_scale[n]^2))

    ``z_loc`` and ``z_scale`` are ``[N, L]`` Pyro params created inside the data plate with
    ``event_dim=1``, so a minibatch reads and updates only its own rows. They are created
    at the first call with the data's N: clear the param store before fitting another
    data set. Initial values are deterministic: ``z_loc = 0``, ``z_scale = init_scale``.

    Args:
        latent_dim: L, dimension of z (default 2: plots, and the evidence by quadrature).
        hidden: widths of the decoder's hidden layers (tanh), default ``(128,)``.
        data_dim: D, pixels per datapoint: 64 for the default digits, 784 for MNIST.
        likelihood: ``"bernoulli"`` (binary pixels, default) or ``"gaussian"``
            (``x_n ~ Normal(sigmoid(decoder(z_n)), sigma0^2 I)``, pixels in [0, 1]).
        sigma0: standard deviation of the Gaussian likelihood (default 0.1).
        seed: seed of the decoder's initial weights (the global RNG is not touched).
        init_scale: initial standard deviation of every ``q(z_n)`` (default 1.0).

    References:
        [1] D. P. Kingma, M. Welling. Auto-Encoding Variational Bayes. ICLR 2014.
        [2] M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley. Stochastic Variational
            Inference. JMLR 14, 2013.
    """

    name = "dlvm"
    summary = "deep latent variable model (MLP decoder), non-amortized per-datapoint Gaussian guide"
    # 128 quadrature points: at 64 (refined up to 256) a few datapoints' posteriors stay too
    # narrow for the grid, halving it moves them 0.13 nats, and the reference refuses itself.
    # No ais in the job: it costs what it costs on the vae (zoo/vae.py).
    job = Job(steps=3000, lr=0.02, scope="local", methods=("exact", "elbo", "is-guide", "is-prior"),
              estimate_options={"quadrature_points": 128},
              why="per-datapoint Gaussian guide (full-data steps); exact reference by 2-D "
                  "quadrature",
              quick=dict(QUICK, steps=300, subset=300, estimate_options={"quadrature_points": 32}))

    def __init__(
        self,
        latent_dim: int = 2,
        hidden: Sequence[int] = (128,),
        data_dim: int = 64,
        likelihood: str = "bernoulli",
        sigma0: float = 0.1,
        seed: int = 0,
        init_scale: float = 1.0,
    ):
        super().__init__(latent_dim, hidden, data_dim, likelihood, sigma0, seed)
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.init_scale = float(init_scale)

    def guide(self, x: torch.Tensor) -> None:
        N, L = x.shape[0], self.latent_dim
        with pyro.plate(self.data_plate, N, dim=-1):
            loc = pyro.param("z_loc", lambda: x.new_zeros(N, L), event_dim=1)
            scale = pyro.param(
                "z_scale",
                lambda: x.new_full((N, L), self.init_scale),
                constraint=constraints.positive,
                event_dim=1,
            )
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    #: full-batch Adam steps of the guides :meth:`for_new_data` fits (an instance may set its own)
    new_data_steps = 1000

    def for_new_data(self, *data: torch.Tensor) -> "DLVM":
        """A copy with this decoder frozen and guides fitted to ``data`` (:func:`fit_guides`,
        ``new_data_steps`` steps from the prior): classic VI fits every new datapoint."""
        device = next(self.decoder.parameters()).device
        return fit_guides(self, data, steps=self.new_data_steps, device=device)[0]


# ------------------------------------------------------ guides for a frozen decoder (new data)
def deep_options(entry) -> Dict[str, Any]:
    """The generative model's options of a ``dlvm`` or ``vae``: a ``DLVM(**them)`` has the same
    decoder architecture."""
    return dict(latent_dim=entry.latent_dim, hidden=entry.hidden, data_dim=entry.data_dim,
                likelihood=entry.likelihood, sigma0=entry.sigma0, seed=entry.seed)


def fit_guides(source, data: Any, *, steps: int = 500, lr: float = 0.02, num_particles: int = 1,
               init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, seed: int = 0,
               device: Any = "cpu") -> Tuple[DLVM, "inference.FitResult"]:
    """Per-datapoint Gaussian guides ``q(z_n) = N(m_n, diag(s_n^2))`` fitted, full-batch, to
    ``source``'s decoder (a ``dlvm`` or ``vae``), which is copied and frozen into a ``dlvm`` entry.
    ``init``: starting ``(z_loc, z_scale)``, else ``dlvm``'s default. The param store is cleared
    and then holds the fitted guides, so ``inference.estimate(entry, data, ...)`` uses them.

    :returns: ``(dlvm_entry, fit_result)``."""
    data = data if isinstance(data, (tuple, list)) else (data,)
    local = DLVM(**deep_options(source))
    local.decoder.load_state_dict(source.decoder.state_dict())
    local.decoder.requires_grad_(False).eval()  # no gradient: pyro.module does not train it
    dev = inference.target.resolve_device(device)
    local.to(dev)
    pyro.clear_param_store()
    if init is not None:
        pyro.param("z_loc", init[0].detach().to(dev).clone())
        pyro.param("z_scale", init[1].detach().to(dev).clone(), constraint=constraints.positive)
    res = inference.fit(local, data, steps=steps, lr=lr, num_particles=num_particles, seed=seed,
                        device=dev, progress=False, clear=False)
    return local, res
