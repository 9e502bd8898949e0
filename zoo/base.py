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
* :meth:`views` -- the figures the compare report draws for it, and :attr:`job` -- how
  ``ppzoo compare`` fits and evaluates it (a :class:`Job`).

These are the engine's target protocol (:mod:`inference.target`) plus what the zoo and the
``ppzoo`` application add. Registering a model is writing a subclass in one file and decorating
it with :func:`register`; the conformance suite (:mod:`zoo.conformance`), ``ppzoo list`` and
``ppzoo compare`` then pick it up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch

from inference.registry import Registry
from inference.target import Data, check_tensors  # noqa: F401  (re-exported as zoo.check_tensors)


@dataclasses.dataclass(frozen=True)
class Simulated:
    """A synthetic data set drawn from a model, with the parameters that drew it."""

    data: Data
    params: Dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Job:
    """How the compare job (``ppzoo compare``) fits and evaluates a model: its ``job``.

    :ivar options: keyword arguments of ``zoo.get(model, ...)``.
    :ivar steps, lr, batch_size: SVI settings; the optimiser is ClippedAdam with the learning
        rate decaying geometrically to ``lr * lr_decay`` at the last step.
    :ivar subset: use the first ``subset`` datapoints of the default data (``None``: all).
    :ivar scope: evidence scope, ``"global"`` (log p(X)) or ``"local"`` (sum of log p(x_n)).
    :ivar methods: the estimators to run (``None``: every registered one); ``num_samples``,
        ``seeds``: the K grid and the number of seeds.
    :ivar estimate_options: extra keywords of :func:`inference.estimate` (e.g. quadrature points).
    :ivar why: one line for the summary: why this guide and scope.
    :ivar quick: overrides of the fields above for ``--quick``.
    """

    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 1000
    lr: float = 0.01
    lr_decay: float = 0.1
    batch_size: Optional[int] = None
    subset: Optional[int] = None
    scope: Optional[str] = None
    methods: Optional[Tuple[str, ...]] = None
    num_samples: Tuple[int, ...] = (1, 10, 100, 1000)
    seeds: int = 3
    estimate_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    why: str = ""
    quick: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def settings(self, quick: bool) -> "Job":
        return dataclasses.replace(self, **self.quick, quick={}) if quick else self


#: what ``--quick`` changes for every model (a model's ``Job.quick`` adds its own)
QUICK = dict(num_samples=(1, 10, 100), seeds=2)


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
    #: how ``ppzoo compare`` fits and evaluates it
    job: ClassVar[Job] = Job(quick=dict(QUICK, steps=300))

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

    def views(self, *data: torch.Tensor) -> Dict[str, Any]:
        """The report's own figures of the fitted model on ``data`` (on the CPU):
        ``{file stem: matplotlib figure}``; none by default."""
        return {}

    def guide_distribution(self, data, site: str):
        """The guide's distribution at ``site`` on ``data`` (params from the param store)."""
        import pyro

        blocked = pyro.poutine.block(self.guide, hide_types=["param"])
        return pyro.poutine.trace(blocked).get_trace(*data).nodes[site]["fn"]

    def to(self, device: Any) -> "ZooModel":
        for net in self.networks().values():
            net.to(device)
        return self

    def __repr__(self) -> str:
        return f"zoo.get({self.name!r})"


def check_shape(t: torch.Tensor, ndim: int, what: str, last: Optional[int] = None) -> None:
    """Raise a clear error unless ``t`` has ``ndim`` dimensions (and last size ``last``)."""
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        want = f"{ndim}-D" + (f" with last dimension {last}" if last is not None else "")
        raise ValueError(f"{what} must be {want}, got shape {tuple(t.shape)}")


_REGISTRY: Registry[ZooModel] = Registry("model", "known models:", sort=True)
#: class decorator adding a model to the registry under ``cls.name``
register = _REGISTRY.register
#: remove ``name`` from the registry (e.g. a throw-away model in a test)
unregister = _REGISTRY.unregister


def names() -> Tuple[str, ...]:
    """Names of the registered models, sorted."""
    return tuple(sorted(_REGISTRY.names()))


def model_class(name: str) -> Type[ZooModel]:
    """The registered class of model ``name``."""
    return _REGISTRY.get(name)


def get(name: str, **options: Any) -> ZooModel:
    """A fresh instance of the registered model ``name``; ``options`` go to its constructor.
    The instance's ``options`` holds every constructor argument (defaults filled in): saved
    state records it, so it loads only into the model it was fitted with."""
    import inspect

    cls = model_class(name)
    entry = cls(**options)
    bound = inspect.signature(cls.__init__).bind(None, **options)
    bound.apply_defaults()
    entry.options = {k: v for k, v in list(bound.arguments.items())[1:]}
    return entry
