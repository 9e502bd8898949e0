"""The data plate of a user's model, how its datapoints are chosen, and the rule that an
estimate is right or an error.

Pyro users write the plate over datapoints in several ways; :func:`resolve` reads which one a
model uses off a trace, once, before any work:

* **indexed** -- ``with pyro.plate("data", len(x)) as idx: ... obs=x[idx]``: the data plate's
  indices are set from outside (:class:`~inference.target.SubsampleAt`), the zoo's convention;
* **whole** -- ``with pyro.plate("data", len(x)): ... obs=x`` (the data are not indexed), or
  the minibatch-as-argument idiom ``pyro.plate("data", N, subsample_size=len(batch))``:
  subsets of datapoints are passed as sliced tensors (:func:`on_datapoints`), and minibatches
  are scaled to the full data by :class:`ScaleToFull`;
* a plate **not named** ``"data"``: the one plate whose size is the number of datapoints.

:func:`vouch` is the rule every weight passes (:func:`inference.replay.log_weights` calls it on
both traces): a site scaled by anything but the data plate's subsampling that the library set
itself -- a ``subsample_size`` written inside the model, :func:`pyro.poutine.scale` -- would
make an estimate of a random subset scaled up, so it raises ``ValueError`` naming the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from inference.sites import sample_sites
from inference.target import Data, SubsampleAt, Target, num_datapoints, subsampled, unwrapped


def on_datapoints(tgt: Target, data: Data, indices: Optional[torch.Tensor]) -> Tuple[SubsampleAt, Data]:
    """``(handler, data)`` that run model or guide on the datapoints ``indices`` (``None``:
    all): the plate's indices set from outside, or the data sliced (``data_access="whole"``)."""
    if indices is None or tgt.data_plate is None:
        return SubsampleAt(tgt.data_plate, None), data
    if tgt.data_access == "whole":
        return SubsampleAt(None, None), tuple(t[indices] for t in data)
    return SubsampleAt(tgt.data_plate, indices), data


def trace_on(fn: Callable[..., Any], tgt: Target, data: Data, indices: Optional[torch.Tensor]):
    """A trace of ``fn`` on the datapoints ``indices`` (``None``: all)."""
    handler, data = on_datapoints(tgt, data, indices)
    return poutine.trace(subsampled(fn, handler)).get_trace(*data)


class ScaleToFull(Messenger):
    """Scale the sites of plate ``plate`` so that a minibatch passed as sliced tensors counts as
    ``size`` datapoints (``size / B`` in all, whatever scale the model's own plate applies)."""

    def __init__(self, plate: Optional[str], size: int):
        super().__init__()
        self.plate, self.size = plate, size

    def _process_message(self, msg: Dict[str, Any]) -> None:
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate:
                msg["scale"] = msg["scale"] * self.size / (frame.full_size or frame.size)


def _user_subsampling(frame) -> str:
    return (
        f"pyro.plate({frame.name!r}, {frame.full_size}, subsample_size={frame.size}) subsamples "
        "inside the model: an estimate would be of a random subset, scaled up. Let the library "
        "choose datapoints instead: drop subsample_size from the model (inference.fit("
        "batch_size=...) minibatches the data plate for you), or make it a model argument "
        "(Target(..., kwargs={'subsample_size': None}) for estimates)"
    )


def vouch(trace, tgt: Target, ours: bool, where: str) -> None:
    """Refuse a trace whose weights the library cannot vouch for (module docstring).

    :param ours: the data plate is subsampled by the library (its scaling is expected).
    """
    for name, site in sample_sites(trace):
        expected = 1.0
        for frame in site["cond_indep_stack"]:
            full = frame.full_size or frame.size
            if ours and frame.name == tgt.data_plate:
                expected *= full / frame.size
            elif frame.size != full:
                raise ValueError(_user_subsampling(frame))
        scale = site["scale"]
        if isinstance(scale, torch.Tensor):
            if scale.numel() != 1:
                raise ValueError(f"{where} site {name!r} has a scale of shape {tuple(scale.shape)}; "
                                 "use poutine.mask for per-element weights of 0 or 1")
            scale = float(scale)
        if abs(scale - expected) > 1e-6 * expected:
            raise ValueError(
                f"{where} site {name!r} is scaled by {scale:.6g} (pyro.poutine.scale, or a plate "
                "subsampled inside the model): log p(x) of the data as given needs unscaled "
                "densities; remove the scaling for estimates (fit(batch_size=...) scales "
                "minibatches itself)"
            )


