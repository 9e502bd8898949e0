"""Stochastic variational inference with ``Trace_ELBO`` on any target.

(Long: :func:`fit` is one function whose many options -- minibatches, particles,
losses, KL weight, held-out tracking, checkpoints, data parallelism, the compiled step -- each
take a few lines here and live in their own modules: :mod:`inference.elbo_terms`,
:mod:`inference.checkpoints`, :mod:`inference.distributed`, :mod:`inference.compiled`.)

:func:`fit` maximises the evidence lower bound [1]

    ELBO(q) = E_q[log p(x, z) - log q(z)] <= log p(x)

with Pyro's :class:`~pyro.infer.SVI`. Minibatches subsample the target's data plate from
outside (:class:`~inference.target.SubsampleAt`), so the plate scales each minibatch term by
``N / B`` and the minibatch ELBO is an unbiased estimate of the full-data ELBO [2].
Particles are vectorized under an extra plate (``vectorize_particles=True``).

References

[1] Jordan, Ghahramani, Jaakkola, Saul (1999), An Introduction to Variational Methods for
    Graphical Models.
[2] Hoffman, Blei, Wang, Paisley (2013), Stochastic Variational Inference.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pandas as pd
import pyro
import torch
import pyro.poutine as poutine
from pyro.infer import ELBO, SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.infer.util import is_validation_enabled
from tqdm import tqdm

from inference import distributed as parallel
from inference import state as state_file
from inference.elbo_terms import ELBOTerms, KLWeight, check_kl_weight
from inference.checkpoints import (HELDOUT_FILE, LOSS_FILE, STATE_FILE, load_fit,  # noqa: F401
                                   save_fit)
from inference.checkpoints import checkpoint as _checkpoint
from inference.checkpoints import resume as _resume
from inference.compiled import CompiledStep, why_not
from inference.io import PathLike
from inference.plates import ScaleToFull, check_sliceable, on_datapoints, resolve
from inference.results import FitResult
from inference.state import param_state
from inference.target import (
    SubsampleAt,
    Target,
    as_data,
    as_target,
    num_datapoints,
    resolve_device,
    subsampled,
    unwrapped,
)

LOSSES = {"trace": Trace_ELBO, "traceenum": TraceEnum_ELBO, "meanfield": TraceMeanField_ELBO}


class FusedAdam:
    """SVI with one ``torch.optim.Adam`` over every parameter, the default optimiser of :func:`fit`.

    Pyro's optimisers keep one torch optimiser per parameter (a Python call each per step); Adam
    is elementwise, so one optimiser with torch's fused kernel (one pass over all parameters;
    measured against torch's default and Pyro's per-parameter ones in benchmarks/RESULTS.md,
    section 3) takes the same steps for less overhead. It has SVI's
    ``step`` and PyroOptim's ``get_state``/``set_state`` (for checkpoints). Parameters are
    created by the first step and must not change afterwards (static structure).
    """

    def __init__(self, model, guide, elbo, lr: float):
        self.model, self.guide, self.elbo, self.lr = model, guide, elbo, lr
        self.optimizer: Optional[torch.optim.Adam] = None
        self.names: list = []
        self._waiting: Optional[Dict[str, Any]] = None
        self.reduce: Optional[parallel.GradReducer] = None  # distributed: the all-reduce

    def step(self, *data) -> float:
        loss = self.elbo.differentiable_loss(self.model, self.guide, *data)
        if self.optimizer is None:
            store = dict(pyro.get_param_store().named_parameters())
            self.names = sorted(store)
            self.optimizer = torch.optim.Adam([store[k] for k in self.names], lr=self.lr,
                                              fused=True)
            if self._waiting is not None:
                if self._waiting["names"] != self.names:
                    raise ValueError("the checkpoint's parameters differ from the model's")
                self.optimizer.load_state_dict(self._waiting["torch"])
        loss.backward()
        value = loss.item() if self.reduce is None else self.reduce(
            self.optimizer.param_groups[0]["params"], loss.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def get_state(self) -> Dict[str, Any]:
        if self.optimizer is None:
            return self._waiting
        return {"names": list(self.names), "torch": self.optimizer.state_dict()}

    def set_state(self, state: Dict[str, Any]) -> None:
        self._waiting = state


class _Batches:
    """Endless stream of index minibatches: shuffled epochs without replacement. Its
    :meth:`state` -- the generator's state before the current epoch's permutation, and how
    many batches of that epoch were taken -- continues the stream exactly (:meth:`restore`),
    also from the middle of an epoch."""

    def __init__(self, n: int, batch_size: Optional[int], generator: torch.Generator,
                 device: torch.device):
        self.n, self.size, self.generator, self.device = n, batch_size, generator, device
        self.per_epoch = 0 if batch_size is None or batch_size >= n else n // batch_size
        self.perm: Optional[torch.Tensor] = None
        self.taken, self.epoch_start = 0, generator.get_state()

    def __iter__(self):
        return self

    def __next__(self) -> Optional[torch.Tensor]:
        if not self.per_epoch:
            return None  # every datapoint, every step
        if self.perm is None or self.taken == self.per_epoch:
            self.epoch_start = self.generator.get_state()
            self.perm, self.taken = torch.randperm(self.n, generator=self.generator), 0
        self.taken += 1
        return self.perm[(self.taken - 1) * self.size : self.taken * self.size].to(self.device)

    def state(self) -> Dict[str, Any]:
        return {"generator": self.epoch_start, "batches_taken": self.taken}

    def restore(self, generator_state: torch.Tensor, taken: int) -> None:
        """Continue from :meth:`state`'s output (``taken=0``: from ``generator_state`` on)."""
        self.generator.set_state(generator_state)
        self.perm, self.taken, self.epoch_start = None, 0, generator_state
        if taken:
            next(self)  # the epoch's permutation, drawn again; then skip what was taken
            self.taken = taken


