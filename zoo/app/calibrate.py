"""``ppzoo calibrate``: does each estimator's standard error cover the truth at its nominal rate?

Every registered estimator that is not a reference (:func:`inference.methods`, so estimators
added later join in) runs with many seeds on every target whose ``log Z`` is known in closed
form -- the benchmark pack (:mod:`inference.pack`, its conjugate targets included) and the
zoo's ``fa`` and ``map_l2`` (their exact references, on a subset) -- through
:func:`inference.calibrate`; ``bdmc`` runs where the pack target's data were simulated from the
model with known latents (its sandwich checked); and the Bayes-factor SBC of
:mod:`inference.sbc` runs each method on the two Beta-Bernoulli targets. K is ``k_cheap`` for
methods costing one evaluation per particle (``elbo``, ``is-guide``, ``is-prior``), ``k`` for
the others. Under ``OUT/``::

    calibrate.json     what was run (marks OUT as a calibration run, for --resume)
    results.csv        one row per target x method x seed: estimate, stderr, truth, error, z,
                       vouched, seconds, and a sandwich's lower/upper bounds and their stderrs
    sbc.csv            one row per method x simulated data set: the true model, the posterior
                       model probabilities from the exact and the estimated evidence, vouched
    skipped.json       {target: {method: why it did not apply}}
    calibration.md     the coverage table, the sandwiches, the Bayes-factor SBC
    plots/METHOD.png   z histogram against N(0, 1); coverage vs nominal per target
    zoo-NAME/          a zoo target's fit

Rows are written in batches as they finish (atomically, :class:`~zoo.app.folders.Rows`) under
the folder's lock; ``--resume`` runs only the missing seeds. The table is computed from the
rows by the engine's :class:`inference.calibrate.Calibration` (nothing recomputed here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import pandas as pd

import inference
from inference import estimators, pack
from inference.calibrate import BOUNDS, LEVELS, Calibration, from_estimates, nominal
from inference.io import write_text
from inference.sbc import ModelSBC, bayes_factor_sbc
from zoo.app import summary
from zoo.app.bench import ZooTarget, check_selection, fit_target, reason
from zoo.app.jobs import (Rows, UsageError, check_device, prepare_run,
                          save_figure)

CAL_FILE, RESULTS_FILE, SBC_FILE, SKIPPED_FILE, TABLE_FILE = (
    "calibrate.json", "results.csv", "sbc.csv", "skipped.json", "calibration.md")
#: the zoo's models with a closed-form evidence, and the datapoints they are calibrated on
ZOO_TARGETS, ZOO_SUBSET = ("fa", "map_l2"), {False: 100, True: 50}
#: the two models of the Bayes-factor SBC (one data set, two priors)
SBC_MODELS = ("beta-bernoulli-flat", "beta-bernoulli-30")
SETTINGS = {False: dict(seeds=100, k=100, k_cheap=1000, options={"temperatures": 30}),
            True: dict(seeds=20, k=30, k_cheap=100, options={"temperatures": 10, "warmup": 30})}
#: a method's own options here: bdmc's reverse chains need a start with a density at given
#: latents, which an autoguide (the pack's default guide) has not
METHOD_OPTIONS = {"bdmc": {"start": "prior"}}
#: seconds between writes of the rows of a long calibration
FLUSH_SECONDS = 5.0


@dataclasses.dataclass
class Plan:
    out: Path
    quick: bool
    device: str
    seeds: int
    targets: List[Any]
    methods: List[str]
    table: Rows
    sbc: Rows


def target_names() -> List[str]:
    return list(pack.names()) + [f"zoo:{m}" for m in ZOO_TARGETS]


def num_samples(method: str, quick: bool) -> int:
    """K: ``k_cheap`` where a run costs one evaluation per particle, else ``k``."""
    s = SETTINGS[quick]
    cost = estimators.get(method).evaluations(1, **s["options"])
    return s["k_cheap"] if cost is not None and cost <= 1 else s["k"]


def prepare(targets: Sequence[str], methods: Sequence[str], out: os.PathLike, *,
            quick: bool = False, seeds: Any = None, device: str = "cpu",
            resume: bool = False) -> Plan:
    """Every check of ``ppzoo calibrate`` that can fail, before any work. Raises UsageError."""
    known = target_names()
    methods = check_selection(targets, known, methods, "the truth", "calibrate")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2):
        raise UsageError(f"--seeds must be an integer >= 2 (coverage is a rate over seeds), "
                         f"got {seeds!r}")
    check_device(device)
    out = prepare_run(out, marker=CAL_FILE, resume=resume, quick=quick)
    seeds = SETTINGS[quick]["seeds"] if seeds is None else seeds
    previous = summary.read_json(out / CAL_FILE)
    if isinstance(previous, dict) and previous.get("seeds") not in (None, seeds):
        raise UsageError(f"{out} was run with --seeds {previous['seeds']}; resume it with the "
                         "same --seeds")
    chosen = list(dict.fromkeys(targets)) or known
    objs = [_zoo_target(t[4:], quick) if t.startswith("zoo:") else pack.get(t) for t in chosen]
    methods = methods or [m for m in inference.methods() if not estimators.get(m).reference]
    table = Rows(out / RESULTS_FILE, key=("target", "method", "K", "seed"))
    sbc = Rows(out / SBC_FILE, key=("method", "K", "seed"))
    return Plan(out, quick, device, seeds, objs, list(methods), table, sbc)


def _zoo_target(model: str, quick: bool) -> ZooTarget:
    t = ZooTarget(model, quick)
    if t.job.scope == "local":  # a local model on a subset: K x N particles per estimate
        t.job = dataclasses.replace(t.job, subset=ZOO_SUBSET[quick])
    return t


def run(plan: Plan, *, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run a prepared calibration; returns its coverage table (one row per target x method)."""
    s = SETTINGS[plan.quick]
    run_file = plan.out / CAL_FILE
    record = summary.read_json(run_file) or {"ppzoo": "calibrate", "quick": plan.quick,
                                              "targets": [], "methods": []}
    record["targets"] = list(dict.fromkeys(record["targets"] + [t.name for t in plan.targets]))
    record["methods"] = list(dict.fromkeys(record["methods"] + plan.methods))
    record.update(device=plan.device, seeds=plan.seeds, k=s["k"], k_cheap=s["k_cheap"],
                  options=s["options"], sbc_models=list(SBC_MODELS))
    write_text(json.dumps(record, indent=2) + "\n", run_file)
    skipped = summary.read_json(plan.out / SKIPPED_FILE) or {}
    for t in plan.targets:
        _coverage(plan, t, skipped.setdefault(t.name, {}), echo)
        write_text(json.dumps(skipped, indent=2) + "\n", plan.out / SKIPPED_FILE)
    _sbc(plan, skipped.setdefault("sbc", {}), echo)
    write_text(json.dumps(skipped, indent=2) + "\n", plan.out / SKIPPED_FILE)
    cals = calibrations(plan.table.df)
    sbcs = sbc_records(plan.sbc.df, SBC_MODELS)
    _plots(cals, plan.out)
    write_table(plan.out, cals, sbcs, skipped, record, {t.name: t for t in plan.targets},
                starts(plan.table.df))
    echo(f"wrote {plan.out / TABLE_FILE}, {plan.out / RESULTS_FILE} ({len(plan.table.df)} rows), "
         f"{plan.out / SBC_FILE} and plots under {plan.out / 'plots'}/")
    return pd.DataFrame([dict(target=t, **c.summary()) for (t, _), c in cals.items()])


