"""What every inference function runs on: a model/guide pair and how to read its trace.

:func:`as_target` turns a plain ``(model, guide)`` pair, a :class:`Target`, or any object that
follows the **target protocol** below into a :class:`Target`; :func:`as_data` checks and moves
the data. The estimators and SVI only ever see a :class:`Target`, so a user's own model works
wherever a zoo model does. The engine knows no model by name and imports nothing from ``zoo``.

The target protocol -- what an object must have to be passed where a target is expected (a
zoo entry has all of it; only ``model`` and ``guide`` are required):

==========================  ======================================================================
``model(*data)``            Pyro model; ``data`` is a tuple of tensors, one row per datapoint
``guide(*data)``            Pyro guide with the same signature
``name``                    label for tables and files (default: the class name)
``data_plate``              name of the ``pyro.plate`` over datapoints, or ``None`` (default "data";
                            a model without a plate of that name gets the one plate of size N)
``max_plate_nesting``       as in :class:`~pyro.infer.Trace_ELBO` (default: read off a trace)
``symmetries``              ``{site: dim}`` of exchangeable latent sites (mixture components)
``networks()``              ``{name: module}`` registered with ``pyro.module`` (or a mapping)
``loss``                    ``"trace"`` or ``"traceenum"``: the ELBO that trains it
``check_data(*data)``       raises ``ValueError`` naming the problem and the fix
``log_evidence(*data)``     exact global ``log p(data)`` where a closed form exists, else ``None``
``kwargs``                  ``{name: value}`` passed to every call of model and guide
==========================  ======================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

Data = Tuple[torch.Tensor, ...]


def check_tensors(data: Data) -> None:
    """Shared input checks: tensors, non-empty, one leading size, finite values."""
    if len(data) == 0:
        raise ValueError("no data given: pass the data tensors, e.g. entry.load_data()")
    sizes = set()
    for i, t in enumerate(data):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"data[{i}] is a {type(t).__name__}; convert it with torch.as_tensor(...)"
            )
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"data[{i}] has shape {tuple(t.shape)}: it holds no datapoints")
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"data[{i}] holds {bad} NaN or infinite values; drop or impute them first (cells "
                "a mask leaves out: fill them with any finite value, torch.nan_to_num(x), since "
                "a NaN poisons the gradients even where the mask zeroes its log density)"
            )
        sizes.add(t.shape[0])
    if len(sizes) > 1:
        raise ValueError(
            f"data tensors disagree on the number of datapoints (leading sizes {sorted(sizes)});"
            " every tensor must have one row per datapoint"
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """A model/guide pair with the facts inference needs.

    :param model: Pyro model, called as ``model(*data)``.
    :param guide: Pyro guide with the same signature.
    :param name: label used in tables and file names.
    :param data_plate: name of the ``pyro.plate`` over datapoints; the model must index its
        data with the plate's indices (``with pyro.plate("data", N) as idx: x[idx]``) so that
        minibatches and data chunks can be set from outside. ``None`` if there is no such plate.
    :param max_plate_nesting: as in :class:`pyro.infer.Trace_ELBO`; guessed from a trace if ``None``.
    :param symmetries: ``{site: dim}`` of latent sites exchangeable along ``dim`` of their value
        (mixture components); used to undo label switching in evidence estimates.
    :param networks: ``{name: module}`` registered with ``pyro.module``, for saving and devices.
    :param loss: ``"trace"`` or ``"traceenum"``, the ELBO :func:`inference.fit` uses by default.
    :param check: ``check(*data)`` raising ``ValueError`` for data the model cannot use (run
        after the shared checks: tensors, one row per datapoint, finite values).
    :param log_evidence: ``log_evidence(*data)``, the exact global ``log p(data)`` (a float or
        0-d tensor) or ``None``; the ``exact`` method's global reference (a user's closed form:
        ``Target(model, guide, log_evidence=lambda x: ...)``).
    :param entry: the object this target was made from, if any (e.g. a zoo entry).
    :param kwargs: keyword arguments (hyperparameters, flags) passed to every call of model and
        guide, ``model(*data, **kwargs)``.
    :param data_access: how datapoints are chosen: ``"index"`` (the model indexes its data
        with the data plate's indices, which are set from outside) or ``"whole"`` (the model
        uses the tensors it is given whole, ``obs=x``: subsets are passed as sliced tensors).
        ``None``: read off a trace by :func:`resolve`.
    """

    model: Callable[..., Any]
    guide: Callable[..., Any]
    name: str = "custom"
    data_plate: Optional[str] = "data"
    max_plate_nesting: Optional[int] = None
    symmetries: Mapping[str, int] = dataclasses.field(default_factory=dict)
    networks: Mapping[str, torch.nn.Module] = dataclasses.field(default_factory=dict)
    loss: str = "trace"
    check: Optional[Callable[..., None]] = None
    log_evidence: Optional[Callable[..., Any]] = None
    entry: Any = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_access: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kwargs:  # bind the keyword arguments once, so every call site passes them
            for field in ("model", "guide"):
                fn = getattr(self, field)
                if not (isinstance(fn, _WithKwargs) and fn.kwargs == dict(self.kwargs)):
                    object.__setattr__(self, field, _WithKwargs(fn, dict(self.kwargs)))

    def check_data(self, data: Data) -> None:
        check_tensors(data)
        if self.check is not None:
            self.check(*data)

    def plate_nesting(self, data: Data) -> int:
        """``max_plate_nesting``, guessed from one trace of model and guide when not given."""
        if self.max_plate_nesting is not None:
            return self.max_plate_nesting
        with poutine.block(), torch.no_grad():
            traces = [poutine.trace(fn).get_trace(*data) for fn in (self.guide, self.model)]
        dims = [
            -frame.dim
            for tr in traces
            for site in tr.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        ]
        return max(dims, default=0)


class _WithKwargs:
    """``fn`` called with ``kwargs`` added (a class, so an autoguide stays reachable)."""

    def __init__(self, fn: Callable[..., Any], kwargs: Dict[str, Any]):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**self.kwargs, **kwargs})


def unwrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The user's own model or guide behind :class:`Target`'s keyword binding."""
    return fn.fn if isinstance(fn, _WithKwargs) else fn


