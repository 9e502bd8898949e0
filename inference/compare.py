"""Side-by-side comparison of estimators over K and seeds, as a tidy table.

:func:`compare` runs every method that applies to the target for every K and seed, and
returns one row per (method, K, seed). Where an exact reference exists (closed form,
enumeration, quadrature) it is computed once and each row carries its error against it.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from inference import estimators
from inference.estimate import MAX_SAMPLES, Estimate, estimate
from inference.problem import NotApplicable
from inference.state import load_fitted
from inference.target import as_data, as_target
from inference.weights import stderr_caveats

COLUMNS = [
    "method", "K", "seed", "scope", "estimate", "stderr", "per_datapoint", "ess", "khat",
    "seconds", "reference", "error", "vouched",
]


def _row(est: Estimate, seed: int, reference: float) -> Dict[str, Any]:
    return {
        "method": est.method,
        "K": est.num_samples,
        "seed": seed,
        "scope": est.scope,
        "estimate": est.log_evidence,
        "stderr": est.stderr,
        "per_datapoint": est.mean_per_datapoint,
        "ess": est.ess,
        "khat": est.khat,
        "seconds": est.seconds,
        "reference": reference,
        "error": est.log_evidence - reference,
        "vouched": est.vouched,
    }


def compare(
    target: Any,
    data: Any,
    methods: Optional[Sequence[str]] = None,
    num_samples: Iterable[int] = (1, 10, 100, 1000),
    seeds: Iterable[int] = range(3),
    *,
    scope: Optional[str] = None,
    device: Any = "cpu",
    memory_budget: Optional[int] = None,
    progress: Optional[bool] = None,
    on_start: Optional[Callable[[str, int, int], None]] = None,
    on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
    skip: Optional[Callable[[str, int, int], bool]] = None,
    distributed: bool = False,
    **options: Any,
) -> pd.DataFrame:
    """Run ``methods`` x ``num_samples`` x ``seeds`` on one fitted target.

    :param methods: registered methods (default: all of them, :func:`inference.methods`).
        A reference method (``"exact"``) gives one row, K = 0. A method is skipped only where
        it raises :class:`~inference.estimators.NotApplicable` (e.g. ``"exact"`` without a
        closed form, ``"is-guide"``/``"elbo"`` with a point-mass guide); any other error,
        e.g. a reference failing its own checks, is raised (rows already passed to ``on_row``
        stay written). The first reference asked for that applies gives every row's
        ``error`` (NaN without one: a reference can take far longer than the estimates).
    :param num_samples: the K grid (or one K); a method runs at the K it takes
        (``K >= min_samples``, e.g. 4 for ``bridge``), and is skipped where it takes none.
    :param seeds: seeds for every sampled method.
    :param scope: ``"local"`` or ``"global"``; default from the trace (see :func:`estimate`).
    :param progress: show a tqdm bar; default: only when stderr is a terminal.
    :param on_start: called as ``on_start(method, K, seed)`` before each estimate starts (e.g. to
        say that a slow exact reference is running).
    :param on_row: called with each row as it finishes (e.g. to write it out at once).
    :param skip: ``skip(method, K, seed)`` true for rows to leave out (e.g. already done).
    :param distributed: share each estimate among ``torchrun``'s processes where the method
        can be sharded (``estimate(distributed=True)``); the others (the references, the
        annealed methods) run whole on every process, with the same result.
    :param options: passed to :func:`estimate` (``fixed``, and the methods' own options such as
        ``quadrature_points``).
    :returns: a DataFrame with columns ``COLUMNS``; ``reference``/``error`` are NaN without
        a reference; ``vouched`` is :attr:`Estimate.vouched`. ``df.attrs["skipped"]`` maps
        each skipped method to the reason.
    """
    registered = estimators.names()
    methods = registered if methods is None else list(methods)
    unknown = sorted(set(methods) - set(registered))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(registered)}")
    ks = list([num_samples] if isinstance(num_samples, numbers.Integral) else num_samples)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"num_samples must be a non-empty list of integers >= 1, got {ks}")
    ks = [int(k) for k in ks]
    if max(ks) > MAX_SAMPLES:
        raise ValueError(f"num_samples (K) = {max(ks)} is above the maximum {MAX_SAMPLES:.0e}")
    estimators.check_options(options)  # every method's, before the first row is written
    tgt = as_target(target)
    data = as_data(tgt, data, device)
    load_fitted(target, device)
    common = dict(scope=scope, device=device, memory_budget=memory_budget, **options)
    rows, skipped = [], {}

    def emit(row):
        rows.append(row)
        if on_row is not None:
            on_row(row)

    refs = [m for m in registered if estimators.get(m).reference]
    for m in methods:
        least = estimators.get(m).min_samples
        if m not in refs and max(ks) < least:
            skipped[m] = f"{m} needs K >= {least}, the largest K asked for is {max(ks)}"
    jobs = [(m, k, s) for m in methods if m not in refs and m not in skipped
            for k in ks if k >= estimators.get(m).min_samples for s in seeds]
    jobs = [job for job in jobs if not (skip and skip(*job))]
    reference = math.nan
    for ref in refs:
        wanted = ref in methods and not (skip and skip(ref, 0, 0))
        if ref not in methods or not (jobs or wanted):
            continue  # asked for, and some row will show it
        if on_start is not None:
            on_start(ref, 0, 0)
        try:
            exact = estimate(tgt, data, ref, **common)
        except NotApplicable as err:  # anything else (a reference failing its own checks) raises
            skipped[ref] = str(err)
            continue
        if math.isnan(reference):
            reference = exact.log_evidence
        if wanted:
            emit(_row(exact, 0, reference))
    show = sys.stderr.isatty() if progress is None else progress
    for method, k, seed in tqdm(jobs, desc=f"estimate {tgt.name}", disable=not show, leave=False):
        if method in skipped:
            continue
        if on_start is not None:
            on_start(method, k, seed)
        try:
            est = estimate(tgt, data, method, k, seed=seed, **common,
                           distributed=distributed and estimators.get(method).shardable)
        except NotApplicable as err:
            skipped[method] = str(err)
            continue
        emit(_row(est, seed, reference))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["skipped"] = skipped
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (method, K): estimate, spread across seeds, mean stderr, ESS,
    worst k-hat, mean error and seconds, and whether every seed's stderr is vouched for
    (rows written before the ``vouched`` column existed are judged by the same rule,
    :func:`vouched_rows`)."""
    df = df.assign(vouched=vouched_rows(df))
    g = df.groupby(["method", "K"], sort=True)
    out = g.agg(
        estimate=("estimate", "mean"),
        seed_sd=("estimate", "std"),
        stderr=("stderr", "mean"),
        ess=("ess", "mean"),
        khat=("khat", "max"),
        error=("error", "mean"),
        seconds=("seconds", "mean"),
        seeds=("seed", "count"),
        vouched=("vouched", "all"),
    )
    return out.reset_index()


def vouched_rows(df: pd.DataFrame) -> pd.Series:
    """Each row's ``vouched`` (:attr:`Estimate.vouched`); where a row lacks it (a results file
    written before the column existed) it is judged by the engine's k-hat/ESS rule."""
    known = df["vouched"] if "vouched" in df.columns else pd.Series(math.nan, index=df.index)

    def judge(r) -> bool:
        if isinstance(r.vouched, (bool, np.bool_)):
            return bool(r.vouched)
        weighted = r.method in estimators.names() and estimators.get(r.method).weighted \
            and not estimators.get(r.method).reference
        return not (weighted and stderr_caveats(r.khat, r.ess, int(r.K)))

    return pd.Series([judge(r) for r in df.assign(vouched=known).itertuples()], index=df.index,
                     dtype=bool)
