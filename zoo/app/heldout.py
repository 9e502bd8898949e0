"""Held-out rows: the compare job's seeded train/test split, what ``config.json`` records of it,
and evaluating a fitted model on data it was not fitted to (``ppzoo compare``'s test rows,
``ppzoo estimate --data``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import inference
import zoo
from zoo.app.folders import UsageError
from zoo.base import Job


def split_data(data, test_fraction: float, seed: int = 0):
    """``(train, test)``: ``round(test_fraction * N)`` datapoints drawn by a permutation seeded
    with ``seed`` are held out (``test`` is ``None`` when none are); both keep the data's order."""
    n = len(data[0])
    n_test = int(round(test_fraction * n))
    if n_test == 0:
        return data, None
    if n_test >= n:
        raise UsageError(f"test_fraction {test_fraction} leaves no datapoint to fit of {n}")
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_test]] = True
    held = held.to(data[0].device)
    return tuple(t[~held] for t in data), tuple(t[held] for t in data)


def split_record(job: Job, train, test, reason: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """What ``config.json`` records of a compare job's split: enough to repeat it, and the test
    rows' fingerprint (the ladder compares models on the same rows); without one, ``None``, or
    the ``reason`` the job's ``test_fraction`` was not applied."""
    if test is None:
        return None if reason is None else {"test_fraction": 0.0, "seed": job.split_seed,
                                            "reason": reason}
    return {"test_fraction": job.test_fraction, "seed": job.split_seed, "n_train": len(train[0]),
            "n_test": len(test[0]), "test_sha256": data_hash(test)}


def data_hash(data) -> str:
    """The SHA-256 of ``data`` (shapes, dtypes and bytes): names the file of its estimates."""
    from inference.state import fingerprint

    return fingerprint(data)["sha256"]


def fitted_rows(data, config: Dict[str, Any]):
    """The rows a run in ``config`` was fitted on: its ``split``'s training part, else all."""
    split = config.get("split")
    if not split:
        return data
    return split_data(data, split["test_fraction"], split["seed"])[0]


def check_new_data(data, fitted, path: str) -> None:
    """Refuse new ``data`` (from ``path``) whose datapoints are not shaped like those the model
    was fitted on (another number of features or pixels), before any work."""
    want = [tuple(t.shape[1:]) for t in fitted]
    have = [tuple(t.shape[1:]) for t in data]
    if have != want:
        raise UsageError(f"--data {path}: its datapoints have shape {have}, the fitted model's "
                         f"{want} (another number of columns?); pass data with the columns the "
                         "model was fitted on")


def new_data_problem(entry, data) -> Optional[str]:
    """Why the fitted ``entry`` cannot evaluate data it was not fitted to (``None`` if it can):
    its guide keeps parameters per datapoint, and its class defines no
    :meth:`~zoo.ZooModel.for_new_data` to fit new ones."""
    from inference.state import per_datapoint_params

    if type(entry).for_new_data is not zoo.ZooModel.for_new_data:
        return None
    local = per_datapoint_params(inference.as_target(entry), data)
    if not local:
        return None
    why = (" (a guide without them, e.g. an amortized one, would evaluate held-out rows)"
           if getattr(entry, "source", None) else
           ", and its class defines no for_new_data to fit new ones")
    return (f"{entry.name}'s guide keeps parameters per datapoint ({', '.join(local)}), fitted "
            f"to its training rows{why}")


def evaluation_entry(entry, data):
    """The entry that evaluates the fitted ``entry`` (loaded in the param store) on ``data`` it
    was not fitted to (:meth:`zoo.ZooModel.for_new_data`); refused where it cannot
    (:func:`new_data_problem`)."""
    problem = new_data_problem(entry, data)
    if problem:
        raise UsageError(f"{problem}: it cannot evaluate other data")
    return entry.for_new_data(*data)
