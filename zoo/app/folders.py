"""Run folders: checked before a command writes to them, locked while it does, and the
result rows they hold (appended atomically, row by row, never lost).
"""

from __future__ import annotations

import json
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


#: the most bytes a file name may have (Linux and macOS); an atomic write's temporary file is
#: named ``.NAME.XXXXXXXX.tmp``, ``TMP_AFFIX`` bytes longer (:mod:`inference.io`)
NAME_MAX, PATH_MAX, TMP_AFFIX = 255, 4096, len("..XXXXXXXX.tmp")


def check_path(path: os.PathLike, what: str, *, written: bool = False) -> Path:
    """Refuse (one line) a path no file system takes: a name over ``NAME_MAX`` bytes (with
    ``written``, the last one's temporary twin too) or a whole path over ``PATH_MAX``."""
    path = Path(path)
    whole = len(os.fsencode(str(path.absolute())))
    if whole > PATH_MAX - TMP_AFFIX:
        raise UsageError(f"{what} {str(path)[:40]}...: the path is {whole} bytes long, above the "
                         f"{PATH_MAX - TMP_AFFIX} ppzoo can write; choose a shorter one")
    parts = path.absolute().parts
    for i, part in enumerate(parts):
        limit = NAME_MAX - (TMP_AFFIX if written and i == len(parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            raise UsageError(f"{what} {str(path)[:40]}...: the name {part[:20]}... is "
                             f"{len(os.fsencode(part))} bytes long, above the {limit} a file "
                             "name may have here; choose a shorter one")
    return path


def check_run_files(folder: os.PathLike) -> None:
    """Refuse a run folder (or a model folder in it) holding a symbolic link or a special file
    (a FIFO, a device, a socket): ppzoo would read and write through the link into another
    run's file, or wait forever on the pipe."""
    folder = Path(folder)
    entries = [p for p in folder.iterdir()] if folder.is_dir() else []
    entries += [q for p in entries if p.is_dir() and not p.is_symlink() for q in p.iterdir()]
    for p in entries:
        kind = ("a symbolic link" if p.is_symlink() else None if p.is_file() or p.is_dir()
                else "not a regular file (a FIFO, device or socket)")
        if kind:
            raise UsageError(f"{p} is {kind}: ppzoo reads and writes only the regular files of "
                             "its run folders; move it away (or replace it by a copy)")


def remove_leftovers(folder: os.PathLike) -> None:
    """Delete the temporary files of atomic writes a killed command left in ``folder`` and its
    model folders (called with the folder locked, so no other command is writing them)."""
    folder = Path(folder)
    for p in [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")]:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def prepare_out(out: os.PathLike, *, marker: str, resume: bool = False,
                can_resume: bool = True, stale: Callable[[Path], bool] = lambda out: False
                ) -> Path:
    """Check ``out`` can hold a new run (or, with ``resume``, continues one whose ``marker``
    file exists), create it, check it is writable and lock it (:func:`lock_folder`).
    Leftover temporary files count as absent; so does the whole previous run where
    ``stale(out)`` says it never got past its start (nothing worth keeping)."""
    out = check_path(out, "--out")
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
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None
    lock_folder(out)
    return out


def check_out_file(out: os.PathLike, suffixes: Sequence[str], *, force: bool = False,
                   owners: Sequence[Path] = (), reads: Sequence[Path] = ()) -> Path:
    """Check ``out`` can take a new file, before any work: a name ending in one of
    ``suffixes``, in a writable folder, not a link or a folder, not inside a run folder of
    ``owners`` (ppzoo owns and reads every file there) nor one of the files ``reads``; an
    existing file is replaced only with ``force``."""
    out = check_path(out, "--out", written=True)
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; name the file itself (ppzoo does "
                         "not write through links)")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name a file, e.g. "
                         f"{out / ('draws' + suffixes[0])}")
    if out.suffix not in suffixes:
        raise UsageError(f"--out {out}: name a {' or '.join(suffixes)} file")
    if out.exists() and not out.is_file():
        raise UsageError(f"--out {out} is not a regular file (a FIFO or device?); name a file")
    where = out.absolute().parent.resolve() / out.name
    for folder in owners:
        if where.is_relative_to(Path(folder).resolve()):
            raise UsageError(f"--out {out} is inside the run folder {folder}, whose files ppzoo "
                             "owns and reads; write it outside the run")
    for path in reads:
        if out.exists() and os.path.exists(path) and os.path.samefile(out, path):
            raise UsageError(f"--out {out} is the data file the run was fitted on; write it "
                             "elsewhere")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it, or choose another "
                         "name")
    if not where.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}; create it first")
    try:
        tempfile.TemporaryFile(dir=where.parent).close()
    except OSError as e:
        raise UsageError(f"cannot write to {out.parent}: {e.strerror or e}; choose another "
                         "--out") from None
    return out


