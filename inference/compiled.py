"""The compiled SVI step: the ELBO of :func:`inference.fit` traced once and run as a graph.

A small model's SVI step is mostly Python: at every step Pyro runs guide and model through its
handler stack, builds a distribution per site and computes each ``log_prob`` from Python [1].
When model and guide trace to a fixed structure (the same sites, plates and shapes at every
step: the usual case) that work can be recorded once. After the first step (eager: it creates
the parameters and runs Pyro's checks), :class:`CompiledStep` records the step's loss with
:func:`torch.jit.trace` as a function of the minibatch indices, the data and the parameters,
and later steps run the graph in TorchScript's interpreter with its optimisations off: the
same ATen operations, recorded for autograd as when called from Python, without the Python.
The graph holds the sampling operations, so it draws from torch's global RNG as the eager step
does; every latent value is an output of the graph, so no draw is dropped as unused (a plate's
random subsample included).

**What it vouches for.** The compiled step computes what the eager step computes, bit for bit
(Pyro's ``torch_item``, which would freeze the loss into a constant of the trace, keeps each
term as a float64 tensor while tracing: the same float64 sums). That is checked, not
assumed: the Python traced must not turn a tensor into a Python number, boolean or list
(tracing warns where it does, and a warning from outside torch and Pyro refuses); and the
graph, traced at one minibatch with every RNG reseeded, is run at the next step's minibatch
against the eager function with the same RNG state: the loss, its two ELBO terms, every
gradient (to 1e-5 relative; they are equal) and the RNG state after it must agree. Otherwise,
and for another ELBO than ``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO`` (a
subclass may compute another loss), networks with buffers (BatchNorm statistics a graph would
not update), fewer than :data:`MIN_STEPS` steps or a minibatch of another size, the fit goes
on eagerly from where it is, with the reason in ``FitResult.diagnostics["not_compiled"]``, the
RNGs as if nothing had been tried. So a compiled fit takes the steps an eager fit takes, and a
checkpoint of either resumes with either.

References

[1] Bingham et al. (2019), Pyro: Deep Universal Probabilistic Programming, JMLR (the effect
    handlers a step runs through).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import pyro
import pyro.infer.trace_elbo
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.util import zero_grads
from pyro.poutine.messenger import Messenger

from inference import rngs

#: below this many steps to take, tracing and the check (about as long as 20 to 50 eager steps
#: of the zoo's models) cost more than they save
MIN_STEPS = 50
_ELBOS = (Trace_ELBO, TraceMeanField_ELBO, TraceEnum_ELBO)
_RTOL = 1e-5


def why_not(elbo, networks: Dict[str, torch.nn.Module], steps_left: int) -> Optional[str]:
    """Why a fit cannot take the compiled step, known before any step (``None``: it can)."""
    if type(elbo) not in _ELBOS:
        return (f"the loss is a {type(elbo).__name__}; the compiled step knows Trace_ELBO, "
                "TraceMeanField_ELBO and TraceEnum_ELBO (a subclass may compute another loss)")
    held = [name for name, net in networks.items() if next(net.buffers(), None) is not None]
    if held:
        return (f"network {held[0]!r} has buffers (e.g. BatchNorm running statistics), which a "
                "compiled step would not update")
    if steps_left < MIN_STEPS:
        return f"{steps_left} steps to take: below {MIN_STEPS}, compiling costs more than it saves"
    return None


@contextlib.contextmanager
def _loss_kept_as_tensor():
    """Pyro's ``Trace_ELBO`` adds up the loss in Python floats (``torch_item``); under tracing
    that would be a constant of the graph. While tracing, each term stays a float64 tensor:
    the same float64 sums, computed by the graph at every step."""
    module = pyro.infer.trace_elbo
    saved = module.torch_item
    module.torch_item = lambda x: x if isinstance(x, numbers.Number) else x.detach().double()
    try:
        yield
    finally:
        module.torch_item = saved


class _Draws(Messenger):
    """Collects the value of every unobserved sample site, plates' subsamples included."""

    def __enter__(self):
        self.values = []
        return super().__enter__()

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and torch.is_tensor(msg["value"]):
            self.values.append(msg["value"])


def _difference(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> float:
    """``max |a - b| / max |a|`` (``None``: a zero gradient; NaNs in the same places agree)."""
    if a is None and b is None:
        return 0.0
    a = torch.zeros_like(b) if a is None else a
    b = torch.zeros_like(a) if b is None else b
    if a.shape != b.shape or not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    if torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) or a.numel() == 0:
        return 0.0
    d = float((a - b).nan_to_num(0.0, float("inf"), float("inf")).abs().max())
    return d / max(float(a.nan_to_num(0.0).abs().max()), 1e-30)


