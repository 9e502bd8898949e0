"""The result records: :class:`Estimate` (of :func:`inference.estimate`) and :class:`FitResult`
(of :func:`inference.fit`), small frozen dataclasses.

Defined here, below the functions that make them, so that any module can name them;
``inference.Estimate``, ``inference.FitResult`` and ``inference.estimate.Estimate`` are these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pandas as pd
import torch

from inference.checkpoints import save_fit
from inference.io import PathLike
from inference.target import Target


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimate of ``log p(x)``.

    :ivar log_evidence: the estimate of the total ``log p(X)`` (sum over datapoints in local scope).
    :ivar stderr: its standard error (0 for exact methods).
    :ivar ess: effective sample size of the weights (mean over datapoints in local scope).
    :ivar khat: PSIS Pareto k-hat of the log weights (max over datapoints); above 0.7 the
        estimate is unreliable.
    :ivar per_datapoint: ``log p(x_n)`` per datapoint (local scope), else ``None``; likewise
        ``stderr_per_datapoint``, ``ess_per_datapoint``, ``khat_per_datapoint``.
    :ivar diagnostics: method-specific checks (e.g. the quadrature's own error estimate).
    :ivar log_weights: with ``keep_weights=True``, every log importance weight: ``[K, N]`` in
        local scope, ``[K]`` in global scope (for PSIS, ``az.loo``-style analyses, plots).
    :ivar caveats: why the standard error cannot be vouched for, one sentence each (empty when
        it can): the method's own checks, and for importance-weighted methods a k-hat above
        its threshold or too small an ESS (:func:`inference.weights.stderr_caveats`). Reports
        mark such a stderr and read the spread across seeds instead.
    """

    method: str
    scope: str
    num_samples: int
    log_evidence: float
    stderr: float
    ess: float
    khat: float
    seconds: float
    num_datapoints: int
    per_datapoint: Optional[torch.Tensor] = None
    stderr_per_datapoint: Optional[torch.Tensor] = None
    ess_per_datapoint: Optional[torch.Tensor] = None
    khat_per_datapoint: Optional[torch.Tensor] = None
    diagnostics: Dict[str, float] = dataclasses.field(default_factory=dict)
    log_weights: Optional[torch.Tensor] = None
    caveats: Tuple[str, ...] = ()

    @property
    def vouched(self) -> bool:
        """Whether the standard error can be vouched for (no :attr:`caveats`)."""
        return not self.caveats

    @property
    def mean_per_datapoint(self) -> float:
        return self.log_evidence / self.num_datapoints

    def __repr__(self) -> str:
        def num(x: float, spec: str) -> str:
            return "n/a" if x != x else format(x, spec)

        K = "" if self.num_samples == 0 else f", K={self.num_samples}"
        return (f"Estimate({self.method!r}, scope={self.scope!r}{K}, "
                f"log_evidence={self.log_evidence:.4f} +- {num(self.stderr, '.4f')} "
                f"({self.mean_per_datapoint:.4f} per datapoint, N={self.num_datapoints}), "
                f"ess={num(self.ess, '.4g')}, khat={num(self.khat, '.3g')}, "
                f"seconds={self.seconds:.3g}"
                f"{'' if self.vouched else ', stderr not vouched for: ' + '; '.join(self.caveats)})")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`.

    :ivar target: the :class:`~inference.target.Target` that was fitted.
    :ivar losses: one row per step: ``step``, ``loss`` (negative ELBO estimate for the full
        data), ``loss_per_datapoint``, and for ``loss="trace"``/``"meanfield"`` the ELBO's two
        terms ``recon`` (E_q[log p(x | z)]) and ``kl`` (E_q[log q(z) - log p(z)]), with
        ``recon - kl = -loss`` (see :mod:`inference.elbo_terms`); with a ``kl_weight`` other than
        1 also ``objective``, the minimised ``kl_weight * kl - recon``.
    :ivar state: the fitted Pyro params (unconstrained, with their constraints) and network
        weights, a copy of its own whatever the param store holds later (see :func:`save_fit`).
    :ivar seconds: wall time of the optimisation.
    :ivar heldout: with ``fit(heldout=...)``: one row per evaluation, ``step`` (steps done),
        ``heldout_loss`` (negative ELBO of the held-out data) and its ``_per_datapoint``.
    :ivar diagnostics: how the steps ran (:mod:`inference.compiled`): ``compiled_steps`` (taken
        by the compiled step; the first step of a run is always eager), ``not_compiled`` (why
        the other steps ran eagerly, e.g. ``"compile=False"``; ``None`` when all but the first
        were compiled), ``compile_seconds`` (tracing and the check) and ``compile_check`` (the
        largest relative difference of compiled and eager step at the check; 0: equal).
    """

    target: Target
    losses: pd.DataFrame
    state: Dict[str, Any]
    seconds: float
    heldout: Optional[pd.DataFrame] = None
    diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, folder: PathLike) -> Path:
        return save_fit(self, folder)

    def __repr__(self) -> str:
        tail = self.losses["loss_per_datapoint"].tail(50)
        final = f"{tail.mean():.4g}" if len(tail) else "n/a"
        size = sum(t.numel() for t in self.state.get("params", {}).values())
        size += sum(t.numel() for sd in self.state.get("networks", {}).values()
                    for t in sd.values())
        why = self.diagnostics.get("not_compiled")
        how = "compiled" if why is None else f"eager: {why}"
        return (f"FitResult({self.target.name!r}, steps={len(self.losses)}, "
                f"final -ELBO per datapoint={final} (mean of the last {len(tail)}), "
                f"{size} fitted numbers, seconds={self.seconds:.3g}, {how})")
