"""Shared pieces of the benchmark scripts: device synchronisation and repeated timing."""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for queued GPU work, so that wall times cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device):
    """``fn()`` once to warm up, then ``repeats`` times; returns its last value and the times."""
    fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return value, out


def parser(doc: str, repeats: int):
    """The options every benchmark takes: ``--device``, ``--quick``, ``--repeats``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs after a warm-up")
    return p
