"""What the ``ppzoo`` commands share: each model's compare settings (its class's ``job``, a
:class:`zoo.Job`), the checks that run before any long work (each raises :class:`UsageError`),
and the fit of one model into a run folder (``config.json``, ``state.pt``, ``losses.csv``,
``loss.png``; an unfinished fit continues from its ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyro
import torch

import inference
from inference import distributed as parallel
import zoo
from inference.io import write_text, write_with
from zoo.app.folders import (  # noqa: F401  (re-exported: the commands use them from here)
    Rows, UsageError, check_out_file, check_path, check_run_files, check_size, lock_folder,
    locks_held, prepare_out, prepare_run, release_locks, remove_leftovers,
)
from zoo.app.heldout import (  # noqa: F401  (re-exported, as above)
    check_new_data, data_hash, evaluation_entry, fitted_rows, new_data_problem, split_data,
    split_record,
)
from zoo.base import Job

RUN_FILE = "run.json"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
CONFIG_FILE = "config.json"
SKIPPED_FILE = "skipped.json"
CHECKPOINT_FILE = "checkpoint.pt"


# ---------------------------------------------------------------------------- settings
def job_for(name: str, quick: bool = False) -> Job:
    """The compare job's settings for model ``name`` (its class's ``job``), quick or not."""
    return zoo.model_class(name).job.settings(quick)


def user_job(quick: bool = False) -> Job:
    """The compare job's settings for a user's pair (``--model``): the defaults of
    :class:`zoo.Job` (``--quick``: those of every zoo model), before the command's flags."""
    return zoo.ZooModel.job.settings(quick)


def job_methods(job: Job) -> List[str]:
    """The methods a job runs: its own list, else every registered one."""
    return list(job.methods) if job.methods is not None else list(inference.methods())


# ---------------------------------------------------------------------------- checks
def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for but no CUDA device is available "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return device


def check_models(names: Sequence[str]) -> List[str]:
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; known models: "
                         f"{', '.join(zoo.names())} (see ppzoo list)")
    return list(dict.fromkeys(names)) or list(zoo.names())


def check_methods(methods: Sequence[str]) -> List[str]:
    known = inference.methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(known)}")
    return list(dict.fromkeys(methods))


def cli_words(message: str) -> str:
    """An API fix worded for the command line: ``zoo.get('gmm', D=3)`` -> ``--option D=3``."""
    import re

    return re.sub(r"zoo\.get\(\s*'\w+'\s*,\s*([^)]*)\)",
                  lambda m: "--option " + " ".join(a.strip() for a in m.group(1).split(",")),
                  message)


def make_entry(name: str, options: Dict[str, Any]):
    """The zoo's model ``name`` built with ``options`` (:func:`zoo.get`)."""
    try:
        return zoo.get(name, **options)
    except (TypeError, ValueError) as e:
        raise UsageError(cli_words(f"cannot build model {name!r} with options {options}: {e}")
                         ) from None


def load_data(entry, path: Optional[str] = None, subset: Optional[int] = None,
              device: str = "cpu"):
    """The entry's data (default or ``path``), its first ``subset`` rows, checked."""
    try:
        data = entry.load_data(path, device="cpu")
        if subset is not None:
            if subset > len(data[0]):
                raise ValueError(f"--subset {subset} asks for more rows than the data's "
                                 f"{len(data[0])}; pass at most {len(data[0])}")
            data = tuple(t[:subset] for t in data)
        entry.check_data(*data)
    except FileNotFoundError as e:
        raise UsageError(str(e).strip("'\"")) from None
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(cli_words(f"cannot use data {path or '(default)'} for {entry.name}: "
                                   f"{e}")) from None
    return tuple(t.to(device) for t in data)


def entry_for(config: Dict[str, Any], folder: os.PathLike):
    """The entry a run's ``config`` (read from ``folder``) was fitted with: the zoo's model, or
    the user's pair of ``--model`` (its file checked unchanged before it runs,
    :func:`zoo.app.usermodel.reopen`)."""
    if config.get("source") is not None:
        from zoo.app import usermodel

        return usermodel.reopen(config["source"], config["options"], folder)
    check_models([config["model"]])
    return make_entry(config["model"], config["options"])