def resolve(tgt: Target, data: Data, *, own_subsampling: bool = False) -> Target:
    """``tgt`` with its data plate and ``data_access`` read off one trace of the model on
    ``data`` (module docstring). Raises ``ValueError`` for a model that subsamples a plate
    itself unless ``own_subsampling`` (a fit without ``batch_size``: Pyro's SVI handles it)."""
    with poutine.block(), torch.no_grad():
        tr = poutine.trace(tgt.model).get_trace(*data)
    frames = {f.name: f for site in tr.nodes.values() if site["type"] == "sample"
              for f in site["cond_indep_stack"] if f.vectorized}
    n = num_datapoints(data)
    plate = tgt.data_plate
    if plate is not None and plate not in frames:
        sized = [name for name, f in frames.items() if (f.full_size or f.size) == n]
        plate = sized[0] if len(sized) == 1 else None
    mine = [f for f in frames.values() if f.full_size is not None and f.size != f.full_size]
    if mine and not own_subsampling:
        raise ValueError(_user_subsampling(mine[0]))
    access = tgt.data_access or ("index" if plate is None or mine else _access(tgt, data, plate))
    tgt = dataclasses.replace(tgt, data_plate=plate, data_access=access)
    _autoguide_plates(tgt)
    return tgt


def _access(tgt: Target, data: Data, plate: str) -> str:
    """``"index"`` if the model indexes its data with the plate's indices, else ``"whole"``."""
    # a proper subset of the datapoints (of two, one): on all of them a model using its data
    # whole would look indexed
    n = num_datapoints(data)
    idx = torch.arange(min(max(n - 1, 1), 2), device=data[0].device)
    try:
        with poutine.block(), torch.no_grad(), pyro.validation_enabled(False):
            tr = poutine.trace(subsampled(tgt.model, SubsampleAt(plate, idx))).get_trace(*data)
    except (ValueError, RuntimeError, IndexError):
        return "whole"
    for site in tr.nodes.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        for frame in site["cond_indep_stack"]:
            at = frame.dim - len(site["fn"].event_shape)
            value = site["value"]
            if frame.name == plate and value.dim() >= -at and value.shape[at] not in (1, len(idx)):
                return "whole"
    return "index"


def first(data: Data, n: int = 2) -> torch.Tensor:
    """Indices of the first ``n`` datapoints (fewer if there are fewer)."""
    return torch.arange(min(num_datapoints(data), n), device=data[0].device)


def check_sliced(tr, tgt: Target, count: int) -> None:
    """Refuse a model that uses its data whole (``data_access="whole"``) but, run on ``count``
    of its datapoints passed as slices (``tr``, a trace of it), still observes more rows: the
    data reach it from outside its arguments, so no subset of datapoints can be chosen."""
    for name, site in sample_sites(tr):
        if not site["is_observed"]:
            continue
        for frame in site["cond_indep_stack"]:
            at = frame.dim - len(site["fn"].event_shape)
            value = site["value"]
            if frame.name == tgt.data_plate and value.dim() >= -at \
                    and value.shape[at] not in (1, count):
                raise ValueError(
                    f"the model observes {name!r} on {value.shape[at]} rows when given {count} of "
                    "its datapoints: data reaching the data plate from outside the model's data "
                    "arguments (pyro.condition(model, data=...) over the full data, or kwargs=) "
                    "cannot be minibatched or chunked; pass them as data, e.g. fit((model, "
                    "guide), (X, y)) with def model(X, y): ... obs=y")


def check_sliceable(tgt: Target, data: Data, trace=None) -> None:
    """Refuse a model that uses its data whole but cannot run on its first datapoints passed as
    slices (``trace``: such a trace if one was made), or observes more rows than it is given
    (:func:`check_sliced`); nothing to check for a model that indexes its data."""
    if tgt.data_access != "whole" or tgt.data_plate is None:
        return
    rows = first(data)
    if trace is None:
        try:
            with poutine.block(), torch.no_grad():
                trace = trace_on(tgt.model, tgt, data, rows)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"the model fails when given {len(rows)} of its datapoints as slices "
                f"({str(err).splitlines()[0]}): a tensor it uses per datapoint reaches it from "
                "outside its data arguments (captured from the enclosing scope, "
                "pyro.condition(model, data=...) over the full data, or kwargs=), so no subset "
                "of datapoints can be chosen; pass it as data, e.g. fit((model, guide), (X, y)) "
                "with def model(X, y)") from None
    check_sliced(trace, tgt, len(rows))


def _autoguide_plates(tgt: Target) -> None:
    """An autoguide fixes its plates' ``subsample_size`` from its first trace; let it take the
    data plate's indices from outside instead (``create_plates``), whatever their number."""
    guide = unwrapped(tgt.guide)
    if not isinstance(guide, pyro.infer.autoguide.AutoGuide) or tgt.data_plate is None:
        return
    if getattr(guide, "create_plates", None) is not None or getattr(guide, "master", None) is not None:
        return
    name = tgt.data_plate

    def create_plates(*args: Any, **kwargs: Any):
        frame = guide._prototype_frames.get(name)
        if frame is None:
            return []
        return [pyro.plate(name, frame.full_size or frame.size, dim=frame.dim)]

    guide.create_plates = create_plates
