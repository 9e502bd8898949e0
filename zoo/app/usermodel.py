"""A user's own model/guide pair as a zoo entry: ``ppzoo fit|compare --model FILE.py --data
DATA`` runs the zoo's job on it, and ``ppzoo estimate`` reads its runs.

``--model FILE.py[:MODEL,GUIDE[,LOG_EVIDENCE]]`` names the file and the top-level names in it
(default ``model`` and ``guide``; a guide may be an autoguide object, ``guide =
AutoNormal(model)``). The exact reference is the file's ``log_evidence(*data)`` -- the third
name, or a top-level function of that name where none is given: ``log p(data)`` as a number
(global scope), or one value per datapoint (a tensor ``[N]``, local scope). A top-level
``networks = {"name": module}`` names the ``torch.nn`` modules the pair registers with
``pyro.module``, so that their weights are saved with the fit. Keyword arguments
(``--option key=value``) go to every call of model, guide and ``log_evidence``.

Loading the file runs its code, as ``python FILE.py`` would except its ``if __name__ ==
"__main__":`` part, with the file's folder first on ``sys.path``. A run records the file's path
and SHA-256 (``config.json``'s ``source``); a command reading the run hashes the file again
before running it, and refuses a changed or missing file in one line. :class:`UserPair` is the
adapter: it follows the zoo protocol (:class:`zoo.ZooModel`), so the application's machinery
(run folders, fit, compare, report) serves it as it serves a zoo model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pyro
import torch

import inference
from zoo.app import userdata
from zoo.app.folders import UsageError
from zoo.base import Job, ZooModel, check_tensors

SPEC = "FILE.py[:MODEL,GUIDE[,LOG_EVIDENCE]]"
#: the largest model file read (a Python source; 1 MiB is long)
MAX_SOURCE_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class Spec:
    """``--model``'s value: the file and the names in it (``log_evidence`` given explicitly,
    or ``None``: the file's top-level ``log_evidence`` where it has one)."""

    file: str
    model: str = "model"
    guide: str = "guide"
    log_evidence: Optional[str] = None

    def __str__(self) -> str:
        names = [self.model, self.guide] + ([self.log_evidence] if self.log_evidence else [])
        return f"{self.file}:{','.join(names)}"


def parse_spec(text: str) -> Spec:
    """``FILE.py``, ``FILE.py:model,guide`` or ``FILE.py:model,guide,log_evidence``."""
    path, sep, names = text.rpartition(":")
    if text.endswith(".py") or not sep:
        path, names = text, None
    if names is not None:
        parts = [n.strip() for n in names.split(",")]
        if not (len(parts) in (2, 3) and all(n.isidentifier() for n in parts)):
            raise UsageError(f"--model {text}: name the model and guide after the file, e.g. "
                             f"--model {path or 'my_model.py'}:model,guide (form {SPEC})")
    if not path.endswith(".py"):
        raise UsageError(f"--model {text}: expected a Python file ending in .py (form {SPEC})")
    return Spec(str(Path(path).absolute()), *(parts if names is not None else ()))


def _source(spec: Spec) -> bytes:
    """The bytes of ``spec.file``, checked: a regular file of at most ``MAX_SOURCE_BYTES``."""
    path = Path(spec.file)
    if not path.exists():
        raise UsageError(f"--model {path}: no such file; name your Python file ({SPEC})")
    if path.is_dir() or not path.is_file():
        raise UsageError(f"--model {path} is not a regular file; name your Python file ({SPEC})")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise UsageError(f"--model {path} holds {path.stat().st_size} bytes, more than the "
                         f"{MAX_SOURCE_BYTES} a model file may; name the file of your model")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"--model {path}: cannot read it ({e.strerror or e})") from None


def _run(spec: Spec, source: bytes, sha256: str):
    """Run the file's code as a fresh module (not ``__main__``); one line for any error."""
    path = spec.file
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise UsageError(f"--model {path}, line {e.lineno}: SyntaxError: {e.msg}; fix the file"
                         ) from None
    except ValueError as e:  # e.g. a null byte in the source
        raise UsageError(f"--model {path} is not Python source ({e})") from None
    name = f"ppzoo_user_{re.sub(r'[^0-9A-Za-z_]', '_', Path(path).stem)}_{sha256[:12]}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    sys.path.insert(0, str(Path(path).parent))
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise UsageError(f"--model {path} called sys.exit() while loading; put the script part "
                         "of the file under if __name__ == '__main__':") from None
    except Exception as e:  # noqa: BLE001 - the user's code: any error, in one line
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                     if f.filename == path), None)
        where = f" (line {line})" if line else ""
        raise UsageError(f"--model {path}: running it raised {type(e).__name__}: "
                         f"{_first_line(e)}{where}; fix the file") from None
    finally:
        if sys.path and sys.path[0] == str(Path(path).parent):
            sys.path.pop(0)
    return module


