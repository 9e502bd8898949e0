"""Fitted state on disk: safe to load, and bound to the model, guide and data it was fitted on.

The one place that reads and writes Pyro's param store as a whole: :func:`param_state` takes
the fitted params and networks out of it, :func:`set_param_state` puts them back (a
:class:`~inference.FitResult`'s own, :func:`load_fitted`; a file's, :func:`restore`).

``state.pt`` (:func:`inference.save_fit`) and ``checkpoint.pt`` (:func:`inference.fit`'s
``checkpoint``) hold only tensors and plain values, so they load with
``torch.load(..., weights_only=True)``: loading never runs code from the file [1]. What the
param store keeps as Python objects is written as data:

* each Pyro param as its *unconstrained* tensor (what the store holds, so a round trip is
  exact) and its constraint by registry name (``"positive"``, ``"simplex"``,
  ``{"name": "interval", "args": [0, 1]}``, ...), rebuilt from :mod:`torch.distributions`;
  where data is at hand the constraints are read again from the model by tracing the guide
  once, and a saved one that differs is refused;
* the networks' ``state_dict`` tensors;
* ``meta``: a JSON string recording the target (name, constructor options, model and guide
  functions, parameter and network shapes), the data it was fitted on (``N`` and a SHA-256
  of the tensors' bytes) and, for checkpoints, the fit's settings.

:func:`read` refuses (:class:`StateError`, one line) a file that is not such state, and
:func:`check` one that belongs to another model, guide, data set or fit.

References

[1] PyTorch, ``torch.load``: "weights_only=True ... limits the functions executed during
    unpickling to merely those needed for loading tensors, primitive types, dictionaries".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyro
import torch
from torch.distributions import constraints as tc

from inference.target import Data, Target, num_datapoints, resolve_device, unwrapped

FORMAT, VERSION = "ppzoo-state", 1
#: the largest state file read (the zoo's are under 10 MB; torch.load reads it whole)
MAX_BYTES = 4 << 30


class StateError(ValueError):
    """A state file that cannot be used here: unreadable, not ppzoo state, or fitted for
    another model, guide, data set or fit. The message is one line naming the fix."""


# ---------------------------------------------------------------------------- constraints
def _singletons() -> Dict[str, Any]:
    from pyro.distributions import constraints as pc

    found: Dict[str, Any] = {}
    for mod in (tc, pc):
        for key, value in vars(mod).items():
            if isinstance(value, tc.Constraint) and not key.startswith("_"):
                found.setdefault(key, value)
    return found


_BOUNDED = {tc._GreaterThan: ("greater_than", ("lower_bound",)),
            tc._GreaterThanEq: ("greater_than_eq", ("lower_bound",)),
            tc._LessThan: ("less_than", ("upper_bound",)),
            tc._Interval: ("interval", ("lower_bound", "upper_bound")),
            tc._HalfOpenInterval: ("half_open_interval", ("lower_bound", "upper_bound"))}


def constraint_spec(c: Any) -> Any:
    """A constraint as plain data (its registry name, or a factory name and arguments)."""
    for name, value in _singletons().items():
        if c is value:
            return name
    if type(c) in _BOUNDED:
        name, attrs = _BOUNDED[type(c)]
        return {"name": name, "args": [float(getattr(c, a)) for a in attrs]}
    if isinstance(c, tc._IndependentConstraint):
        return {"name": "independent", "base": constraint_spec(c.base_constraint),
                "ndims": int(c.reinterpreted_batch_ndims)}
    raise ValueError(f"constraint {c!r} has no registry name, so it cannot be saved; use one "
                     "of torch.distributions.constraints' named constraints")


def constraint_from(spec: Any) -> Any:
    if isinstance(spec, str) and spec in _singletons():
        return _singletons()[spec]
    if isinstance(spec, dict) and spec.get("name") == "independent":
        return tc.independent(constraint_from(spec.get("base")), int(spec.get("ndims", 0)))
    if isinstance(spec, dict) and isinstance(spec.get("args"), list):
        factories = {name: getattr(tc, name) for name, _ in _BOUNDED.values()}
        if spec.get("name") in factories:
            return factories[spec["name"]](*[float(a) for a in spec["args"]])
    raise StateError(f"unknown constraint {spec!r} in the saved state")


# ---------------------------------------------------------------------------- identity
def fingerprint(data: Any) -> Dict[str, Any]:
    """``N``, shapes, dtypes and a SHA-256 of the data tensors' bytes (on the CPU)."""
    data = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    h = hashlib.sha256()
    for t in data:
        t = t.detach().to("cpu")
        # a fresh row-major copy: a one-row slice can be "contiguous" with a stride of 3
        t = torch.empty(t.shape, dtype=t.dtype).copy_(t)
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"n": int(data[0].shape[0]) if data and data[0].dim() else 0,
            "sha256": h.hexdigest()}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def identity(target: Any) -> Dict[str, Any]:
    """What a state belongs to: the target's name, its entry's constructor options, the model
    and guide functions and the networks' parameter shapes."""
    def fn(f):
        return getattr(f, "__qualname__", None) or type(f).__qualname__

    return {
        "name": target.name,
        "options": _plain(getattr(target.entry, "options", None)),
        "model": fn(target.model), "guide": fn(target.guide),
        "networks": {name: {k: list(v.shape) for k, v in net.state_dict().items()}
                     for name, net in target.networks.items()},
    }


