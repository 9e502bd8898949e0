"""Peak memory and time of ``inference.estimate`` vs K and N at a fixed memory budget (digits vae).

    python benchmarks/bench_memory.py [--n 100 --n 1797] [--budget-mib 64] [-K 10 -K 100000]

Each K runs in a fresh process so that the peak resident set size (``ru_maxrss``) belongs
to that K alone; the baseline row (K=1) shows the memory of the interpreter, torch and data.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(n: int, K: int, budget: int) -> dict:
    import inference
    import zoo

    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    t0 = time.perf_counter()
    est = inference.estimate(entry, (x[:n],), "is-guide", K, memory_budget=budget)
    return {
        "K": K, "N": n, "seconds": time.perf_counter() - t0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "chunk_particles": est.diagnostics["chunk_particles"],
        "per_datapoint": est.mean_per_datapoint, "stderr": est.stderr / n,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, action="append", help="datapoints (repeatable; default 100)")
    p.add_argument("--budget-mib", type=int, default=64)
    p.add_argument("-K", type=int, action="append")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ks = args.K or [1, 100, 1000, 10000, 100000]
    ns = args.n or [100]
    if args.child:
        print(json.dumps(one(ns[0], ks[0], args.budget_mib << 20)))
        return
    print("| K | N | seconds | peak RSS MiB | particles per chunk | log p(x)/datapoint |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, K in [(n, K) for n in ns for K in ks]:
        out = subprocess.run([sys.executable, __file__, "--child", "-K", str(K), "--n", str(n),
                              "--budget-mib", str(args.budget_mib)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['K']} | {r['N']} | {r['seconds']:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['chunk_particles']} | {r['per_datapoint']:.3f} +- {r['stderr']:.3f} |")


if __name__ == "__main__":
    main()
