"""The ELBO's two terms, read from the traces each SVI step already makes, and the KL weight.

The evidence lower bound splits into a data term and a latent term [1]:

    ELBO = E_q[log p(x | z)]  -  E_q[log q(z) - log p(z)]
         =  reconstruction    -  KL(q(z) || p(z))

:class:`ELBOTerms` wraps the ELBO that :func:`inference.fit` trains with and reads both terms
from the model and guide traces of every particle of every step -- the very traces the loss is
computed from, so there is no second forward pass. ``recon`` sums the ``log_prob_sum`` of the
model's *observed* sample sites (``pyro.factor`` sites included); ``kl`` is the guide's
``log q`` minus the model's ``log p`` over the *latent* sites (global latents included). With
:class:`~pyro.infer.Trace_ELBO` both are single-sample estimates and ``recon - kl`` is the very
ELBO estimate of the step; with :class:`~pyro.infer.TraceMeanField_ELBO` the KL of each latent
site is in closed form where :func:`torch.distributions.kl_divergence` has one (e.g. Gaussian
against Gaussian: ``0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` against ``N(0, I)``), else
sampled, as Pyro's own estimator does. Other ELBOs (``TraceEnum_ELBO`` sums discrete latents
out, so no site-wise split exists) record no terms.

:class:`KLWeight` multiplies every latent site's log-density in model and guide by ``beta``:
training then maximises ``recon - beta * KL``, the beta-VAE objective [2] (``beta > 1`` trades
reconstruction for a posterior closer to the prior). It is applied inside :func:`inference.fit`
only: the fitted target, which the estimators see, is unchanged, so an evidence estimate of a
beta-trained model is the evidence of the model itself.

References

[1] Kingma, Welling (2014), Auto-Encoding Variational Bayes, ICLR (eq. 3).
[2] Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed, Lerchner (2017), beta-VAE:
    Learning Basic Visual Concepts with a Constrained Variational Framework, ICLR.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Tuple

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

#: the columns of :attr:`inference.FitResult.losses`, without and with the terms
BASE_COLUMNS = ("step", "loss", "loss_per_datapoint")
TERM_COLUMNS = ("recon", "kl")


class KLWeight(Messenger):
    """Scales the log-density of every latent (unobserved) sample site by ``weight``.

    Wrapped around both model and guide, it turns the ELBO into ``recon - weight * KL``."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


def check_kl_weight(kl_weight: float, elbo: ELBO) -> None:
    """Refuse a KL weight that is not a positive number, or one with an ELBO that has no
    site-wise KL term."""
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not (
            math.isfinite(kl_weight) and kl_weight > 0):
        raise ValueError(f"kl_weight must be a finite number > 0 (beta of the beta-VAE; 1 is "
                         f"the ELBO), got {kl_weight!r}")
    if kl_weight != 1 and not ELBOTerms.supports(elbo):
        raise ValueError(f"kl_weight={kl_weight} needs loss='trace' or 'meanfield', whose KL term "
                         f"is site-wise; {type(elbo).__name__} has none")


def particle_terms(model_trace, guide_trace, analytic: bool = False) -> Tuple[torch.Tensor, ...]:
    """``(recon, kl)`` of one particle (scaled like the loss: minibatch ``N / B`` and any KL
    weight included), from traces whose log-probabilities are computed; ``analytic``: the KL of
    each latent site in closed form where one exists (as :class:`~pyro.infer.TraceMeanField_ELBO`)."""
    recon = kl = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            recon = recon + site["log_prob_sum"].detach()
            continue
        q = guide_trace.nodes.get(name)
        if analytic and q is not None:
            try:
                kl = kl + scale_and_mask(kl_divergence(q["fn"], site["fn"]), q["scale"],
                                         q["mask"]).detach().sum()
                continue
            except NotImplementedError:  # no closed form: sampled, as Pyro's estimator
                pass
        kl = kl - site["log_prob_sum"].detach()
        if q is not None:
            kl = kl + q["log_prob_sum"].detach()
    for name, site in guide_trace.nodes.items():  # guide-only (auxiliary) sites
        if site["type"] == "sample" and name not in model_trace.nodes:
            kl = kl + site["log_prob_sum"].detach()
    return recon, kl


class ELBOTerms:
    """The reconstruction and KL terms of every training step, beside the loss.

    :param elbo: the ELBO :func:`inference.fit` trains with; :attr:`elbo` is a copy of it that
        reads the terms (an unsupported ELBO is used as it is and records none).
    :param num_datapoints: N, for ``loss_per_datapoint``.
    :param kl_weight: the weight :class:`KLWeight` puts on the latent sites while training; the
        recorded ``kl`` is divided by it, so ``recon - kl`` is the ELBO. With a weight other than
        1, ``loss`` is that ELBO's negative and the column ``objective`` holds what was minimised,
        ``beta * kl - recon``.
    :param record: ``False`` records no terms (the loss only).
    """

    def __init__(self, elbo: ELBO, num_datapoints: int, kl_weight: float = 1.0,
                 record: bool = True):
        self.n, self.kl_weight = num_datapoints, float(kl_weight)
        self.on = record and self.supports(elbo)
        self.columns = BASE_COLUMNS + (TERM_COLUMNS if self.on else ())
        if self.kl_weight != 1:
            self.columns += ("objective",)
        self.elbo = copy.copy(elbo) if self.on else elbo
        self._sums = None
        if self.on:
            analytic = type(elbo) is TraceMeanField_ELBO
            particle = self.elbo._differentiable_loss_particle

            def read(model_trace, guide_trace):
                out = particle(model_trace, guide_trace)
                if self._sums is not None:
                    terms = particle_terms(model_trace, guide_trace, analytic)
                    self._sums = [s + t for s, t in zip(self._sums, terms)]
                return out

            # an instance attribute: the loss methods of the copy look it up on self
            self.elbo._differentiable_loss_particle = read

    @staticmethod
    def supports(elbo: ELBO) -> bool:
        """Whether ``elbo`` computes its loss site by site from one model and guide trace per
        particle (exactly these classes: a subclass may compute another loss)."""
        return type(elbo) in (Trace_ELBO, TraceMeanField_ELBO)

    @contextlib.contextmanager
    def step(self):
        """Read the terms of the traces made inside (one training step); others are ignored
        (e.g. a held-out evaluation with the same ELBO between steps)."""
        self._sums = [0.0, 0.0] if self.on else None
        try:
            yield
        finally:
            self._last, self._sums = self._sums, None

    def row(self, step: int, value: float, terms=None) -> tuple:
        """The losses row of the step just taken, whose loss was ``value`` (``terms``: its
        summed ``(recon, kl)`` when they were not read by :meth:`step`, e.g. from a compiled
        step, :mod:`inference.compiled`)."""
        if not self.on:
            return step, value, value / self.n
        recon, kl = (float(t) / self.elbo.num_particles for t in (terms or self._last))
        kl /= self.kl_weight
        if self.kl_weight == 1:
            return step, value, value / self.n, recon, kl
        return step, kl - recon, (kl - recon) / self.n, recon, kl, value
