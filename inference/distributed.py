"""Data parallelism on :mod:`torch.distributed`: what :func:`inference.fit` and
:func:`inference.estimate` do with ``distributed=True``.

Processes are started by ``torchrun`` (one per GPU, or a few per machine on CPU), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup`
joins the process group they describe (NCCL for CUDA, gloo for CPU) and puts each rank on
``cuda:LOCAL_RANK``. Without ``torchrun`` (no ``WORLD_SIZE``) it is a world of one process, so
the same script runs both ways.

**SVI.** Every rank draws the same global minibatch of ``B`` indices (the minibatch generator
is seeded alike) and keeps its shard ``batch[rank::P]`` of ``B_r`` datapoints, so the plate
scales its terms by ``N / B_r``. With ``L_r = G + (N / B_r) S_r`` (``G``: the global sites,
``S_r``: the shard's datapoint terms), the weighted sum

    sum_r (B_r / B) L_r = G + (N / B) sum_r S_r

is the single-process minibatch loss of the global batch, and so is the same sum of gradients:
:class:`GradReducer` sends ``(B_r / B) grad`` and the loss in one all-reduce per step, before
the optimiser. Parameters are created once and broadcast from rank 0 (:func:`start`), ranks
draw their particles from their own seeds, and only rank 0 writes files. This is PyTorch's
DDP [1] done by hand: Pyro keeps parameters in its param store, not in one ``nn.Module``.

**Estimates.** See :mod:`inference.sampling`: per-datapoint (local) work is dealt in blocks
seeded by their first global index, so results do not depend on the number of processes;
global weights are summed across ranks before the log-sum-exp.

References

[1] Li et al. (2020), PyTorch Distributed: Experiences on Accelerating Data Parallel Training, VLDB.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import pyro
import torch
import torch.distributed as dist

from inference.plates import on_datapoints


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``rank`` 0 writes the files)."""

    rank: int = 0
    size: int = 1

    @property
    def writer(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """This process's :class:`World` (one process when no group was joined)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def setup(device: torch.device) -> Tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes (once per process) and pick the device:
    ``cuda`` becomes ``cuda:LOCAL_RANK``. Returns ``(world, device)``. The processes meet at
    their store (:func:`meeting`), so a rank that never comes is an error after
    :func:`timeout` seconds, not a wait of the group's 30 minutes."""
    if launched() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        rank, size = _place()
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", meeting()),
                                rank=rank, world_size=size)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return world(), device


def timeout() -> float:
    """Seconds a process waits for the others to meet and to report on their checks:
    ``PPZOO_DIST_TIMEOUT`` (default 120)."""
    raw = os.environ.get("PPZOO_DIST_TIMEOUT", "120")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"PPZOO_DIST_TIMEOUT must be a number of seconds > 0, got {raw!r}")
    return value


def _place() -> Tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


_MEETING: dict = {"store": None, "rounds": 0}


def meeting() -> "dist.Store":
    """The key-value store ``torchrun``'s processes meet at (``MASTER_ADDR:MASTER_PORT``;
    torchrun's own, or rank 0's without it), joined once per process; every wait on it ends
    after :func:`timeout` seconds."""
    if _MEETING["store"] is None:
        limit = datetime.timedelta(seconds=timeout())
        store = next(dist.rendezvous("env://", timeout=limit))[0]
        store.set_timeout(limit)
        _MEETING["store"] = store
    return _MEETING["store"]