class _Batches:
    """Rows collected as estimates finish and written every ``FLUSH_SECONDS`` (and at the end)."""

    def __init__(self, rows: Rows):
        self.rows, self.pending, self.last = rows, [], time.monotonic()

    def add(self, row: Dict[str, Any]) -> None:
        self.pending.append(row)
        if time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.rows.extend(self.pending)
        self.pending, self.last = [], time.monotonic()


def _coverage(plan: Plan, t, mine: Dict[str, str], echo) -> None:
    done = plan.table.done(target=t.name)
    todo = {m: [s for s in range(_seeds(m, plan.seeds))
                if (m, num_samples(m, plan.quick), s) not in done]
            for m in plan.methods if m not in mine}
    todo = {m: seeds for m, seeds in todo.items() if seeds}
    if not todo:
        return
    fitted, data, truth, scope, own = fit_target(t, plan.out, plan.device, echo)
    options = {**SETTINGS[plan.quick]["options"], **own}  # a zoo job's own options win
    latents = getattr(t, "latents", lambda: None)()
    if latents is not None:  # data simulated from the model: bdmc's reverse chains start here
        options["latents"] = {k: v.to(plan.device) for k, v in latents.items()}
    for method, seeds in todo.items():
        K = num_samples(method, plan.quick)
        own = {**options, **METHOD_OPTIONS.get(method, {})}
        batch = _Batches(plan.table)

        def keep(seed, est, method=method, K=K, own=own):
            batch.add(_row(t.name, method, K, seed, est, truth, own.get("start", "")))

        try:  # finished estimates are written even when interrupted (Ctrl-C)
            for retry in (False, True):
                try:
                    inference.calibrate(fitted, data, method, truth, seeds=seeds, num_samples=K,
                                        scope=scope, device=plan.device, callback=keep, **own)
                except estimators.NotApplicable as err:
                    if not retry and "start='prior'" in str(err) and own.get("start") != "prior":
                        own["start"] = "prior"  # what the refusal names: an autoguide's start
                        echo(f"{t.name}: {method} from the prior: {reason(err)}")
                        continue
                    mine[method] = reason(err)
                except (ValueError, RuntimeError) as err:
                    mine[method] = reason(err)
                break
        finally:
            batch.flush()
        if method in mine:
            echo(f"{t.name}: {method} did not run: {mine[method]}")
        rows = plan.table.df[(plan.table.df["target"] == t.name) &
                             (plan.table.df["method"] == method)] if len(plan.table.df) else []
        if len(rows):
            echo(f"{t.name}: {method} K={K}: " + _line(_calibration(rows)))