def _first_line(e: BaseException) -> str:
    """An error's message in one line: its first, and the next where the first ends with a
    colon (Pyro's "Error while computing log_prob at site 'x':" then the reason)."""
    raw = [ln for ln in str(e).splitlines() if ln.strip()] or [""]
    two = len(raw) > 1 and (raw[0].rstrip().endswith(":") or raw[1][:1].isspace())
    text = " ".join(ln.strip() for ln in raw[:2 if two else 1])
    return text[:300].rstrip(". ")


def _named(module, spec: Spec, name: str, role: str, required: bool = True):
    """The top-level ``name`` of the user's module: a callable (``None`` if absent and not
    ``required``)."""
    if not hasattr(module, name):
        if not required:
            return None
        found = _callables(module)
        hint = f"its functions and objects: {', '.join(found[:8])}" if found else \
            "it defines no functions"
        raise UsageError(f"--model {spec.file} defines no {role} {name!r} ({hint}); name yours "
                         f"with --model {Path(spec.file).name}:MODEL,GUIDE")
    value = getattr(module, name)
    if not callable(value) or isinstance(value, type):
        kind = "a class" if isinstance(value, type) else f"of type {type(value).__name__}"
        raise UsageError(f"--model {spec.file}: {name!r} (the {role}) is {kind}, not a function "
                         "or a guide object; name a callable")
    return value


def _callables(module) -> list:
    """The top-level functions the file defines and the callable objects it makes."""
    import inspect

    def own(v):
        if isinstance(v, type) or inspect.ismodule(v) or inspect.isbuiltin(v) or not callable(v):
            return False
        return not inspect.isfunction(v) or v.__module__ == module.__name__

    return sorted(k for k, v in vars(module).items() if not k.startswith("_") and own(v))


class UserPair(ZooModel):
    """A user's model/guide pair, loaded from their file, with what the zoo's protocol asks of
    an entry: name, data plate, keyword arguments (``options``), data loading, the exact
    reference and the networks. ``source`` is what ``config.json`` records of it."""

    references = ()

    def __init__(self, spec: Spec, sha256: str, module, *, data_plate: Optional[str] = "data",
                 columns: Sequence[str] = (), options: Optional[Mapping[str, Any]] = None):
        self.spec, self.sha256, self.module = spec, sha256, module
        self.name = re.sub(r"[^0-9A-Za-z_.-]", "_", Path(spec.file).stem) or "model"
        self.data_plate, self.columns = data_plate, tuple(columns)
        self.max_plate_nesting = None  # read off a trace
        self.options = dict(options or {})
        self.model = _named(module, spec, spec.model, "model")
        self.guide = _named(module, spec, spec.guide, "guide")
        self._log_evidence = _named(module, spec, spec.log_evidence or "log_evidence",
                                    "log_evidence", required=spec.log_evidence is not None)
        self._networks = _networks(module, spec)
        self.args = userdata.arguments(self.model, self.options)

    @property
    def kwargs(self) -> Dict[str, Any]:
        return self.options

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"{self.spec.model}, {self.spec.guide} from {self.spec.file}"

    @property
    def source(self) -> Dict[str, Any]:
        """What a run records of the pair (``config.json``'s ``source``): enough to load it
        again, and the file's SHA-256 to refuse it once changed."""
        return {"file": self.spec.file, "sha256": self.sha256, "model": self.spec.model,
                "guide": self.spec.guide,
                "log_evidence": self.spec.log_evidence or ("log_evidence" if self._log_evidence
                                                           is not None else None),
                "data_plate": self.data_plate, "columns": list(self.columns)}

    def load_data(self, path: Optional[str] = None, device: Any = "cpu"):
        if path is None:
            raise ValueError("your model has no data of its own: pass --data FILE (.csv or .npz)")
        data, how = userdata.read(os.fspath(path), self.args, self.columns)
        if self.args is not None and not self.args.fits(len(data)):
            fix = ("choose them with --columns (e.g. --columns x1,x2 --columns y)"
                   if str(path).lower().endswith(".csv") else
                   f"save one array per argument, np.savez(f, {', '.join(f'{n}={n}' for n in self.args.required)})")
            raise ValueError(f"{self.spec.model}({self.args}) takes the data tensors "
                             f"{', '.join(self.args.required) or 'none'}; {path} gives "
                             f"{len(data)} ({how}): {fix}")
        return tuple(t.to(device) for t in data)

    def check_data(self, *data: torch.Tensor) -> None:
        check_tensors(data)
        if self.args is not None and not self.args.fits(len(data)):
            raise ValueError(f"{self.spec.model}({self.args}) cannot take {len(data)} data "
                             "tensors")

    def log_evidence(self, *data: torch.Tensor):
        if self._log_evidence is None:
            return None
        return self._log_evidence(*data, **self.options)

    def networks(self) -> Dict[str, torch.nn.Module]:
        return dict(self._networks)

    def __repr__(self) -> str:
        return f"UserPair({str(self.spec)!r})"