def agree(problem: Optional[str] = None) -> Optional[str]:
    """Every rank's verdict on its own input, before the first collective of a command: each
    posts ``problem`` (``None``: its checks passed) to :func:`meeting` -- the store, not the
    process group, so a rank that failed need not join one -- and waits at most
    :func:`timeout` seconds for every other rank's. Returns ``None`` when all passed, else one
    line: the first rank's problem (named by rank unless every rank had it), or the ranks that
    never reported. All ranks return the same line, so all stop together, none waits forever.
    One process (no ``torchrun``): ``problem`` itself."""
    if not launched():
        return problem
    rank, size = _place()
    limit = timeout()
    _MEETING["rounds"] += 1
    try:
        store = dist.PrefixStore(f"ppzoo/check{_MEETING['rounds']}", meeting())
        store.set(str(rank), "ok" if problem is None else "no" + problem)
        heard = _heard(store, [str(r) for r in range(size)], limit)
        if any(v.startswith("no") for v in heard.values()) or len(heard) < size:
            store.set(f"left{rank}", "")  # stay until every rank has read (rank 0 may hold the
            _wait(store, [f"left{r}" for r in heard], limit)  # store): all leave together
    except dist.DistError as e:
        return (f"the {size} processes did not meet at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} within {limit:g} s ({_first_line(e)}); start "
                "every rank, or raise PPZOO_DIST_TIMEOUT")
    problems = {int(r): v[2:] for r, v in heard.items() if v.startswith("no")}
    if problems:
        first = min(problems)
        if len(problems) == size and len(set(problems.values())) == 1:
            return problems[first]
        more = len(problems) - 1
        return (f"on rank {first} of {size}: {problems[first]}"
                + (f" (and on {more} other rank{'s' * (more > 1)})" if more else ""))
    missing = sorted(set(range(size)) - set(map(int, heard)))
    if missing:
        return (f"rank {', '.join(map(str, missing))} of {size} did not report on its checks "
                f"within {limit:g} s: it failed to start or is still loading (see its output); "
                "PPZOO_DIST_TIMEOUT sets the wait")
    return None


def _wait(store, keys: List[str], limit: float) -> None:
    """Until every key of ``keys`` is in ``store``, at most ``limit`` seconds (polled: the
    store's own timed wait logs its time-out)."""
    deadline = time.monotonic() + limit
    while not store.check(keys) and time.monotonic() < deadline:
        time.sleep(0.02)


def _heard(store, keys: List[str], limit: float) -> dict:
    """``{key: value}`` of ``keys`` in ``store`` once all are there, or of those there after
    ``limit`` seconds."""
    _wait(store, keys, limit)
    return {k: store.get(k).decode() for k in keys if store.check([k])}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for the stream ``(seed, *keys)``: independent streams for ranks and blocks."""
    words = np.random.SeedSequence([int(seed) % 2**63, *map(int, keys)]).generate_state(2)
    return int(words[0]) << 32 | int(words[1])


def rank_seed(seed: int, w: World) -> int:
    """The particle seed of this rank: ``seed`` on rank 0 (one process fits as without
    ``distributed``), an independent stream on the others."""
    return seed if w.rank == 0 else derived_seed(seed, w.rank) % 2**32


def check_fit(w: World, tgt, n: int, batch_size: Optional[int]) -> None:
    """Refuse, before any work, a distributed fit that cannot give every rank datapoints."""
    if w.size == 1:
        return
    if tgt.data_plate is None:
        raise ValueError(f"a fit on {w.size} processes shards the data plate, and the model "
                         "has none; declare it (Target(data_plate=...)) or run one process")
    if min(batch_size or n, n) < w.size:
        raise ValueError(f"a global batch of {min(batch_size or n, n)} datapoints cannot be "
                         f"shared by {w.size} processes; use batch_size >= {w.size}")


def shard(indices: torch.Tensor, w: World) -> torch.Tensor:
    """This rank's share of ``indices``: ``indices[rank::size]`` (disjoint, no padding)."""
    return indices[w.rank :: w.size]


def sharded_batches(batches: Iterator[Optional[torch.Tensor]], n: int, w: World,
                    device: torch.device) -> Iterator[Optional[torch.Tensor]]:
    """This rank's shard of each global minibatch (``None``: all ``n`` datapoints)."""
    everything = torch.arange(n, device=device)
    for batch in batches:
        yield shard(everything if batch is None else batch, w)


def _flat_groups(tensors: List[torch.Tensor]):
    """The tensors grouped by dtype and device (one message each), in a fixed order."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def broadcast_params(w: World) -> None:
    """Copy every parameter in Pyro's param store (network weights included) from rank 0."""
    if w.size == 1:
        return
    store = dict(pyro.get_param_store().named_parameters())
    with torch.no_grad():
        for group in _flat_groups([store[k] for k in sorted(store)]):
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, 0)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))