def _seeds(method: str, seeds: int) -> int:
    """A deterministic method (e.g. laplace) runs once: another seed gives the same number."""
    return 1 if estimators.get(method).deterministic else seeds


def _row(target: str, method: str, K: int, seed: int, est, truth: float,
         start: str) -> Dict[str, Any]:
    error = est.log_evidence - truth
    z = error / est.stderr if est.stderr > 0 else (0.0 if error == 0 else math.copysign(math.inf, error))
    start = start or estimators.get(method).options.get("start", "")
    row = {"target": target, "method": method, "K": K, "seed": seed,
           "estimate": est.log_evidence, "stderr": est.stderr, "truth": truth, "error": error,
           "z": z, "vouched": est.vouched, "seconds": est.seconds, "khat": est.khat,
           "ess": est.ess, "start": start}
    row.update({k: est.diagnostics.get(k, math.nan) for k in BOUNDS})
    return row


def _calibration(rows: pd.DataFrame) -> Calibration:
    rows = rows.sort_values("seed")
    first = rows.iloc[0]
    bounds = {k: rows[k].to_numpy(float) for k in BOUNDS}
    has = not all(np.isnan(b).all() for b in bounds.values())
    return from_estimates(first["method"], int(first["K"]), float(first["truth"]), rows["seed"],
                          rows["estimate"], rows["stderr"], rows["vouched"].astype(bool),
                          rows["seconds"], bounds if has else None)


def calibrations(df: pd.DataFrame) -> Dict[tuple, Calibration]:
    """``{(target, method): Calibration}`` from the rows of ``results.csv`` (largest K)."""
    if not len(df):
        return {}
    top = df[df["K"] == df.groupby(["target", "method"])["K"].transform("max")]
    return {key: _calibration(rows) for key, rows in top.groupby(["target", "method"], sort=False)}


def starts(df: pd.DataFrame) -> Dict[tuple, str]:
    """``{(target, method): start}`` where an annealing method did not start where it does by
    default (an autoguide has no density at given latents: it started from the prior)."""
    if not len(df) or "start" not in df:
        return {}
    out = {}
    for (target, method), rows in df.groupby(["target", "method"], sort=False):
        start = rows["start"].fillna("").iloc[-1]
        default = estimators.get(method).options.get("start", "")
        if start and start != default:
            out[(target, method)] = start
    return out


def _line(c: Calibration) -> str:
    cov = " / ".join(f"{x.rate:.0%}" for x in c.coverages())
    return (f"{len(c.seeds)} seeds, |z| < 1 / 2 / 3 in {cov} (nominal 68 / 95 / 99.7%), "
            f"{c.vouched.mean():.0%} vouched: {c.verdict}")


