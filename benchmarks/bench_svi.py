"""SVI step time on the digits vae: ``inference.fit`` vs a hand-written PyTorch VAE training
loop with the same networks, optimiser and minibatches vs Pyro's ``JitTrace_ELBO``; and the cost
of recording the ELBO's two terms (``fit`` with a ``Trace_ELBO`` subclass, which it does not read
terms from, against the plain ``fit``).

    python benchmarks/bench_svi.py [--device cpu|cuda] [--quick] [--steps 200] [--repeats 3]

Times are per step (min/median/max over repeats of ``--steps`` steps, after a warm-up; the
cases take turns); ratios are to the hand-written loop's median, all measured in one run.
"""

from __future__ import annotations

import statistics
from functools import partial

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

import inference
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
        inference.fit(entry, (x,), steps=steps, batch_size=b, lr=lr, device=device, progress=False,
                      **kw)
    return run


class NoTerms(Trace_ELBO):
    """The same loss; ``fit`` records the ELBO's terms only for Trace_ELBO itself."""


def run_fit_no_terms(entry, x, b, lr, device):
    return run_fit(entry, x, b, lr, device, loss=NoTerms(max_plate_nesting=1))


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


def main(argv=None):
    p = parser(__doc__, repeats=3)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    dev = inference.target.resolve_device(args.device)
    if args.quick:
        args.steps, args.repeats = 20, 2
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data(device=dev)
    entry.to(dev)
    print("| batch | case | min ms/step | median ms/step | max ms/step | ratio to hand-written |")
    print("| --- | --- | --- | --- | --- | --- |")
    for b in (128, 1024):
        runs = {name: make(entry, x, b, 1e-3, dev)
                for name, make in (("hand-written PyTorch", run_hand), ("inference.fit", run_fit),
                                   ("inference.fit, no terms", run_fit_no_terms),
                                   ("JitTrace_ELBO", run_jit))}
        for run in runs.values():
            run(5)  # warm-up beyond interleaved()'s own (and the JIT's tracing)
        _, times = interleaved({name: partial(run, args.steps) for name, run in runs.items()},
                               args.repeats, dev)
        ref = statistics.median(times["hand-written PyTorch"]) / args.steps
        for name, ts in times.items():
            ts = [t / args.steps for t in ts]
            med = statistics.median(ts)
            print(f"| {b} | {name} | {1e3 * min(ts):.2f} | {1e3 * med:.2f} | {1e3 * max(ts):.2f} | "
                  f"{med / ref:.2f} |")
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
