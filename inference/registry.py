"""A small name -> class registry, shared by the estimators (:mod:`inference.estimators`) and the
models (:mod:`zoo.base`): registering is decorating a class that has a ``name``."""

from __future__ import annotations

from typing import Dict, Generic, Tuple, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by their ``name``, in registration order.

    :param kind: what is registered ("model", "method"), for error messages.
    :param known: how the error for an unknown name introduces the list of known ones.
    :param sort: list known names sorted in errors (else in registration order).
    """

    def __init__(self, kind: str, known: str, sort: bool = False):
        self.kind, self.known, self.sort = kind, known, sort
        self._classes: Dict[str, Type[T]] = {}

    def register(self, cls: Type[T]) -> Type[T]:
        """Class decorator adding ``cls`` under ``cls.name``."""
        name = getattr(cls, "name", "")
        if not name or name in self._classes:
            raise ValueError(f"{self.kind} name {name!r} is empty or already registered")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a throw-away class in a test); absent names are ignored."""
        self._classes.pop(name, None)

    def names(self) -> Tuple[str, ...]:
        return tuple(self._classes)

    def get(self, name: str) -> Type[T]:
        """The class registered as ``name``; ``ValueError`` listing the known names otherwise."""
        if name not in self._classes:
            known = sorted(self._classes) if self.sort else list(self._classes)
            raise ValueError(f"unknown {self.kind} {name!r}; {self.known} {', '.join(known)}")
        return self._classes[name]
