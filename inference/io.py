"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)``, then make ``tmp`` durable (fsync), give it the permissions a new file
    gets under the umask, rename it over ``path`` and fsync the folder, so that after a crash
    ``path`` holds either its old or its new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` via a temporary file and an atomic rename. Saved through a
    file object, so the archive's inner folder is named ``archive``, not after the random
    temporary name: the same ``obj`` gives the same bytes every run."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return _atomic(path, write)


def write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_with(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_csv`` or ``fig.savefig``) then rename atomically."""
    return _atomic(path, writer)
