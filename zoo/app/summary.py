"""``summary.md`` of a compare run: a legend in plain words, then per model how it was fitted, one
table of estimates, and notes computed from the same run's numbers (never typed in).

A standard error is printed only where it means something: the delta-method standard error of an
importance-sampling estimate assumes the weights have a finite variance, which PSIS's k-hat
checks [1]. Where k-hat exceeds the sample-size-dependent threshold ``min(1 - 1/log10(K), 0.7)``
or the effective sample size is below 5, the standard error is marked and the spread across
seeds is the honest error bar.

[1] Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto Smoothed Importance Sampling, JMLR.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

import inference
import zoo
from inference import estimators
from inference.compare import summarise
from inference.io import write_text
from inference.weights import MIN_ESS
from zoo.app.folders import read_json  # noqa: F401 (re-exported: the report reads it here)

LEGEND = """\
How to read the tables:

- **log p(x)** -- the log marginal likelihood (the evidence) of the data under the fitted model,
  in nats, summed over all datapoints; *per datapoint* divides it by their number N.
{methods}
- **K** -- the number of samples per estimate (per datapoint where the estimate is per
  datapoint). Mixture components are called C, not K.
- **stderr** -- the standard error of one estimate, from its own samples; **spread** -- the
  standard deviation of the estimate across the seeds (independent repeats). When both are
  honest they agree. A stderr marked `!` cannot be trusted (the weights are too heavy-tailed:
  k-hat above its threshold, or fewer than 5 effective samples): read the spread instead.
- **error** -- estimate minus the exact reference, where there is one. Importance-sampling
  estimates of log p(x) are biased low at small K, which no stderr shows.
- **ESS** -- effective sample size of the importance weights, (sum w)^2 / sum w^2: how many
  equally weighted draws the K draws are worth (mean over seeds, and over datapoints where the
  estimate is per datapoint). **k-hat** -- the shape of a Pareto tail fitted to the largest
  weights (PSIS): below the threshold min(1 - 1/log10(K), 0.7) the estimate is reliable, above
  it the variance may be infinite. The worst over seeds (and datapoints) is shown.
- **s / estimate** -- seconds one estimate took (mean over seeds).
- **train / test** -- models of local scope are fitted on a share of their data; the rest is
  held out (a seeded permutation). The tables are of the fitted (train) rows; *held out* gives
  log p(x) per datapoint on both, at the largest K: the gap is what the fit does not carry over
  to new data. (dlvm fits new per-datapoint guides to the held-out rows, its decoder frozen.)
"""


def write_summary(out: Path, df: pd.DataFrame, run: Dict[str, Any]) -> Path:
    """Write ``out/summary.md`` for the rows ``df`` of the compare run described by ``run``."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# ppzoo compare", "",
             f"Updated {when}; {'--quick (short fits, small K); ' if run.get('quick') else ''}"
             f"device {run.get('device', 'cpu')}.", "",
             LEGEND.format(methods=methods_legend(df["method"] if len(df) else ()))]
    lines += ladder_section(out, df, run.get("models", []))
    for name in run.get("models", []):
        rows = df[df["model"] == name] if not df.empty else df
        lines += model_section(name, out / name, rows)
    return write_text("\n".join(lines), out / "summary.md")


def methods_legend(used) -> str:
    """The legend's methods, those of this run in the registry's order, each in its own
    words (its class's ``summary``): read from the registry, so never out of date."""
    used = set(used)
    described = "; ".join(f"*{m}*: {estimators.get(m).summary}" for m in inference.methods()
                          if m in used)
    import textwrap

    return textwrap.fill("- **Methods** (w = p(x, z) / q(z) is the weight of a draw z from the "
                         "guide q; the exact reference is computed without sampling). "
                         + (described or "none yet") + ".", 96, subsequent_indent="  ")


