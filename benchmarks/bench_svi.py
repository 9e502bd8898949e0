"""SVI step time on the digits vae: ``inference.fit`` (its default, the compiled step of
:mod:`inference.compiled`) vs a hand-written PyTorch VAE training loop with the same networks,
optimiser and minibatches vs ``fit(compile=False)`` (every step eager) vs Pyro's
``JitTrace_ELBO``.

    python benchmarks/bench_svi.py [--device cpu|cuda] [--quick] [--steps 1000] [--repeats 5]
                                   [--threads 1]

Times are per step (min/median/max over repeats of ``--steps`` steps, after a warm-up; the
cases take turns, one round after another); ``ratio`` is that of the medians to the
hand-written loop's, ``per-round`` the median of the rounds' own ratios, all measured in one
run. Each ``fit`` call includes its own set-up (checks, the first eager step, tracing and the
check of the compiled step), amortised over ``--steps``; the other cases are timed in their
steady state. The 1-minute load average before and after a batch's rounds is in ``load``:
on a shared machine the ratios mean something only next to it.
"""

from __future__ import annotations

import os
import statistics
from functools import partial

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, JitTrace_ELBO

import inference
import inference.compiled
import zoo
from common import environment, interleaved, parser
from inference.target import SubsampleAt, subsampled


def batches(n, b, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for s in range(0, n - b + 1, b):
            yield perm[s : s + b].to(device)


def run_fit(entry, x, b, lr, device, **kw):
    def run(steps):
        return inference.fit(entry, (x,), steps=steps, batch_size=b, lr=lr, device=device,
                             progress=False, **kw).diagnostics
    return run


def run_fit_eager(entry, x, b, lr, device):
    return run_fit(entry, x, b, lr, device, compile=False)


def run_hand(entry, x, b, lr, device):
    params = list(entry.encoder.parameters()) + list(entry.decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # the same optimiser as fit's
    L, n = entry.latent_dim, x.shape[0]
    it = batches(n, b, device)

    def run(steps):
        for _ in range(steps):
            xb = x[next(it)]
            loc, s = entry.encoder(xb).split(L, dim=-1)
            scale = F.softplus(s) + entry.min_scale
            z = loc + scale * torch.randn_like(loc)
            logits = entry.decoder(z)
            rec = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
            kl = 0.5 * (loc**2 + scale**2 - 1).sum(-1) - scale.log().sum(-1)  # KL(q || N(0, I))
            loss = -(rec - kl).sum() * (n / b)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run


def run_jit(entry, x, b, lr, device):
    pyro.clear_param_store()
    handler = SubsampleAt("data")
    svi = SVI(subsampled(entry.model, handler), subsampled(entry.guide, handler),
              pyro.optim.Adam({"lr": lr}), JitTrace_ELBO(max_plate_nesting=1))
    it = batches(x.shape[0], b, device)

    def run(steps):
        for _ in range(steps):
            handler.indices = next(it)
            svi.step(x)
    return run


def load() -> str:
    """The 1-minute load average (``?`` where the system does not say)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "?"


def main(argv=None):
    p = parser(__doc__, repeats=5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as ppzoo's: on a shared machine more threads "
                        "than free cores make every case many times slower)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = inference.target.resolve_device(args.device)
    if args.quick:  # enough steps for the compiled step (inference.compiled.MIN_STEPS)
        args.steps, args.repeats = inference.compiled.MIN_STEPS + 10, 1
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data(device=dev)
    entry.to(dev)
    HAND = "hand-written PyTorch"
    print("| batch | case | min ms/step | median ms/step | max ms/step | ratio to hand-written "
          "| per-round | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    notes = []
    for b in (128, 1024):
        runs = {name: make(entry, x, b, 1e-3, dev)
                for name, make in ((HAND, run_hand), ("inference.fit", run_fit),
                                   ("inference.fit, compile=False", run_fit_eager),
                                   ("JitTrace_ELBO", run_jit))}
        for run in runs.values():
            run(5)  # warm-up beyond interleaved()'s own (and the JIT's tracing)
        before = load()
        values, times = interleaved({name: partial(run, args.steps) for name, run in runs.items()},
                                    args.repeats, dev)
        during = f"{before}-{load()}"
        ref = statistics.median(times[HAND]) / args.steps
        for name, ts in times.items():
            rounds = statistics.median(t / h for t, h in zip(ts, times[HAND]))
            ts = [t / args.steps for t in ts]
            med = statistics.median(ts)
            print(f"| {b} | {name} | {1e3 * min(ts):.2f} | {1e3 * med:.2f} | {1e3 * max(ts):.2f} | "
                  f"{med / ref:.2f} | {rounds:.2f} | {during} |")
        d = values["inference.fit"]
        notes.append(f"batch {b}: inference.fit took {d['compiled_steps']} of {args.steps} steps "
                     f"compiled ({d['not_compiled'] or 'the first is eager'}); tracing and the "
                     f"check: {1e3 * d.get('compile_seconds', 0):.0f} ms a call")
    print("\n" + "\n".join(notes))
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
