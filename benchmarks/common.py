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
    values, times = interleaved({"fn": fn}, repeats, device)
    return values["fn"], times["fn"]


def interleaved(cases, repeats: int, device, loads=None):
    """Time several cases round-robin: each once to warm up, then ``repeats`` rounds of one run
    of each. Interleaving gives every case the same machine and allocator state (glibc's heap
    grows and shrinks with the chunk sizes: back-to-back runs of one case can be 1.5x faster
    or slower than the same runs after another case). Returns their last values and times;
    with a list ``loads``, appends the load average after each round to it."""
    values = {name: fn() for name, fn in cases.items()}
    sync(device)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            values[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if loads is not None:
            loads.append(load_average())
    return values, times


def load_average() -> float:
    """The machine's 1-minute load average (``nan`` where the system does not say)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def load_range(loads) -> str:
    """``"min-max"`` of load averages, for the column every timing table carries."""
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"


def environment() -> str:
    """One line naming what the timings depend on: torch, threads and allocator settings."""
    import os

    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"allocator settings {malloc or 'default'}")


def parser(doc: str, repeats: int):
    """The options every benchmark takes: ``--device``, ``--quick``, ``--repeats``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs after a warm-up")
    return p