def start(w: World, elbo, model, guide, tgt, data, handler) -> None:
    """Create every parameter with one loss evaluation on two datapoints (the RNG left as it
    was), then make them equal on every rank. ``handler`` sets the data plate's indices."""
    if w.size == 1:
        return
    first = torch.arange(min(int(data[0].shape[0]), 2), device=data[0].device)
    chosen, batch = on_datapoints(tgt, data, first)
    handler.indices = chosen.indices
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        elbo.loss(model, guide, *batch)
    handler.indices = None
    broadcast_params(w)


class GradReducer:
    """The all-reduce of a step: ``weight * grad`` of every parameter and ``weight * loss``
    summed across ranks in one message per dtype (module docstring); called after
    ``backward`` and before the optimiser. Records time and bytes for the benchmark."""

    def __init__(self, w: World, weight: float):
        self.world, self.weight = w, weight
        self.seconds, self.bytes, self.calls = 0.0, 0, 0

    @classmethod
    def for_batch(cls, w: World, n: int, batch_size: Optional[int]) -> "GradReducer":
        """The reducer of a fit with global batch ``batch_size`` (``None``: all ``n``):
        weight ``B_r / B``, this rank's share of the batch."""
        total = n if batch_size is None or batch_size >= n else batch_size
        return cls(w, len(range(w.rank, total, w.size)) / total)

    def __call__(self, params: List[torch.Tensor], loss: torch.Tensor) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        if self.world.size == 1:
            return float(loss)
        t0 = time.perf_counter()
        value = 0.0
        tensors = grads + [loss.detach().reshape(1).to(grads[0].dtype if grads else loss.dtype)]
        for group in _flat_groups(tensors):
            flat = torch.cat([t.reshape(-1) for t in group]) * self.weight
            dist.all_reduce(flat)
            self.bytes += flat.numel() * flat.element_size()
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                if t is tensors[-1]:
                    value = float(part)
                else:
                    t.copy_(part.view_as(t))
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return value


class ReducedSVI(pyro.infer.SVI):
    """:class:`pyro.infer.SVI` whose step all-reduces the gradients before the optimiser."""

    def __init__(self, *args: Any, reduce: GradReducer, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reduce = reduce

    def step(self, *args: Any, **kwargs: Any) -> float:
        with pyro.poutine.trace(param_only=True) as capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        named = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        params = [named[k] for k in sorted(named)]  # the same order on every rank
        value = self.reduce(params, torch.as_tensor(loss, dtype=torch.float64))
        self.optim(set(params))
        pyro.infer.util.zero_grads(set(params))
        return value


def rng_state(w: World) -> torch.Tensor:
    """Every rank's CPU RNG state, ``[size, L]`` (one process: its state, ``[L]``)."""
    state = torch.get_rng_state()
    if w.size == 1:
        return state
    states = [torch.empty_like(state) for _ in range(w.size)]
    dist.all_gather(states, state)
    return torch.stack(states)


def set_rng_state(w: World, saved: torch.Tensor, seed: int, step: int) -> None:
    """Restore this rank's RNG state from :func:`rng_state`'s output; a checkpoint of another
    number of processes reseeds the ranks it has no state for from ``(seed, rank, step)``."""
    if saved.dim() == 1 and w.size == 1:
        torch.set_rng_state(saved)
    elif saved.dim() == 2 and saved.shape[0] == w.size:
        torch.set_rng_state(saved[w.rank].clone())
    else:
        pyro.set_rng_seed(derived_seed(seed, w.rank, step) % 2**32)


def all_sum(t: torch.Tensor, w: World) -> torch.Tensor:
    """``t`` summed over ranks (returned; ``t`` is left alone)."""
    if w.size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def gather(obj: Any, w: World) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a picklable object)."""
    if w.size == 1:
        return [obj]
    out: List[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def first(fn, w: World) -> Any:
    """``fn()`` run on rank 0 alone (e.g. creating and locking the run folder), its result --
    or the exception it raised -- handed to every rank, so all go on or stop together."""
    if w.size == 1:
        return fn()
    box: List[Any] = [None]
    if w.writer:
        try:
            box[0] = (True, fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            box[0] = (False, e)
    dist.broadcast_object_list(box, 0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
