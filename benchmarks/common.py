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
