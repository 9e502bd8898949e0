"""Per-datapoint AIS on the digits vae: ``inference.estimate(method="ais")`` vs a hand-written
PyTorch AIS of the same networks, schedule, chain count, HMC settings and chunks; and peak
memory against the number of chains at a fixed memory budget.

    python benchmarks/bench_ais.py [--device cpu|cuda] [--quick] [--n 100] [-K 16]
                                   [--temperatures 100] [--repeats 5] [--threads N] [--memory]

Three cases: ``inference.estimate`` with its defaults (compiled densities,
:mod:`inference.compiled_path`), the same with ``jit=False`` (eager), and the hand-written loop.
Times are min/median/max over repeats after a warm-up, the cases taking turns; the ratio is
that of the medians, and the median of the per-round ratios (each round runs the cases back
to back, so they see about the same machine load); the load average (1 minute, its range over
the rounds) stands beside every figure, and on CPU the ratio of CPU seconds. The compiled and
eager estimates are the same number (printed). With
``--memory`` each chain count runs in a fresh process so that its peak resident set size is
its own. Prints markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F

import inference
import zoo
from common import environment, interleaved, load_range, parser
from inference.annealing import schedule
from inference.estimate import DEFAULT_BUDGET
from inference.weights import WeightStats

OPTS = dict(leapfrog_steps=5, step_size=0.1, target_accept=0.65)


def hand_written(entry, x, K, betas, chunk, data_chunk, leapfrog_steps, step_size, target_accept):
    """AIS from the encoder's Gaussian to the posterior, plain PyTorch: log mean w per datapoint."""
    L = entry.latent_dim
    c = 0.5 * L * math.log(2 * math.pi)
    out = []
    for xb in x.split(data_chunk):
        with torch.no_grad():
            loc, s = entry.encoder(xb).split(L, dim=-1)
            scale = F.softplus(s) + entry.min_scale

        def parts(z):  # log q(z), log p(x, z): [k, B]
            log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1) - c
            logits = entry.decoder(z)
            log_px = -F.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none").sum(-1)
            return log_q, log_px - 0.5 * (z * z).sum(-1) - c

        def potential(z, beta):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                log_q, joint = parts(z)
                f = (1 - beta) * log_q + beta * joint
                (g,) = torch.autograd.grad(f.sum(), z)
            return f.detach(), g, (joint - log_q).detach()

        stats = WeightStats(K)
        for start in range(0, K, chunk):
            k = min(chunk, K - start)
            with torch.no_grad():
                z = loc + scale * torch.randn(k, *loc.shape, device=x.device)
                log_q, joint = parts(z)
            diff, log_w = joint - log_q, torch.zeros(k, len(xb), device=x.device)
            eps = torch.full((len(xb), 1), step_size, device=x.device)
            for t in range(1, len(betas)):
                log_w += float(betas[t] - betas[t - 1]) * diff
                if t == len(betas) - 1:
                    break
                beta = float(betas[t])
                f, g, diff = potential(z, beta)
                p0 = torch.randn_like(z)
                q, p = z, p0 + 0.5 * eps * g
                for i in range(leapfrog_steps):
                    q = q + eps * p
                    f1, g1, d1 = potential(q, beta)
                    p = p + (eps if i < leapfrog_steps - 1 else 0.5 * eps) * g1
                log_r = f1 - f - 0.5 * (p * p).sum(-1) + 0.5 * (p0 * p0).sum(-1)
                log_r = torch.nan_to_num(log_r, nan=-math.inf)
                acc = torch.rand_like(log_r).log() < log_r
                z = torch.where(acc.unsqueeze(-1), q, z)
                diff = torch.where(acc, d1, diff)
                eps = (eps * torch.exp(2.0 * (log_r.clamp(max=0).exp().mean(0, keepdim=True).T
                                              - target_accept))).clamp(1e-4, 10.0)
            stats.update(log_w)
        out.append(stats.log_mean())
    return torch.cat(out)


def memory_child(n, K, T, budget):
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    est = inference.estimate(entry, (x[:n],), "ais", K, memory_budget=budget, temperatures=T,
                             **OPTS)
    print(json.dumps({"K": K, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "chunk_particles": est.diagnostics["chunk_particles"],
                      "chunk_datapoints": est.diagnostics["chunk_datapoints"]}))