def model_section(name: str, folder: Path, rows: pd.DataFrame) -> List[str]:
    config = read_json(folder / "config.json") or {}
    fit = config.get("fit", {})
    source = config.get("source")
    cls = zoo.model_class(name) if name in zoo.names() and not source else None
    lines = [f"## {name}", ""]
    if cls is not None and cls.job.why:
        lines += [f"Setup: {cls.job.why}.", ""]
    if isinstance(source, dict):
        reference = (f"`{source['log_evidence']}(*data)` from the file"
                     if source.get("log_evidence") else "none given (the engine's enumeration "
                     "or quadrature where the model allows one)")
        lines += [f"Model: `{source.get('model')}` and `{source.get('guide')}` from "
                  f"`{source.get('file')}` (SHA-256 {str(source.get('sha256'))[:12]}), data "
                  f"`{config.get('data')}`; exact reference: {reference}.", ""]
    if "final_loss_per_datapoint" in fit:
        options = ", ".join(f"{k}={v}" for k, v in config.get("options", {}).items())
        options = (f"keyword arguments {options or 'none'}" if source else
                   f"model options {options or 'defaults'}")
        lines += [f"Fit: {options}; {fit['steps']} SVI steps, learning rate "
                  f"{fit['lr']} decaying to {fit['lr'] * fit['lr_decay']:.3g}, "
                  f"{fit.get('num_particles', 1)} particle(s) per step, batch "
                  f"{fit['batch_size'] or 'all'}, {config.get('subset') or 'all'} datapoints; "
                  f"final -ELBO per datapoint {fit['final_loss_per_datapoint']:.4g} "
                  f"({fit['seconds']:.1f} s).", ""]
    for method, reason in (read_json(folder / "skipped.json") or {}).items():
        lines += [f"Not run: {method} -- {reason}.", ""]
    held = rows[rows["split"] == "test"] if len(rows) else rows
    rows = rows[rows["split"] == "train"] if len(rows) else rows
    if len(rows) == 0:
        return lines + ["(no estimates yet)", ""]
    table, notes = estimate_table(rows)
    lines += table + [""]
    computed = reference_notes(rows)
    if cls is not None:
        computed += cls.report_notes(rows, config.get("options", {}))
    lines += [f"- {n}" for n in notes + computed] + ([""] if notes or computed else [])
    lines += heldout_lines(config.get("split"), rows, held, config.get("scope"))
    first = {"loss.png": 0, "estimates.png": 1, "diagnostics.png": 2}
    pngs = sorted((p.name for p in folder.glob("*.png")), key=lambda n: (first.get(n, 3), n))
    return lines + [f"![{name} {p[:-4]}]({name}/{p})" for p in pngs] + [""]


