"""Calibration: does an estimator's standard error cover the truth at its nominal rate?

:func:`calibrate` runs one method on one target of known ``log Z`` over many seeds -- each seed
one :func:`inference.estimate`, exactly what a user gets, its caveats the engine's own -- and
returns a :class:`Calibration`. With ``d_s = log Z_hat_s - log Z`` and ``se_s`` the estimate's
standard error, the z-score ``z_s = d_s / se_s`` is about ``N(0, 1)`` where the stderr is right,
so ``|z| < c`` should hold at the nominal rate ``erf(c / sqrt 2)``: 68.27%, 95.45% and 99.73%
for ``c = 1, 2, 3``. The coverage over the seeds comes with an exact Clopper-Pearson interval
[1] (95% by default; at least that confident whatever the rate, where the Wilson and Wald
intervals are approximate: near 99.73% with 100 seeds a Wilson interval would call two misses
an under-coverage), over all seeds and over the seeds whose stderr the engine vouched for
(:attr:`inference.Estimate.vouched`): the library's promise is that a vouched stderr covers, so
under-coverage among vouched seeds is a bug to fix or a caveat to add.

Beyond coverage:

* **Unbiasedness in probability.** Where ``exp(log Z_hat)`` is unbiased for ``Z``
  (:attr:`~inference.estimators.Estimator.unbiased`: importance sampling, AIS, SMC), the mean of
  ``Z_hat / Z`` over seeds must be 1. It is computed on the log scale, ``log mean_s exp(d_s)``
  (a log-sum-exp), with the delta method's standard error and the PSIS k-hat of the ``S``
  ratios (:mod:`inference.weights`): a k-hat above 0.7 says the ratios' own tail is too heavy
  for their mean to be judged from ``S`` seeds [2].
* **Sandwiches.** A method that reports ``lower`` and ``upper`` bounds in its diagnostics
  (``bdmc``, on data simulated from the model) is checked for ``lower - c se_lower <= log Z <=
  upper + c se_upper`` (:meth:`Calibration.sandwich`); the gap is reported.
* **Bounds.** A method that is not :attr:`~inference.estimators.Estimator.consistent` (the ELBO)
  is not expected to cover: its row is marked as a bound and its under-coverage measures its gap.

Bayes-factor calibration on simulated data is :mod:`inference.sbc`. Seeds are independent:
each is its own :func:`inference.estimate`, vectorized over its particles and datapoints (the
loop is over estimates, never over samples).

References

[1] Clopper, Pearson (1934), The use of confidence or fiducial limits illustrated in the case
    of the binomial, Biometrika; Brown, Cai, DasGupta (2001), Interval estimation for a
    binomial proportion, Statistical Science.
[2] Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto Smoothed Importance Sampling, JMLR.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from inference import estimators
from inference.weights import WeightStats, pareto_khat

#: the levels c of ``|z| < c`` checked, and their nominal rates ``erf(c / sqrt 2)``
LEVELS = (1.0, 2.0, 3.0)
#: the diagnostics a sandwich method reports
BOUNDS = ("lower", "upper", "lower_stderr", "upper_stderr")


def nominal(level: float) -> float:
    """``P(|z| < level)`` for ``z ~ N(0, 1)``."""
    return math.erf(level / math.sqrt(2))


def clopper_pearson(hits: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a binomial proportion, ``hits`` successes in
    ``n`` [1]: the ``p`` at which ``P(X >= hits) = alpha / 2`` and ``P(X <= hits) = alpha / 2``
    (by bisection on the binomial tail, summed stably in logs). Its coverage is at least
    ``confidence`` whatever ``p``: a rate outside it is evidence, not noise."""
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    k = np.arange(n + 1)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                           for j in k])

    def cdf(p: float, upto: int) -> float:  # P(X <= upto) at p
        if p <= 0.0:
            return 1.0
        if p >= 1.0:
            return 0.0 if upto < n else 1.0
        terms = log_choose[: upto + 1] + k[: upto + 1] * math.log(p) + \
            (n - k[: upto + 1]) * math.log1p(-p)
        top = terms.max()
        return float(math.exp(top + math.log(np.exp(terms - top).sum())))

    def solve(f) -> float:  # f decreasing in p from >= 0 to <= 0
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if hits == 0 else solve(lambda p: alpha / 2 - (1 - cdf(p, hits - 1)))
    high = 1.0 if hits == n else solve(lambda p: cdf(p, hits) - alpha / 2)
    return low, high


