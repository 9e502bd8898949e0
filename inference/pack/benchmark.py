"""A pack target: :class:`Benchmark`, and the registry the pack's files add themselves to.

A leaf of the pack: its target files import these from here, below :mod:`inference.pack`
(which imports every target file); ``pack.Benchmark`` and ``pack.register`` are these.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple

import pyro
import torch

from inference.registry import Registry
from inference.target import Data, Target


#: the ``"conjugate"`` guides' scale over the exact posterior's (wider: bounded weights)
WIDEN = 1.25


class Simulated(NamedTuple):
    """Data drawn from a model, and the latents that drew them (``{site: value}``)."""

    data: Data
    latents: Dict[str, torch.Tensor]


class Benchmark:
    """A target with a known log evidence (module docstring).

    :cvar name: the registry name (``pack.get(name)``).
    :cvar summary: one line: the model and the data.
    :cvar source: where the reference comes from (a citation, or how it is computed).
    :cvar dims: the latent dimension.
    :cvar data_plate: the plate over datapoints, or ``None`` (then every estimate is global).
    :cvar guides: the guides :meth:`target` and :meth:`fit` can make, the default first.
    :cvar steps: SVI steps :meth:`fit` takes by default.
    :cvar lr: Adam's learning rate for :meth:`fit`.
    :cvar fit_options: further keyword arguments of :func:`inference.fit` (e.g. particles).
    :cvar fails: ``{method: why}``: methods documented to fail on this target (a wrong or
        unvouched number expected), e.g. ``is-prior`` in 30 dimensions.
    :cvar fixed_guides: guides with nothing to fit (written from the closed-form posterior):
        :meth:`target` uses them as they are; :meth:`fit` refuses them.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    dims: ClassVar[int] = 0
    data_plate: ClassVar[Optional[str]] = "data"
    guides: ClassVar[Tuple[str, ...]] = ("autonormal",)
    steps: ClassVar[int] = 1000
    lr: ClassVar[float] = 0.01
    fit_options: ClassVar[Mapping[str, Any]] = {}
    fails: ClassVar[Mapping[str, str]] = {}
    fixed_guides: ClassVar[Tuple[str, ...]] = ()

    _references: ClassVar[Dict[str, float]] = {}

    def __init__(self) -> None:
        self._guides: Dict[str, Callable[..., Any]] = {}

    # ---- what a target file writes
    def data(self) -> Data:
        """The data, a tuple of tensors (the same on every call)."""
        raise NotImplementedError

    def model(self, *data: torch.Tensor) -> None:
        raise NotImplementedError

    def reference(self) -> float:
        """The true ``log Z`` of :meth:`data`, computed (not fitted)."""
        raise NotImplementedError

    def make_guide(self, kind: str) -> Callable[..., Any]:
        """A new guide of kind ``kind`` (one of :attr:`guides`); default: ``AutoNormal``."""
        return pyro.infer.autoguide.AutoNormal(self.model)

    def evidence(self, *data: torch.Tensor) -> float:
        """The true ``log Z`` of any data of this target's form (where a closed form holds for
        every data set; :attr:`simulates`)."""
        raise NotImplementedError(f"{self.name} knows its evidence for its own data only; "
                                  f"these can simulate: {', '.join(simulating())}")

    def simulate(self, seed: int) -> Simulated:
        """Data of :meth:`data`'s shape drawn from the model (latents from the prior, then the
        data given them) with a private generator seeded ``seed``, and those latents: an exact
        draw from the posterior given the data (targets with :meth:`evidence` only)."""
        raise NotImplementedError(f"{self.name} cannot simulate data; these can: "
                                  f"{', '.join(simulating())}")

    def latents(self) -> Optional[Dict[str, torch.Tensor]]:
        """The latents that drew :meth:`data`, where the data were simulated from the model
        (``bdmc``'s ``latents=``); ``None`` otherwise."""
        return None

    @property
    def simulates(self) -> bool:
        """Whether :meth:`simulate` and :meth:`evidence` are defined."""
        return type(self).simulate is not Benchmark.simulate

    # ---- what every target gets
    @property
    def log_evidence(self) -> float:
        """The true ``log Z`` of :meth:`data` (computed once per process)."""
        if self.name not in Benchmark._references:
            Benchmark._references[self.name] = float(self.reference())
        return Benchmark._references[self.name]

    def guide(self, kind: Optional[str] = None) -> Callable[..., Any]:
        """The current guide of kind ``kind`` (default: the first of :attr:`guides`)."""
        kind = self._kind(kind)
        if kind not in self._guides:
            self._guides[kind] = self.make_guide(kind)
        return self._guides[kind]

    def target(self, guide: Optional[str] = None) -> Target:
        """The :class:`inference.Target` of model and guide (the one :meth:`fit` last fitted)."""
        return Target(self.model, self.guide(guide), name=self.name, data_plate=self.data_plate)

    def fit(self, seed: int = 0, steps: Optional[int] = None, guide: Optional[str] = None,
            **options: Any):
        """Fit a new guide of kind ``guide`` by SVI with this target's settings (the param store
        cleared first); ``options`` override :attr:`fit_options`. Returns the
        :class:`inference.FitResult`, which :func:`inference.estimate` takes as the target."""
        from inference.svi import fit

        kind = self._kind(guide)
        if kind in self.fixed_guides:
            raise ValueError(f"{self.name}'s guide {kind!r} has nothing to fit (written from the "
                             f"closed-form posterior): use target(guide={kind!r}) as it is")
        self._guides[kind] = self.make_guide(kind)
        settings = {"lr": self.lr, **self.fit_options, **options}
        return fit(self.target(kind), self.data(), steps=self.steps if steps is None else steps,
                   seed=seed, clear=True, **settings)

    def _kind(self, kind: Optional[str]) -> str:
        kind = self.guides[0] if kind is None else kind
        if kind not in self.guides:
            raise ValueError(f"{self.name} has no guide {kind!r}; choose from {', '.join(self.guides)}")
        return kind

    def __repr__(self) -> str:
        return f"<pack target {self.name!r}: {self.summary}; log Z = {self.log_evidence:.6g}>"


_REGISTRY: Registry[Benchmark] = Registry("pack target", "choose from")
#: class decorator adding a target to the pack under ``cls.name``
register = _REGISTRY.register
#: remove a target from the pack (e.g. a throw-away one in a test)
unregister = _REGISTRY.unregister
#: the registered targets, in registration order
names = _REGISTRY.names


def get(name: str) -> Benchmark:
    """A new instance of the registered target ``name``."""
    return _REGISTRY.get(name)()


def simulating() -> Tuple[str, ...]:
    """The registered targets that can simulate data and know the evidence of any data."""
    return tuple(n for n in names() if get(n).simulates)
