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
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

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
    :ivar steps, lr, batch_size, num_particles: SVI settings; the optimiser is ClippedAdam with
        the learning rate decaying geometrically to ``lr * lr_decay`` at the last step.
    :ivar loss, kl_weight: the ELBO (``None``: the model's own) and the KL weight beta, as in
        :func:`inference.fit`.
    :ivar subset: use the first ``subset`` datapoints of the default data (``None``: all).
    :ivar scope: evidence scope, ``"global"`` (log p(X)) or ``"local"`` (sum of log p(x_n)).
    :ivar methods: the estimators to run (``None``: every registered one); ``num_samples``,
        ``seeds``: the K grid and the number of seeds.
    :ivar estimate_options: extra keywords of :func:`inference.estimate` (e.g. quadrature points).
    :ivar test_fraction: share of the datapoints (after ``subset``) held out of the fit, drawn
        by a permutation seeded with ``split_seed``; the job fits and runs ``methods`` on the
        rest, and ``test_methods`` at the largest K on both, so the summary shows the gap.
        Global-scope jobs hold nothing out whatever it says (gmm and map_l2 set 0 to say so):
        their log p(X) is the evidence of the whole data set, and its held-out analogue, the
        predictive log p(X_test | X_train), is another quantity. Nor does a model whose guide
        keeps per-datapoint parameters and that defines no :meth:`ZooModel.for_new_data`.
    :ivar why: one line for the summary: why this guide and scope.
    :ivar quick: overrides of the fields above for ``--quick``.
    """

    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 1000
    lr: float = 0.01
    lr_decay: float = 0.1
    batch_size: Optional[int] = None
    num_particles: int = 1
    loss: Optional[str] = None
    kl_weight: float = 1.0
    subset: Optional[int] = None
    scope: Optional[str] = None
    methods: Optional[Tuple[str, ...]] = None
    num_samples: Tuple[int, ...] = (1, 10, 100, 1000)
    seeds: int = 3
    estimate_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    test_fraction: float = 0.2
    split_seed: int = 0
    test_methods: Tuple[str, ...] = ("exact", "is-guide", "ais")
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

    def for_new_data(self, *data: torch.Tensor) -> "ZooModel":
        """An entry that evaluates the fitted model on ``data`` it was not fitted to: itself,
        unless its guide keeps parameters per datapoint (then a copy, the model frozen, with
        a guide fitted to ``data``; its params replace the store's)."""
        return self

    def simulate(self, num_data: int, seed: int = 0) -> Simulated:
        """Draw a data set of ``num_data`` points from the model with *known* parameters (fixed
        ones, or the initial weights -- not the fitted ones), returning them with the data."""
        raise NotImplementedError

    def sample(self, num: int, seed: int = 0, mean: bool = False) -> Data:
        """Draw ``num`` new datapoints from the *fitted* model (params from the param store):
        latents from the prior (globals at the guide's point estimate), data from the
        likelihood -- or, with ``mean``, the likelihood's mean instead of a draw. Drawn with a
        private generator seeded by ``seed``: the global RNG is untouched."""
        raise NotImplementedError(f"{self.name} does not implement sample()")

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

    @classmethod
    def report_notes(cls, rows: Any, options: Dict[str, Any]) -> List[str]:
        """Sentences for the compare summary, computed from this run's results ``rows`` (a
        DataFrame of :func:`inference.compare` rows) for a model built with ``options``."""
        return []

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


def check_rows(data: Data, name: str, data_dim: int, fix: str) -> torch.Tensor:
    """The one float tensor ``x [N, data_dim]`` of a model whose datapoints are rows (``fa``,
    ``dlvm``, ``vae``, ``nade``); else a one-line error, ending with ``fix`` for a wrong shape."""
    check_tensors(data)
    if len(data) != 1:
        raise ValueError(f"{name} takes one data tensor x [N, {data_dim}], got {len(data)}")
    (x,) = data
    if x.dim() != 2 or x.shape[1] != data_dim:
        raise ValueError(f"x must be 2-D [N, {data_dim}] (data_dim={data_dim}), got shape "
                         f"{tuple(x.shape)}; {fix}")
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; convert it with x.float()")
    return x


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


#: seeds are taken modulo nothing: numpy's and torch's both accept [0, 2**32)
MAX_SEED = 2**32 - 1


def check_options(cls: Type[ZooModel], options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every option is a constructor argument of ``cls`` whose
    value has the annotated type (an integer where ``int``, a finite number where ``float``,
    ``True``/``False`` where ``bool``, a list of integers where ``Sequence[int]``); seeds
    (options named ``*seed``) must lie in ``[0, 2**32)``."""
    import inspect
    import typing

    params = list(inspect.signature(cls.__init__).parameters)[1:]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; {cls.name} takes "
                         f"{', '.join(params)}")
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        problem = _type_problem(value, hints.get(key))
        if problem is None and key.endswith("seed") and not 0 <= value <= MAX_SEED:
            problem = f"a seed in [0, 2**32), got {value!r}"
        if problem is not None:
            raise ValueError(f"{key} must be {problem}")


def _type_problem(value: Any, hint: Any) -> Optional[str]:
    """What ``value`` should be if it does not match the type ``hint``, else ``None``."""
    import collections.abc
    import math
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next((a for a in args if a is not type(None)), None)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return None if isinstance(value, bool) else f"True or False, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"a finite number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"a string, got {value!r}"
    if origin in (collections.abc.Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"a list, e.g. [64, 32], got {value!r}"
        for v in value:
            if args and _type_problem(v, args[0]) is not None:
                return f"a list of {getattr(args[0], '__name__', args[0])}, got {value!r}"
    return None


#: the most bytes a data file may hold, or decompress to (MNIST's 60,000 training images:
#: 47 MB, 188 MB as float32): a larger one is refused before it is read, so that no read
#: runs the memory out
MAX_DATA_BYTES = 256 << 20


def check_file(path: str, expected: str, text: bool = False) -> None:
    """Raise ``FileNotFoundError``/``ValueError`` naming what is wrong unless ``path`` is a
    readable, non-empty regular file of at most ``MAX_DATA_BYTES`` (and, with ``text``, not a
    binary file)."""
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass a data file ({expected})")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a regular file (a device or pipe?); pass {expected}")
    check_bytes(os.path.getsize(path), path)
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head:
        raise ValueError(f"{path} is empty; expected {expected}")
    if text and b"\0" in head:
        raise ValueError(f"{path} looks like a binary file, not CSV text; expected {expected}")


def check_bytes(size: int, path: str, what: str = "holds") -> None:
    """Refuse data of ``size`` bytes above ``MAX_DATA_BYTES`` (``what``: "holds", or
    "decompresses to" for a compressed file), before it is read."""
    if size > MAX_DATA_BYTES:
        raise ValueError(f"{path} {what} {size} bytes, more than the {MAX_DATA_BYTES} a data "
                         "file may hold; pass a smaller file (e.g. its first rows)")


def check_float32(values: Any, path: str) -> None:
    """Refuse finite values that float32 (the models' dtype) would turn into infinities."""
    import numpy as np

    big = np.abs(values) > np.finfo(np.float32).max
    if big.any():
        r, c = np.argwhere(big.reshape(len(values), -1))[0]
        v = values.reshape(len(values), -1)[r, c]
        raise ValueError(f"{path}: value {v:g} in data row {r + 1}, column {c + 1} is too large "
                         "for float32 (|x| <= 3.4e38); rescale that column")


def memory_bytes() -> int:
    """This machine's physical memory in bytes (``2**40`` where it cannot be read)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_size(what: str, numbers: int, fix: str) -> None:
    """Refuse, before allocating, what would need more than half this machine's memory:
    ``numbers`` float32 values, counted four times (values, gradients, two Adam moments, or
    the temporaries of one evaluation)."""
    need, have = 16 * int(numbers), memory_bytes()
    if need > have // 2:
        raise ValueError(f"{what} needs about {need / 1e9:.3g} GB, more than half this "
                         f"machine's {have / 1e9:.3g} GB of memory; {fix}")


def get(name: str, **options: Any) -> ZooModel:
    """A fresh instance of the registered model ``name``; ``options`` go to its constructor.
    The instance's ``options`` holds every constructor argument (defaults filled in): saved
    state records it, so it loads only into the model it was fitted with."""
    import inspect

    cls = model_class(name)
    check_options(cls, options)
    entry = cls(**options)
    bound = inspect.signature(cls.__init__).bind(None, **options)
    bound.apply_defaults()
    entry.options = {k: v for k, v in list(bound.arguments.items())[1:]}
    return entry