# ---------------------------------------------------------------------------- files
def pack(state: Dict[str, Any], meta: Dict[str, Any], kind: str, **tensors: Any) -> Dict:
    """The on-disk form of :func:`param_state`'s ``state``: tensors and plain
    values only. ``tensors`` are further plain/tensor entries (a checkpoint's optimiser)."""
    meta = dict(meta, constraints={k: constraint_spec(c)
                                   for k, c in state["constraints"].items()})
    return {"format": FORMAT, "version": VERSION, "kind": kind,
            "meta": json.dumps(meta, sort_keys=True),
            "params": {k: v.detach().cpu() for k, v in state["params"].items()},
            "networks": {k: {n: t.detach().cpu() for n, t in sd.items()}
                         for k, sd in state["networks"].items()},
            **tensors}


def read(path: Any, kind: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load ``path`` with ``weights_only=True`` and check it is ppzoo state of ``kind``
    (``"fit"`` or ``"checkpoint"``); the parsed ``meta`` is under ``"meta"``."""
    path = Path(path)
    what = "fitted state" if kind == "fit" else "checkpoint"
    fix = ("refit, or move it away" if kind == "fit"
           else "delete it to start the fit afresh")
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise StateError(f"{path} is not a regular file; {fix}")
    if path.exists() and path.stat().st_size > MAX_BYTES:
        raise StateError(f"{path} holds {path.stat().st_size} bytes, more than the {MAX_BYTES} "
                         f"a ppzoo {what} is read up to; {fix}")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError (a pickle with code), zip/EOF errors, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise StateError(f"{path} is not a readable ppzoo {what} ({type(e).__name__}: "
                         f"{reason}); {fix}") from None
    ok = (isinstance(saved, dict) and saved.get("format") == FORMAT
          and isinstance(saved.get("meta"), str) and isinstance(saved.get("params"), dict)
          and isinstance(saved.get("networks"), dict))
    if not ok:
        raise StateError(f"{path} is not ppzoo {what} (written by an older version or another "
                         f"program); {fix}")
    if saved.get("version") != VERSION or saved.get("kind") != kind:
        raise StateError(f"{path} is ppzoo state of kind {saved.get('kind')!r} version "
                         f"{saved.get('version')!r}, expected {kind!r} version {VERSION}; {fix}")
    try:
        saved["meta"] = json.loads(saved["meta"])
        specs = saved["meta"]["constraints"]
        bad = [k for k, v in saved["params"].items() if not torch.is_tensor(v) or k not in specs]
        bad += [k for sd in saved["networks"].values() for k, v in
                (sd.items() if isinstance(sd, dict) else [("?", None)]) if not torch.is_tensor(v)]
    except (ValueError, KeyError, TypeError, AttributeError):
        bad = ["meta"]
    if bad:
        raise StateError(f"{path} is damaged ppzoo {what} (entries {bad[:3]}); {fix}")
    return saved


def check(saved: Dict[str, Any], target: Any, path: Any, *, data: Any = None,
          settings: Optional[Dict[str, Any]] = None) -> None:
    """Refuse ``saved`` (from :func:`read`) unless it belongs to ``target`` (and to ``data``
    and the fit ``settings`` where given), naming the first mismatch."""
    meta, now = saved["meta"], identity(target)
    old = meta.get("target", {})
    for key, label in (("name", "model"), ("options", "model options"), ("model", "model function"),
                       ("guide", "guide"), ("networks", "networks")):
        if old.get(key) != now[key]:
            raise StateError(f"{path} was fitted for {label} {old.get(key)!r}, not "
                             f"{now[key]!r}; load it into the model it was fitted for, or refit")
    if data is not None and meta.get("data") is not None:
        was, fp = meta["data"], fingerprint(data)
        if was != fp:
            raise StateError(f"{path} was fitted on other data (N={was.get('n')}, sha256 "
                             f"{str(was.get('sha256'))[:12]}; now N={fp['n']}, sha256 "
                             f"{fp['sha256'][:12]}); use the data it was fitted on, or refit")
    if settings is not None:
        was = meta.get("settings", {})
        differ = [f"{k} was {was.get(k)!r}, now {v!r}" for k, v in settings.items()
                  if was.get(k) != v]
        if differ:
            raise StateError(f"{path} is a checkpoint of another fit ({'; '.join(differ)}); "
                             "pass the settings it was started with, or delete it to start afresh")


def expected_params(target: Any, data: Any) -> Dict[str, Any]:
    """``{name: (shape, constraint spec)}`` of the Pyro params the guide and model create on
    ``data`` (one trace each, in a scratch param store; RNG states are restored)."""
    from pyro import poutine
    from pyro.util import get_rng_state, set_rng_state

    weights = [w for net in target.networks.values() for w in net.parameters()][:1]
    if weights:  # traced where the networks are (the data may be on another device)
        data = tuple(t.to(weights[0].device) for t in data)
    store = pyro.get_param_store()
    kept, rng = store.get_state(), get_rng_state()
    store.clear()
    try:
        with torch.no_grad(), poutine.block():
            for fn in (target.guide, target.model):
                poutine.trace(fn).get_trace(*data)
        prefixes = tuple(f"{name}$$$" for name in target.networks)
        made = store.get_state()
        return {k: (list(v.shape), constraint_spec(made["constraints"][k]))
                for k, v in made["params"].items() if not k.startswith(prefixes)}
    finally:
        store.clear()
        store.set_state(kept)
        set_rng_state(rng)


def per_datapoint_params(target: Any, data: Any) -> List[str]:
    """Names of the Pyro params whose shape follows the number of datapoints (a guide's
    ``z_loc [N, L]``): those the guide and model create on two datapoints and on three differ
    (rows repeat where ``data`` has fewer; two, since one row has no spread to start from)."""
    n = num_datapoints(data)
    if n < 1:
        return []
    two, three = (expected_params(target, tuple(t[torch.arange(k) % n] for t in data))
                  for k in (2, 3))
    return sorted(k for k in three if two.get(k) != three[k])


def check_params(saved: Dict[str, Any], target: Any, data: Any, path: Any) -> None:
    """Refuse ``saved`` unless its Pyro params (names, shapes, constraints) are those the
    target's guide and model create on ``data``."""
    want = expected_params(target, data)
    specs = saved["meta"]["constraints"]
    have = {k: (list(v.shape), specs[k]) for k, v in saved["params"].items()}
    if have != want:
        diff = sorted(set(have) ^ set(want)) or [k for k in want if have[k] != want[k]]
        k = diff[0]
        raise StateError(f"{path} does not fit this model's parameters (param {k!r}: saved "
                         f"{have.get(k)}, model {want.get(k)}); load it into the model it was "
                         "fitted for, or refit")


def run_meta(target: Any, data: Any, optim: Any, **settings: Any) -> Dict[str, Any]:
    """What a checkpoint of :func:`inference.fit` belongs to: the target, the data and the
    fit's settings (``optim``: a Pyro optimiser, or ``None`` for the default Adam at ``lr``)."""
    loss = settings["loss"]
    settings["loss"] = loss if isinstance(loss, str) else type(loss).__name__
    if optim is None:
        settings["optim"] = {"type": "Adam"}
    else:
        settings.pop("lr")
        ctor = getattr(optim, "pt_optim_constructor", None)
        args = json.dumps(getattr(optim, "pt_optim_args", None),
                          default=lambda o: type(o).__name__)
        settings["optim"] = {"type": getattr(ctor, "__name__", type(optim).__name__),
                             "args": json.loads(args)}
    return {"target": identity(target), "data": fingerprint(data), "settings": settings}


def restore(path: Any, target: Any, data: Any, device: Any, run: Dict[str, Any]) -> Dict:
    """Read the checkpoint ``path``, check it belongs to this fit (``run``, from
    :func:`run_meta`) and load its params and networks; returns the rest of it (optimiser
    state, RNG states, loss rows) for the caller to restore."""
    saved = read(path, "checkpoint")
    check(saved, target, path, data=data, settings=run["settings"])
    check_params(saved, target, data, path)
    set_param_state(target, unpack(saved), device)
    return saved


def unpack(saved: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`read`'s output as :func:`param_state`'s ``state``."""
    specs = saved["meta"]["constraints"]
    return {"params": dict(saved["params"]),
            "constraints": {k: constraint_from(specs[k]) for k in saved["params"]},
            "networks": saved["networks"]}


# ---------------------------------------------------------------- Pyro's param store
def param_state(target: Target, data: Optional[Data] = None) -> Dict[str, Any]:
    """Fitted state: Pyro params (not the networks' own) and the networks' state dicts; with
    ``data``, also the data's fingerprint (:func:`fingerprint`)."""
    store = pyro.get_param_store().get_state()
    prefixes = tuple(f"{name}$$$" for name in target.networks)
    keep = [k for k in store["params"] if not k.startswith(prefixes)]
    return {
        "params": {k: store["params"][k].detach().cpu() for k in keep},
        "constraints": {k: store["constraints"][k] for k in keep},
        "networks": {k: net.state_dict() for k, net in target.networks.items()},
        "data": None if data is None else fingerprint(data),
    }


def set_param_state(target: Target, state: Dict[str, Any], device: Any = "cpu") -> None:
    """Load :func:`param_state`'s output into a cleared param store and the networks."""
    orphans = [k for k in state["params"] if "$$$" in k and k.split("$$$")[0] not in target.networks]
    if orphans:
        raise ValueError(
            f"saved state holds network weights {orphans[:3]} but the target declares no such "
            "network; pass networks={name: module} to inference.Target"
        )
    missing = set(state["networks"]) - set(target.networks)
    if missing:
        raise ValueError(f"saved state has networks {sorted(missing)} the target does not have")
    pyro.clear_param_store()
    dev = resolve_device(device)
    pyro.get_param_store().set_state(
        {
            "params": {k: v.to(dev).requires_grad_() for k, v in state["params"].items()},
            "constraints": dict(state["constraints"]),
        }
    )
    for name, sd in state["networks"].items():
        target.networks[name].load_state_dict(sd)
        target.networks[name].to(dev)
    _point_modules_at_store(target)


def _point_modules_at_store(target: Target) -> None:
    """Make a :class:`~pyro.nn.PyroModule` model or guide (an autoguide) use the params just
    loaded into the store. Its plain ``nn.Parameter`` attributes (``AutoMultivariateNormal``'s
    and ``AutoDiagonalNormal``'s ``loc``), once set up by an earlier trace, are read from the
    module, never again from the store: without this they keep their initial values."""
    from pyro.nn import PyroModule

    store = pyro.get_param_store()
    for fn in (target.model, target.guide):
        module = unwrapped(fn)
        if not isinstance(module, PyroModule):
            continue
        for name, param in module.named_parameters():
            full = f"{module._pyro_name}.{name}" if module._pyro_name else name
            if name.endswith("_unconstrained") or full not in store:
                continue  # a PyroParam reads the store itself on every access
            loaded = store._params[full]
            if loaded is not param and loaded.shape == param.shape:
                param.data = loaded.detach()
                store._param_to_name.pop(loaded, None)
                store._params[full] = param
                store._param_to_name[param] = full


def load_fitted(obj: Any, device: Any = "cpu") -> None:
    """If ``obj`` is a :class:`~inference.FitResult`, load its own fitted state into a cleared
    param store (an estimate of it is then right whatever was fitted since)."""
    if isinstance(getattr(obj, "target", None), Target) and isinstance(getattr(obj, "state", None), dict):
        set_param_state(obj.target, obj.state, device)