#: the largest -K (particles) accepted: memory stays within the chunk budget for any K, but
#: above this a run would take days and K no longer fits the estimators' integer bookkeeping
MAX_NUM_SAMPLES = 10**9


def _number(value: Any, integer: bool) -> bool:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


def check_fit_settings(job: Job, seed: Any) -> None:
    """The fit settings a command line can get wrong: each named with its fix."""
    problems = []
    if not (_number(job.steps, True) and job.steps >= 1):
        problems.append(f"--steps must be an integer >= 1, got {job.steps!r}")
    if job.batch_size is not None and not (_number(job.batch_size, True) and job.batch_size >= 1):
        problems.append(f"--batch-size must be an integer >= 1, got {job.batch_size!r}")
    if not (_number(job.lr, False) and job.lr > 0):
        problems.append(f"--lr must be a finite number > 0, got {job.lr!r}")
    if not (_number(job.lr_decay, False) and job.lr_decay > 0):
        problems.append(f"--lr-decay must be a finite number > 0 (the final lr as a fraction "
                        f"of --lr, e.g. 0.1), got {job.lr_decay!r}")
    if not (_number(seed, True) and 0 <= seed <= zoo.base.MAX_SEED):
        problems.append(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    if job.subset is not None and not (_number(job.subset, True) and job.subset >= 1):
        problems.append(f"--subset must be an integer >= 1, got {job.subset!r}")
    if job.loss is not None and job.loss not in inference.svi.LOSSES:
        problems.append(f"--loss must be one of {', '.join(inference.svi.LOSSES)}, got {job.loss!r}")
    if not (_number(job.kl_weight, False) and job.kl_weight > 0):
        problems.append(f"--kl-weight must be a finite number > 0 (beta; 1 is the ELBO), got "
                        f"{job.kl_weight!r}")
    if problems:
        raise UsageError("; ".join(problems))


def check_loss(job: Job, entry) -> None:
    """A KL weight needs an ELBO with a site-wise KL term (not the model's enumerated one)."""
    loss = job.loss or entry.loss
    if job.kl_weight != 1 and loss not in ("trace", "meanfield"):
        raise UsageError(f"--kl-weight {job.kl_weight:g} needs --loss trace or meanfield; "
                         f"{entry.name} trains with {loss} (discrete latents summed out, no "
                         "site-wise KL term): drop --kl-weight or pass --loss trace")


def check_estimate_settings(ks: Sequence[Any], seeds: Any) -> None:
    bad = [k for k in ks if not (_number(k, True) and 1 <= k <= MAX_NUM_SAMPLES)]
    if bad:
        raise UsageError(f"-K must be an integer in [1, {MAX_NUM_SAMPLES:.0e}], got {bad[0]}")
    if not (_number(seeds, True) and 1 <= seeds <= zoo.base.MAX_SEED):
        raise UsageError(f"--seeds must be an integer >= 1, got {seeds}")


#: the largest config.json read (ppzoo writes about 1 kB)
MAX_CONFIG_BYTES = 1 << 20


#: the most numbers ``ppzoo sample`` draws in one command (400 MB as float32)
MAX_SAMPLE_NUMBERS = 10**8


def check_sample_settings(n: Any, seed: Any) -> None:
    if not (_number(n, True) and n >= 1):
        raise UsageError(f"-n must be a positive integer, got {n}")
    if not (_number(seed, True) and 0 <= seed <= zoo.base.MAX_SEED):
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {seed}")


def check_draws(n: int, fitted) -> None:
    """Refuse ``-n`` draws that would not fit in memory (``MAX_SAMPLE_NUMBERS`` numbers)."""
    import math

    per = sum(math.prod(t.shape[1:]) for t in fitted)
    if n * per > MAX_SAMPLE_NUMBERS:
        raise UsageError(f"-n {n}: {n} draws of {per} numbers each are more than the "
                         f"{MAX_SAMPLE_NUMBERS:.0e} numbers one command draws; ask for at most "
                         f"{MAX_SAMPLE_NUMBERS // per} (and run it again with other seeds)")


def check_sample_out(out: str, folder: Path, config: Dict[str, Any], force: bool) -> Path:
    """``sample``'s ``--out``: never a file of the run (nor of the compare run holding it) or
    the data it was fitted on; an existing file only with ``force``."""
    owners = [folder] + ([folder.parent] if (folder.parent / RUN_FILE).is_file() else [])
    data = config.get("data")
    reads = [Path(data)] if data is not None and os.path.isabs(data) else []
    return check_out_file(out, (".csv", ".npz"), force=force, owners=owners, reads=reads)


def read_config(folder: os.PathLike) -> Dict[str, Any]:
    """``folder/config.json``, every field checked (:class:`UsageError` naming the field)."""
    path = Path(folder) / CONFIG_FILE
    if not os.path.lexists(path):
        raise UsageError(f"{folder} holds no {CONFIG_FILE}: not a fitted run; create one with "
                         "ppzoo fit MODEL --out DIR")
    check_size(path, MAX_CONFIG_BYTES, "refit with ppzoo fit")
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise UsageError(f"{path} is malformed ({e}); refit with ppzoo fit") from None
    config.setdefault("options", {})
    problem = _config_problem(config)
    if problem:
        raise UsageError(f"{path}: {problem}; fix that field or refit with ppzoo fit")
    return config


def _config_problem(config: Dict[str, Any]) -> Optional[str]:
    model, subset, scope = config.get("model"), config.get("subset"), config.get("scope")
    if not isinstance(model, str):
        return f"'model' must be a model name, got {model!r}"
    if not isinstance(config["options"], dict):
        return f"'options' must be an object, got {config['options']!r}"
    if config.get("source") is not None:
        from zoo.app.usermodel import source_problem

        problem = source_problem(config["source"])
        if problem:
            return problem
    if not isinstance(config.get("data"), (str, type(None))):
        return f"'data' must be a path or null, got {config.get('data')!r}"
    if subset is not None and not (_number(subset, True) and subset >= 1):
        return f"'subset' must be an integer >= 1 or null, got {subset!r}"
    if scope not in (None, "local", "global"):
        return f"'scope' must be \"local\", \"global\" or null, got {scope!r}"
    split = config.get("split")
    if split is not None and not (
            isinstance(split, dict) and _number(split.get("test_fraction"), False)
            and 0 <= split["test_fraction"] < 1 and _number(split.get("seed"), True)):
        return f"'split' must be null or {{\"test_fraction\": 0 <= f < 1, \"seed\": integer, ...}}, got {split!r}"
    options = config.get("estimate_options", {})
    if not isinstance(options, dict):
        return f"'estimate_options' must be an object, got {options!r}"
    from inference import estimators

    known = estimators.all_options()
    for key in options:
        if key not in known:
            return f"unknown estimate option {key!r} (known: {', '.join(sorted(known))})"
    try:
        estimators.check_options(options)
    except (TypeError, ValueError) as e:
        return f"estimate option {e}"
    return None


# ---------------------------------------------------------------------------- fitting
def fit_config(entry, job: Job, *, data_path: Optional[str], seed: int, device: str) -> Dict:
    """What ``config.json`` records of a fit: everything needed to repeat it."""
    source = getattr(entry, "source", None)  # a user's pair (zoo.app.usermodel)
    return {
        "model": entry.name, **({"source": source} if source else {}), "options": job.options,
        "data": data_path, "subset": job.subset, "scope": job.scope,
        "estimate_options": job.estimate_options,
        "fit": {"steps": job.steps, "lr": job.lr, "lr_decay": job.lr_decay,
                "batch_size": job.batch_size, "num_particles": job.num_particles, "seed": seed,
                "device": device, "loss": job.loss, "kl_weight": job.kl_weight},
    }


def check_resumable(previous: Dict[str, Any], config: Dict[str, Any], folder: Path) -> None:
    """A fit continues only with the settings it started with (the device may change)."""
    def flat(c):
        c = json.loads(json.dumps(c))  # as config.json holds it: tuples become lists
        c_fit = {"loss": None, "kl_weight": 1.0, **c.get("fit", {})}  # older configs: defaults
        fit = {f"--{k.replace('_', '-')}": v for k, v in c_fit.items()
               if k in ("steps", "lr", "lr_decay", "batch_size", "seed", "loss", "kl_weight")}
        source = c.get("source") or {}
        return {"MODEL": c.get("model"), "--option": c.get("options"), "--data": c.get("data"),
                "--subset": c.get("subset"), "--scope": c.get("scope"),
                "--data-plate": source.get("data_plate"), "--columns": source.get("columns"),
                **fit}

    old, new = flat(previous), flat(config)
    differ = [f"{k} was {old.get(k)!r}, now {new[k]!r}" for k in new if old.get(k) != new[k]]
    if differ:
        raise UsageError(f"--resume: {folder} holds a fit with other settings ({'; '.join(differ)}"
                         "); rerun with its settings or choose a new --out")


FIT_OUTPUTS = ("state.pt", "losses.csv", "loss.png")


def fit_finished(folder: Path) -> bool:
    """A fit is finished once every output exists and its checkpoint is gone (it is
    removed last): a fit killed between outputs continues from the checkpoint."""
    return (all((folder / f).is_file() for f in FIT_OUTPUTS)
            and not (folder / CHECKPOINT_FILE).exists())


def fit_started(folder: Path) -> bool:
    """Whether ``folder`` holds anything of a fit beyond its config (a checkpoint or state)."""
    return (folder / CHECKPOINT_FILE).exists() or (folder / "state.pt").exists()


def open_fit(folder: os.PathLike, device: str = "cpu"):
    """The finished fit in ``folder``, for a command that reads it (``estimate``, ``sample``):
    ``(config, entry, data)``, its config checked, the model built from it, the rows it was
    fitted on, and its ``state.pt`` bound to all three (:func:`check_saved`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a directory; pass the --out DIR of ppzoo fit")
    check_run_files(folder)
    config = read_config(folder)
    if config.get("source") is None:
        check_models([config["model"]])
    if not fit_finished(folder):
        raise UsageError(f"{folder} holds no finished fit (state.pt, losses.csv, loss.png): "
                         "finish it with ppzoo fit ... --resume")
    entry = entry_for(config, folder)
    data = fitted_rows(load_data(entry, config.get("data"), config.get("subset"), device), config)
    check_saved(entry, folder, data)
    return config, entry, data


def new_folders(path: os.PathLike) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (``None`` if it exists)."""
    path, root = Path(path).absolute(), None
    while not os.path.lexists(path):
        path, root = path.parent, path
    return root


def discard_unstarted(folder: Path, *, created: Optional[Path], kept_config: bool) -> None:
    """After a fit stopped before its first checkpoint (an error, Ctrl-C): leave the disk as
    it was, without the config.json it wrote, nor the folders it made (``created``: the
    outermost, from :func:`new_folders`)."""
    if fit_started(folder):
        return
    if not kept_config:
        (folder / CONFIG_FILE).unlink(missing_ok=True)
    remove_leftovers(folder)
    path = Path(folder).absolute()
    while created is not None and path.is_relative_to(created):
        try:
            path.rmdir()
        except OSError:  # something else is in it: keep it
            return
        path = path.parent


def check_saved(entry, folder: Path, data) -> None:
    """Refuse (one line, before any work) a ``state.pt`` or ``checkpoint.pt`` in ``folder``
    that is not ppzoo state, or belongs to another model (its name and options), guide or
    data set (N and SHA-256): the one identity check of every command that reads a fit."""
    from inference import state as state_file

    target = inference.as_target(entry)
    for name, kind in (("state.pt", "fit"), (CHECKPOINT_FILE, "checkpoint")):
        path = Path(folder) / name
        if path.is_file():
            saved = state_file.read(path, kind)
            state_file.check(saved, target, path, data=data)
            state_file.check_params(saved, target, data, path)


class Agreed(UsageError):
    """A refusal every ``torchrun`` rank has already heard (:func:`agreed`)."""


def agreed() -> None:
    """Under ``torchrun``: every rank's checks since the last agreement passed, else
    :class:`Agreed` with the first rank's problem on every rank, so none goes on to wait for
    a rank that stopped (:func:`inference.distributed.agree`); call it after the checks and
    before any collective. A rank that fails its checks reports through :func:`refusal`."""
    if parallel.launched():
        try:
            problem = parallel.agree(None)
        except ValueError as e:  # a bad PPZOO_DIST_TIMEOUT: every rank reads the same
            raise Agreed(str(e)) from None
        if problem:
            raise Agreed(problem)


def refusal(line: str, heard: bool = False) -> str:
    """Under ``torchrun``, the line a refused command ends with on every rank: this rank's
    ``line``, heard with every other rank's (:func:`inference.distributed.agree`) unless they
    already were (``heard``); it is also written where ``torchrun``'s failure summary reads
    it (``TORCHELASTIC_ERROR_FILE``), in place of "To enable traceback see ..."."""
    import time

    if not heard:
        try:
            line = parallel.agree(line) or line
        except (ValueError, RuntimeError):
            pass  # no one to agree with: this rank's own line
    where = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if where:
        text = f"ppzoo: error: {line}"
        try:
            Path(where).write_text(json.dumps({"message": {"message": text, "extraInfo": {
                "py_callstack": text, "timestamp": str(int(time.time()))}}}))
        except OSError:
            pass
    return line


def join(device: str) -> parallel.World:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): once every rank's checks passed
    (:func:`agreed`), join its process group; this process's place."""
    if parallel.launched():
        agreed()
        return parallel.setup(torch.device(device))[0]
    return parallel.World()


