"""The compiled densities of the annealing estimators: one graph per chunk shape, recorded
once, checked against the eager densities before each chunk uses it.

An HMC run evaluates ``log f_beta`` and its gradient hundreds of times per chunk of chains, at
the same shapes; eagerly, every evaluation pays Pyro's tracing -- handlers, plates,
distribution objects, ``pyro.module`` -- which on the digits vae is about 40% of the time.
:func:`capture` records one evaluation of the densities as a graph of the tensor operations it
ran (``torch.jit.trace``, as Pyro's HMC ``jit_compile`` does), which then runs with none of that
Python; autograd differentiates it as usual. What depends on constants alone is computed once
when the graph is made, unused operations are dropped, a sum of negations becomes the
negation of the sum (exact: :func:`_sink_negations`) -- nothing that merges or drops
operations on the gradient's path, which would reorder the gradient's sums -- and the graph runs
unoptimised (``torch.jit.optimized_execution(False)``): the remaining kernels are the eager
ones in the eager order, so on CPU its densities and their gradients equal the eager ones bit
for bit and an estimate is the same number compiled or not (``tests/test_compiled_path.py``). The
optimising executor's own derivative formulas changed the gradients' last bits, and with
them every HMC trajectory, and were slower here.

A graph holds as constants what it read and was not given: the networks' weights (their
gradients are off while a graph is recorded and while it runs: :func:`frozen`), the data,
the values held fixed -- the same for every chunk of an estimate. What differs between
chunks -- the chunk's datapoint indices, the start distribution's tensors, the tensors of the
latents' bijections -- is passed in (:func:`leaves`; the recorder follows tensors by identity),
so :class:`Graphs` records one graph per signature (shapes, strides, dtypes and devices of all
inputs) and reuses it for every chunk of that signature. Each chunk checks the graph against
the eager densities at a point of its own before using it and runs eagerly where the check or
the recording fails (a number read off the values or the chunk's data that the graph baked
in, an operation the recorder cannot follow); :meth:`Graphs.diagnostics` counts both. Python
control flow that depends on the latent values is caught only where its branch differs at the
checked point: such a model should run with ``jit=False``. ``torch.jit.trace`` is deprecated in
recent torch releases; if it goes, every chunk runs eagerly and the diagnostics say why.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pyro
import torch
from torch.distributions import Distribution, Transform

#: the check's tolerance: compiled and eager agree to rounding (on CPU: exactly)
RTOL = ATOL = 1e-5


def capture(fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """The graph of one call ``fn(*inputs)`` (a tuple of tensors), run unoptimised: it takes
    the same positional tensors. Tensors ``fn`` reaches other than ``inputs`` are constants."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Pyro's Python
        traced = torch.jit.trace(fn, tuple(inputs), check_trace=False)
    graph = traced.graph  # exact rewrites, each skipped if it cannot run here
    for rewrite in (torch._C._jit_pass_constant_propagation, _sink_negations,
                    torch._C._jit_pass_dce):
        try:
            rewrite(graph)
        except Exception:  # noqa: BLE001 -- an exact rewrite left out changes no number
            pass

    def run(*args: torch.Tensor):
        with torch.jit.optimized_execution(False):
            return traced(*args)

    return run


def _sink_negations(graph) -> None:
    """``sum(neg(x))`` -> ``neg(sum(x))`` (through a reshape or view between them): a
    negation is exact and a sum's rounding is symmetric in sign, so the result is the same to
    the bit, with one full-size operation fewer forward and one backward; the chain stays a
    chain, so autograd adds the gradient's parts in the same order. Pyro's Bernoulli
    (``-binary_cross_entropy_with_logits``) summed over its event dims is the case."""
    for neg in list(graph.findAllNodes("aten::neg")):
        x, out = neg.input(), neg.output()
        users = [use.user for use in out.uses()]
        sizes = [u for u in users if u.kind() == "aten::size"]  # x has the same shape
        views = [u for u in users if u.kind() in ("aten::reshape", "aten::view")]
        if len(views) != 1 or len(sizes) + 1 != len(users):
            continue
        (view,) = views
        uses = view.output().uses()
        total = uses[0].user if len(uses) == 1 else None
        if (total is None or total.kind() != "aten::sum" or total.inputsSize() != 4
                or not total.inputsAt(3).node().mustBeNone()):
            continue
        for size in sizes:
            size.replaceInput(0, x)
        total.output().replaceAllUsesWith(out)  # the sum's users now read the negation
        view.replaceInput(0, x)
        neg.replaceInput(0, total.output())
        neg.moveAfter(total)
        out.setType(total.output().type())


