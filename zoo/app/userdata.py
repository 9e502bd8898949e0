"""A user's data file as the tensors of their model's arguments (``ppzoo ... --model FILE.py
--data DATA``).

* ``.npz``: its arrays. Where the archive names every data argument of the model (``model(X,
  y)`` and ``np.savez(f, X=X, y=y)``) they are passed by name, in the signature's order; else
  every array in the archive's order (``np.savez(f, X, y)``).
* ``.csv``: numeric columns, an optional header row. ``--columns a,b --columns y`` makes one
  tensor per flag (column names from the header, or 1-based numbers); without it, a header
  that names the model's data arguments (``x,y`` for ``model(x, y)``) gives one column per
  argument, and otherwise every column makes one tensor.

A tensor of one CSV column is 1-D ``[N]``, of several ``[N, k]``. Floating-point values become
the default dtype (float32); integer and boolean arrays of an .npz keep their kind (int64,
bool: indices, counts, masks).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from zoo.datafiles import read_csv, read_npz

SUFFIXES = (".csv", ".npz")
EXPECTED = ("a .csv of numeric columns (optional header row) or an .npz archive of arrays, one "
            "row per datapoint")


@dataclasses.dataclass(frozen=True)
class Arguments:
    """The data arguments of a model function: ``names`` in order, the ``required`` ones (no
    default), and whether it takes ``*args`` (then any number)."""

    names: Tuple[str, ...]
    required: Tuple[str, ...]
    varargs: bool

    def fits(self, count: int) -> bool:
        return len(self.required) <= count and (self.varargs or count <= len(self.names))

    def __str__(self) -> str:
        return ", ".join(self.names + (("*args",) if self.varargs else ()))


def arguments(fn: Callable[..., Any], keywords: Mapping[str, Any]) -> Optional[Arguments]:
    """``fn``'s positional parameters less those passed as ``keywords`` (``None`` where the
    signature cannot be read, e.g. a builtin, or says nothing: only ``*args``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds and p.name not in keywords]
    varargs = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    if not params and varargs:
        return None
    return Arguments(tuple(p.name for p in params),
                     tuple(p.name for p in params if p.default is inspect.Parameter.empty), varargs)


def read(path: str, args: Optional[Arguments], columns: Sequence[str] = ()) -> Tuple[Tuple[torch.Tensor, ...], str]:
    """``(tensors, how)``: the data at ``path`` as the model's arguments, and how they were
    read (for messages). Raises ``ValueError`` naming the problem and the fix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: your model's data is read from a .csv or .npz file, not "
                         f"{suffix or 'a file without a suffix'}; save it with np.savetxt(..., "
                         "delimiter=',') or np.savez")
    if suffix == ".npz":
        if columns:
            raise ValueError(f"--columns picks the columns of a CSV; the arrays of {path} are "
                             "the data tensors already: drop --columns")
        return _read_npz(path, args)
    return _read_csv(path, args, columns)


def _read_npz(path: str, args: Optional[Arguments]):
    def by_name(keys: List[str]) -> List[str]:
        if args and args.names and set(args.required) <= set(keys):
            return [n for n in args.names if n in keys]
        return keys

    arrays = read_npz(path, EXPECTED, by_name)
    named = args is not None and list(arrays) == [n for n in args.names if n in arrays] \
        and set(args.required) <= set(arrays)
    tensors = tuple(_tensor(a, f"{path}: array {k!r}") for k, a in arrays.items())
    how = (f"arrays {', '.join(arrays)} by name" if named else
           f"arrays {', '.join(arrays)} in the archive's order")
    return tensors, how


def _read_csv(path: str, args: Optional[Arguments], columns: Sequence[str]):
    header, table = read_csv(path, EXPECTED)
    if columns:
        groups = [[_column(path, header, table.shape[1], c) for c in _split(spec)]
                  for spec in columns]
        how = "columns " + " | ".join(columns)
    elif header and args and set(header) <= set(args.names) and set(args.required) <= set(header) \
            and len(set(header)) == len(header):
        groups = [[header.index(n)] for n in args.names if n in header]
        how = f"columns {', '.join(n for n in args.names if n in header)} by name"
    else:
        groups = [list(range(table.shape[1]))]
        how = f"all {table.shape[1]} columns as one tensor"
    tensors = tuple(_tensor(table[:, g[0]] if len(g) == 1 else table[:, g], path)
                    for g in groups)
    return tensors, how


def _split(spec: str) -> List[str]:
    names = [c.strip() for c in spec.split(",")]
    if not all(names):
        raise ValueError(f"--columns {spec!r}: name columns separated by commas, e.g. "
                         "--columns x1,x2 --columns y")
    return names


def _column(path: str, header: Optional[List[str]], width: int, name: str) -> int:
    if header and name in header:
        return header.index(name)
    if name.isdigit() and 1 <= int(name) <= width:
        return int(name) - 1
    known = f"its header names {', '.join(header)}" if header else "it has no header row"
    raise ValueError(f"--columns: {path} has no column {name!r} ({known}; numbers 1 to "
                     f"{width} count from the left)")


def _tensor(a: np.ndarray, what: str) -> torch.Tensor:
    if a.dtype.kind == "f":
        return torch.as_tensor(a.astype(np.float64)).to(torch.get_default_dtype())
    if a.dtype.kind in "iu":
        if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and a.max() > 2**63 - 1:
            raise ValueError(f"{what} holds integers above 2**63 - 1; torch cannot hold them")
        return torch.as_tensor(a.astype(np.int64))
    if a.dtype.kind == "b":
        return torch.as_tensor(a)
    raise ValueError(f"{what} has dtype {a.dtype}; the data must be numbers (float, integer or "
                     "bool arrays)")
