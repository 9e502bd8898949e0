"""What the ``ppzoo`` commands share: the per-model settings of the compare job (:data:`JOBS`),
the checks that run before any long work (each raises :class:`UsageError`), and the fit of one
model into a run folder (``config.json``, ``state.pt``, ``losses.csv``, ``loss.png``; an
unfinished fit continues from its ``checkpoint.pt``).

How each model is fitted and estimated is data, not code: one :class:`Job` per model in
:data:`JOBS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyro
import torch

import zoo
from inference.estimate import METHODS
from inference.io import write_text, write_with

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
@dataclasses.dataclass(frozen=True)
class Job:
    """How the compare job fits and evaluates one model.

    :ivar options: keyword arguments of ``zoo.get(model, ...)``.
    :ivar steps, lr, batch_size: SVI settings; the optimiser is ClippedAdam with the learning
        rate decaying geometrically to ``lr * lr_decay`` at the last step.
    :ivar subset: use the first ``subset`` datapoints of the default data (``None``: all).
    :ivar scope: evidence scope, ``"global"`` (log p(X)) or ``"local"`` (sum of log p(x_n)).
    :ivar methods, num_samples, seeds: the estimator grid.
    :ivar estimate_options: extra keywords of :func:`inference.estimate` (e.g. quadrature points).
    :ivar why: one line for the summary: why this guide and scope.
    :ivar quick: overrides of the fields above for ``--quick``.
    """

    model: str
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 1000
    lr: float = 0.01
    lr_decay: float = 0.1
    batch_size: Optional[int] = None
    subset: Optional[int] = None
    scope: Optional[str] = None
    methods: Tuple[str, ...] = METHODS
    num_samples: Tuple[int, ...] = (1, 10, 100, 1000)
    seeds: int = 3
    estimate_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    why: str = ""
    quick: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def settings(self, quick: bool) -> "Job":
        return dataclasses.replace(self, **self.quick, quick={}) if quick else self


QUICK = dict(num_samples=(1, 10, 100), seeds=2)

#: The compare job's settings, one row per model. Models missing here get ``Job(name)``.
JOBS: Dict[str, Job] = {
    job.model: job
    for job in [
        Job("map_l2", options={"guide": "gaussian"}, steps=1500, lr=0.05, scope="global",
            why="full-covariance Gaussian guide: it contains the exact posterior, and the "
                "evidence has a closed form",
            quick=dict(QUICK, steps=400)),
        Job("gmm", options={"guide": "meanfield"}, steps=1500, lr=0.05, scope="global",
            why="mean-field guide over the globals (assignments summed out); is-guide "
                "symmetrises the guide over the 3! component relabellings",
            quick=dict(QUICK, steps=300)),
        Job("vae", steps=5000, lr=0.01, batch_size=128, scope="local",
            why="amortized encoder; per-datapoint evidence, exact reference by 2-D quadrature",
            quick=dict(QUICK, steps=300, batch_size=100, subset=300,
                       estimate_options={"quadrature_points": 32})),
        Job("dlvm", steps=3000, lr=0.02, scope="local",
            why="per-datapoint Gaussian guide (full-data steps); exact reference by 2-D "
                "quadrature",
            quick=dict(QUICK, steps=300, subset=300, estimate_options={"quadrature_points": 32})),
    ]
}


def job_for(name: str, quick: bool = False) -> Job:
    return JOBS.get(name, Job(name)).settings(quick)


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
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(METHODS)}")
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
                "batch_size": job.batch_size, "seed": seed, "device": device},
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
    import inference
    from inference.plots import plot_losses

    config = fit_config(entry, job, data_path=data_path, seed=seed, device=device)
    write_text(json.dumps(config, indent=2) + "\n", folder / CONFIG_FILE)
    optim = pyro.optim.ClippedAdam({"lr": job.lr, "lrd": job.lr_decay ** (1 / max(job.steps, 1))})
    result = inference.fit(entry, data, steps=job.steps, optim=optim, batch_size=job.batch_size,
                           seed=seed, device=device, progress=progress,
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