def _networks(module, spec: Spec) -> Dict[str, torch.nn.Module]:
    nets = getattr(module, "networks", None)
    if nets is None:
        return {}
    ok = isinstance(nets, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.nn.Module) for k, v in nets.items())
    if not ok:
        raise UsageError(f"--model {spec.file}: 'networks' must map the names given to "
                         "pyro.module to their torch.nn modules, e.g. networks = {'decoder': "
                         "decoder}")
    return dict(nets)


def load(text: str, *, data_plate: Optional[str] = "data", columns: Sequence[str] = (),
         options: Optional[Mapping[str, Any]] = None) -> UserPair:
    """The pair named by ``--model`` ``text`` (runs the file)."""
    spec = parse_spec(text)
    source = _source(spec)
    sha256 = hashlib.sha256(source).hexdigest()
    return UserPair(spec, sha256, _run(spec, source, sha256), data_plate=data_plate,
                    columns=columns, options=options)


def reopen(source: Mapping[str, Any], options: Mapping[str, Any], folder: os.PathLike) -> UserPair:
    """The pair a run in ``folder`` recorded (``config.json``'s ``source``), its file hashed
    first: a changed or missing file is refused before any of it runs."""
    spec = Spec(source["file"], source["model"], source["guide"], source.get("log_evidence"))
    if not Path(spec.file).is_file():
        raise UsageError(f"{folder} was fitted with --model {spec}, and {spec.file} is gone; "
                         "restore it, or fit again")
    text = _source(spec)
    sha256 = hashlib.sha256(text).hexdigest()
    if sha256 != source["sha256"]:
        raise UsageError(f"{spec.file} changed since {folder} was fitted with it (sha256 "
                         f"{source['sha256'][:12]} then, {sha256[:12]} now); restore it, or fit "
                         "the new version into a new --out")
    return UserPair(spec, sha256, _run(spec, text, sha256), data_plate=source.get("data_plate"),
                    columns=source.get("columns") or (), options=options)


def check_unchanged(previous: Mapping[str, Any], entry: Any, folder: os.PathLike) -> None:
    """Refuse to continue the run in ``folder`` (its ``config.json`` as ``previous``) with
    another model file, or a changed one."""
    was, now = previous.get("source"), getattr(entry, "source", None)
    if was is None and now is None:
        return
    if was is None or now is None:
        what = f"the zoo's {previous.get('model')}" if was is None else f"--model {was['file']}"
        raise UsageError(f"{folder} holds a fit of {what}; continue it with that, or choose a "
                         "new --out")
    if was.get("sha256") != now["sha256"] and was.get("file") == now["file"]:
        raise UsageError(f"{now['file']} changed since the fit in {folder} started (sha256 "
                         f"{str(was.get('sha256'))[:12]} then, {now['sha256'][:12]} now); "
                         "restore it, or fit the new version into a new --out")
    differ = [f"{k} was {was.get(k)!r}, now {now[k]!r}" for k in now if was.get(k) != now[k]]
    if differ:
        raise UsageError(f"{folder} holds a fit of another --model ({'; '.join(differ)}); "
                         "continue it with its own, or choose a new --out")