def check_torchrun_fit(job: Job, n: int) -> None:
    """What a fit under ``torchrun`` refuses (before anything is written): a global batch
    smaller than the number of processes, and a KL weight (its loss columns are per process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 2:
        return
    batch = min(job.batch_size or n, n)
    if batch < size:
        raise UsageError(f"a global batch of {batch} datapoints cannot be shared by {size} "
                         f"processes; use --batch-size (and enough data) >= {size}")
    if job.kl_weight != 1:
        raise UsageError(f"--kl-weight {job.kl_weight:g} under torchrun: the KL weight's loss "
                         "columns are not yet reduced across processes; fit in one process "
                         "(without torchrun) or drop --kl-weight")


def on_rank0(fn: Callable[[], Any], world: parallel.World) -> Any:
    """``fn()`` (creating or locking a run folder) on rank 0 alone, its outcome on every rank:
    one process holds the lock, the others neither wait for it nor write."""
    return parallel.first(fn, world)


def fit_entry(entry, data, job: Job, folder: Path, *, data_path: Optional[str] = None,
              seed: int = 0, device: str = "cpu", progress: bool = False,
              echo: Callable[[str], None] = print, split: Optional[Dict[str, Any]] = None,
              distributed: bool = False, compile: bool = True):  # noqa: A002
    """Fit ``entry`` with ``job``'s settings; write config.json, state.pt, losses.csv,
    loss.png under ``folder``. An existing ``folder/checkpoint.pt`` is continued. ``split``
    (:func:`split_record`): ``data`` is the training part of a split, recorded in the config.
    With ``distributed``, one of ``torchrun``'s processes: rank 0 alone writes. ``compile``:
    as :func:`inference.fit`'s (the same fit either way)."""
    from inference.plots import plot_losses

    world = parallel.world()
    config = fit_config(entry, job, data_path=data_path, seed=seed, device=device)
    if split is not None:
        config["split"] = split
    on_rank0(lambda: write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE), world)
    optim = pyro.optim.ClippedAdam({"lr": job.lr, "lrd": job.lr_decay ** (1 / max(job.steps, 1))})
    result = inference.fit(entry, data, steps=job.steps, optim=optim, batch_size=job.batch_size,
                           num_particles=job.num_particles, loss=job.loss, kl_weight=job.kl_weight,
                           seed=seed, device=device, progress=progress,
                           checkpoint=folder / CHECKPOINT_FILE,
                           checkpoint_every=max(50, job.steps // 10), distributed=distributed,
                           compile=compile)
    final = float(result.losses["loss_per_datapoint"].tail(50).mean())
    why = result.diagnostics["not_compiled"]

    def write():  # the other ranks wait for it: the run folder is finished when they return
        result.save(folder)
        config["fit"].update(seconds=round(result.seconds, 3), final_loss_per_datapoint=final,
                             not_compiled=why)
        write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE)
        save_figure(plot_losses(result.losses, title=f"{entry.name}: training curve"),
                    folder / "loss.png")
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)

    on_rank0(write, world)
    echo(f"{entry.name}: fitted {job.steps} steps in {result.seconds:.1f} s "
         f"({'compiled' if why is None else 'eager: ' + why}), "
         f"-ELBO/datapoint {final:.4g} (mean of the last 50 steps) -> {folder}")
    return result


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a png to ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)
    return path