class Coverage(NamedTuple):
    """How often ``|z| < level`` held: ``hits`` of ``n`` seeds, with an exact interval."""

    level: float
    nominal: float
    hits: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def verdict(self) -> str:
        """``"under"`` (the interval lies below the nominal rate: the stderr is too small),
        ``"over"`` (above it: too large), ``"ok"``, or ``"n/a"`` (no seeds)."""
        if self.n == 0:
            return "n/a"
        return "under" if self.high < self.nominal else "over" if self.low > self.nominal else "ok"


class Ratio(NamedTuple):
    """The mean of ``Z_hat / Z`` over seeds: ``log_mean`` (its log, a log-sum-exp) with the delta
    method's standard error of that log, and the PSIS k-hat of the ratios."""

    log_mean: float
    stderr: float
    khat: float

    @property
    def mean(self) -> float:
        return math.exp(self.log_mean)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """One method's estimates of one known ``log Z`` over many seeds (module docstring).

    :ivar method: the method; ``num_samples``: its K; ``truth``: the true ``log Z``.
    :ivar seeds: the seeds, in order; ``estimates``, ``stderrs``, ``vouched`` and ``seconds``
        follow them (numpy arrays).
    :ivar unbiased: ``exp`` of the method's estimate is unbiased for ``Z``.
    :ivar consistent: the method's estimate converges to ``log Z`` (False: a bound).
    :ivar bounds: for a sandwich method, ``{"lower", "upper", "lower_stderr",
        "upper_stderr"}`` arrays over the seeds; else ``None``.
    """

    method: str
    num_samples: int
    truth: float
    seeds: Tuple[int, ...]
    estimates: np.ndarray
    stderrs: np.ndarray
    vouched: np.ndarray
    seconds: np.ndarray
    unbiased: bool = False
    consistent: bool = True
    bounds: Optional[dict] = None

    @property
    def errors(self) -> np.ndarray:
        return self.estimates - self.truth

    @property
    def z(self) -> np.ndarray:
        """``(estimate - truth) / stderr`` per seed; ``+-inf`` for a nonzero error with no
        stderr, 0 for none at all, NaN for a NaN stderr."""
        return _z(self.errors, self.stderrs)

    def coverage(self, level: float, vouched: bool = False, confidence: float = 0.95) -> Coverage:
        """How often ``|z| < level`` held, over all seeds or only the vouched ones."""
        inside = np.abs(self.z) < level  # NaN compares False: a NaN stderr covers nothing
        if vouched:
            inside = inside[self.vouched]
        hits, n = int(inside.sum()), int(inside.size)
        return Coverage(level, nominal(level), hits, n, *clopper_pearson(hits, n, confidence))

    def coverages(self, vouched: bool = False) -> Tuple[Coverage, ...]:
        return tuple(self.coverage(c, vouched) for c in LEVELS)

    @property
    def ratio(self) -> Ratio:
        """The mean of ``Z_hat / Z`` over seeds (meaningful where :attr:`unbiased`)."""
        d = torch.as_tensor(self.errors, dtype=torch.float64).unsqueeze(-1)
        st = WeightStats(len(d))
        st.update(d)
        khat = pareto_khat(st.top, len(d), 1 << 24)
        return Ratio(float(st.log_mean()), float(st.is_stderr()), float(khat))

    def sandwich(self, level: float, confidence: float = 0.95) -> Optional[Coverage]:
        """How often ``lower - level se_lower <= truth <= upper + level se_upper`` held (a
        sandwich method's seeds); ``None`` for a method without bounds. ``level = 0``: the raw
        bracket."""
        if self.bounds is None:
            return None
        b = self.bounds
        inside = ((b["lower"] - level * b["lower_stderr"] <= self.truth)
                  & (self.truth <= b["upper"] + level * b["upper_stderr"]))
        hits, n = int(inside.sum()), int(inside.size)
        return Coverage(level, nominal(level), hits, n, *clopper_pearson(hits, n, confidence))

    @property
    def verdict(self) -> str:
        """One phrase: ``"a bound: not expected to cover"``, ``"never vouched for"``,
        ``"under-covers at 1, 2, 3 stderr"`` (among vouched seeds), ``"over-covers"`` (at every
        level), or ``"calibrated"``."""
        if not self.consistent:
            return "a bound: not expected to cover"
        cov = self.coverages(vouched=True)
        if cov[0].n == 0:
            return "never vouched for"
        under = [f"{c.level:g}" for c in cov if c.verdict == "under"]
        if under:
            return f"under-covers at {', '.join(under)} stderr"
        return "over-covers" if all(c.verdict == "over" for c in cov) else "calibrated"

    def summary(self) -> dict:
        """A flat row for tables: coverage over all and vouched seeds, z's mean and sd, the
        ratio's mean (unbiased methods), the verdict."""
        z = self.z[np.isfinite(self.z)]
        row = dict(method=self.method, K=self.num_samples, truth=self.truth,
                   seeds=len(self.seeds), vouched=float(np.mean(self.vouched)),
                   error=float(np.mean(self.errors)), stderr=float(np.mean(self.stderrs)),
                   spread=float(np.std(self.estimates, ddof=1)) if len(self.seeds) > 1 else math.nan,
                   z_mean=float(np.mean(z)) if len(z) else math.nan,
                   z_sd=float(np.std(z, ddof=1)) if len(z) > 1 else math.nan,
                   seconds=float(np.mean(self.seconds)), verdict=self.verdict)
        for vouched, tag in ((False, "all"), (True, "vouched")):
            for c in self.coverages(vouched):
                row[f"cover{c.level:g}_{tag}"] = c.rate
                row[f"cover{c.level:g}_{tag}_ci"] = (c.low, c.high)
        r = self.ratio if self.unbiased else None
        row.update(ratio=r.mean if r else math.nan, ratio_stderr=r.mean * r.stderr if r else math.nan,
                   ratio_khat=r.khat if r else math.nan)
        return row