def main(argv=None):
    p = parser(__doc__, repeats=5)
    p.add_argument("--n", type=int, default=100, help="datapoints")
    p.add_argument("-K", type=int, default=16, help="chains per datapoint")
    p.add_argument("--temperatures", type=int, default=100)
    p.add_argument("--budget", type=int, default=None, help="bytes; default: the library's")
    p.add_argument("--memory", action="store_true", help="peak memory vs chains at the budget")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    p.add_argument("--child", action="store_true", help=argparse_suppress())
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = inference.target.resolve_device(args.device)
    args.budget = args.budget or DEFAULT_BUDGET[dev.type]
    if args.child:
        return memory_child(args.n, args.K, args.temperatures, args.budget)
    if args.quick:
        args.n, args.K, args.temperatures, args.repeats = 20, 4, 5, 1
    entry = zoo.get("vae", latent_dim=2).to(dev)
    (x,) = entry.load_data(device=dev)
    x = x[: args.n]
    pyro.clear_param_store()
    T, K = args.temperatures, args.K
    betas = schedule(T, "sigmoid")
    print(f"{environment()}; budget {args.budget >> 20} MiB; untrained digits vae, "
          f"{OPTS['leapfrog_steps']} leapfrog steps\n")

    def ours(jit=True):  # the default: compiled densities (inference.compiled_path)
        return inference.estimate(entry, (x,), "ais", K, device=dev, memory_budget=args.budget,
                                  temperatures=T, jit=jit, **OPTS)

    plan = ours().diagnostics
    chunk, data_chunk = plan["chunk_particles"], plan["chunk_datapoints"]
    cpu = {"ours": [], "eager": [], "hand": []}

    def cpu_timed(name, fn):  # CPU seconds of this process: less sensitive to other load
        def run():
            c0 = time.process_time()
            out = fn()
            cpu[name].append(time.process_time() - c0)
            return out
        return run

    loads = []
    values, times = interleaved(
        {"ours": cpu_timed("ours", ours),
         "eager": cpu_timed("eager", lambda: ours(jit=False)),
         "hand": cpu_timed("hand", lambda: hand_written(entry, x, K, betas, chunk, data_chunk,
                                                        **OPTS))},
        args.repeats, dev, loads)
    cpu = {k: v[1:] for k, v in cpu.items()}  # the warm-up left out
    med = statistics.median
    ref = med(times["hand"])
    evals = len(x) * K * (T - 1) * (OPTS["leapfrog_steps"] + 1)
    load = load_range(loads)
    print("| case | N | K | T | chunk | min s | median s | max s | ratio to hand-written (median) "
          "| median per-round ratio | CPU-time ratio | gradient evaluations/s | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case, name in (("ours", "inference.estimate ais"),
                       ("eager", "inference.estimate ais, jit=False"),
                       ("hand", "hand-written PyTorch")):
        ts = times[case]
        rounds = med([a / b for a, b in zip(ts, times["hand"])])
        cpu_ratio = f"{med(cpu[case]) / med(cpu['hand']):.2f}" if dev.type == "cpu" else ""
        print(f"| {name} | {len(x)} | {K} | {T} | {chunk} x {data_chunk} | {min(ts):.3f} | "
              f"{med(ts):.3f} | {max(ts):.3f} | {med(ts) / ref:.2f} | {rounds:.2f} | {cpu_ratio} | "
              f"{evals / med(ts):.3g} | {load} |")
    print()
    for case in ("ours", "eager"):
        rounds = [a / b for a, b in zip(times[case], times["hand"])]
        print(f"{case}: per-round ratios {', '.join(f'{r:.2f}' for r in rounds)} (load averages "
              f"{', '.join(f'{v:.1f}' for v in loads)})")
    d = values["ours"].diagnostics
    print(f"compiled: {d['jit_chunks']} chunks compiled, {d.get('jit_fallbacks', 0)} eager, "
          f"{d.get('jit_graphs', 0)} graphs recorded; log p(x) {values['ours'].log_evidence!r} "
          f"compiled, {values['eager'].log_evidence!r} eager (seed 0)")
    ours_v, hand_v = values["ours"].per_datapoint, values["hand"]
    print(f"<!-- mean log p(x_n): ours {float(ours_v.mean()):.3f}, hand-written "
          f"{float(hand_v.mean()):.3f} (different draws) -->")
    if args.memory:
        print("\n| chains K | peak RSS MiB | chains x datapoints per chunk |")
        print("| --- | --- | --- |")
        for k in ([4, 16] if args.quick else [16, 64, 256, 1024]):
            out = subprocess.run([sys.executable, __file__, "--child", "-K", str(k), "--n",
                                  str(args.n), "--temperatures", str(min(T, 10)), "--budget",
                                  str(args.budget)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['K']} | {r['peak_rss_mib']:.0f} | {r['chunk_particles']} x "
                  f"{r['chunk_datapoints']} |")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
