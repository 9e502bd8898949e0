"""Per-datapoint importance sampling on the digits vae: ``inference.estimate(method="is-guide")``
vs a hand-written PyTorch IWAE evaluator of the same networks and chunking vs
``pyro.infer.Importance`` run per datapoint (timed on a subset, extrapolated).

    python benchmarks/bench_iwae.py [--device cpu|cuda] [--quick] [-K 100 -K 1000] [--repeats 5]
                                     [--synthetic N] [--budget BYTES] [--threads N]

Every comparison is measured in one run; times are min/median/max over repeats after a
warm-up, ours and the hand-written evaluator taking turns; the ratio is that of the medians,
beside the median of the per-round ratios, the ratio of CPU seconds (CPU) and the load
average (1 minute, its range over the rounds). The last row is the fixed cost of a call:
``inference.estimate`` on 5 datapoints at K = 10 (checks, set-up traces, the memory pilot,
one chunk, the k-hat), per call. Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

import inference
import zoo
from common import environment, interleaved, load_range, parser, timed
from inference.estimate import DEFAULT_BUDGET
from inference.weights import WeightStats, pareto_khat, tail_length


def hand_written(entry, x, K, chunk, data_chunk):
    """IWAE log p(x_n) with the entry's own networks, plain PyTorch, the same chunking."""
    L = entry.latent_dim
    out = []
    with torch.no_grad():
        for xb in x.split(data_chunk):
            loc, s = entry.encoder(xb).split(L, dim=-1)
            scale = F.softplus(s) + entry.min_scale
            stats = WeightStats(K)
            for start in range(0, K, chunk):
                k = min(chunk, K - start)
                eps = torch.randn(k, *loc.shape, device=x.device)
                z = loc + scale * eps
                logits = entry.decoder(z)
                log_px = -F.binary_cross_entropy_with_logits(
                    logits, xb.expand_as(logits), reduction="none").sum(-1)
                log_pz = -0.5 * (z**2).sum(-1) - 0.5 * L * math.log(2 * math.pi)
                log_qz = (-0.5 * eps**2 - scale.log()).sum(-1) - 0.5 * L * math.log(2 * math.pi)
                stats.update(log_px + log_pz - log_qz)
            out.append(stats.log_mean())
    return torch.cat(out)


def pyro_importance(entry, x, K, subset):
    """``pyro.infer.Importance`` per datapoint (its weights are one joint weight per batch)."""
    out = []
    with torch.no_grad():
        for n in range(subset):
            xn = x[n : n + 1]
            imp = pyro.infer.Importance(entry.model, entry.guide, num_samples=K).run(xn)
            out.append(float(imp.get_log_normalizer()))
    return out


