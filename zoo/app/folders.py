"""Run folders: checked before a command writes to them, locked while it does, and the
result rows they hold (appended atomically, row by row, never lost).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from inference.io import write_with


class UsageError(Exception):
    """A problem with what was asked for (model, method, directory, device, data), found
    before any long work; the command line prints it as one line and exits non-zero."""


def _leftover(name: str) -> bool:
    """A temporary file an interrupted atomic write left behind: as if absent."""
    return name.startswith(".") and name.endswith(".tmp")


def prepare_out(out: os.PathLike, *, marker: str, resume: bool = False,
                can_resume: bool = True, stale: Callable[[Path], bool] = lambda out: False
                ) -> Path:
    """Check ``out`` can hold a new run (or, with ``resume``, continues one whose ``marker``
    file exists), create it, check it is writable and lock it (:func:`lock_folder`).
    Leftover temporary files count as absent; so does the whole previous run where
    ``stale(out)`` says it never got past its start (nothing worth keeping)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    previous = (out / marker).exists()
    if out.is_dir() and any(not _leftover(p.name) for p in out.iterdir()):
        if not previous:
            raise UsageError(f"--out {out} exists, is not empty and holds no previous run "
                             f"(no {marker}); choose a new or empty directory")
        if not resume and not stale(out):
            hint = "pass --resume to continue it, or" if can_resume else "please"
            raise UsageError(f"--out {out} holds a previous run; {hint} choose a new directory")
    anc = out.absolute()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"cannot create --out {out}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {anc}: permission denied; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None
    lock_folder(out)
    return out


def prepare_run(out: os.PathLike, *, marker: str, resume: bool, quick: bool) -> Path:
    """:func:`prepare_out` for a run that may be ``--quick`` (``ppzoo compare``, ``bench``):
    a previous run in ``out`` (its ``marker``, a JSON file with a ``quick`` field) is resumed
    only with the same ``--quick``."""
    import json

    out = prepare_out(out, marker=marker, resume=resume)
    try:
        run = json.loads((out / marker).read_text())
    except (OSError, ValueError):
        run = None
    if isinstance(run, dict) and bool(run.get("quick")) != quick:
        flag = "with" if run.get("quick") else "without"
        raise UsageError(f"{out} was run {flag} --quick; resume it {flag} --quick too")
    return out


_LOCKS: List[int] = []


def lock_folder(folder: os.PathLike) -> None:
    """Hold an exclusive lock (``flock`` on the folder itself; no file is written) until
    :func:`release_locks` or the process ends; a second ppzoo command on the same folder, in
    this process or another, is refused with one line instead of interleaving its writes."""
    import fcntl

    fd = os.open(Path(folder).resolve(), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another ppzoo command is writing to {folder}; wait for it to "
                         "finish, or choose another folder") from None
    _LOCKS.append(fd)


def locks_held() -> int:
    return len(_LOCKS)


def release_locks(keep: int = 0) -> None:
    """Release the locks taken after the first ``keep``."""
    while len(_LOCKS) > keep:
        os.close(_LOCKS.pop())


class Rows:
    """A CSV of result rows, one per ``key`` (method, K, seed), rewritten atomically after
    every added row; an existing file is read first (rows are appended, never lost)."""

    def __init__(self, path: Path, key: Sequence[str] = ("method", "K", "seed")):
        import pandas as pd

        self.path, self.key = Path(path), tuple(key)
        self.df = pd.DataFrame()
        if self.path.exists():
            try:
                df = pd.read_csv(self.path)
                missing = sorted(set(self.key) - set(df.columns))
                if missing:
                    raise ValueError(f"no column {', '.join(missing)}")
                df["K"], df["seed"] = df["K"].astype(int), df["seed"].astype(int)
            except (ValueError, TypeError, OSError, pd.errors.ParserError,
                    pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
                raise UsageError(f"{self.path} is unreadable ({reason}); move it away to start "
                                 "its rows afresh") from None
            self.df = df

    def done(self, **where: Any) -> set:
        """The ``(method, K, seed)`` cells already in the file (rows matching ``where``)."""
        part = self.df
        for col, value in where.items():
            part = part[part[col] == value] if len(part) else part
        if part.empty:
            return set()
        return set(zip(part["method"], part["K"].astype(int), part["seed"].astype(int)))

    def add(self, row: Dict[str, Any]) -> Dict[str, Any]:
        import pandas as pd

        new = pd.DataFrame([row])
        self.df = new if self.df.empty else pd.concat([self.df, new], ignore_index=True)
        write_with(self.path, lambda tmp: self.df.to_csv(tmp, index=False))
        return row
