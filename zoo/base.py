"""The protocol every zoo model implements, and the registry.

A zoo entry is a Pyro model/guide pair plus what the inference code needs to run
on it without knowing which model it is:

* ``model(*data)`` and ``guide(*data)`` -- same signature, static structure. ``data``
  is a tuple of tensors that share their leading dimension, the datapoints.
* ``data_plate`` -- the name of the ``pyro.plate`` over datapoints (``None`` if the
  model has none). Models index their data with the plate's indices
  (``with pyro.plate("data", len(x)) as idx: x[idx]``), so that
  :func:`inference.fit` can subsample it and the estimators can chunk it.
* ``max_plate_nesting`` -- as in :class:`pyro.infer.Trace_ELBO`.
* ``symmetries`` -- ``{site: dim}`` for latent sites whose values are exchangeable
  along ``dim`` (mixture components); the evidence estimators use it to undo label
  switching.
* :meth:`load_data`, :meth:`simulate`, :meth:`check_data`, and optional exact
  references (:meth:`log_evidence`).

Registering a model is writing a subclass and decorating it with :func:`register`;
the conformance suite in ``tests/test_conformance.py`` then runs on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch

Data = Tuple[torch.Tensor, ...]


@dataclasses.dataclass(frozen=True)
class Simulated:
    """A synthetic data set drawn from a model, with the parameters that drew it."""

    data: Data
    params: Dict[str, torch.Tensor]


class ZooModel:
    """Base class of registered models. Subclasses set the class attributes and
    implement :meth:`model`, :meth:`guide`, :meth:`load_data`, :meth:`simulate`."""

    #: registry name, e.g. ``"gmm"``
    name: ClassVar[str] = ""
    #: one line shown by ``ppzoo list``
    summary: ClassVar[str] = ""
    #: description of the embedded default data set
    default_data: ClassVar[str] = ""
    #: name of the plate over datapoints, or ``None``
    data_plate: ClassVar[Optional[str]] = "data"
    max_plate_nesting: ClassVar[int] = 1
    #: exchangeable latent sites, ``{site name: component dim of its value}``
    symmetries: Mapping[str, int] = {}
    #: the ELBO that trains it: ``"trace"`` (Trace_ELBO) or ``"traceenum"`` (enumerated sites)
    loss: str = "trace"
    #: which exact references exist, for ``ppzoo list`` (e.g. ``("closed-form evidence",)``)
    references: ClassVar[Tuple[str, ...]] = ()

    def model(self, *data: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, *data: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_data(self, path: Optional[str] = None, device: Any = "cpu") -> Data:
        """The embedded default data set, or a user's file at ``path``."""
        raise NotImplementedError

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """Draw a data set of ``num_data`` points from the model with known parameters."""
        raise NotImplementedError

    def check_data(self, *data: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem and the fix if ``data`` cannot be
        used with this model. The default checks the tensors' leading dimensions
        agree and that every value is finite; subclasses extend it."""
        check_tensors(data)

    def log_evidence(self, *data: torch.Tensor) -> Optional[torch.Tensor]:
        """Exact log p(data) (global scope) where a closed form exists, else ``None``."""
        return None

    def networks(self) -> Dict[str, torch.nn.Module]:
        """The neural networks the model and guide register with ``pyro.module``."""
        return {}

    def to(self, device: Any) -> "ZooModel":
        for net in self.networks().values():
            net.to(device)
        return self

    def __repr__(self) -> str:
        return f"zoo.get({self.name!r})"


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
                f"data[{i}] holds {bad} NaN or infinite values; drop or impute them first"
            )
        sizes.add(t.shape[0])
    if len(sizes) > 1:
        raise ValueError(
            f"data tensors disagree on the number of datapoints (leading sizes {sorted(sizes)});"
            " every tensor must have one row per datapoint"
        )


def check_shape(t: torch.Tensor, ndim: int, what: str, last: Optional[int] = None) -> None:
    """Raise a clear error unless ``t`` has ``ndim`` dimensions (and last size ``last``)."""
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        want = f"{ndim}-D" + (f" with last dimension {last}" if last is not None else "")
        raise ValueError(f"{what} must be {want}, got shape {tuple(t.shape)}")


_REGISTRY: Dict[str, Type[ZooModel]] = {}


def register(cls: Type[ZooModel]) -> Type[ZooModel]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"model name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> Tuple[str, ...]:
    """Names of the registered models, sorted."""
    return tuple(sorted(_REGISTRY))


def get(name: str, **options: Any) -> ZooModel:
    """A fresh instance of the registered model ``name``; ``options`` go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name](**options)
