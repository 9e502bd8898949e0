"""Cost per likelihood evaluation of ``nested`` and ``stepping-stone`` against ``is-guide`` on
one target of the benchmark pack (default: the 32-D Gaussian, whose guide is an autoguide).

    python benchmarks/bench_nested_ss.py [--target gaussian-32d] [--device cpu|cuda] [--quick]
                                         [-K 1000] [--repeats 3] [--threads N]

An evaluation is one of ``log p(x, z)`` at one particle (global scope): ``is-guide`` makes K
(each with a draw and the density of the guide), ``nested`` ``diagnostics["evaluations"]``
(without gradients, ``K / 2`` particles per call of the model), ``stepping-stone``
:meth:`~inference.estimators.stepping_stone.SteppingStone.evaluations` (each with its
gradient, K chains per call). Each method runs with K particles, live points or chains, so
that every call of the model is about as wide; the cases take turns after a warm-up run each.
Prints a markdown table for benchmarks/RESULTS.md: microseconds per evaluation (median over
repeats) and the ratio to ``is-guide``'s.
"""

from __future__ import annotations

import statistics

import pyro
import torch

import inference
from common import environment, interleaved, parser
from inference import pack


def main(argv=None):
    p = parser(__doc__, repeats=3)
    p.add_argument("--target", default="gaussian-32d")
    p.add_argument("-K", type=int, default=1000, help="particles, live points and chains")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ss_options = dict(temperatures=32, moves=5)
    nested_options = {}
    if args.quick:
        args.target, args.K, args.repeats = "beta-bernoulli-flat", 50, 1
        ss_options, nested_options = dict(temperatures=4, moves=1), dict(mcmc_steps=2)
    dev = inference.target.resolve_device(args.device)
    b = pack.get(args.target)
    pyro.clear_param_store()
    fit = b.fit(seed=0)
    data, K = b.data(), args.K
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{environment()}; target {args.target}; K = {K}; load average {' '.join(load)}\n")

    def run(method, **options):
        return lambda: inference.estimate(fit, data, method, K, seed=0, device=dev,
                                          scope="global", **options)

    values, times = interleaved({"is-guide": run("is-guide"),
                                 "nested": run("nested", **nested_options),
                                 "stepping-stone": run("stepping-stone", **ss_options)},
                                args.repeats, dev)
    evals = {"is-guide": K, "nested": values["nested"].diagnostics["evaluations"],
             "stepping-stone": values["stepping-stone"].diagnostics["evaluations"]}
    per = {m: statistics.median(t) / evals[m] * 1e6 for m, t in times.items()}
    print("| method | evaluations | median s | us per evaluation | ratio to is-guide | "
          "log Z - truth | stderr |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in times:
        e = values[m]
        print(f"| {m} | {evals[m]:.4g} | {statistics.median(times[m]):.3f} | {per[m]:.3g} | "
              f"{per[m] / per['is-guide']:.2f} | {e.log_evidence - b.log_evidence:.3f} | "
              f"{e.stderr:.3f} |")


if __name__ == "__main__":
    main()