# ---------------------------------------------------------------------------- Bayes-factor SBC
def _sbc(plan: Plan, mine: Dict[str, str], echo) -> None:
    models = [pack.get(m) for m in SBC_MODELS]
    options = dict(SETTINGS[plan.quick]["options"])
    for method in plan.methods:
        K = num_samples(method, plan.quick)
        done = plan.sbc.done(method=method)
        todo = [s for s in range(plan.seeds) if (method, K, s) not in done]
        if method in mine or not todo:
            continue
        batch = _Batches(plan.sbc)

        def keep(s, r, method=method, K=K):
            row = {"method": method, "K": K, "seed": s, "true_model": r["true_model"],
                   "vouched": r["vouched"]}
            row.update({f"exact_{j}": p for j, p in enumerate(r["exact"])})
            row.update({f"estimated_{j}": p for j, p in enumerate(r["estimated"])})
            batch.add(row)

        try:
            bayes_factor_sbc(models, method, todo, K, device=plan.device, callback=keep,
                             **{**options, **METHOD_OPTIONS.get(method, {})})
        except (ValueError, RuntimeError) as err:
            mine[method] = reason(err)
            echo(f"Bayes-factor SBC: {method} did not run: {mine[method]}")
        finally:
            batch.flush()
        rec = sbc_records(plan.sbc.df, SBC_MODELS).get(method)
        if rec is not None:
            (m, se), (d, dse) = rec.mean(), rec.paired()
            echo(f"Bayes-factor SBC: {method} K={K}: mean P({SBC_MODELS[0]} | x) = {m[0]:.3f} "
                 f"+- {se[0]:.3f} (prior {rec.prior[0]:.2f}), estimated - exact {d[0]:+.4f} "
                 f"+- {dse[0]:.4f}: {rec.verdict}")


def sbc_records(df: pd.DataFrame, models: Sequence[str]) -> Dict[str, ModelSBC]:
    """``{method: ModelSBC}`` from the rows of ``sbc.csv``."""
    out = {}
    J = len(models)
    for method, rows in (df.groupby("method", sort=False) if len(df) else ()):
        rows = rows[rows["K"] == rows["K"].max()].sort_values("seed")
        out[method] = ModelSBC(
            models=tuple(models), prior=np.full(J, 1.0 / J), method=method,
            num_samples=int(rows["K"].iloc[0]), true_model=rows["true_model"].to_numpy(int),
            exact=rows[[f"exact_{j}" for j in range(J)]].to_numpy(float),
            estimated=rows[[f"estimated_{j}" for j in range(J)]].to_numpy(float),
            vouched=rows["vouched"].to_numpy(bool))
    return out


# ---------------------------------------------------------------------------- the table
LEGEND = """\
Each method runs once per seed on a target whose log Z is known; **z** = (estimate - truth) /
stderr. Where the stderr is right, |z| < 1, 2, 3 in 68.3%, 95.4%, 99.7% of the seeds (the
**nominal** rates). Coverage is given over all seeds and over the seeds whose stderr the library
vouched for (`Estimate.vouched`), with a 95% exact (Clopper-Pearson) interval; a rate whose interval lies below
the nominal one is marked **↓** (the stderr is too small), above it **↑** (too large).
**verdict** judges the vouched seeds: a vouched stderr that under-covers is a bug. An annealing
method marked "(from the prior)" started there because the target's autoguide has no density at
given latents (the refusal names that fix). The ELBO is a
bound: its stderr is that of the bound, so it is not expected to cover. **Z_hat/Z** is the mean
over seeds of exp(estimate - truth) (a log-sum-exp) with its standard error, for methods whose
exp(estimate) is unbiased for Z: it must be 1 (a k-hat of those ratios above 0.7, marked `!`,
means too heavy a tail to judge it from these seeds).
"""


def _start(start) -> str:
    return f" (from the {start})" if start else ""


def _cov(c) -> str:
    if c.n == 0:
        return "-"
    mark = {"under": " ↓", "over": " ↑"}.get(c.verdict, "")
    return f"{100 * c.rate:.0f}{mark}"