class CompiledStep:
    """The SVI step of one fit, traced once (:meth:`trace`), checked once, then taken by
    :meth:`run` (module docstring).

    :param svi: the fit's stepper: :class:`~inference.svi.FusedAdam`, or Pyro's
        :class:`~pyro.infer.SVI` with a Pyro optimiser (:class:`~inference.distributed.ReducedSVI`
        under ``torchrun``); its optimiser and gradient all-reduce are used as they are.
    :param elbo: the ELBO of the fit (:attr:`ELBOTerms.elbo`, which reads the terms).
    :param model, guide: as the fit runs them (subsampled, scaled, KL-weighted).
    :param handler: the :class:`~inference.target.SubsampleAt` of the data plate.
    :param terms: the fit's :class:`~inference.elbo_terms.ELBOTerms`.
    :param data: the fit's data; ``whole``: minibatches are passed as sliced tensors.
    :param fused: ``svi`` is :class:`~inference.svi.FusedAdam` (its loss is a float32 value).
    """

    def __init__(self, svi, elbo, model, guide, handler, terms, data, whole: bool, fused: bool):
        self.svi, self.elbo, self.model, self.guide = svi, elbo, model, guide
        self.handler, self.terms, self.data, self.whole, self.fused = handler, terms, data, whole, fused
        self.device = data[0].device
        self.graph = None
        self.checked = False
        self.params: List[torch.Tensor] = []
        self.used: List[torch.Tensor] = []
        self.diagnostics: Dict[str, Any] = {"compiled_steps": 0, "compile_seconds": 0.0}

    # ------------------------------------------------------------------ the step's function
    def _inputs(self, indices: Optional[torch.Tensor]) -> List[torch.Tensor]:
        if indices is None:
            return [*self.data, *self.params]
        if self.whole:
            return [*(t[indices] for t in self.data), *self.params]
        return [indices, *self.data, *self.params]

    def _loss(self, *inputs):
        """``(loss, values, *drawn)``: the differentiable loss of one step, ``[loss, recon,
        kl]`` (float64, detached; only ``[loss]`` where no terms are recorded) and every latent
        value drawn (outputs, so that a trace keeps each draw, even one the loss does not use,
        such as a plate's random subsample: the graph draws what the eager step draws)."""
        k = len(self.data)
        if self.indexed:
            self.handler.indices = inputs[0]
        batch = inputs[1:k + 1] if self.indexed else inputs[:k]
        with _loss_kept_as_tensor(), self.terms.step(), _Draws() as drawn:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *batch)
        value = loss.detach().float() if self.fused else loss.detach()
        values = [value.double()]
        if self.terms.on:
            values += [t.double() if torch.is_tensor(t) else
                       torch.full((), t, dtype=torch.float64, device=self.device)
                       for t in self.terms._last]
        return (loss, torch.stack(values), *drawn.values)

    def trace(self, indices: Optional[torch.Tensor]) -> Optional[str]:
        """Trace the step at ``indices`` (the last eager step's minibatch) with the RNGs
        reseeded (other draws than the check's), and restored after; returns why it cannot be
        compiled, or ``None``."""
        t0 = time.perf_counter()
        before = rngs.states(self.device)
        store = dict(pyro.get_param_store().named_parameters())  # the unconstrained leaves
        names = sorted(store)
        self.params = [store[n] for n in names]
        self.indexed = indices is not None and not self.whole
        saved = self.handler.indices
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings(record=True) as notes, \
                    poutine.trace(param_only=True) as used:
                warnings.simplefilter("always")  # the tracer's notes, kept from the user
                rngs.reseed(self.device, 2_718_281)  # other draws than the check's
                graph = torch.jit.trace(self._loss, tuple(self._inputs(indices)),
                                        check_trace=False)
        except Exception as err:  # noqa: BLE001 -- whatever the tracer cannot follow runs eagerly
            return f"tracing the step failed ({type(err).__name__}: {_first_line(err)})"
        finally:
            self.handler.indices = saved
            rngs.restore(self.device, before)
            self.diagnostics["compile_seconds"] += time.perf_counter() - t0
        created = set(pyro.get_param_store().keys()) - set(names)
        if created:  # forgotten: the eager steps create them as without the trace
            for name in created:
                del pyro.get_param_store()[name]
            return "the model or guide created parameters after its first step"
        frozen = _value_read(notes)
        if frozen is not None:
            return (f"the model's Python reads a tensor's value ({frozen}), which a trace "
                    "would freeze")
        self.used = [store[n] for n in names if n in used.trace.nodes]
        self.graph, self.size = graph, None if indices is None else len(indices)
        return None

    def _check(self, indices: Optional[torch.Tensor]) -> Optional[str]:
        """The compiled step at ``indices`` against the eager function with the same RNG state;
        on agreement its gradients are in place, else everything is as it was."""
        t0 = time.perf_counter()
        inputs = self._inputs(indices)
        before = rngs.states(self.device)
        grads = [None if p.grad is None else p.grad.clone() for p in self.used]
        saved = self.handler.indices
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss, values, *_ = self._loss(*inputs)
                expected = torch.autograd.grad(loss, self.used, allow_unused=True)
            after = rngs.states(self.device)
            rngs.restore(self.device, before)
            out = self._run(inputs)
            worst = max([_difference(values, out)] + [
                _difference(e if g is None else g + e if e is not None else g, p.grad)
                for e, g, p in zip(expected, grads, self.used)])
            same_draws = rngs.same_torch(after, rngs.states(self.device))
        except Exception as err:  # noqa: BLE001
            worst, same_draws, out = float("inf"), False, f"{type(err).__name__}: {_first_line(err)}"
        finally:
            self.handler.indices = saved
            self.diagnostics["compile_seconds"] += time.perf_counter() - t0
        self.diagnostics["compile_check"] = worst
        if same_draws and worst <= _RTOL:
            self.checked = True
            self._last = out
            return None
        rngs.restore(self.device, before)
        for p, g in zip(self.used, grads):
            p.grad = g
        if isinstance(out, str):
            return f"the compiled step failed at its check ({out})"
        if not same_draws:
            return ("the compiled step drew other random numbers than the eager one at its "
                    "check (a draw no sample site uses, or sampling that depends on values)")
        return (f"the compiled step differed from the eager one at its check (relative "
                f"difference {worst:.2g}): the model's Python depends on values")

    def _run(self, inputs) -> torch.Tensor:
        """One compiled forward and backward (under :meth:`run`'s unoptimised execution); the
        gradients are left in the parameters."""
        loss, values, *_ = self.graph(*inputs)
        loss.backward()
        return values

    def _update(self, values: torch.Tensor) -> torch.Tensor:
        """The optimiser's step, as the eager stepper takes it (after its all-reduce of the
        gradients and the loss under ``torchrun``)."""
        svi = self.svi
        reduce = getattr(svi, "reduce", None)
        if reduce is not None:
            values = values.clone()
            values[0] = reduce(svi.optimizer.param_groups[0]["params"] if self.fused
                               else self.used, values[0])
        if self.fused:
            svi.optimizer.step()
            svi.optimizer.zero_grad(set_to_none=True)
        else:
            svi.optim(set(self.used))
            zero_grads(set(self.used))
        return values

    # ------------------------------------------------------------------ the loop
    def run(self, step: int, steps: int, indices, batches, rows: list,
            due: Callable[[int], bool], after: Callable[[int, int], None]):
        """Steps ``step, ..., steps - 1``, the first at the minibatch ``indices``, the others at
        those ``batches`` yields. Loss rows are appended to ``rows`` in blocks: before
        ``after(s, n)`` (``n`` steps since the last block) on the steps ``s`` where ``due(s)``
        holds, and at the end. Returns ``(s, indices)``: the step it stopped before, ``steps``
        or one it could not take (then ``self.reason`` says why, and step ``s`` is for the eager
        step to take at ``indices``)."""
        self.reason, pending, last = None, [], step - 1
        # unoptimised: TorchScript's optimisations fuse and reorder operations (not bit for bit)
        with torch.jit.optimized_execution(False):
            try:
                while True:
                    if not self.checked:
                        self.reason = self._check(indices)
                        if self.reason is not None:
                            return step, indices
                        values = self._last
                    elif indices is not None and len(indices) != self.size:
                        self.reason = (f"a minibatch of {len(indices)} rows; the step was "
                                       f"traced with {self.size}")
                        return step, indices
                    else:
                        values = self._run(self._inputs(indices))
                    pending.append(self._update(values))
                    last = step
                    self.diagnostics["compiled_steps"] += 1
                    if due(step):
                        self._flush(pending, step, rows)
                        after(step, len(pending))
                        pending.clear()
                    step += 1
                    if step == steps:
                        return steps, None
                    indices = next(batches)
            finally:
                self._flush(pending, last, rows)

    def _flush(self, pending: list, last: Optional[int], rows: list) -> None:
        """Append the rows of the steps ``..., last`` whose values are ``pending`` (one
        conversion to Python numbers for the block, not one per step)."""
        first = last - len(pending) + 1
        for step, v in zip(range(first, last + 1), torch.stack(pending).tolist() if pending else []):
            rows.append(self.terms.row(step, v[0], v[1:] if len(v) > 1 else None))


_LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, pyro))


def _value_read(notes) -> Optional[str]:
    """Where the traced Python outside torch and Pyro turned a tensor into a Python number,
    boolean, list or NumPy array (``file:line``), or ``None``. Torch's and Pyro's own
    conversions are of shapes, or a NaN check that does not change the loss."""
    for note in notes:
        if (issubclass(note.category, torch.jit.TracerWarning)
                and str(note.message).startswith("Converting a tensor to a")
                and not os.path.abspath(note.filename).startswith(_LIBRARIES)):
            return f"{os.path.basename(note.filename)}:{note.lineno}"
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
