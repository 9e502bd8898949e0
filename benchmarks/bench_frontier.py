"""Seconds per likelihood evaluation of every registered estimator on targets of the benchmark
pack (:mod:`inference.pack`), against ``is-guide``'s on the same target (the issue-21 goal: each
new estimator within 1.5x of ``is-guide`` per evaluation).

    python benchmarks/bench_frontier.py [--quick] [--target NAME ...] [--method M ...]
                                        [-K 1000] [--repeats 3] [--threads N]

An evaluation is one of ``log p(x, z)`` (with its gradient, for the gradient-based methods) at
one particle: the method's own count (``diagnostics["evaluations"]``) where it reports one, else
:meth:`Estimator.evaluations`; a method whose count is unknown shows "-". Every method runs at
the same K on one fitted guide, the methods taking turns (``common.interleaved``); times are
medians over the repeats after a warm-up. The load average is printed beside the table: under
load, read the ratios, not the seconds. Prints markdown for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import statistics

import torch

import inference
from common import environment, interleaved, parser
from inference import estimators, pack

TARGETS = ("radiata-m1", "gaussian-32d", "loggamma-30d")


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--target", action="append", default=[], help=f"default: {', '.join(TARGETS)}")
    p.add_argument("--method", action="append", default=[],
                   help="default: every registered method but the references")
    p.add_argument("-K", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    targets = a.target or (TARGETS[:1] if a.quick else TARGETS)
    K = 50 if a.quick else a.K
    options = {"temperatures": 5, "warmup": 5} if a.quick else {}
    methods = a.method or [m for m in inference.methods() if not estimators.get(m).reference]
    if "is-guide" not in methods:
        methods = ["is-guide"] + methods  # the yardstick
    print(f"{environment()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"K = {K}, options {options or 'default'}")
    for name in targets:
        b = pack.get(name)
        fit = b.fit(seed=0, **({"steps": 50} if a.quick else {}))
        data = b.data()
        runnable, refused = {}, {}
        for m in methods:
            try:
                inference.estimate(fit, data, m, K, **options)
                runnable[m] = lambda m=m: inference.estimate(fit, data, m, K, **options)
            except ValueError as err:
                refused[m] = str(err).splitlines()[0][:90]
        values, times = interleaved(runnable, a.repeats, a.device)
        print(f"\n{name} ({b.dims} latent dims, {len(data[0])} rows); load average "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| method | K | evaluations | seconds | us per evaluation | vs is-guide |")
        print("|---|---:|---:|---:|---:|---:|")
        evals = {m: evaluations(est, K, options) for m, est in values.items()}
        seconds = {m: statistics.median(times[m]) for m in values}
        per = {m: seconds[m] / evals[m] if evals[m] else None for m in values}
        base = per.get("is-guide")
        for m in values:
            us = "-" if per[m] is None else f"{1e6 * per[m]:.3g}"
            ratio = "-" if per[m] is None or not base else f"{per[m] / base:.2f}"
            shown = "-" if evals[m] is None else f"{evals[m]:.4g}"
            print(f"| {m} | {K} | {shown} | {seconds[m]:.4f} | {us} | {ratio} |")
        for m, why in refused.items():
            print(f"| {m} | {K} | - | - | - | did not apply: {why} |")


def evaluations(est, K, options):
    """The estimate's own count of evaluations, else its method's count for K."""
    evals = est.diagnostics.get("evaluations")
    return estimators.get(est.method).evaluations(K, **options) if evals is None else evals


if __name__ == "__main__":
    main()