def prepare_run(out: os.PathLike, *, marker: str, resume: bool, quick: bool) -> Path:
    """:func:`prepare_out` for a run that may be ``--quick`` (``ppzoo compare``, ``bench``):
    a previous run in ``out`` (its ``marker``, a JSON file with a ``quick`` field) is resumed
    only with the same ``--quick``."""
    out = prepare_out(out, marker=marker, resume=resume)
    run = read_json(out / marker)
    if isinstance(run, dict) and bool(run.get("quick")) != quick:
        flag = "with" if run.get("quick") else "without"
        raise UsageError(f"{out} was run {flag} --quick; resume it {flag} --quick too")
    return out


def read_json(path: os.PathLike) -> Any:
    """A JSON file's content, or ``None`` where it is missing, unreadable, not a regular file
    or over 1 MiB (ppzoo writes a few kB)."""
    path = Path(path)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_LOCKS: List[int] = []


def lock_folder(folder: os.PathLike) -> None:
    """Hold an exclusive lock (``flock`` on the folder itself; no file is written) until
    :func:`release_locks` or the process ends; a second ppzoo command on the same folder, in
    this process or another, is refused with one line instead of interleaving its writes.
    Then refuse the folder unless it is writable and holds no link or special file
    (:func:`check_run_files`), and remove what killed commands left (:func:`remove_leftovers`)."""
    import fcntl

    fd = os.open(Path(folder).resolve(), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another ppzoo command is writing to {folder}; wait for it to "
                         "finish, or choose another folder") from None
    _LOCKS.append(fd)
    check_run_files(folder)  # before anything in it is read or written
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UsageError(f"cannot write to {folder}: {e.strerror or e}; make it writable, or "
                         "copy the run somewhere writable") from None
    remove_leftovers(folder)


def locks_held() -> int:
    return len(_LOCKS)


def release_locks(keep: int = 0) -> None:
    """Release the locks taken after the first ``keep``."""
    while len(_LOCKS) > keep:
        os.close(_LOCKS.pop())


#: the largest table of result rows read (a row is about 200 bytes)
MAX_TABLE_BYTES = 256 << 20


def check_size(path: Path, limit: int, fix: str) -> None:
    """Refuse, before reading it, a file that is not a regular one or holds over ``limit`` bytes."""
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"{path} is not a regular file; {fix}")
    size = path.stat().st_size
    if size > limit:
        raise UsageError(f"{path} holds {size} bytes, more than the {limit} ppzoo reads there; "
                         f"{fix}")


class Rows:
    """A CSV of result rows, one per ``key`` (method, K, seed), rewritten atomically after
    every added row; an existing file is read first (rows are appended, never lost)."""

    def __init__(self, path: Path, key: Sequence[str] = ("method", "K", "seed")):
        import pandas as pd

        self.path, self.key = Path(path), tuple(key)
        self.df = pd.DataFrame()
        if self.path.exists():
            check_size(self.path, MAX_TABLE_BYTES, "move it away to start its rows afresh")
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
        self.extend([row])
        return row

    def extend(self, rows: Sequence[Dict[str, Any]]) -> None:
        """Append ``rows`` in one atomic rewrite (many rows at once: one write, not one each)."""
        import pandas as pd

        if not rows:
            return
        new = pd.DataFrame(list(rows))
        self.df = new if self.df.empty else pd.concat([self.df, new], ignore_index=True)
        write_with(self.path, lambda tmp: self.df.to_csv(tmp, index=False))
