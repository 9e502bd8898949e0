"""The random number generators a model may draw from -- torch's (the CPU's and a CUDA
device's), Python's and NumPy's (``pyro.set_rng_seed`` seeds all of them) -- saved, restored,
compared and reseeded together (:mod:`inference.compiled` checks its graph with them)."""

from __future__ import annotations

import random
from typing import List

import numpy as np
import torch


def states(device: torch.device) -> List:
    """The states of Python's, NumPy's and torch's generators (CPU, then ``device`` if CUDA)."""
    out = [random.getstate(), np.random.get_state(), torch.get_rng_state()]
    if device.type == "cuda":
        out.append(torch.cuda.get_rng_state(device))
    return out


def restore(device: torch.device, saved: List) -> None:
    """Put the generators back in the ``saved`` :func:`states`."""
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])
    if device.type == "cuda":
        torch.cuda.set_rng_state(saved[3], device)


def same_torch(a: List, b: List) -> bool:
    """Whether torch's generators are in the same states in ``a`` and ``b``."""
    return all(torch.equal(x, y) for x, y in zip(a[2:], b[2:]))


def reseed(device: torch.device, seed: int) -> None:
    """Fresh streams from ``seed`` for all of them (torch: the CPU and ``device`` alone); a
    cached normal sample (the second of a Box-Muller pair) goes too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
