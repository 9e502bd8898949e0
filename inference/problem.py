"""What an estimator is and what it runs on: :class:`Problem`, :class:`NotApplicable`, the
:class:`Estimator` base class, the registry and the option checks.

A leaf of the engine: the estimators (:mod:`inference.estimators`) and the helpers they share
(:mod:`inference.sampling`, :mod:`inference.path`, :mod:`inference.annealing`, ...) import these
from here, below the package that imports every estimator. ``from inference.estimators import
Estimator, NotApplicable, Problem, register`` gives the same objects.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import torch

from inference.registry import Registry
from inference.target import Data, Target


class NotApplicable(ValueError):
    """The estimator cannot run on this target (e.g. a point-mass guide has no density to
    importance-sample with); the message names the alternative."""


class ChecksFailed(ValueError):
    """The estimator ran, but its result failed its own checks (e.g. a quadrature reference
    whose grid is too coarse), so no number is returned; the message names the fix. Unlike
    :class:`NotApplicable` it is an error: :func:`inference.compare` raises it."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """What an estimator runs on, checked and settled by :func:`inference.estimate`.

    :ivar target: the model/guide pair.
    :ivar data: the data tensors, on the device.
    :ivar scope: ``"local"`` (per datapoint) or ``"global"``.
    :ivar max_plate_nesting: the model's plate nesting.
    :ivar fixed: values the global latents are held at (local scope), else ``None``.
    :ivar num_samples: K.
    :ivar memory_budget: bytes one chunk may allocate.
    :ivar keep_weights: keep every log weight (``Estimate.log_weights``), e.g. for arviz.
    :ivar world: with ``estimate(distributed=True)``, this process's
        :class:`~inference.distributed.World`: the work is sharded across processes.
    :ivar seed: the seed (sharded work seeds its blocks from it).
    """

    target: Target
    data: Data
    scope: str
    max_plate_nesting: int
    fixed: Optional[Dict[str, torch.Tensor]]
    num_samples: int
    memory_budget: int
    keep_weights: bool = False
    world: Any = None
    seed: int = 0

    @property
    def local(self) -> bool:
        return self.scope == "local"


class Estimator:
    """Base class of registered estimators.

    :cvar name: the method name (``inference.estimate(..., method=name)``).
    :cvar summary: one line for tables and ``--help``.
    :cvar reference: an exact reference: no K, no seed, one row per comparison.
    :cvar weighted: its value is an average of importance weights, so its standard error holds
        only when the weights' tail is light (PSIS k-hat below its threshold); False for the
        ELBO, whose standard error is that of an average of log weights.
    :cvar options: keyword options :meth:`run` accepts, with their defaults.
    :cvar checks: ``{option: (test, what it must be)}``, e.g. ``integer(1)``: what
        :func:`check_options` requires of an option's value (one without a check must have
        its default's type: an integer, a finite number, a bool or a string).
    :cvar shardable: :meth:`run` handles ``problem.world`` (``estimate(distributed=True)``).
    :cvar deterministic: its value depends on neither K nor the seed (an optimisation, e.g.
        ``laplace``): a benchmark runs it once per target.
    :cvar min_samples: the smallest K it runs with (its :meth:`run` refuses a smaller one);
        :func:`inference.compare` leaves the smaller K of its grid out for it.
    :cvar unbiased: ``exp`` of its value is an unbiased estimate of ``p(x)`` (importance
        sampling, AIS; not SMC with adaptive temperatures): over many seeds the mean of
        ``Z_hat / Z`` must be 1 (:func:`inference.calibrate`).
    :cvar consistent: its value converges to ``log p(x)`` as K grows, so its standard error is
        meant to cover the truth; False for a bound whose gap K does not close (the ELBO:
        its stderr is that of the bound), which calibration reports as not expected to cover.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[bool] = False
    weighted: ClassVar[bool] = True
    options: ClassVar[Mapping[str, Any]] = {}
    checks: ClassVar[Mapping[str, "Check"]] = {}
    shardable: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False
    min_samples: ClassVar[int] = 1
    unbiased: ClassVar[bool] = False
    consistent: ClassVar[bool] = True

    def evaluations(self, num_samples: int, **options: Any) -> Optional[float]:
        """Evaluations of ``log p(x, z)`` per datapoint (local) or of ``log p(X, z)`` (global)
        that a run with K = ``num_samples`` makes -- its cost, for comparisons at equal cost;
        ``None`` where it is not known in advance. Default: one per particle."""
        return float(num_samples)

    def run(self, problem: Problem, **options: Any) -> Dict[str, Any]:  # pragma: no cover
        """The :class:`inference.Estimate` fields ``num_samples``, ``log_evidence``, ``stderr``,
        ``ess``, ``khat`` and, in local scope, the ``*_per_datapoint`` tensors and
        ``diagnostics``; optionally ``caveats``, a sequence of sentences saying why the
        stderr cannot be vouched for (e.g. a failed check of the method's own), to which
        :func:`inference.estimate` adds the k-hat/ESS rule for ``weighted`` methods."""
        raise NotImplementedError


