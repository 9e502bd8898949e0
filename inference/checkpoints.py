"""What :func:`inference.fit` keeps on disk: checkpoints it resumes from, and the fitted state
and loss history of a finished fit (:func:`save_fit`, :func:`load_fit`).

Both are written atomically (:mod:`inference.io`) and hold tensors and plain metadata only
(:mod:`inference.state`: read with ``weights_only=True``, bound to the model, guide and data).
Under ``torchrun`` every rank's RNG state goes into the checkpoint and rank 0 alone writes it
(:mod:`inference.distributed`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from inference import distributed as parallel
from inference import state as state_file
from inference.io import PathLike, save_torch, write_with
from inference.state import param_state, set_param_state
from inference.target import Target, as_data, as_target


def resume(path, tgt, data, optim, batches, dev, run, columns, world=parallel.World(),
           seed=0):
    """Load ``path`` (a checkpoint of this very fit, else :class:`~inference.state.StateError`)
    into the param store, the networks, the optimiser, the RNGs and the minibatch stream
    (``batches``: its generator and its place in the epoch); returns the loss rows (a column
    the checkpoint predates is NaN) and the step to continue from."""
    saved = state_file.restore(path, tgt, data, dev, run)
    taken = saved.get("batches_taken", 0)  # older checkpoints: the generator after the draw
    if not isinstance(taken, int) or not 0 <= taken <= batches.per_epoch:
        raise state_file.StateError(f"{path} holds a minibatch position {taken!r} outside "
                                    f"[0, {batches.per_epoch}]; delete it to start the fit afresh")
    optim.set_state(saved["optim"])
    batches.restore(saved["generator"], taken)
    parallel.set_rng_state(world, saved["rng"], seed, int(saved["step"]))
    r = saved["rows"]
    nan = [math.nan] * len(r["step"])
    rows = list(zip(*(r[c].tolist() if c in r else nan for c in columns)))
    return rows, int(saved["step"])


def checkpoint(path, tgt, optim, rows, step, batches, run, columns, held=(),
               world=parallel.World()) -> None:
    """Write the fit's state after ``step`` steps to ``path`` (:func:`resume` continues it)."""
    rng = parallel.rng_state(world)  # every rank's (a collective); rank 0 writes, the others wait
    parallel.first(lambda: _save_checkpoint(path, tgt, optim, rows, step, batches, run, rng,
                                            columns, held), world)


def _save_checkpoint(path, tgt, optim, rows, step, batches, run, rng, columns, held) -> None:
    cols = list(zip(*rows)) or [()] * len(columns)
    table = {c: torch.tensor(col, dtype=torch.int64 if c == "step" else torch.float64)
             for c, col in zip(columns, cols)}
    saved = state_file.pack(param_state(tgt), run or {"target": state_file.identity(tgt)},
                            "checkpoint", optim=optim.get_state(), rows=table, step=int(step),
                            rng=rng, **batches.state(),
                            **({"heldout": [list(r) for r in held]} if held else {}))
    save_torch(saved, path)


STATE_FILE = "state.pt"
LOSS_FILE = "losses.csv"
HELDOUT_FILE = "heldout.csv"


def save_fit(result: Any, folder: PathLike) -> Path:
    """Write the fitted state (``state.pt``, see :mod:`inference.state`) and loss history
    (``losses.csv``) of ``result``, a :class:`~inference.FitResult`, to ``folder``, each file
    atomically."""
    folder = Path(folder)
    meta = {"target": state_file.identity(result.target), "data": result.state.get("data")}
    save_torch(state_file.pack(result.state, meta, "fit"), folder / STATE_FILE)
    write_with(folder / LOSS_FILE, lambda tmp: result.losses.to_csv(tmp, index=False))
    if result.heldout is not None:
        write_with(folder / HELDOUT_FILE, lambda tmp: result.heldout.to_csv(tmp, index=False))
    return folder


def load_fit(target: Any, folder: PathLike, device: Any = "cpu", data: Any = None) -> Target:
    """Load a state written by :func:`save_fit` into Pyro's param store and ``target``'s
    networks; returns the :class:`~inference.target.Target`.

    The file is read with ``weights_only=True`` and must belong to ``target`` (its name,
    options, guide and networks); with ``data``, also to that data (``N`` and hash) and the
    params the guide creates on it. Otherwise :class:`~inference.state.StateError` names the
    mismatch."""
    tgt = as_target(target)
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no fitted state at {path}; run inference.fit(...).save({folder!r}) first")
    saved = state_file.read(path, "fit")
    if data is not None:
        data = as_data(tgt, data, device)
    state_file.check(saved, tgt, path, data=data)
    if data is not None:
        state_file.check_params(saved, tgt, data, path)
    set_param_state(tgt, state_file.unpack(saved), device)
    return tgt