def fit(
    target: Any,
    data: Any,
    *,
    steps: int = 1000,
    lr: float = 1e-2,
    optim: Optional[pyro.optim.PyroOptim] = None,
    batch_size: Optional[int] = None,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    loss: Any = None,
    kl_weight: float = 1.0,
    seed: int = 0,
    device: Any = "cpu",
    progress: Optional[bool] = None,
    clear: bool = True,
    checkpoint: Optional[PathLike] = None,
    checkpoint_every: int = 500,
    heldout: Any = None,
    heldout_every: int = 100,
    kwargs: Optional[Dict[str, Any]] = None,
    distributed: bool = False,
    compile: bool = True,  # noqa: A002 -- the option's natural name (as torch.compile)
) -> FitResult:
    """Fit ``target`` to ``data`` by SVI.

    :param target: a zoo entry, a ``(model, guide)`` pair, or an :class:`inference.Target`.
    :param data: a tensor or a tuple of tensors, one row per datapoint.
    :param steps: number of optimisation steps (total, including resumed ones).
    :param lr: Adam's learning rate (ignored when ``optim`` is given).
    :param optim: a :mod:`pyro.optim` optimiser, e.g. ``ClippedAdam({"lr": 0.01, "lrd": 0.999})``;
        default: Adam over all parameters at once (:class:`FusedAdam`).
    :param batch_size: minibatch size over the data plate; ``None`` uses all the data.
    :param num_particles: ELBO particles per step.
    :param vectorize_particles: evaluate particles in one vectorized pass.
    :param loss: ``"trace"`` (:class:`~pyro.infer.Trace_ELBO`), ``"meanfield"``
        (:class:`~pyro.infer.TraceMeanField_ELBO`: the KL term in closed form where one exists,
        e.g. Gaussian guide and prior; needs a reparameterized mean-field guide), ``"traceenum"``
        (:class:`~pyro.infer.TraceEnum_ELBO`, for models that enumerate discrete sites), or an
        ELBO instance (``TraceMeanField_ELBO()``, ``Trace_ELBO(num_particles=4)``: its own
        settings win over ``num_particles``); default: the target's ``loss`` (a zoo entry's
        own), ``"traceenum"`` for a model with sites marked for enumeration
        (``@config_enumerate``), else ``"trace"``.
    :param kl_weight: beta, the weight of the KL term while training: maximise
        ``recon - beta * kl`` (beta-VAE, Higgins et al. 2017; ``1``: the ELBO). Latent sites of
        model and guide are scaled inside the fit only (:class:`~inference.elbo_terms.KLWeight`):
        the fitted target, and so every evidence estimate of it, is the model itself.
    :param seed: seeds Pyro/PyTorch and the minibatch order.
    :param device: ``"cpu"`` or ``"cuda"``; data, networks and params move there.
    :param progress: show a tqdm bar; default: only when stderr is a terminal.
    :param clear: clear Pyro's param store first, so fits do not leak into each other.
    :param checkpoint: file to write the state to every ``checkpoint_every`` steps, atomically;
        if it exists, the fit resumes from it.
    :param checkpoint_every: steps between checkpoints.
    :param heldout: data not fitted (same form as ``data``) whose ELBO is tracked: every
        ``heldout_every`` steps and after the last, the full held-out loss, one estimate with the
        fit's ELBO, no gradient, under its own seed (``seed`` and the step) in a forked RNG, so
        the training stream, hence the fitted parameters, are bitwise those of a fit without it.
        Refused for a guide with per-datapoint parameters (they belong to the training rows).
    :param heldout_every: steps between held-out evaluations.
    :param kwargs: keyword arguments for every call of model and guide.
    :param distributed: data-parallel over the processes ``torchrun`` started
        (:mod:`inference.distributed`): each takes its shard of every global minibatch of
        ``batch_size``, gradients are all-reduced, only rank 0 writes the checkpoint.
    :param compile: take the steps after the first with the compiled step
        (:mod:`inference.compiled`: the step's ELBO traced once and checked against the eager
        one; the same losses and parameters, without Pyro's per-step Python) wherever it
        applies; where it does not, the steps run eagerly and
        ``FitResult.diagnostics["not_compiled"]`` says why. ``False``: every step eager.
    """
    tgt = as_target(target, **({"kwargs": kwargs} if kwargs else {}))
    if not isinstance(loss, ELBO) and loss is not None and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass an "
                         "ELBO instance, e.g. pyro.infer.TraceMeanField_ELBO()")
    _check_settings(steps=steps, num_particles=num_particles, batch_size=batch_size,
                    checkpoint_every=checkpoint_every, seed=seed,
                    lr=lr if optim is None else None, compile=compile)
    if batch_size is not None and tgt.data_plate is None:
        raise ValueError("batch_size needs a data plate; set data_plate on the Target")
    dev = resolve_device(device)
    world, dev = parallel.setup(dev) if distributed else (parallel.World(), dev)
    data = as_data(tgt, data, dev)
    n = num_datapoints(data)
    tgt = resolve(tgt, data, own_subsampling=batch_size is None)
    if batch_size is not None and tgt.data_plate is None:
        raise ValueError("batch_size needs a data plate over the datapoints (a pyro.plate of "
                         f"size {n}); the model has none")
    if batch_size is not None:
        check_sliceable(tgt, data)
    if batch_size is not None and tgt.data_access == "whole" and _per_datapoint_autoguide(tgt, data):
        raise ValueError(
            "the model uses its data whole (obs=x, not indexed by the plate) and the autoguide "
            "keeps parameters per datapoint, so a minibatch cannot pick its rows: index the data "
            "with the plate, `with pyro.plate('data', len(x)) as idx: ... obs=x[idx]`"
        )
    if heldout is not None:
        heldout = _check_heldout(tgt, data, heldout, heldout_every, dev)
    parallel.check_fit(world, tgt, n, batch_size)
    if world.size > 1 and kl_weight != 1:
        raise ValueError(f"kl_weight={kl_weight} with distributed=True: the KL weight's loss "
                         "columns are not yet reduced across processes; fit in one process")
    if loss is None:
        loss = "traceenum" if tgt.loss == "trace" and _enumerates(tgt, data) else tgt.loss
    check_kl_weight(kl_weight, loss if isinstance(loss, ELBO) else LOSSES[loss]())
    if clear:
        pyro.clear_param_store()
    pyro.set_rng_seed(parallel.rank_seed(seed, world))
    stream = _Batches(n, batch_size, torch.Generator().manual_seed(seed), dev)

    handler = SubsampleAt(tgt.data_plate)
    model, guide = subsampled(tgt.model, handler), subsampled(tgt.guide, handler)
    if tgt.data_access == "whole":  # minibatches are passed sliced, and scaled to N here
        model, guide = ScaleToFull(tgt.data_plate, n)(model), ScaleToFull(tgt.data_plate, n)(guide)
    if kl_weight != 1:
        model, guide = KLWeight(kl_weight)(model), KLWeight(kl_weight)(guide)
    if isinstance(loss, ELBO):
        elbo = loss
        if elbo.max_plate_nesting == float("inf"):
            elbo.max_plate_nesting = tgt.plate_nesting(data)
    else:
        elbo = LOSSES[loss](
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=tgt.plate_nesting(data),
        )
    # the terms are per process under torchrun (a shard's): recorded in one process only
    terms = ELBOTerms(elbo, n, kl_weight, record=world.size == 1)
    elbo = terms.elbo
    reduce = parallel.GradReducer.for_batch(world, n, batch_size) if distributed else None
    if optim is None:
        svi = optim = FusedAdam(model, guide, elbo, lr)
        svi.reduce = reduce
    else:
        svi = SVI(model, guide, optim, elbo) if reduce is None else \
            parallel.ReducedSVI(model, guide, optim, elbo, reduce=reduce)

    rows: list = []
    start = 0
    run = None if checkpoint is None else state_file.run_meta(
        tgt, data, None if svi is optim else optim, steps=steps, seed=seed, lr=lr, loss=loss,
        batch_size=batch_size, num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        **({} if kl_weight == 1 else {"kl_weight": kl_weight}))
    held: list = []
    if checkpoint is not None and Path(checkpoint).exists():
        rows, start = _resume(checkpoint, tgt, data, optim, stream, dev, run, terms.columns,
                              world, seed)
        held = [tuple(r) for r in state_file.read(checkpoint, "checkpoint").get("heldout", [])]
    batches = stream
    if world.size > 1:
        batches = parallel.sharded_batches(stream, n, world, dev)
        parallel.start(world, elbo, model, guide, tgt, data, handler)

    show = (sys.stderr.isatty() if progress is None else progress) and world.writer
    bar = tqdm(total=steps - start, desc=f"fit {tgt.name}", disable=not show, leave=False)
    why = why_not(elbo, tgt.networks, steps - start) if compile else "compile=False"
    compiler = fast = None if why is not None else CompiledStep(
        svi, elbo, model, guide, handler, terms, data, tgt.data_access == "whole", svi is optim)

    def held_out(step: int) -> bool:
        return heldout is not None and ((step + 1) % heldout_every == 0 or step + 1 == steps)

    def saved(step: int) -> bool:
        return checkpoint is not None and (step + 1) % checkpoint_every == 0

    def due(step: int) -> bool:  # whether after(step) has more to do than count the step
        return show and step % 50 == 0 or held_out(step) or saved(step)

    def after(step: int, taken: int = 1) -> None:  # once rows holds the row of step
        bar.update(taken)
        if step % 50 == 0:
            bar.set_postfix(loss_per_datapoint=f"{rows[-1][2]:.4g}")
        if held_out(step):
            held.append(_heldout_loss(tgt, elbo, heldout, seed, step + 1))
        if saved(step):
            _checkpoint(checkpoint, tgt, optim, rows, step + 1, stream, run, terms.columns,
                        held, world)

    t0 = time.perf_counter()
    validated = False
    step = start
    while step < steps:
        indices = next(batches)
        if fast is not None and fast.graph is not None:
            step, indices = fast.run(step, steps, indices, batches, rows, due, after)
            if step == steps:
                break
            why, fast = fast.reason, None  # this step and the rest run eagerly
        chosen, batch = on_datapoints(tgt, data, indices)
        handler.indices = chosen.indices
        # The first step runs Pyro's argument and model/guide checks; the structure is static,
        # so later steps skip them (they cost about a third of a small model's step).
        with pyro.validation_enabled(is_validation_enabled() and not validated), terms.step():
            value = svi.step(*batch)
        validated = True
        rows.append(terms.row(step, value))
        after(step)
        if fast is not None and fast.graph is None:  # compile the steps after the first
            why = fast.trace(indices)
            fast = fast if why is None else None
        step += 1
    bar.close()
    seconds = time.perf_counter() - t0
    handler.indices = None
    if checkpoint is not None:
        _checkpoint(checkpoint, tgt, optim, rows, steps, stream, run, terms.columns, held, world)
    losses = pd.DataFrame(rows, columns=list(terms.columns))
    if not losses["loss"].map(math.isfinite).all():
        raise FloatingPointError(
            f"the loss became NaN or infinite while fitting {tgt.name}; lower lr or check the data"
        )
    table = None if heldout is None else pd.DataFrame(held, columns=list(HELDOUT_COLUMNS))
    return FitResult(tgt, losses, param_state(tgt, data), seconds, heldout=table, diagnostics=dict(
        compiler.diagnostics if compiler is not None else {"compiled_steps": 0},
        not_compiled=why))