_REGISTRY: Registry[Estimator] = Registry("method", "choose from")
#: class decorator adding an estimator to the registry under ``cls.name``
register = _REGISTRY.register
#: remove an estimator from the registry (e.g. a throw-away one in a test)
unregister = _REGISTRY.unregister
#: the registered methods, in registration order
names = _REGISTRY.names


def get(name: str) -> Estimator:
    """An instance of the registered estimator ``name``."""
    return _REGISTRY.get(name)()


def all_options() -> Dict[str, str]:
    """``{option: method}`` for every option a registered estimator accepts."""
    return {opt: name for name in names() for opt in _REGISTRY.get(name).options}


# ---------------------------------------------------------------------------- option checks
#: a check of an option's value: a test, and what the value must be (for the error)
Check = Tuple[Callable[[Any], bool], str]


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int) -> Check:
    """An integer ``>= low`` (``1.5`` and ``True`` are refused, not rounded)."""
    return (lambda v: _int(v) and v >= low), f"an integer >= {low}"


def number(low: float, high: float = math.inf, *, closed: str = "") -> Check:
    """A finite number in the interval from ``low`` to ``high``, open at each end unless
    ``closed`` names it (``"low"``, ``"high"`` or ``"both"``)."""
    lo = (lambda v: v >= low) if closed in ("low", "both") else (lambda v: v > low)
    hi = (lambda v: v <= high) if closed in ("high", "both") else (lambda v: v < high)
    text = (f"a finite number {'>=' if closed in ('low', 'both') else '>'} {low:g}"
            if high == math.inf else
            f"a number in {'[' if closed in ('low', 'both') else '('}{low:g}, "
            f"{high:g}{']' if closed in ('high', 'both') else ')'}")
    return (lambda v: _real(v) and lo(v) and hi(v)), text


def one_of(*choices: Any) -> Check:
    return (lambda v: isinstance(v, type(choices[0])) and v in choices,
            "one of " + ", ".join(repr(c) for c in choices))


def _default_check(default: Any) -> Optional[Check]:
    """What an option without a declared check must be: its default's type."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "True or False"
    if isinstance(default, numbers.Integral):
        return (lambda v: _int(v)), "an integer"
    if isinstance(default, numbers.Real):
        return _real, "a finite number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    return None


def check_options(options: Mapping[str, Any], methods: Optional[Sequence[str]] = None) -> None:
    """Refuse, before any work, an option value a method taking it cannot use: ``ValueError``
    ``"NAME must be WHAT (option of METHOD), got VALUE"``. Every registered method (or those
    of ``methods``) that takes the option checks it (:attr:`Estimator.checks`, else its
    default's type), so one set of options serves a whole comparison."""
    for method in names() if methods is None else methods:
        cls = _REGISTRY.get(method)
        for key, value in options.items():
            if key not in cls.options:
                continue
            check = cls.checks.get(key) or _default_check(cls.options[key])
            if check is not None and not check[0](value):
                raise ValueError(f"{key} must be {check[1]} (option of {method}), got {value!r}")