def write_table(out: Path, cals: Dict[tuple, Calibration], sbcs: Dict[str, ModelSBC],
                skipped: Dict[str, Dict[str, str]], record: Dict[str, Any],
                targets: Dict[str, Any], started: Dict[tuple, str]) -> Path:
    quick = bool(record.get("quick"))
    s = SETTINGS[quick]
    lines = ["# ppzoo calibrate", "",
             f"{'--quick: ' if quick else ''}{record.get('seeds')} seeds per target and method; "
             f"K = {s['k_cheap']} for one-evaluation-per-particle methods, {s['k']} for the "
             f"others; options {s['options']}; device {record.get('device', 'cpu')}.", "",
             LEGEND, "## Coverage", "",
             "| target | method | K | vouched | all seeds: % within 1 / 2 / 3 stderr | vouched "
             "seeds: % within 1 / 2 / 3 stderr | z mean | z sd | Z_hat/Z | verdict |",
             "|---|---|---:|---:|---|---|---:|---:|---|---|"]
    for (target, method), c in cals.items():
        r = c.summary()
        ratio = "-"
        if c.unbiased:
            rt = c.ratio
            ratio = f"{rt.mean:.3f} ± {rt.mean * rt.stderr:.3f}{' !' if rt.khat > 0.7 else ''}"
        lines.append(
            f"| {target} | {method}{_start(started.get((target, method)))} | "
            f"{'-' if estimators.get(method).deterministic else c.num_samples} | "
            f"{int(c.vouched.sum())}/{len(c.seeds)} | "
            + " / ".join(_cov(x) for x in c.coverages()) + " | "
            + " / ".join(_cov(x) for x in c.coverages(vouched=True))
            + f" | {r['z_mean']:+.2f} | {r['z_sd']:.2f} | {ratio} | {c.verdict} |")
    lines += ["", f"Nominal: {' / '.join(f'{100 * nominal(c):.1f}' for c in LEVELS)}%.", ""]
    sandwiches = [(k, c) for k, c in cals.items() if c.bounds is not None]
    if sandwiches:
        lines += ["## Sandwiches (data simulated from the model)", "",
                  "lower <= log Z <= upper (raw), and widened by 1 / 2 / 3 of each bound's "
                  "stderr: a stochastic bound may cross the truth by its noise, not by more.", "",
                  "| target | method | K | raw bracket | within 1 / 2 / 3 stderr | mean gap |",
                  "|---|---|---:|---:|---|---:|"]
        for (target, method), c in sandwiches:
            gap = float(np.mean(c.bounds["upper"] - c.bounds["lower"]))
            raw = c.sandwich(0.0)
            lines.append(f"| {target} | {method}{_start(started.get((target, method)))} | "
                         f"{c.num_samples} | {100 * raw.rate:.0f}% | "
                         + " / ".join(_cov(c.sandwich(x)) for x in LEVELS) + f" | {gap:.4g} |")
        lines.append("")
    if sbcs:
        names = record.get("sbc_models", list(SBC_MODELS))
        lines += ["## Bayes-factor SBC", "",
                  f"Model index drawn from its prior (1/2 each), data from that model ({names[0]} "
                  f"or {names[1]}), both evidences estimated: the mean posterior probability of "
                  f"{names[0]} must be the prior's 0.5 (Schad et al. 2023), with the exact "
                  "evidence and with the estimator's; **estimated - exact** is their paired "
                  "difference over the same data sets.", "",
                  "| method | K | data sets | vouched | exact | estimated | estimated - exact | "
                  "verdict |", "|---|---:|---:|---:|---|---|---|---|"]
        for method, rec in sbcs.items():
            (me, se), (mx, sx), (d, sd) = rec.mean(), rec.mean("exact"), rec.paired()
            lines.append(f"| {method} | {rec.num_samples} | {len(rec.true_model)} | "
                         f"{int(rec.vouched.sum())}/{len(rec.vouched)} | {mx[0]:.3f} ± {sx[0]:.3f} | "
                         f"{me[0]:.3f} ± {se[0]:.3f} | {d[0]:+.4f} ± {sd[0]:.4f} | {rec.verdict} |")
        lines.append("")
    lines += ["## Did not apply", ""]
    gone = [(t, m, why) for t, ms in skipped.items() for m, why in ms.items()]
    lines += [f"- {'Bayes-factor SBC' if t == 'sbc' else t}: **{m}** -- {why}"
              for t, m, why in gone] or ["(every method ran)"]
    lines += ["", "## Targets", "", "| target | what | truth (log Z) | source |", "|---|---|---:|---|"]
    truths = {t: c.truth for (t, _), c in cals.items()}
    for name in record.get("targets", []):
        t = targets.get(name)
        truth = truths.get(name)
        shown = "(not run yet)" if truth is None else f"{truth:.6g}"
        lines.append(f"| {name} | {getattr(t, 'summary', '')} | {shown} | "
                     f"{getattr(t, 'source', '').replace('|', '/')} |")
    return write_text("\n".join(lines) + "\n", out / TABLE_FILE)


def _plots(cals: Dict[tuple, Calibration], out: Path) -> None:
    from inference.plots import plot_calibration

    for method in dict.fromkeys(m for _, m in cals):
        mine = {t: c for (t, m), c in cals.items() if m == method}
        fig = plot_calibration(mine, title=f"{method}: calibration of its stderr")
        (out / "plots").mkdir(exist_ok=True)
        save_figure(fig, out / "plots" / f"{method}.png")