def _check_settings(*, steps, num_particles, batch_size, checkpoint_every, seed, lr,
                    compile) -> None:  # noqa: A002
    """Refuse a setting :func:`fit` would silently round or run without learning (``1.5``
    particles run as one; ``lr=0`` keeps the initial parameters and a constant loss)."""
    import numbers

    def integer(v, low):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

    for name, value, low in (("steps", steps, 0), ("num_particles", num_particles, 1),
                             ("checkpoint_every", checkpoint_every, 1), ("seed", seed, 0)):
        if not integer(value, low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if seed >= 2**32:  # numpy's seed, which pyro.set_rng_seed sets too, stops there
        raise ValueError(f"seed must be below 2**32, got {seed}")
    if batch_size is not None and not integer(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if lr is not None and not (isinstance(lr, numbers.Real) and not isinstance(lr, bool)
                               and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0 (Adam's step size, e.g. 0.01), got "
                         f"{lr!r}; to hold the parameters fixed on purpose, pass an optimiser "
                         "of step size 0, e.g. optim=pyro.optim.SGD({'lr': 0.0})")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")


HELDOUT_COLUMNS = ("step", "heldout_loss", "heldout_loss_per_datapoint")


def _check_heldout(tgt, data, heldout, every, dev):
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"heldout_every must be an integer >= 1, got {every!r}")
    heldout = as_data(tgt, heldout, dev)
    if len(heldout) != len(data) or any(h.shape[1:] != d.shape[1:] for h, d in zip(heldout, data)):
        raise ValueError("heldout must have the training data's form (the same tensors, shapes "
                         f"past the first dimension), got {[tuple(h.shape) for h in heldout]}")
    local = state_file.per_datapoint_params(tgt, data)
    if local:
        raise ValueError(f"the guide keeps parameters per datapoint ({', '.join(local)}), fitted "
                         "to the training rows only: it has no ELBO on held-out data; track it "
                         "with an amortized guide, or fit guides to the held-out data afterwards")
    return heldout


def _heldout_loss(tgt, elbo, heldout, seed: int, step: int):
    """One full held-out loss estimate, no gradient, under its own seed in a forked RNG."""
    devices = [d.device for d in heldout if d.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        torch.manual_seed((seed * 1_000_003 + step) % 2**63)
        value = elbo.loss(tgt.model, tgt.guide, *heldout)
    return step, value, value / num_datapoints(heldout)


def _per_datapoint_autoguide(tgt: Target, data) -> bool:
    """An autoguide of a model with latents in the data plate."""
    from inference.scope import latent_sites

    return isinstance(unwrapped(tgt.guide), AutoGuide) and bool(latent_sites(tgt, data)[0])


def _enumerates(tgt: Target, data) -> bool:
    """Whether the model marks a site for parallel enumeration (``@config_enumerate``)."""
    with poutine.block(), torch.no_grad():
        tr = poutine.trace(tgt.model).get_trace(*data)
    return any(site["type"] == "sample" and site["infer"].get("enumerate") == "parallel"
               for site in tr.nodes.values())