def source_problem(source: Any) -> Optional[str]:
    """What is wrong with a ``config.json``'s ``source`` field (``None``: nothing)."""
    if not isinstance(source, dict):
        return f"'source' must be an object, got {source!r}"
    for key in ("file", "sha256", "model", "guide"):
        if not isinstance(source.get(key), str):
            return f"'source.{key}' must be a string, got {source.get(key)!r}"
    if not isinstance(source.get("log_evidence"), (str, type(None))):
        return f"'source.log_evidence' must be a name or null, got {source['log_evidence']!r}"
    if not isinstance(source.get("data_plate"), (str, type(None))):
        return f"'source.data_plate' must be a name or null, got {source['data_plate']!r}"
    columns = source.get("columns", [])
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        return f"'source.columns' must be a list of strings, got {columns!r}"
    return None


def check_pair(entry: UserPair, data, job: Job) -> str:
    """Run, on ``data`` and before anything is written, what the job will ask of the pair:
    the fit's own checks (:func:`inference.fit` with no steps), one trace of guide and model,
    the scope of its estimates and its ``log_evidence``. Returns the scope; one line naming
    the problem (:class:`UsageError`) where the pair does not run."""
    from inference.plates import resolve
    from inference.scope import resolve_scope
    from inference.state import expected_params

    what = f"--model {entry.spec} on {len(data[0])} datapoints"
    try:
        inference.fit(entry, data, steps=0, batch_size=job.batch_size, loss=job.loss,
                      kl_weight=job.kl_weight, num_particles=job.num_particles, progress=False)
        target = resolve(inference.as_target(entry), data)
        made = expected_params(target, data)
        _one_loss(target, data, job.loss, job.num_particles)
        scope, _ = resolve_scope(target, data, job.scope, None)
        value = entry.log_evidence(*data)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: any error, in one line
        if _refused(e):  # the engine's own refusal names its fix
            raise UsageError(f"{what}: {_first_line(e)}") from None
        raise UsageError(f"{what}: {type(e).__name__}: {_first_line(e)}; make the pair run on "
                         "this data (try model(*data) and guide(*data) in Python)") from None
    finally:
        pyro.clear_param_store()
    unsaved = sorted({k.split("$$$")[0] for k in made if "$$$" in k})
    if unsaved:
        raise UsageError(f"{what}: the pair registers the network(s) {', '.join(unsaved)} with "
                         f"pyro.module; add networks = {{{unsaved[0]!r}: <its module>, ...}} at "
                         "the top level of the file, so that their weights are saved with the fit")
    if value is not None:
        _check_log_evidence(value, len(data[0]), what)
    return scope


def _one_loss(target, data, loss: Optional[str], particles: int) -> None:
    """One evaluation of the ELBO the fit will minimise (no gradient, nothing changed), so that
    Pyro's own checks of every site's shape run before anything is written."""
    from inference.svi import LOSSES

    with pyro.poutine.block(), torch.no_grad():
        trace = pyro.poutine.trace(target.model).get_trace(*data)
    enumerated = any(site["type"] == "sample" and site["infer"].get("enumerate") == "parallel"
                     for site in trace.nodes.values())
    elbo = LOSSES[loss or ("traceenum" if enumerated else "trace")]
    elbo(num_particles=particles, vectorize_particles=True,
         max_plate_nesting=target.plate_nesting(data)).loss(target.model, target.guide, *data)


def _refused(e: BaseException) -> bool:
    """Whether ``e`` is a refusal the engine raised (a ``ValueError`` from :mod:`inference`)."""
    frames = traceback.extract_tb(e.__traceback__)
    root = str(Path(inference.__file__).parent)
    return isinstance(e, ValueError) and bool(frames) and frames[-1].filename.startswith(root)


def _check_log_evidence(value: Any, n: int, what: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        ok = value.dim() == 0 or tuple(value.shape) == (n,)
        value = value.detach().double().sum() if ok else value
    if not ok:
        raise UsageError(f"{what}: log_evidence returned {type(value).__name__} "
                         f"{tuple(getattr(value, 'shape', ()))}; return log p(data) as a number, "
                         f"or one value per datapoint (a tensor of shape [{n}])")
    if not math.isfinite(float(value)):
        raise UsageError(f"{what}: log_evidence returned {float(value)}; it must be finite")