def as_target(target: Any, **options: Any) -> Target:
    """A :class:`Target` from a ``(model, guide)`` pair, a Target, or an object that follows the
    target protocol (module docstring), such as a zoo entry.

    ``options`` override the Target's fields (e.g. ``data_plate="obs"`` for a user's pair).
    """
    fitted = getattr(target, "target", None)
    if isinstance(fitted, Target) and hasattr(target, "state"):  # a FitResult
        target = fitted
    if isinstance(target, Target):
        return dataclasses.replace(target, **options) if options else target
    if isinstance(target, (tuple, list)) and len(target) == 2 and all(map(callable, target)):
        return Target(target[0], target[1], **options)
    if callable(getattr(target, "model", None)) and callable(getattr(target, "guide", None)):
        fields = _protocol_fields(target)
        fields.update(options)
        return Target(**fields)
    raise TypeError(
        "expected a zoo entry (zoo.get(name)), a (model, guide) pair of callables, an "
        "inference.Target, or an object with model and guide methods; got "
        f"{type(target).__name__}"
    )


def _protocol_fields(obj: Any) -> Dict[str, Any]:
    """The :class:`Target` fields an object following the target protocol provides."""
    networks = getattr(obj, "networks", None)
    networks = networks() if callable(networks) else networks
    fields: Dict[str, Any] = dict(
        model=obj.model,
        guide=obj.guide,
        name=getattr(obj, "name", "") or type(obj).__name__,
        data_plate=getattr(obj, "data_plate", "data"),
        max_plate_nesting=getattr(obj, "max_plate_nesting", None),
        symmetries=dict(getattr(obj, "symmetries", None) or {}),
        networks=dict(networks or {}),
        loss=getattr(obj, "loss", None) or "trace",
        entry=obj,
        kwargs=dict(getattr(obj, "kwargs", None) or {}),
    )
    for field, attr in (("check", "check_data"), ("log_evidence", "log_evidence")):
        fn = getattr(obj, attr, None)
        if callable(fn):
            fields[field] = fn
    return fields


def resolve_device(device: Any) -> torch.device:
    """``torch.device(device)``, with a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} was asked for, but no CUDA device is available "
            "(torch.cuda.is_available() is False); use device='cpu'"
        )
    return dev


def as_data(target: Target, data: Any, device: Any = "cpu") -> Data:
    """Check ``data`` (a tensor or a tuple of tensors) for ``target``; move it and the target's
    networks to ``device``."""
    dev = resolve_device(device)
    data = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    target.check_data(data)
    for net in target.networks.values():
        net.to(dev)
    _params_to(dev)
    return tuple(t.to(dev) for t in data)


def _params_to(dev: torch.device) -> None:
    """Move Pyro's plain params to ``dev`` (fitted on one device, estimated on another); the
    networks' own (``name$$$...``) moved in place with their module."""
    state = pyro.get_param_store().get_state()
    away = {k: v for k, v in state["params"].items() if "$$$" not in k and (
        v.device.type != dev.type or (dev.index is not None and v.device.index != dev.index))}
    if away:
        pyro.get_param_store().set_state({
            "params": {k: v.detach().to(dev).requires_grad_(v.requires_grad) for k, v in away.items()},
            "constraints": {k: state["constraints"][k] for k in away}})


def num_datapoints(data: Data) -> int:
    return int(data[0].shape[0])


class SubsampleAt(Messenger):
    """Set the indices of the plate named ``plate`` (its ``_Subsample`` site) from outside.

    The plate then scales its sites by ``size / len(indices)``, as with ``subsample_size``.
    ``indices`` can be changed between calls.
    """

    def __init__(self, plate: Optional[str], indices: Optional[torch.Tensor] = None):
        super().__init__()
        self.plate = plate
        self.indices = indices

    def _pyro_sample(self, msg: Dict[str, Any]) -> None:
        if (
            self.indices is not None
            and msg["name"] == self.plate
            and type(msg["fn"]).__name__ == "_Subsample"
        ):
            msg["value"] = self.indices


def subsampled(fn: Callable[..., Any], handler: SubsampleAt) -> Callable[..., Any]:
    """``fn`` run under ``handler`` (a plain function, so Pyro can trace it)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with handler:
            return fn(*args, **kwargs)

    return wrapped
