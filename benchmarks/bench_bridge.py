"""Cost per likelihood evaluation of ``bridge`` and ``chib`` against ``is-guide`` on targets of
the benchmark pack (issue 21's goal: within 1.5x of is-guide's).

    python benchmarks/bench_bridge.py [--device cpu|cuda] [--quick] [-K 2000] [--repeats 3]
                                      [--targets beta-bernoulli-30,radiata-m1,...] [--threads N]

For each target the guide is fitted once; ``bridge`` and ``chib`` run with K chains (their
default options, and ``bridge`` with ``jit=True``), and ``is-guide`` with as many particles as
``bridge`` makes evaluations of ``log p(x, z)`` (``Estimator.evaluations``): equal cost. The
cases take turns (``common.interleaved``); a case's cost per evaluation is its median seconds
over its evaluations, and the ratio is to ``is-guide``'s on the same target. HMC evaluates the
gradient too, which ``is-guide`` does not. Prints a markdown table for benchmarks/RESULTS.md,
headed by the load average.
"""

from __future__ import annotations

import os
import statistics

import torch

import inference
from common import environment, interleaved, parser
from inference import estimators, pack

TARGETS = "beta-bernoulli-30,gaussian-3d-correlated,radiata-m1,gaussian-32d"


def main(argv=None):
    p = parser(__doc__, repeats=3)
    p.add_argument("-K", type=int, default=2000, help="chains of bridge and chib")
    p.add_argument("--targets", default=TARGETS)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    K = 40 if args.quick else args.K
    names = args.targets.split(",")[:1] if args.quick else args.targets.split(",")
    load = os.getloadavg()
    print(f"{environment()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; K = {K}, "
          f"{args.repeats} rounds\n")
    print("| target | method | evaluations | median s | min s | max s | us per evaluation "
          "| ratio to is-guide |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        b = pack.get(name)
        fit = b.fit(seed=0, steps=50 if args.quick else None)
        data = tuple(x.to(args.device) for x in b.data())
        cost = int(estimators.get("bridge").evaluations(K, **({"warmup": 6} if args.quick else {})))

        quick = {"warmup": 6} if args.quick else {}  # a smoke test: the defaults' cost is not timed

        def case(method, k, **o):
            return lambda: inference.estimate(fit, data, method, k, seed=0, device=args.device,
                                              **quick, **o)

        cases = {"is-guide": case("is-guide", cost), "bridge": case("bridge", K),
                 "bridge jit=True": case("bridge", K, jit=True), "chib": case("chib", K)}
        evals = {"is-guide": cost, "bridge": cost, "bridge jit=True": cost,
                 "chib": int(estimators.get("chib").evaluations(K, **({"warmup": 6} if args.quick else {})))}
        _, times = interleaved(cases, args.repeats, args.device)
        base = statistics.median(times["is-guide"]) / evals["is-guide"]
        for c, ts in times.items():
            per = statistics.median(ts) / evals[c]
            print(f"| {name} | {c} | {evals[c]} | {statistics.median(ts):.3f} | {min(ts):.3f} | "
                  f"{max(ts):.3f} | {1e6 * per:.3f} | {per / base:.2f} |")
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