def _z(errors: np.ndarray, stderrs: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = errors / stderrs
    return np.where((stderrs == 0) & (errors == 0), 0.0, z)


def from_estimates(method: str, num_samples: int, truth: float, seeds: Sequence[int],
                   estimates: Sequence[float], stderrs: Sequence[float],
                   vouched: Sequence[bool], seconds: Optional[Sequence[float]] = None,
                   bounds: Optional[dict] = None) -> Calibration:
    """A :class:`Calibration` from per-seed numbers (e.g. rows read back from a file), with the
    registered method's :attr:`~inference.estimators.Estimator.unbiased` and ``consistent``."""
    est = estimators.get(method)
    n = len(seeds)
    arr = lambda v, dtype=np.float64: np.asarray(v, dtype=dtype).reshape(n)  # noqa: E731
    if bounds is not None:
        bounds = {k: arr(bounds[k]) for k in BOUNDS}
    return Calibration(method=method, num_samples=int(num_samples), truth=float(truth),
                       seeds=tuple(int(s) for s in seeds), estimates=arr(estimates),
                       stderrs=arr(stderrs), vouched=arr(vouched, bool),
                       seconds=arr(np.zeros(n) if seconds is None else seconds),
                       unbiased=est.unbiased, consistent=est.consistent, bounds=bounds)


def calibrate(target: Any, data: Any, method: str, truth: float,
              seeds: Union[int, Iterable[int]] = 100, num_samples: int = 1000, *,
              callback: Optional[Callable[[int, Any], None]] = None,
              **options: Any) -> Calibration:
    """Run ``method`` on ``target`` once per seed and measure how often its standard error
    covers ``truth`` (module docstring).

    :param target: anything :func:`inference.estimate` takes (a zoo entry, a ``(model, guide)``
        pair, an :class:`inference.Target`, a :class:`~inference.FitResult`).
    :param data: the data; ``truth`` is its true ``log p(data)`` (the total in local scope).
    :param method: a registered method that is not a reference.
    :param seeds: the seeds (``100``: seeds 0..99); each is one independent estimate.
    :param num_samples: K of every estimate.
    :param callback: called as ``callback(seed, estimate)`` after each estimate (e.g. to write
        it out as it finishes).
    :param options: :func:`inference.estimate`'s keyword arguments (``scope``, ``device``,
        ``kwargs``, the method's options such as ``temperatures``).
    """
    from inference.estimate import estimate

    est = estimators.get(method)
    if est.reference:
        raise ValueError(f"{method!r} is a reference (no K, no seed, no stderr): there is nothing "
                         "to calibrate; pick an estimator")
    if isinstance(truth, bool) or not isinstance(truth, numbers.Real) or not math.isfinite(truth):
        raise ValueError(f"truth must be the finite true log p(data), got {truth!r}")
    seeds = list(range(seeds)) if isinstance(seeds, numbers.Integral) else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or \
            not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a positive count or distinct integers, got {seeds!r}")
    rows = []
    for seed in seeds:
        e = estimate(target, data, method, num_samples, seed=int(seed), **options)
        rows.append((e.log_evidence, e.stderr, e.vouched, e.seconds,
                     tuple(e.diagnostics.get(k, math.nan) for k in BOUNDS)))
        if callback is not None:
            callback(int(seed), e)
    values, errs, vouched, seconds, bounds = zip(*rows)
    bounds = np.asarray(bounds, dtype=np.float64)
    has_bounds = not np.isnan(bounds).all()
    return from_estimates(method, num_samples, float(truth), seeds, values, errs, vouched,
                          seconds, dict(zip(BOUNDS, bounds.T)) if has_bounds else None)
