"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]


def _atomic(path: PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_torch(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` via a temporary file and an atomic rename."""
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_with(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_csv`` or ``fig.savefig``) then rename atomically."""
    return _atomic(path, writer)
