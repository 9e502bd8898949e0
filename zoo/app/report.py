"""The compare job behind ``ppzoo compare``: fit every zoo model, run every estimator, report.

For each model the job holds out a share of its default data (``Job.test_fraction``, a seeded
permutation; none for global-scope models), fits the model/guide pair by SVI on the rest, runs
:func:`inference.compare` over a K grid and several seeds on it, then its ``test_methods`` at
the largest K on the held-out rows, and writes, under ``OUT/``::

    run.json              what was run (marks OUT as a compare run, for --resume)
    results.csv           one row per model x split (train, test) x method x K x seed (tidy)
    summary.md            a legend, then per model: estimate, stderr, spread across seeds,
                          error, ESS, k-hat per method and K (:mod:`zoo.app.summary`)
    MODEL/config.json     how MODEL was fitted (``ppzoo estimate OUT/MODEL`` reads it)
    MODEL/state.pt        fitted params and networks;  MODEL/losses.csv, MODEL/loss.png
    MODEL/estimates.png   estimate vs K;  MODEL/diagnostics.png  ESS and k-hat vs K
    MODEL/*.png           the model's own views (``entry.views(*data)``)

Every file is written atomically (:mod:`inference.io`), results row by row as they finish.
An interrupted run keeps what it finished; ``resume=True`` then skips fitted models (their
``state.pt`` exists; an unfinished fit continues from ``MODEL/checkpoint.pt``) and rows
already in ``results.csv``.

How each model is fitted and estimated is data, not code: each model class's ``job`` (a
:class:`zoo.Job`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

import inference
from inference import estimators
from inference.io import write_text
from zoo.app import summary
from zoo.app.jobs import (
    CONFIG_FILE, RESULTS_FILE, RUN_FILE, SKIPPED_FILE, SUMMARY_FILE, Job, Rows, UsageError,
    check_device, check_estimate_settings, check_fit_settings, check_methods, check_models,
    check_saved, evaluation_entry, fit_entry, fit_finished, job_for, job_methods, load_data,
    make_entry, new_data_problem, prepare_run, save_figure, split_data, split_record,
)
from zoo.app.usermodel import check_pair, check_unchanged

# ---------------------------------------------------------------------------- compare job
@dataclasses.dataclass
class Plan:
    """A checked compare job, ready to run."""

    out: Path
    models: List[str]
    quick: bool
    device: str
    resume: bool
    jobs: Dict[str, Job]
    entries: Dict[str, Any]
    data: Dict[str, Tuple[torch.Tensor, ...]]
    test: Dict[str, Optional[Tuple[torch.Tensor, ...]]] = dataclasses.field(default_factory=dict)
    #: why a model with a ``test_fraction`` holds nothing out (see :func:`new_data_problem`)
    unheld: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)
    table: Optional["Results"] = None
    #: the data file a model reads (``None``: its default data), recorded in its config.json
    paths: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class UserRequest:
    """A user's pair for the compare job (``ppzoo compare --model FILE.py --data DATA``): the
    entry (:class:`zoo.app.usermodel.UserPair`), its job and its data file."""

    entry: Any
    job: Job
    data_path: str


def prepare_compare(models: Sequence[str], out: os.PathLike, *, quick: bool = False,
                    device: str = "cpu", resume: bool = False,
                    overrides: Optional[Dict[str, Any]] = None,
                    user: Optional[UserRequest] = None) -> Plan:
    """Every check of ``ppzoo compare`` that can fail, before any long work and before anything
    is written: model names (or the ``user``'s pair: its file, data, and one trace of it),
    device, job settings (each model's job with ``overrides``), model options and data, then
    the output directory. Raises :class:`UsageError`."""
    check_device(device)
    if user is None:
        names = check_models(models)
        jobs = {n: dataclasses.replace(job_for(n, quick), **(overrides or {})) for n in names}
        entries = {n: make_entry(n, jobs[n].options) for n in names}
        paths: Dict[str, Optional[str]] = {n: None for n in names}
    else:
        names = [user.entry.name]
        jobs, entries, paths = ({names[0]: user.job}, {names[0]: user.entry},
                                {names[0]: user.data_path})
    for job in jobs.values():
        check_job(job)
    data, test, unheld = {}, {}, {}
    for n in names:  # held out only where the fitted model can evaluate new rows
        data[n] = load_data(entries[n], paths[n], jobs[n].subset, device)
        if user is not None:  # the pair runs on its data, and its scope is known, or one line
            jobs[n] = dataclasses.replace(jobs[n], scope=check_pair(entries[n], data[n], jobs[n]))
        holds = jobs[n].test_fraction and jobs[n].scope != "global"
        unheld[n] = new_data_problem(entries[n], data[n]) if holds else None
        fraction = jobs[n].test_fraction if holds and not unheld[n] else 0.0
        data[n], test[n] = split_data(data[n], fraction, jobs[n].split_seed)
    out = prepare_run(out, marker=RUN_FILE, resume=resume, quick=quick)
    run = summary.read_json(out / RUN_FILE)
    if run is not None and user is None and not models:
        _check_no_user_run(out, run)
    for n in names:  # foreign or unreadable state is refused here, before any work
        previous = summary.read_json(out / n / CONFIG_FILE)
        if previous is not None:
            check_unchanged(previous, entries[n], out / n)
        check_saved(entries[n], out / n, data[n])
    table = Results(out / RESULTS_FILE)  # so is an unreadable results.csv
    return Plan(out, names, quick, device, resume, jobs, entries, data, test, unheld, table,
                paths)


def check_job(job: Job) -> None:
    """A job's settings (as changed on the command line): one line naming what is wrong."""
    check_fit_settings(job, 0)
    check_estimate_settings(job.num_samples, job.seeds)
    if job.methods is not None:
        check_methods(job.methods)
    if not (isinstance(job.test_fraction, (int, float)) and 0 <= job.test_fraction < 1):
        raise UsageError(f"--test-fraction must be a number in [0, 1), got {job.test_fraction!r}")


def _check_no_user_run(out: Path, run: Dict[str, Any]) -> None:
    """A run of a user's pair resumes with its ``--model`` (else the zoo's models would join it)."""
    for name in run.get("models", []):
        config = summary.read_json(out / name / CONFIG_FILE) or {}
        source, data = config.get("source"), config.get("data")
        if isinstance(source, dict):
            raise UsageError(f"{out} is a run of --model {source.get('file')}; resume it with "
                             f"--model {source.get('file')}:{source.get('model')},"
                             f"{source.get('guide')} --data {data} --resume")


def run_compare(plan: Plan, *, progress: bool = False,
                echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run a prepared compare job; returns the results table (all rows so far)."""
    out = plan.out
    run = summary.read_json(out / RUN_FILE) or {"ppzoo": "compare", "models": [], "quick": plan.quick}
    run["models"] = list(dict.fromkeys(run["models"] + plan.models))
    run.update(device=plan.device, updated=_now())
    write_text(json.dumps(run, indent=2) + "\n", out / RUN_FILE)
    table = plan.table or Results(out / RESULTS_FILE)
    for name in plan.models:
        job, entry, data = plan.jobs[name], plan.entries[name], plan.data[name]
        folder = out / name
        if fit_finished(folder):
            echo(f"{name}: fitted state found in {folder}, not refitting")
        else:
            folder.mkdir(exist_ok=True)
            if plan.unheld.get(name):
                echo(f"{name}: nothing held out: {plan.unheld[name]}")
            fit_entry(entry, data, job, folder, data_path=plan.paths.get(name),
                      device=plan.device, progress=progress, echo=echo,
                      split=split_record(job, data, plan.test.get(name), plan.unheld.get(name)))
        inference.load_fit(entry, folder, device=plan.device, data=data)
        skipped = summary.read_json(folder / SKIPPED_FILE) or {}
        seeds = list(range(job.seeds))
        methods = job_methods(job)
        ref = {m: estimators.get(m).reference for m in methods}
        cells = [(m, 0, 0) if ref[m] else (m, k, s)
                 for m in methods for k in ([0] if ref[m] else job.num_samples)
                 for s in ([0] if ref[m] else seeds)]
        done = table.done(name, "train")
        todo = [c for c in cells if c not in done and c[0] not in skipped]
        if todo:
            reporter = _GroupEcho(name, len(seeds), table, echo)

            def on_row(row, name=name, reporter=reporter):
                reporter(table.add(name, row, "train"))

            df = inference.compare(
                entry, data, methods=methods, num_samples=job.num_samples, seeds=seeds,
                scope=job.scope, device=plan.device, progress=progress, on_row=on_row,
                skip=lambda m, k, s, done=done: (m, int(k), int(s)) in done,
                **job.estimate_options)
            skipped.update(df.attrs.get("skipped", {}))
            write_text(json.dumps(skipped, indent=2) + "\n", folder / SKIPPED_FILE)
            for method, reason in skipped.items():
                echo(f"{name}: {method} skipped: {reason}")
        else:
            echo(f"{name}: nothing left to estimate, its {len(done)} estimates already in "
                 f"{RESULTS_FILE}")
        if plan.test.get(name) is not None:
            _estimate_heldout(name, plan, table, skipped, progress, echo)
        if torch.device(plan.device).type != "cpu":  # the plots are drawn on the CPU
            inference.load_fit(entry, folder, device="cpu")
            data = tuple(t.cpu() for t in data)
        rows = table.df[(table.df["model"] == name) & (table.df["split"] == "train")]
        write_model_plots(name, entry, data, rows, folder, job.estimate_options)
        write_summary(out, table.df)
    echo(f"wrote {out / RESULTS_FILE} ({len(table.df)} rows), {out / SUMMARY_FILE} and plots "
         f"under {out}/MODEL/")
    return table.df


def heldout_cells(job: Job, skipped: Dict[str, str]) -> List[Tuple[str, int, int]]:
    """The (method, K, seed) rows a job owes on its held-out data: its ``test_methods`` among
    the methods it runs and did not skip, at the largest K of its grid (none without a split)."""
    if not job.test_fraction:
        return []
    ref = {m: estimators.get(m).reference for m in job_methods(job)}
    return [(m, 0, 0) if ref[m] else (m, max(job.num_samples), s)
            for m in job.test_methods if m in ref and m not in skipped
            for s in ([0] if ref[m] else range(job.seeds))]


def _estimate_heldout(name: str, plan: Plan, table: "Results", skipped: Dict[str, str],
                      progress: bool, echo: Callable[[str], None]) -> None:
    """The held-out rows of ``name`` (split ``test``), then its fitted state back in the store."""
    job, entry, test = plan.jobs[name], plan.entries[name], plan.test[name]
    done = table.done(name, "test")
    todo = [c for c in heldout_cells(job, skipped) if c not in done]
    if not todo:
        return
    echo(f"{name} (test): evaluating the fitted model on {len(test[0])} held-out datapoints")
    evaluator = evaluation_entry(entry, test)
    reporter = _GroupEcho(name, job.seeds, table, echo, split="test")
    df = inference.compare(
        evaluator, test, methods=list(dict.fromkeys(m for m, _, _ in todo)),
        num_samples=[max(job.num_samples)], seeds=range(job.seeds), scope=job.scope,
        device=plan.device, progress=progress, skip=lambda m, k, s: (m, int(k), int(s)) in done,
        on_row=lambda row: reporter(table.add(name, row, "test")), **job.estimate_options)
    for method, reason in df.attrs.get("skipped", {}).items():
        echo(f"{name} (test): {method} skipped: {reason}")
    if evaluator is not entry:  # it replaced the store's params: the fitted ones back
        inference.load_fit(entry, plan.out / name, device=plan.device, data=plan.data[name])


class Results(Rows):
    """``results.csv``: ``model`` and ``split`` (``train``: the rows fitted; ``test``: held
    out) columns, then :class:`~zoo.app.jobs.Rows`'s; rewritten atomically after every row."""

    def __init__(self, path: Path):
        super().__init__(path, key=("model", "split", "method", "K", "seed"))

    def done(self, model: str, split: str = "train") -> set:
        return super().done(model=model, split=split)

    def add(self, model: str, row: Dict[str, Any], split: str = "train") -> Dict[str, Any]:
        return super().add({"model": model, "split": split, **row, "finished": _now()})


class _GroupEcho:
    """Prints one line per (method, K) once all its seeds are in ``table``."""

    def __init__(self, model: str, seeds: int, table: Results, echo: Callable[[str], None],
                 split: str = "train"):
        self.model, self.seeds, self.table, self.echo = model, seeds, table, echo
        self.split = split

    def __call__(self, row: Dict[str, Any]) -> None:
        df = self.table.df
        rows = df[(df["model"] == self.model) & (df["split"] == self.split)
                  & (df["method"] == row["method"]) & (df["K"] == row["K"])]
        label = self.model if self.split == "train" else f"{self.model} ({self.split})"
        reference = summary.is_reference(row["method"])
        if not reference and len(rows) < self.seeds:
            return
        if reference:
            self.echo(f"{label}: {row['method']} reference: log p(x) "
                      f"{rows['estimate'].iloc[0]:.6g}, {rows['seconds'].iloc[0]:.2f} s")
            return
        ref = rows["reference"].iloc[0]
        n = len(rows)
        spread = f" (spread over {n} seeds {rows['estimate'].std():.3g})" if n > 1 else ""
        err = "" if math.isnan(ref) else f", error {rows['error'].mean():+.4g}"
        khat = rows["khat"].max()
        khat = "k-hat n/a (K < 25)" if math.isinf(khat) else f"k-hat {khat:.3g}"
        self.echo(f"{label}: {row['method']} K={row['K']}: log p(x) "
                  f"{rows['estimate'].mean():.6g} +- {_stderr(rows['stderr'])}{spread}{err}, "
                  f"ESS {_nanmean(rows['ess']):.3g}, {khat}, "
                  f"{rows['seconds'].mean():.2f} s per estimate")


# ---------------------------------------------------------------------------- summary
def write_summary(out: Path, df: pd.DataFrame) -> Path:
    """``summary.md`` (:mod:`zoo.app.summary`) for the run in ``out``."""
    return summary.write_summary(out, df, summary.read_json(out / RUN_FILE) or {})


def _stderr(s: pd.Series) -> str:
    mean = _nanmean(s)
    return "n/a" if math.isnan(mean) else f"{mean:.3g}"


def _nanmean(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.mean()) if len(s) else math.nan


# ---------------------------------------------------------------------------- plots
def write_model_plots(name: str, entry, data, rows: pd.DataFrame, folder: Path,
                      options: Optional[dict] = None) -> List[Path]:
    """estimates.png, diagnostics.png and cost.png (error vs seconds and vs likelihood
    evaluations, at the estimators' ``options``) from ``rows``, then the model's own views."""
    from inference.plots import plot_cost, plot_diagnostics, plot_estimates

    paths = []
    if len(rows):
        paths.append(save_figure(plot_estimates(rows, title=f"{name}: log p(x) vs K"),
                                 folder / "estimates.png"))
        if (rows["K"] > 0).any():
            fig = plot_diagnostics(rows, title=f"{name}: weight diagnostics")
            paths.append(save_figure(fig, folder / "diagnostics.png"))
        fig = plot_cost(rows, options, title=f"{name}: error at equal cost")
        if fig is not None:
            paths.append(save_figure(fig, folder / "cost.png"))
    data = tuple(t.detach().cpu() for t in data)
    with torch.no_grad():
        for stem, fig in entry.views(*data).items():
            paths.append(save_figure(fig, folder / f"{stem}.png"))
    return paths


# ---------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
