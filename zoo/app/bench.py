"""``ppzoo bench``: every registered estimator on every target whose log evidence is known.

The targets are the benchmark pack's (:mod:`inference.pack`: plain Pyro models with their true
``log Z``) and the zoo's own exact references, as ``zoo:NAME`` (fa, map_l2, vae, dlvm: the
evidence of the fitted model by closed form or quadrature, the ``exact`` method). Each target
is fitted once; then every registered method that is not itself a reference
(:func:`inference.methods`, so estimators added later join in) runs at each K of the grid and
each seed -- a deterministic one (``Estimator.deterministic``, e.g. ``laplace``) once. Under
``OUT/``::

    bench.json         what was run (marks OUT as a bench run, for --resume)
    results.csv        one row per target x method x K x seed: estimate, stderr, truth, error,
                       z = error / stderr, inside (|z| < 3), seconds, likelihood evaluations
                       (the method's diagnostics, else ``Estimator.evaluations``), vouched
    skipped.json       {target: {method: why it did not apply}}
    leaderboard.md     one table at the largest K (mean over seeds), the targets and their
                       sources, and the methods that did not apply with the reason
    plots/TARGET.png   |error| vs seconds and vs likelihood evaluations
    zoo-NAME/          a zoo target's fit (config.json, state.pt, losses.csv, loss.png)

Rows are appended atomically as they finish (:class:`~zoo.app.folders.Rows`) under the run
folder's lock; ``resume=True`` keeps them and runs only the missing cells (pack targets are
refitted, deterministically; zoo fits found finished are reused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import pandas as pd

import inference
from inference import estimators, pack
from inference.io import write_text
from zoo.app import summary
from zoo.app.jobs import (Rows, UsageError, check_device, check_methods, fit_entry, fit_finished,
                          job_for, load_data, make_entry, prepare_run, save_figure)

BENCH_FILE, RESULTS_FILE, SKIPPED_FILE, BOARD_FILE = ("bench.json", "results.csv", "skipped.json",
                                                      "leaderboard.md")
#: the zoo's models with an exact reference, as bench targets (quick: the fast ones)
ZOO_TARGETS = ("fa", "map_l2", "vae", "dlvm")
ZOO_QUICK = ("fa", "map_l2")
#: K grid, seeds and method options; --quick keeps it to a minute or two on two cores
SETTINGS = {False: dict(ks=(10, 100, 1000), seeds=3, options={}),
            True: dict(ks=(10, 100), seeds=2, options={"temperatures": 10, "warmup": 30})}
Z = 3.0


@dataclasses.dataclass
class ZooTarget:
    """A zoo entry with an exact reference, as a bench target (the pack's interface)."""

    model: str
    quick: bool

    def __post_init__(self):
        self.job = job_for(self.model, self.quick)
        self.entry = make_entry(self.model, self.job.options)
        self.name = f"zoo:{self.model}"
        self.summary = type(self.entry).summary
        self.source = "the zoo's exact reference: " + "; ".join(self.entry.references)

    def data(self, device: str = "cpu"):
        return load_data(self.entry, None, self.job.subset, device)


@dataclasses.dataclass
class Plan:
    out: Path
    quick: bool
    device: str
    targets: List[Any]
    methods: List[str]
    table: Rows


def target_names(quick: bool) -> List[str]:
    return list(pack.names()) + [f"zoo:{m}" for m in (ZOO_QUICK if quick else ZOO_TARGETS)]


def check_selection(targets: Sequence[str], known: Sequence[str], methods: Sequence[str],
                    truth: str, verb: str) -> List[str]:
    """``--target`` among ``known`` and ``--method`` registered estimators, not references;
    returns the methods. Raises UsageError naming what to choose."""
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise UsageError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    methods = check_methods(methods)
    refs = [m for m in methods if estimators.get(m).reference]
    if refs:
        raise UsageError(f"{', '.join(refs)} is a reference, where {truth} comes from, not an "
                         f"estimator to {verb}; leave it out")
    return methods


def prepare(targets: Sequence[str], methods: Sequence[str], out: os.PathLike, *,
            quick: bool = False, device: str = "cpu", resume: bool = False) -> Plan:
    """Every check of ``ppzoo bench`` that can fail, before any work. Raises UsageError."""
    methods = check_selection(targets, target_names(False), methods, "the zoo targets' truth",
                              "benchmark")
    check_device(device)
    out = prepare_run(out, marker=BENCH_FILE, resume=resume, quick=quick)
    chosen = list(dict.fromkeys(targets)) or target_names(quick)
    objs = [ZooTarget(t[4:], quick) if t.startswith("zoo:") else pack.get(t) for t in chosen]
    methods = methods or [m for m in inference.methods() if not estimators.get(m).reference]
    table = Rows(out / RESULTS_FILE, key=("target", "method", "K", "seed"))
    return Plan(out, quick, device, objs, list(methods), table)


def run(plan: Plan, *, progress: bool = False, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run a prepared bench; returns all its rows."""
    s = SETTINGS[plan.quick]
    run_file = plan.out / BENCH_FILE
    record = summary.read_json(run_file) or {"ppzoo": "bench", "quick": plan.quick, "targets": []}
    record["targets"] = list(dict.fromkeys(record["targets"] + [t.name for t in plan.targets]))
    record.update(device=plan.device, ks=list(s["ks"]), seeds=s["seeds"], options=s["options"])
    write_text(json.dumps(record, indent=2) + "\n", run_file)
    skipped = summary.read_json(plan.out / SKIPPED_FILE) or {}
    for t in plan.targets:
        done = plan.table.done(target=t.name)
        mine = skipped.setdefault(t.name, {})
        cells = [(m, k, seed) for m in plan.methods if m not in mine
                 for k, seed in _cells(m, s["ks"], s["seeds"]) if (m, k, seed) not in done]
        if cells:
            fitted, data, truth, scope, own = fit_target(t, plan.out, plan.device, echo)
            options = {**s["options"], **own}  # a zoo job's own options win
            for method in dict.fromkeys(c[0] for c in cells):
                for _, k, seed in [c for c in cells if c[0] == method]:
                    try:
                        est = inference.estimate(fitted, data, method, k, seed=seed, scope=scope,
                                                 device=plan.device, **options)
                    except (ValueError, RuntimeError) as err:
                        mine[method] = reason(err)
                        echo(f"{t.name}: {method} did not run: {mine[method]}")
                        break
                    plan.table.add(_row(t.name, est, seed, truth, options))
                _echo_method(t.name, method, plan.table.df, echo)
            write_text(json.dumps(skipped, indent=2) + "\n", plan.out / SKIPPED_FILE)
        rows = plan.table.df[plan.table.df["target"] == t.name] if len(plan.table.df) else None
        if rows is not None and len(rows):
            _plot(t.name, rows, plan.out)
    write_board(plan.out, plan.table.df, skipped, record, {t.name: t for t in plan.targets})
    echo(f"wrote {plan.out / BOARD_FILE}, {plan.out / RESULTS_FILE} ({len(plan.table.df)} rows) "
         f"and plots under {plan.out / 'plots'}/")
    return plan.table.df


def _cells(method: str, ks: Sequence[int], seeds: int):
    if estimators.get(method).deterministic:
        return [(max(ks), 0)]
    return [(k, seed) for k in ks for seed in range(seeds)]


def fit_target(t, out: Path, device: str, echo):
    """``(fitted target, data, truth, scope, estimate options)`` for target ``t`` (a zoo
    target's fit lives in ``out/zoo-NAME``, reused where it finished)."""
    if isinstance(t, ZooTarget):
        folder = out / f"zoo-{t.model}"
        data = t.data(device)
        if not fit_finished(folder):
            folder.mkdir(exist_ok=True)
            fit_entry(t.entry, data, t.job, folder, device=device, echo=echo)
        inference.load_fit(t.entry, folder, device=device, data=data)
        options = dict(t.job.estimate_options)
        truth = inference.estimate(t.entry, data, "exact", scope=t.job.scope, device=device,
                                   **options).log_evidence
        echo(f"{t.name}: exact reference {truth:.6g}")
        return t.entry, data, truth, t.job.scope, options
    fitted = t.fit(seed=0, device=device)
    echo(f"{t.name}: fitted {len(fitted.losses)} steps in {fitted.seconds:.1f} s; "
         f"log Z = {t.log_evidence:.6g} ({t.source})")
    return fitted, tuple(x.to(device) for x in t.data()), t.log_evidence, None, {}


def reason(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first if isinstance(err, estimators.NotApplicable) else f"{type(err).__name__}: {first}"


def _row(target: str, est, seed: int, truth: float, options: Dict[str, Any]) -> Dict[str, Any]:
    error = est.log_evidence - truth
    z = error / est.stderr if est.stderr > 0 else (0.0 if error == 0 else math.copysign(math.inf, error))
    evals = est.diagnostics.get("evaluations")
    if evals is None:
        evals = estimators.get(est.method).evaluations(est.num_samples, **options)
    return {"target": target, "method": est.method, "K": est.num_samples, "seed": seed,
            "estimate": est.log_evidence, "stderr": est.stderr, "truth": truth, "error": error,
            "z": z, "inside": bool(abs(z) < Z), "seconds": est.seconds,
            "evaluations": math.nan if evals is None else float(evals), "vouched": est.vouched,
            "ess": est.ess, "khat": est.khat}


def _echo_method(target: str, method: str, df: pd.DataFrame, echo) -> None:
    rows = df[(df["target"] == target) & (df["method"] == method)]
    if not len(rows):
        return
    top = rows[rows["K"] == rows["K"].max()]
    echo(f"{target}: {method} K={int(top['K'].iloc[0])}: error {top['error'].mean():+.4g} "
         f"(stderr {top['stderr'].mean():.3g}, {int(top['inside'].sum())}/{len(top)} inside 3 "
         f"stderr), {top['seconds'].mean():.2f} s")


def _plot(name: str, rows: pd.DataFrame, out: Path) -> None:
    from inference.plots import plot_cost

    fig = plot_cost(rows, title=f"{name}: |error| vs cost")
    if fig is not None:
        (out / "plots").mkdir(exist_ok=True)
        save_figure(fig, out / "plots" / f"{name.replace(':', '-')}.png")


# ---------------------------------------------------------------------------- leaderboard
LEGEND = """\
Every estimator against the truth: **error** is estimate minus the true log Z (nats, mean over
seeds), **stderr** the estimate's own standard error, **inside** how many seeds' errors lie
within 3 stderr (a working estimator: nearly all), **vouched** whether the library vouches for
every seed's stderr (a stderr that is not vouched for -- heavy-tailed weights, an asymptotic
approximation, an estimator known to be unreliable -- is marked `!`: read the error instead),
**seconds** per estimate and **evaluations** of log p(x, z) per estimate (per datapoint for the
zoo's local targets). A method runs at every K and seed; the table shows the largest K.
"""


def board_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target and method at its largest K: means over seeds (the leaderboard's table)."""
    top = df[df["K"] == df.groupby(["target", "method"])["K"].transform("max")]
    g = top.groupby(["target", "method"], sort=False)
    return g.agg(K=("K", "first"), truth=("truth", "first"), error=("error", "mean"),
                 stderr=("stderr", "mean"), inside=("inside", "sum"), seeds=("seed", "count"),
                 vouched=("vouched", "all"), seconds=("seconds", "mean"),
                 evaluations=("evaluations", "mean")).reset_index()


def write_board(out: Path, df: pd.DataFrame, skipped: Dict[str, Dict[str, str]],
                record: Dict[str, Any], targets: Dict[str, Any]) -> Path:
    s = SETTINGS[bool(record.get("quick"))]
    lines = ["# ppzoo bench", "",
             f"{'--quick: ' if record.get('quick') else ''}K in {list(s['ks'])}, "
             f"{s['seeds']} seeds, options {s['options'] or 'default'}; device "
             f"{record.get('device', 'cpu')}.", "", LEGEND, "## Leaderboard", "",
             "| target | method | K | error | stderr | inside 3 stderr | seconds | evaluations |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    if len(df):
        for r in board_table(df).itertuples():
            mark = "" if r.vouched else " !"
            evals = "-" if r.evaluations != r.evaluations else f"{r.evaluations:.3g}"
            known = " ‡" if r.method in getattr(targets.get(r.target), "fails", {}) else ""
            inside = "n/a" if r.stderr == 0 else f"{int(r.inside)}/{r.seeds}"
            lines.append(f"| {r.target} | {r.method}{known} | {r.K} | {r.error:+.4g} | "
                         f"{r.stderr:.3g}{mark} | {inside} | {r.seconds:.3g} | {evals} |")
    ran = set(zip(df["target"], df["method"])) if len(df) else set()
    lines += ["", "‡ documented to fail on this target (`Benchmark.fails`); n/a: no stderr to "
              "be inside of (an approximation such as laplace):", ""]
    lines += [f"- {n}: **{m}** -- {why}" for n, t in targets.items()
              for m, why in getattr(t, "fails", {}).items() if (n, m) in ran]
    lines += ["", "## Did not apply", ""]
    gone = [(t, m, why) for t, ms in skipped.items() for m, why in ms.items()]
    lines += [f"- {t}: **{m}** -- {why}" for t, m, why in gone] or ["(every method ran)"]
    lines += ["", "## Targets", "", "| target | what | truth (log Z) | dims | source |",
              "|---|---|---:|---:|---|"]
    truths = df.groupby("target")["truth"].first() if len(df) else {}
    for name in record.get("targets", []):
        t = targets.get(name)
        truth = truths.get(name, math.nan) if len(df) else math.nan
        dims = getattr(t, "dims", "-")
        source = getattr(t, "source", "") if t is not None else ""
        what = getattr(t, "summary", "")
        shown = "(not run yet)" if truth != truth else f"{truth:.6g}"
        lines.append(f"| {name} | {what} | {shown} | {dims} | {source.replace('|', '/')} |")
    return write_text("\n".join(lines) + "\n", out / BOARD_FILE)
