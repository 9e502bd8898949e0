"""Bayes-factor calibration on simulated data: the marginal SBC of Schad et al. [1].

Draw a model index from its prior, ``m ~ P(M)``, then data from that model (its latents from
their prior, the data given them), and compute every model's posterior probability

    P(M_j | x) = P(M_j) Z_j(x) / sum_i P(M_i) Z_i(x).

Averaged over the data the posterior is the prior, ``E_x[P(M_j | x)] = P(M_j)``: over many
simulations the mean posterior model probability must match the prior (within its standard
error, ``sd / sqrt(S)``). With the exact evidence that holds by construction; with an
estimator's ``Z_hat`` it tests whether the estimator's errors bias the model comparison. Both
are computed on the very same data sets, so the difference of their mean probabilities is a
paired, sharper test of the estimator. :class:`ModelSBC` also bins the estimated probability
of each model against how often that model was the true one (the calibration curve of [1]).

The models are pack targets that :meth:`~inference.pack.Benchmark.simulate` and know the
:meth:`~inference.pack.Benchmark.evidence` of any data (e.g. ``beta-bernoulli-flat`` and
``beta-bernoulli-30``: one data set, two priors), each estimated with a guide that needs no
fitting (``"conjugate"``, written from the closed-form posterior of the data it is given).

References

[1] Schad, Nicenboim, Bürkner, Betancourt, Vasishth (2023), Workflow techniques for the robust
    use of Bayes factors, Psychological Methods.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from inference import estimators


@dataclasses.dataclass(frozen=True)
class ModelSBC:
    """Posterior model probabilities over simulated data sets.

    :ivar models: the models' names; ``prior`` their prior probabilities.
    :ivar method: the estimator; ``num_samples``: its K.
    :ivar true_model: ``[S]`` the index of the model that simulated each data set.
    :ivar exact: ``[S, J]`` the posterior model probabilities from the exact evidence.
    :ivar estimated: ``[S, J]`` the same from the estimator's evidence.
    :ivar vouched: ``[S]`` whether every estimate of that data set was vouched for.
    """

    models: Tuple[str, ...]
    prior: np.ndarray
    method: str
    num_samples: int
    true_model: np.ndarray
    exact: np.ndarray
    estimated: np.ndarray
    vouched: np.ndarray

    def mean(self, which: str = "estimated") -> Tuple[np.ndarray, np.ndarray]:
        """The mean posterior probability of each model over the simulations and its standard
        error (``"estimated"`` or ``"exact"``)."""
        p = getattr(self, which)
        return p.mean(0), p.std(0, ddof=1) / math.sqrt(len(p))

    def z(self, which: str = "estimated") -> np.ndarray:
        """``(mean - prior) / stderr`` per model: about N(0, 1) where the posterior averages to
        the prior."""
        m, se = self.mean(which)
        return (m - self.prior) / se

    def paired(self) -> Tuple[np.ndarray, np.ndarray]:
        """The mean of ``estimated - exact`` per model and its standard error: what the
        estimator's errors move the posterior model probabilities by, on average."""
        d = self.estimated - self.exact
        return d.mean(0), d.std(0, ddof=1) / math.sqrt(len(d))

    @property
    def verdict(self) -> str:
        """``"matches the prior"`` where every model's mean estimated probability is within 3
        standard errors of its prior and within 3 of the exact one's (paired); else what failed."""
        bad = []
        if (np.abs(self.z()) >= 3).any():
            bad.append("the mean posterior is not the prior")
        d, se = self.paired()
        with np.errstate(divide="ignore", invalid="ignore"):
            paired = np.where(se > 0, np.abs(d) / se, np.where(d == 0, 0.0, np.inf))
        if (paired >= 3).any():
            bad.append("the estimated probabilities differ from the exact ones")
        return "; ".join(bad) or "matches the prior"

    def curve(self, model: int = 0, bins: int = 5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean estimated probability, observed frequency, count)`` of ``model`` being the
        true one, in ``bins`` equal bins of the estimated probability (empty bins dropped)."""
        p, hit = self.estimated[:, model], (self.true_model == model).astype(float)
        which = np.minimum((p * bins).astype(int), bins - 1)
        n = np.bincount(which, minlength=bins)
        keep = n > 0
        mean_p = np.bincount(which, p, bins)[keep] / n[keep]
        freq = np.bincount(which, hit, bins)[keep] / n[keep]
        return mean_p, freq, n[keep]


def bayes_factor_sbc(models: Sequence[Any], method: str,
                     simulations: Union[int, Iterable[int]] = 100,
                     num_samples: int = 1000, *, prior: Optional[Sequence[float]] = None,
                     guide: str = "conjugate", seed: int = 0,
                     callback: Optional[Callable[[int, dict], None]] = None,
                     **options: Any) -> ModelSBC:
    """Bayes-factor SBC of ``method`` over ``models`` (module docstring).

    :param models: two or more pack targets (or names) that simulate and know the evidence of
        any data, on data of one form.
    :param method: a registered estimator.
    :param simulations: S, the number of simulated data sets, or which of them to run (each
        is drawn from its own generator, seeded ``(seed, s)``, so any subset gives the same
        data sets as the whole).
    :param num_samples: K of every estimate.
    :param prior: the models' prior probabilities (default: equal).
    :param guide: the guide every model is estimated with; one of its ``fixed_guides`` (there
        is nothing fitted for a new data set).
    :param seed: seeds the model indices and the data; simulation ``s`` estimates with seed ``s``.
    :param callback: called as ``callback(s, record)`` after each simulation.
    :param options: :func:`inference.estimate`'s keyword arguments and the method's options.
    """
    from inference import pack
    from inference.estimate import estimate

    models = [pack.get(m) if isinstance(m, str) else m for m in models]
    if len(models) < 2:
        raise ValueError("a Bayes factor needs two or more models")
    for m in models:
        if not m.simulates:
            raise ValueError(f"{m.name} cannot simulate data; these can: "
                             f"{', '.join(pack.simulating())}")
        if guide not in m.fixed_guides:
            raise ValueError(f"{m.name} has no guide {guide!r} with nothing to fit (a fitted guide "
                             f"would need a fit per simulated data set); choose from "
                             f"{', '.join(m.fixed_guides) or 'none'}")
    if estimators.get(method).reference:
        raise ValueError(f"{method!r} is a reference: nothing to calibrate; pick an estimator")
    J = len(models)
    prior = np.full(J, 1.0 / J) if prior is None else np.asarray(prior, dtype=np.float64)
    if prior.shape != (J,) or (prior <= 0).any() or abs(prior.sum() - 1) > 1e-9:
        raise ValueError(f"prior must be {J} positive probabilities summing to 1, got {prior}")
    sims = range(simulations) if isinstance(simulations, numbers.Integral) else list(simulations)
    if not len(sims):
        raise ValueError("simulations must be a positive count or a list of indices")
    rows = []
    for s in sims:
        rng = np.random.default_rng([seed, int(s)])
        m = int(rng.choice(J, p=prior))
        data = models[m].simulate(int(rng.integers(2**31))).data
        exact = np.array([b.evidence(*data) for b in models])
        ests = [estimate(b.target(guide), data, method, num_samples, seed=int(s), **options)
                for b in models]
        record = dict(true_model=m, exact=_posterior(prior, exact),
                      estimated=_posterior(prior, np.array([e.log_evidence for e in ests])),
                      vouched=all(e.vouched for e in ests))
        rows.append(record)
        if callback is not None:
            callback(int(s), record)
    return ModelSBC(models=tuple(b.name for b in models), prior=prior, method=method,
                    num_samples=int(num_samples),
                    true_model=np.array([r["true_model"] for r in rows]),
                    exact=np.stack([r["exact"] for r in rows]),
                    estimated=np.stack([r["estimated"] for r in rows]),
                    vouched=np.array([r["vouched"] for r in rows]))


def _posterior(prior: np.ndarray, log_z: np.ndarray) -> np.ndarray:
    """``P(M_j | x)`` from the prior and the log evidences, stably (a softmax)."""
    return torch.softmax(torch.as_tensor(np.log(prior) + log_z, dtype=torch.float64), 0).numpy()