@contextlib.contextmanager
def frozen(networks: Sequence[torch.nn.Module] = ()) -> Iterator[None]:
    """Pyro's params and the ``networks``' weights without gradients inside (constants of a
    recorded graph; nothing here differentiates them), with them again after. ``pyro.module``
    then skips registering them, which changes nothing: they are registered already."""
    weights = [w for w in pyro.get_param_store().get_state()["params"].values() if w.requires_grad]
    weights += [w for net in networks for w in net.parameters() if w.requires_grad]
    for w in weights:
        w.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".* was not registered in the param store")
            yield
    finally:
        for w in weights:
            w.requires_grad_(True)


def leaves(objects: Sequence[Any]) -> List[torch.Tensor]:
    """The tensors held by ``objects`` -- tensors, distributions and transforms (their
    attributes, recursively), and lists, tuples and dicts of them -- each once, in a fixed
    order."""
    out: List[torch.Tensor] = []
    seen = set()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append(obj)
        elif isinstance(obj, (Distribution, Transform)):
            if id(obj) not in seen:
                seen.add(id(obj))
                for name in sorted(vars(obj)):
                    visit(vars(obj)[name])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for name in sorted(obj, key=str):
                visit(obj[name])

    for obj in objects:
        visit(obj)
    return out


def signature(inputs: Sequence[torch.Tensor]) -> Tuple:
    """What a recorded graph is specific to: every input's shape, strides, dtype and device."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, str(t.device)) for t in inputs)


def agree(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two tuples of results are equal to the check's tolerance (infinities and NaNs
    in the same places)."""
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
        for x, y in zip(a, b))


class Graphs:
    """The compiled graphs of one estimate, by :func:`signature`, and what they were used for.

    :meth:`get` records a graph the first time a signature is asked for (``None`` for good if
    the recording fails); the caller checks it and reports with :meth:`ran`."""

    def __init__(self) -> None:
        self._graphs: Dict[Tuple, Optional[Callable[..., Any]]] = {}
        self.recorded = 0
        self.compiled = 0
        self.eager = 0
        self.reason: Optional[str] = None

    def get(self, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]):
        key = signature(inputs)
        if key not in self._graphs:
            try:
                self._graphs[key] = capture(fn, inputs)
                self.recorded += 1
            except Exception as err:  # noqa: BLE001 -- whatever the recorder cannot follow runs eagerly
                self._graphs[key] = None
                self.reason = self.reason or f"recording failed: {type(err).__name__}: {err}"[:300]
        return self._graphs[key]

    def ran(self, compiled: bool, reason: Optional[str] = None) -> None:
        """Count a chunk: compiled, or eager (with the first reason kept)."""
        if compiled:
            self.compiled += 1
        else:
            self.eager += 1
            self.reason = self.reason or reason

    def diagnostics(self) -> Dict[str, Any]:
        """``jit_chunks`` (ran compiled), ``jit_fallbacks`` (ran eagerly although compiling was
        on), ``jit_graphs`` (graphs recorded) and, after a fallback, ``jit_fallback_reason``."""
        out: Dict[str, Any] = dict(jit_chunks=self.compiled, jit_fallbacks=self.eager,
                                   jit_graphs=self.recorded)
        if self.eager:
            out["jit_fallback_reason"] = self.reason or "unknown"
        return out
