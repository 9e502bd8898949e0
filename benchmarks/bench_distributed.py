"""Data parallelism on this machine: P gloo processes (one thread each) against one, on the
784-pixel synthetic data (random binary images) with the vae, ``data_dim=784``.

    python benchmarks/bench_distributed.py [--processes 2] [--steps 200] [--batch 256]
                                           [-K 100] [-N 2000] [--repeats 3] [--quick]

For each world size it starts the processes itself (as ``torchrun`` would: ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and reports, per SVI step of the global
batch: the wall time, the time rank 0 spent in the gradient all-reduce of
:class:`inference.distributed.GradReducer` (waiting for the slower rank included), the same
all-reduce alone after a barrier (the communication proper), and the bytes it sends; then
the time of a local ``is-guide`` estimate of all N datapoints. Times are medians over
``--repeats`` runs of ``--steps`` steps after a warm-up run.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

from common import sync


def synthetic(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 784, generator=g) < 0.2).float()


def worker(args) -> dict:
    """One process's share of the benchmark (all processes run it)."""
    import torch.distributed as dist

    import inference
    import zoo
    from inference import distributed as parallel

    torch.set_num_threads(1)
    w, dev = parallel.setup(torch.device(args.device))
    torch.manual_seed(0)  # the same networks on every rank (broadcast anyway)
    entry = zoo.get("vae", data_dim=784)
    x = synthetic(args.N)
    made = []
    original = parallel.GradReducer.for_batch.__func__

    def for_batch(cls, *a):  # keep the reducer the fit makes, for its timings
        made.append(original(cls, *a))
        return made[-1]

    parallel.GradReducer.for_batch = classmethod(for_batch)

    def fit(steps, batch):
        return inference.fit(entry, x, steps=steps, batch_size=batch, lr=1e-3,
                             distributed=True, progress=False, device=dev)

    rows = {}
    for batch in args.batch:
        fit(5, batch)  # warm-up
        steps, reduce_s = [], []
        for _ in range(args.repeats):
            if w.size > 1:
                dist.barrier()
            r = fit(args.steps, batch)
            steps.append(r.seconds / args.steps)
            reduce_s.append(made[-1].seconds / max(made[-1].calls, 1))
        rows[batch] = dict(step=statistics.median(steps), reduce=statistics.median(reduce_s))
    nbytes = made[-1].bytes // max(made[-1].calls, 1)
    # the same all-reduce alone: every rank ready (a barrier) before the clock starts
    flat = torch.zeros(nbytes // 4, device=dev)
    comm = []
    for _ in range(args.steps if w.size > 1 else 0):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        sync(dev)
        comm.append(time.perf_counter() - t0)
    est = []
    for _ in range(args.repeats):
        if w.size > 1:
            dist.barrier()
        t0 = time.perf_counter()
        inference.estimate(entry, x, "is-guide", args.K, distributed=True, device=dev)
        sync(dev)
        est.append(time.perf_counter() - t0)
    med = statistics.median
    return dict(world=w.size, batches=rows, comm=med(comm) if comm else 0.0, bytes=nbytes,
                estimate=med(est),
                params=sum(p.numel() for p in entry.networks()["encoder"].parameters())
                + sum(p.numel() for p in entry.networks()["decoder"].parameters()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(size: int, argv) -> dict:
    """Run the worker on ``size`` processes; rank 0's report."""
    env = dict(os.environ, WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", *argv],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(size)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker of {size} failed")
    return json.loads(outs[0].strip().splitlines()[-1])


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, a GPU a process)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, nargs="+", default=[256],
                   help="global batch sizes, one timing each")
    p.add_argument("-K", type=int, default=100, help="particles per datapoint of the estimate")
    p.add_argument("-N", type=int, default=2000, help="synthetic images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.N, args.K, args.repeats, args.batch = 10, 200, 10, 1, [64]
    if args.worker:
        print(json.dumps(worker(args)))
        return
    forwarded = [f"--device={args.device}", f"--steps={args.steps}", "--batch", *map(str, args.batch), f"-K={args.K}",
                 f"-N={args.N}", f"--repeats={args.repeats}"]
    load = os.getloadavg()[0]
    rows = [launch(size, forwarded) for size in sorted({1, args.processes})]
    one = rows[0]
    backend = "NCCL" if args.device.startswith("cuda") else "gloo"
    print(f"vae data_dim=784, N={args.N}, {args.steps} steps x "
          f"{args.repeats}, is-guide K={args.K}; torch {torch.__version__}, {backend} on "
          f"{args.device}, 1 thread per process; {os.cpu_count()} cores, load average "
          f"{load:.2f} at the start\n")
    print("| processes | global batch | ms/step | speed-up | all-reduce ms/step (rank 0) | "
          "of which communication ms | bytes/all-reduce | estimate s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for batch, b in r["batches"].items():
            base = one["batches"][batch]["step"]
            print(f"| {r['world']} | {batch} | {1e3 * b['step']:.2f} | {base / b['step']:.2f} | "
                  f"{1e3 * b['reduce']:.2f} | {1e3 * r['comm']:.2f} | {r['bytes'] or '-'} | "
                  f"{r['estimate']:.2f} | {one['estimate'] / r['estimate']:.2f} |")
    print(f"\n<!-- {one['params']} network parameters -->")


if __name__ == "__main__":
    main()
