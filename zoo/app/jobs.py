"""What the ``ppzoo`` commands share: each model's compare settings (its class's ``job``, a
:class:`zoo.Job`), the checks that run before any long work (each raises :class:`UsageError`),
and the fit of one model into a run folder (``config.json``, ``state.pt``, ``losses.csv``,
``loss.png``; an unfinished fit continues from its ``checkpoint.pt``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyro
import torch

import inference
import zoo
from inference.io import write_text, write_with
from zoo.base import Job

RUN_FILE = "run.json"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
CONFIG_FILE = "config.json"
SKIPPED_FILE = "skipped.json"
CHECKPOINT_FILE = "checkpoint.pt"


class UsageError(Exception):
    """A problem with what was asked for (model, method, directory, device, data), found
    before any long work; the command line prints it as one line and exits non-zero."""


# ---------------------------------------------------------------------------- settings
def job_for(name: str, quick: bool = False) -> Job:
    """The compare job's settings for model ``name`` (its class's ``job``), quick or not."""
    return zoo.model_class(name).job.settings(quick)


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


def prepare_out(out: os.PathLike, *, marker: str, resume: bool = False,
                can_resume: bool = True) -> Path:
    """Check ``out`` can hold a new run (or, with ``resume``, continues one whose ``marker``
    file exists), create it and check it is writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    previous = (out / marker).exists()
    if out.is_dir() and any(out.iterdir()):
        if not previous:
            raise UsageError(f"--out {out} exists, is not empty and holds no previous run "
                             f"(no {marker}); choose a new or empty directory")
        if not resume:
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
    return out


def make_entry(name: str, options: Dict[str, Any]):
    try:
        return zoo.get(name, **options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot build model {name!r} with options {options}: {e}") from None


def load_data(entry, path: Optional[str] = None, subset: Optional[int] = None,
              device: str = "cpu"):
    """The entry's data (default or ``path``), its first ``subset`` rows, checked."""
    try:
        data = entry.load_data(path, device="cpu")
        if subset is not None:
            data = tuple(t[:subset] for t in data)
        entry.check_data(*data)
    except FileNotFoundError as e:
        raise UsageError(str(e).strip("'\"")) from None
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"cannot use data {path or '(default)'} for {entry.name}: {e}") from None
    return tuple(t.to(device) for t in data)


def read_config(folder: os.PathLike) -> Dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{folder} holds no {CONFIG_FILE}: not a fitted run; create one with "
                         "ppzoo fit MODEL --out DIR")
    try:
        config = json.loads(path.read_text())
        config["model"], config.setdefault("options", {})
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is malformed ({e}); refit with ppzoo fit") from None
    return config


# ---------------------------------------------------------------------------- fitting
def fit_config(entry, job: Job, *, data_path: Optional[str], seed: int, device: str) -> Dict:
    """What ``config.json`` records of a fit: everything needed to repeat it."""
    return {
        "model": entry.name, "options": job.options, "data": data_path, "subset": job.subset,
        "scope": job.scope, "estimate_options": job.estimate_options,
        "fit": {"steps": job.steps, "lr": job.lr, "lr_decay": job.lr_decay,
                "batch_size": job.batch_size, "num_particles": job.num_particles, "seed": seed,
                "device": device},
    }


def check_resumable(previous: Dict[str, Any], config: Dict[str, Any], folder: Path) -> None:
    """A fit continues only with the settings it started with (the device may change)."""
    def flat(c):
        c = json.loads(json.dumps(c))  # as config.json holds it: tuples become lists
        fit = {f"--{k.replace('_', '-')}": v for k, v in c.get("fit", {}).items()
               if k in ("steps", "lr", "lr_decay", "batch_size", "seed")}
        return {"MODEL": c.get("model"), "--option": c.get("options"), "--data": c.get("data"),
                "--subset": c.get("subset"), **fit}

    old, new = flat(previous), flat(config)
    differ = [f"{k} was {old.get(k)!r}, now {new[k]!r}" for k in new if old.get(k) != new[k]]
    if differ:
        raise UsageError(f"--resume: {folder} holds a fit with other settings ({'; '.join(differ)}"
                         "); rerun with its settings or choose a new --out")


def fit_entry(entry, data, job: Job, folder: Path, *, data_path: Optional[str] = None,
              seed: int = 0, device: str = "cpu", progress: bool = False,
              echo: Callable[[str], None] = print):
    """Fit ``entry`` with ``job``'s settings; write config.json, state.pt, losses.csv,
    loss.png under ``folder``. An existing ``folder/checkpoint.pt`` is continued."""
    from inference.plots import plot_losses

    config = fit_config(entry, job, data_path=data_path, seed=seed, device=device)
    write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE)
    optim = pyro.optim.ClippedAdam({"lr": job.lr, "lrd": job.lr_decay ** (1 / max(job.steps, 1))})
    result = inference.fit(entry, data, steps=job.steps, optim=optim, batch_size=job.batch_size,
                           num_particles=job.num_particles, seed=seed, device=device, progress=progress,
                           checkpoint=folder / CHECKPOINT_FILE,
                           checkpoint_every=max(50, job.steps // 10))
    result.save(folder)
    final = float(result.losses["loss_per_datapoint"].tail(50).mean())
    config["fit"].update(seconds=round(result.seconds, 3), final_loss_per_datapoint=final)
    write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE)
    save_figure(plot_losses(result.losses, title=f"{entry.name}: training curve"),
                folder / "loss.png")
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    echo(f"{entry.name}: fitted {job.steps} steps in {result.seconds:.1f} s, "
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