def estimate_table(rows: pd.DataFrame):
    """The markdown table of ``rows`` (mean over seeds per method and K) and its footnotes."""
    s = summarise(rows)
    per = rows.groupby(["method", "K"])["per_datapoint"].mean().rename("per_datapoint")
    s = s.merge(per.reset_index(), on=["method", "K"])
    known = inference.methods()
    order = [m for m in known if is_reference(m)] + [m for m in known if not is_reference(m)]
    s["order"] = s["method"].map({m: i for i, m in enumerate(order)}).fillna(len(order))
    s = s.sort_values(["order", "K"])
    used = set()
    out = ["| method | K | log p(x) | stderr | spread | per datapoint | error | ESS | k-hat "
           "| s / estimate |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s.itertuples():
        if is_reference(r.method):
            out.append(f"| {r.method} | - | {r.estimate:.2f} | - | - | {r.per_datapoint:.4f} | "
                       f"(reference) | - | - | {r.seconds:.3f} |")
            continue
        stderr = _fmt(r.stderr, ".2f")
        if stderr != "-" and not r.vouched:
            stderr += " !"
            used.add("!")
        if r.K == 1:
            stderr = "-"
        khat = _fmt(r.khat, ".2f")
        if math.isinf(r.khat):
            khat = "n/a *"
            used.add("*")
        spread = _fmt(r.seed_sd, ".2f") if r.seeds > 1 else "-"
        out.append(f"| {r.method} | {int(r.K)} | {r.estimate:.2f} | {stderr} | {spread} | "
                   f"{r.per_datapoint:.4f} | {_fmt(r.error, '+.2f')} | {_fmt(r.ess, '.3g')} | "
                   f"{khat} | {r.seconds:.3f} |")
    notes = []
    if "!" in used:
        notes.append("`!` stderr not vouched for by the estimate itself (`Estimate.caveats`: e.g. "
                     f"k-hat above min(1 - 1/log10(K), 0.7) or ESS below {MIN_ESS:g}): use the "
                     "spread across seeds.")
    if "*" in used:
        notes.append("`n/a *` k-hat: too few samples to fit a tail (needs K >= 25).")
    return out, notes


def heldout_lines(split: Optional[Dict[str, Any]], train: pd.DataFrame,
                  test: pd.DataFrame, scope: Optional[str] = None) -> List[str]:
    """The held-out paragraph: how the data were split, and log p(x) per datapoint on the
    fitted and the held-out rows for each method run on both (mean over seeds)."""
    if not split and scope == "global":
        return ["Held out: nothing (global scope: log p(X) is the evidence of the whole data "
                "set; its held-out analogue, log p(X_test | X_train), is another quantity).", ""]
    if not split or not split.get("n_test"):
        why = f" -- {split['reason']}" if split and split.get("reason") else ""
        return [f"Held out: nothing{why}.", ""]
    lines = [f"Held out: {split['n_test']} of {split['n_train'] + split['n_test']} datapoints "
             f"(test_fraction {split['test_fraction']}, permutation seed {split['seed']}), not "
             "used in fitting.", ""]
    pairs = train_and_test(train, test)
    if not len(pairs):
        return lines
    lines += ["| method | K | train log p(x) / datapoint | test log p(x) / datapoint | gap |",
              "|---|---:|---:|---:|---:|"]
    for (method, k), r in pairs.iterrows():
        lines.append(f"| {method} | {k or '-'} | {r.value_train:.4f} | {r.value_test:.4f} | "
                     f"{r.value_train - r.value_test:+.4f} |")
    return lines + [""]


def per_datapoint(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ``per_datapoint`` over seeds, indexed by (method, K), in a column ``value``."""
    if not len(rows):  # indexed like a full one, so that the train/test join has its keys
        index = pd.MultiIndex.from_arrays([[], []], names=["method", "K"])
        return pd.DataFrame({"value": pd.Series([], dtype=float, index=index)})
    return rows.groupby(["method", "K"])["per_datapoint"].mean().rename("value").to_frame()


def train_and_test(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """``value_train`` and ``value_test`` (:func:`per_datapoint`) where both have the (method, K)."""
    return per_datapoint(train).merge(per_datapoint(test), left_index=True, right_index=True,
                                      suffixes=("_train", "_test"))


#: the ladder's base: models evaluated on the very same held-out rows as this one join it
LADDER_BASE = "independent"


def ladder_section(out: Path, df: pd.DataFrame, models: List[str]) -> List[str]:
    """The baseline ladder: every model held out on the same rows (same SHA-256) as the
    independent-pixels model, in nats per datapoint on those rows, from ``df`` (results.csv)."""
    rows = ladder_rows(out, df, models)
    if not rows:
        return []
    base = next(r for r in rows if r["model"] == LADDER_BASE)["test"]
    split = (read_json(out / LADDER_BASE / "config.json") or {})["split"]
    lines = ["## Baseline ladder", "",
             f"log p(x) in nats per image on the same {split['n_test']} held-out images (every "
             "model below was fitted on the other "
             f"{split['n_train']}), worst first: exact likelihoods, and the latent-variable "
             "models' quadrature reference and importance-sampling bound at the largest K.", "",
             "| model | method | K | train | test | gap | test vs independent |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["test"]):
        lines.append(f"| {r['model']} | {r['method']} | {r['K'] or '-'} | {r['train']:.3f} | "
                     f"{r['test']:.3f} | {r['train'] - r['test']:+.3f} | "
                     f"{r['test'] - base:+.3f} |")
    return lines + [""]


def ladder_rows(out: Path, df: pd.DataFrame, models: List[str]) -> List[Dict[str, Any]]:
    """One entry per (model, method, K) with held-out rows on the ladder base's test rows:
    mean per-datapoint log p(x) on train and test. Empty without the base's exact rows."""
    if df.empty or LADDER_BASE not in models:
        return []
    key = ((read_json(out / LADDER_BASE / "config.json") or {}).get("split") or {}).get("test_sha256")
    found = []
    for name in models:
        split = (read_json(out / name / "config.json") or {}).get("split") or {}
        if key is None or split.get("test_sha256") != key:
            continue
        mine = df[df["model"] == name]
        pairs = train_and_test(mine[mine["split"] == "train"], mine[mine["split"] == "test"])
        found += [{"model": name, "method": m, "K": int(k), "train": r.value_train,
                   "test": r.value_test} for (m, k), r in pairs.iterrows()]
    return found if any(r["model"] == LADDER_BASE for r in found) else []


def reference_notes(rows: pd.DataFrame) -> List[str]:
    """What this run's numbers say about the gap between the ELBO and the reference, and how
    much of it importance sampling closed (only where the run has a reference)."""
    ref = rows["reference"].dropna()
    sampled = rows[rows["K"] > 0]
    if not len(ref) or not len(sampled):
        return []
    n = int(round(rows["estimate"].iloc[0] / rows["per_datapoint"].iloc[0]))
    k = int(sampled["K"].max())
    mean = sampled[sampled["K"] == k].groupby("method")["error"].mean()
    if "elbo" not in mean or "is-guide" not in mean:
        return []
    gap, closed = -mean["elbo"], -mean["is-guide"]
    text = (f"At K = {k} the ELBO sits {gap:.3g} nats ({gap / n:.3g} per datapoint) below the "
            "reference: the gap KL(q || posterior), which only a better guide closes. ")
    if 0 <= closed <= gap:
        text += (f"is-guide at the same K is {closed:.3g} nats below it: importance sampling "
                 f"closed {100 * (1 - closed / gap):.0f}% of the gap.")
    else:
        text += (f"is-guide at the same K is {-closed:+.3g} nats from it, which is within its "
                 "noise when the stderr (or the spread) is as large.")
    return [text]


def is_reference(method: str) -> bool:
    return method in inference.methods() and estimators.get(method).reference


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