def main(argv=None):
    p = parser(__doc__, repeats=5)
    p.add_argument("-K", type=int, action="append", help="particles per datapoint; repeatable "
                   "(default 1000)")
    p.add_argument("--budget", type=int, default=None, help="bytes; default: the library's")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="N random 784-pixel binary images instead of the digits")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = inference.target.resolve_device(args.device)
    args.budget = args.budget or DEFAULT_BUDGET[dev.type]
    if args.synthetic:
        entry = zoo.get("vae", latent_dim=2, data_dim=784)
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(args.synthetic, 784, generator=g) < 0.2).float().to(dev)
    else:
        entry = zoo.get("vae", latent_dim=2)
        (x,) = entry.load_data(device=dev)
    entry.to(dev)
    Ks = args.K or [1000]
    if args.quick:
        x, Ks, args.repeats = x[:300], [min(K, 200) for K in Ks], 2
    pyro.clear_param_store()
    print(f"{environment()}; budget {args.budget >> 20} MiB\n")
    print("| case | N | K | chunk | min s | median s | max s | ratio to hand-written (median) | "
          "median per-round ratio | CPU-time ratio | evaluations/s | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    notes = [one_K(entry, x, K, args, dev) for K in Ks]
    fixed_cost(entry, x, args, dev)
    print("\n".join(notes))


def fixed_cost(entry, x, args, dev, calls=20):
    """The time of one ``estimate`` call on a tiny problem (5 datapoints, K = 10), per call: wall
    seconds (min/median/max over the repeats) and, on CPU, the median CPU seconds in the
    CPU-time column (less sensitive to other load)."""
    xs = x[:5]

    def tiny():
        for _ in range(calls):
            inference.estimate(entry, (xs,), "is-guide", 10, device=dev, memory_budget=args.budget)

    loads = []
    _CPU.pop("tiny", None)
    _, times = interleaved({"tiny": cpu_clock(tiny, "tiny")}, args.repeats, dev, loads)
    ts = [t / calls for t in times["tiny"]]
    cpu = statistics.median(_CPU["tiny"][1:]) / calls if dev.type == "cpu" else None
    print(f"| fixed cost of a call: inference.estimate is-guide, 5 datapoints (s per call) | 5 | "
          f"10 | 10 x 5 | {min(ts):.4f} | {statistics.median(ts):.4f} | {max(ts):.4f} | | | "
          f"{'' if cpu is None else f'{cpu:.4f} s'} | | {load_range(loads)} |")


_CPU: dict = {}


def cpu_clock(fn, name=None):
    """``fn`` that also records its CPU seconds under ``name`` (less sensitive to other load)."""
    def run():
        c0 = time.process_time()
        out = fn()
        _CPU.setdefault(name, []).append(time.process_time() - c0)
        return out
    return run


def one_K(entry, x, K, args, dev):
    N = x.shape[0]

    def ours():
        return inference.estimate(entry, (x,), "is-guide", K, device=dev, memory_budget=args.budget)

    # the hand-written evaluator uses the chunks that the library plans for this budget
    plan = ours().diagnostics
    chunk, data_chunk = plan["chunk_particles"], plan["chunk_datapoints"]
    loads = []
    _CPU.clear()
    values, times = interleaved(
        {"ours": cpu_clock(ours, "ours"),
         "hand": cpu_clock(lambda: hand_written(entry, x, K, chunk, data_chunk), "hand")},
        args.repeats, dev, loads)
    cpu = {k: v[1:] for k, v in _CPU.items()}  # the warm-up left out
    # the diagnostics' share: the PSIS k-hat, which the hand-written loop does not compute
    top = torch.randn(tail_length(K) + 1, N, dtype=torch.float64).sort(0, descending=True).values
    _, t_khat = timed(lambda: pareto_khat(top, K, args.budget), args.repeats, "cpu")
    subset = 3 if args.quick else 10
    _, t_imp = timed(lambda: pyro_importance(entry, x, K, subset), 1, dev)
    imp_total = min(t_imp) / subset * N

    med = statistics.median
    ref = med(times["hand"])
    load = load_range(loads)
    rows = (("inference.estimate is-guide", "ours"), ("hand-written PyTorch", "hand"),
            ("of which PSIS k-hat", None))
    for name, case in rows:
        ts = t_khat if case is None else times[case]
        rounds = "" if case is None else f"{med([a / b for a, b in zip(ts, times['hand'])]):.2f}"
        cpu_ratio = (f"{med(cpu[case]) / med(cpu['hand']):.2f}"
                     if case is not None and dev.type == "cpu" else "")
        print(f"| {name} | {N} | {K} | {chunk} x {data_chunk} | {min(ts):.3f} | {med(ts):.3f} | "
              f"{max(ts):.3f} | {med(ts) / ref:.2f} | {rounds} | {cpu_ratio} | "
              f"{N * K / med(ts):.3g} | {load} |")
    print(f"| pyro.infer.Importance per datapoint (extrapolated from {subset}) | {N} | {K} | | "
          f"{imp_total:.1f} | | | {imp_total / ref:.0f} | | | {N * K / imp_total:.3g} | {load} |")
    diff = float((values["ours"].per_datapoint - values["hand"]).abs().mean())
    return (f"<!-- K={K}: {imp_total / med(times['ours']):.0f}x faster than Importance; mean "
            f"|ours - hand-written| per datapoint = {diff:.3f} nats (different draws) -->")


if __name__ == "__main__":
    main()
