"""``ppzoo``: list the zoo, fit a model, estimate its evidence, run the full comparison -- on
the zoo's models or on a user's own model/guide pair.

    ppzoo list
    ppzoo fit MODEL --out DIR [--data PATH] [--subset N] [--steps N] [--batch-size B]
              [--lr LR] [--lr-decay F] [--seed S] [--option key=value ...] [--resume]
              [--loss trace|meanfield|traceenum] [--kl-weight BETA] [--no-compile]
    ppzoo fit --model FILE.py[:MODEL,GUIDE[,LOG_EVIDENCE]] --data DATA.csv|.npz --out DIR
              [--columns A,B ...] [--data-plate NAME] [--scope local|global] [...as above]
    ppzoo estimate DIR [--method M ...] [-K 1 -K 10 ...] [--seeds N] [--data PATH]
    ppzoo sample DIR -n N --out FILE.csv|FILE.npz [--seed S] [--mean] [--force]
    ppzoo compare [MODEL ...] --out DIR [--quick] [--resume] [--steps N ... -K K ... --seeds N]
    ppzoo compare --model FILE.py --data DATA --out DIR [...as above, and fit's pair flags]
    ppzoo bench --out DIR [--quick] [--target NAME ...] [--method M ...] [--resume]
    ppzoo calibrate --out DIR [--quick] [--target NAME ...] [--method M ...] [--seeds N] [--resume]

Every command but ``list`` also takes ``--device cpu|cuda``, ``--threads N`` (PyTorch CPU
threads, default 1) and ``--no-progress``. Fit defaults (steps, lr, batch size) are the
compare job's for that model (its class's ``job``, :class:`zoo.Job`; for ``--model``, the
defaults of :class:`zoo.Job`); flags replace them. ``--model`` loads a user's file and runs its
code (:mod:`zoo.app.usermodel`); the run records the file's SHA-256, and a command reading the
run refuses the file once changed.

Every check that can fail (model, method, options and their types, settings, data, device,
output directory, saved state; a user's file, names and one trace of the pair on its data)
runs before any long work and ends the command with one line on stderr and exit status 2,
writing nothing. An unexpected error prints one line naming the file that holds its traceback
(exit status 1; ``--debug`` raises it instead). A command holds an exclusive lock on the folder
it writes to, and never writes over a file a run owns or reads (``sample`` replaces another
existing file only with ``--force``). Ctrl-C keeps what is finished (exit status 130; before
the libraries have loaded it ends the command at once); ``compare --resume`` continues from
it, ``fit --resume`` continues a fit from its last checkpoint, and ``estimate`` run again
appends only the rows ``estimates.csv`` lacks. Under ``torchrun`` (``WORLD_SIZE`` > 1) ``fit``
and ``estimate`` run data-parallel, and rank 0 alone writes the folder
(:mod:`inference.distributed`); a refusal on any rank ends every rank with exit status 2 and
one line (:func:`zoo.app.jobs.refusal`).

One parser and one short function per command; the work they call lives in
:mod:`zoo.app.jobs`, :mod:`zoo.app.report`, :mod:`zoo.app.heldout` and
:mod:`zoo.app.usermodel`.
"""

from __future__ import annotations

import argparse
import ast
import errno
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PROG = "ppzoo"
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _echo(line: str) -> None:
    from tqdm import tqdm

    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 speaks for all
    tqdm.write(line, file=sys.stdout)  # above any progress bar, not through it
    sys.stdout.flush()


def _parse_options(items: Sequence[str]) -> Dict[str, Any]:
    """``["K=4", "guide=map", "hidden=(64,)"]`` -> ``{"K": 4, "guide": "map", "hidden": [64]}``:
    values are Python literals where they parse as one, else strings."""
    from zoo.app.jobs import UsageError

    options: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--option {item!r} is not key=value (e.g. --option guide=gaussian)")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key] = list(value) if isinstance(value, tuple) else value
    return options


# ---------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    import zoo

    width = max(40, min(shutil.get_terminal_size().columns, 100))
    if args.methods:
        import inference
        from inference import estimators

        for name in inference.methods():
            print(name)
            print(textwrap.fill(estimators.get(name).summary, width, initial_indent="  ",
                                subsequent_indent="    "))
        return 0
    for e in (zoo.get(name) for name in zoo.names()):
        print(e.name)
        for label, text in (("", e.summary), ("data: ", e.default_data),
                            ("exact: ", "; ".join(e.references) or "none")):
            print(textwrap.fill(label + text, width, initial_indent="  ",
                                subsequent_indent="    "))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppzoo")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses

    from zoo.app import jobs

    _one_model(args)
    jobs.check_device(args.device)
    base = jobs.job_for(args.model) if args.user_model is None else jobs.user_job()
    job = dataclasses.replace(base, options=_parse_options(args.option), subset=args.subset,
                              scope=args.scope, estimate_options={}, **_fit_overrides(args))
    jobs.check_fit_settings(job, args.seed)
    if args.user_model is None:
        entry = jobs.make_entry(args.model, job.options)
        data_path = None if args.data is None else _data_arg(args.data)
    else:
        entry, data_path = _user_pair(args, job)
    jobs.check_loss(job, entry)
    data = jobs.load_data(entry, data_path, job.subset, args.device)
    if args.user_model is not None:  # it runs on its data, or one line, before any writing
        from zoo.app.usermodel import check_pair

        check_pair(entry, data, job)
    jobs.check_torchrun_fit(job, len(data[0]))
    world = jobs.join(args.device)  # under torchrun: every rank's checks passed
    created = jobs.new_folders(args.out)
    out = jobs.on_rank0(lambda: jobs.prepare_out(
        args.out, marker=jobs.CONFIG_FILE, resume=args.resume,
        stale=lambda out: not jobs.fit_started(out)), world)
    if args.resume and jobs.fit_started(out):
        config = jobs.fit_config(entry, job, data_path=data_path, seed=args.seed,
                                 device=args.device)
        previous = jobs.read_config(out)
        from zoo.app.usermodel import check_unchanged

        check_unchanged(previous, entry, out)
        jobs.check_resumable(previous, config, out)
        jobs.check_saved(entry, out, data)
        if jobs.fit_finished(out):
            _echo(f"{out} holds a finished fit; nothing to do; next: {PROG} estimate {out}")
            return 0
        if (out / jobs.CHECKPOINT_FILE).is_file():
            _echo(f"continuing from {out / jobs.CHECKPOINT_FILE}")
    jobs.agreed()  # under torchrun: every rank's resume checks passed
    kept = (out / jobs.CONFIG_FILE).exists()
    try:
        jobs.fit_entry(entry, data, job, out, data_path=data_path, seed=args.seed,
                       device=args.device, progress=_progress(args), echo=_echo,
                       distributed=world.size > 1, compile=not args.no_compile)
    except BaseException:  # stopped before its first checkpoint: leave the folder as it was
        if world.writer:
            jobs.discard_unstarted(out, created=created, kept_config=kept)
        raise
    _echo(f"wrote {out}/config.json, state.pt, losses.csv, loss.png; next: {PROG} estimate {out}")
    return 0


def _one_model(args: argparse.Namespace) -> None:
    """``fit``: a zoo model or ``--model FILE.py``, not both; the pair's own flags only with it."""
    from zoo.app.jobs import UsageError

    if (args.model is None) == (args.user_model is None):
        raise UsageError("name one model: a zoo model (see ppzoo list) or your own with "
                         "--model FILE.py:model,guide" if args.model is None else
                         f"name one model: {args.model} or --model {args.user_model}, not both")
    _pair_flags(args)


def _pair_flags(args: argparse.Namespace) -> None:
    """Refuse the flags of a user's pair (``--columns``, ``--data-plate``, ``--scope``) without
    ``--model``."""
    from zoo.app.jobs import UsageError

    if args.user_model is None:
        given = [flag for flag, value in (("--columns", args.columns),
                                          ("--data-plate", args.data_plate),
                                          ("--scope", args.scope)) if value]
        if given:
            raise UsageError(f"{given[0]} describes your own pair and goes with --model "
                             "FILE.py; a zoo model reads its data and sets its scope itself")


def _user_pair(args: argparse.Namespace, job):
    """``(entry, data path)`` of ``--model`` and ``--data``: the user's file loaded (its code
    runs) with the pair's flags."""
    from zoo.app import usermodel
    from zoo.app.jobs import UsageError

    if args.data is None:
        raise UsageError(f"--model {args.user_model} needs --data FILE (.csv or .npz): your "
                         "model has no data of its own")
    entry = usermodel.load(args.user_model, data_plate=args.data_plate or "data",
                           columns=args.columns or (), options=job.options)
    return entry, _data_arg(args.data)


def _fit_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The fit settings given on the command line (the job's own for the rest)."""
    return {key: value for key, value in (
        ("steps", args.steps), ("lr", args.lr), ("lr_decay", args.lr_decay),
        ("batch_size", args.batch_size), ("loss", args.loss), ("kl_weight", args.kl_weight))
        if value is not None}


def _data_arg(path: str) -> str:
    # Named data sets (e.g. gmm's "faithful") pass through; files become absolute paths
    # so that config.json still finds them from another working directory.
    return str(Path(path).absolute()) if os.sep in path or os.path.exists(path) else path


def cmd_estimate(args: argparse.Namespace) -> int:
    import inference
    from zoo.app import jobs

    methods = jobs.check_methods(args.method or inference.methods())
    ks = args.K or [1, 10, 100, 1000]
    seeds = 3 if args.seeds is None else args.seeds
    jobs.check_estimate_settings(ks, seeds)
    jobs.check_device(args.device)
    folder = Path(args.dir)
    config, entry, fitted = jobs.open_fit(folder, args.device)
    data, path, evaluator = fitted, folder / "estimates.csv", entry
    if args.data is not None:  # other data: checked first, its rows in a file of their own
        data = jobs.load_data(entry, _data_arg(args.data), None, args.device)
        jobs.check_new_data(data, fitted, args.data)
        stem = os.fsencode(Path(args.data).stem)[:64].decode(errors="ignore")  # a short name
        path = folder / f"estimates-{stem}-{jobs.data_hash(data)[:8]}.csv"
    world = jobs.join(args.device)  # under torchrun: every rank's checks passed
    jobs.on_rank0(lambda: jobs.lock_folder(folder), world)
    table = jobs.Rows(path, key=("method", "K", "seed"))
    done = table.done()
    inference.load_fit(entry, folder, device=args.device, data=fitted)
    if args.data is not None:
        evaluator = jobs.evaluation_entry(entry, data)  # or one line: it cannot
        _echo(f"evaluating the fitted {entry.name} on {args.data} ({len(data[0])} datapoints)")
    df = inference.compare(
        evaluator, data, methods=methods, num_samples=ks, seeds=range(seeds),
        scope=config.get("scope"), device=args.device, progress=_progress(args),
        on_start=lambda m, k, s: _reference_started(m, config["model"]),
        on_row=table.add if world.writer else None,
        skip=lambda m, k, s: (m, int(k), int(s)) in done, distributed=world.size > 1,
        **config.get("estimate_options", {}))
    for method, reason in df.attrs.get("skipped", {}).items():
        _echo(f"{method} skipped: {reason}")
    rows = table.df
    mine = rows[rows["method"].isin(methods) & (rows["K"].isin(ks) | (rows["K"] == 0))
                & (rows["seed"] < seeds)] if len(rows) else rows
    if len(mine):
        _echo(_estimate_table(mine))
    _echo(f"wrote {path} ({len(table.df) - len(done)} new rows, {len(table.df)} in all)")
    return 0


def _reference_started(method: str, model: str) -> None:
    from inference import estimators

    if estimators.get(method).reference:
        _echo(f"{model}: computing the {method} reference (quadrature over every datapoint "
              "can take a minute) ...")


def _estimate_table(df) -> str:
    """Mean over seeds per method and K, to 0.01 nat, with the per-datapoint value."""
    from inference.compare import summarise

    s = summarise(df)
    per = df.groupby(["method", "K"])["per_datapoint"].mean().reset_index()
    s = s.merge(per, on=["method", "K"])
    fmt = {"estimate": "{:.2f}", "stderr": "{:.2f}", "seed_sd": "{:.2f}",
           "per_datapoint": "{:.4f}", "error": "{:+.2f}", "ess": "{:.3g}", "khat": "{:.2f}",
           "seconds": "{:.3f}"}
    table = s[["method", "K", *fmt]].copy()
    for col, f in fmt.items():
        table[col] = [("-" if v != v else f.format(v)) for v in table[col]]
    return table.rename(columns={"estimate": "log p(x)", "seed_sd": "spread",
                                 "per_datapoint": "per datapoint", "khat": "k-hat",
                                 "seconds": "s/estimate"}).to_string(index=False)


def cmd_sample(args: argparse.Namespace) -> int:
    import inference
    import numpy as np
    import pandas as pd
    from inference.io import write_with
    from zoo.app import jobs

    jobs.check_sample_settings(args.n, args.seed)
    folder = Path(args.dir)
    config, entry, fitted = jobs.open_fit(folder)
    if config.get("source") is not None:
        raise jobs.UsageError(f"{folder} is a fit of your own pair (--model {entry.spec}): "
                              "ppzoo sample draws from the zoo's models only; draw from yours "
                              "with pyro.infer.Predictive(model, guide=guide, ...) in Python")
    out = jobs.check_sample_out(args.out, folder, config, force=args.force)
    jobs.check_draws(args.n, fitted)
    inference.load_fit(entry, folder, data=fitted)
    draws = [t.detach().cpu().numpy() for t in entry.sample(args.n, seed=args.seed, mean=args.mean)]
    names = ["x"] if len(draws) == 1 else ["X", "y"] if len(draws) == 2 else \
        [f"data{i}" for i in range(len(draws))]
    if out.suffix == ".npz":
        def savez(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, **dict(zip(names, draws)))

        write_with(out, savez)
    else:
        cols = {}
        for name, a in zip(names, draws):
            a = a.reshape(len(a), -1)
            cols.update({name if a.shape[1] == 1 else f"{name}{j}": a[:, j]
                         for j in range(a.shape[1])})
        write_with(out, lambda tmp: pd.DataFrame(cols).to_csv(tmp, index=False))
    what = "means" if args.mean else "draws"
    _echo(f"wrote {args.n} {what} from the fitted {config['model']} to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import dataclasses

    from zoo.app import jobs, report

    _pair_flags(args)
    overrides = dict(_fit_overrides(args), **{key: value for key, value in (
        ("methods", args.method and tuple(dict.fromkeys(args.method))),
        ("num_samples", args.K and tuple(dict.fromkeys(args.K))), ("seeds", args.seeds),
        ("test_fraction", args.test_fraction)) if value is not None})
    user = None
    if args.user_model is not None:
        if args.models:
            raise jobs.UsageError(f"name the zoo's models ({' '.join(args.models)}) or your own "
                                  f"with --model, not both; compare them in two runs")
        jobs.check_device(args.device)
        job = dataclasses.replace(jobs.user_job(args.quick), options=_parse_options(args.option),
                                  scope=args.scope, **overrides)
        report.check_job(job)
        entry, data_path = _user_pair(args, job)
        user = report.UserRequest(entry, job, data_path)
    elif args.option or args.data is not None:
        flag = "--option" if args.option else "--data"
        raise jobs.UsageError(f"{flag} goes with --model FILE.py (your pair's keyword arguments "
                              "and data); the zoo's models use their own options and data")
    plan = report.prepare_compare(args.models, args.out, quick=args.quick, device=args.device,
                                  resume=args.resume, overrides=overrides, user=user)
    report.run_compare(plan, progress=_progress(args), echo=_echo)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zoo.app import bench

    plan = bench.prepare(args.target, args.method, args.out, quick=args.quick,
                         device=args.device, resume=args.resume)
    bench.run(plan, progress=_progress(args), echo=_echo)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from zoo.app import calibrate

    plan = calibrate.prepare(args.target, args.method, args.out, quick=args.quick,
                             seeds=args.seeds, device=args.device, resume=args.resume)
    calibrate.run(plan, echo=_echo)
    return 0


def _fit_interrupted(out: str) -> str:
    from zoo.app.jobs import CHECKPOINT_FILE

    if (Path(out) / CHECKPOINT_FILE).is_file():
        return (f"the fit did not finish; its last checkpoint is in {out}: rerun the same "
                "command with --resume to continue from it")
    return "the fit did not finish; no fitted state was written"


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (like every other ppzoo error)."""

    def error(self, message: str):
        _refuse(f"{message}; see {self.prog} --help")
        self.exit(EXIT_USAGE)


def _refuse(line: str, heard: bool = False) -> None:
    """A refused command's one line on stderr. Under ``torchrun`` the ranks first hear each
    other's (none waits for one that stopped; :func:`zoo.app.jobs.refusal`) and local rank 0
    alone prints it: once per machine."""
    try:
        torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        torchrun = False
    if torchrun:
        from zoo.app.jobs import refusal

        line = refusal(line, heard)
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
    print(f"{PROG}: error: {line}", file=sys.stderr)


#: the registered models and methods, as --help names them (the parser is built without
#: importing torch, so --help answers at once; a test checks them against zoo.names() and
#: inference.methods())
MODEL_NAMES = "dlvm, fa, fvsbn, gmm, independent, map_l2, nade, vae"
METHOD_NAMES = ("elbo, is-guide, is-prior, exact, ais, bdmc, smc, laplace, harmonic-mean, bridge, "
                "chib, nested, stepping-stone")

RUNS_CODE = ("Loading the file runs its code, as python FILE.py would (all but its if __name__ "
             "== '__main__': part): use it on files you trust.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, description="ppzoo: a zoo of Pyro models, SVI fits and evidence estimators; "
                               "your own model/guide pair runs through the same job "
                               "(fit/compare --model FILE.py --data DATA).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="registered models: summary, default data, exact "
                                     "references (--methods: the estimators)")
    ls.add_argument("--methods", action="store_true",
                    help="list the registered estimators (the --method names) instead")

    common = _Parser(add_help=False)
    common.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    common.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they show only on a terminal anyway)")
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    common.add_argument("--threads", type=int, default=1, metavar="N",
                        help="PyTorch CPU threads (default 1: the zoo's models are small, and "
                             "more threads contend with other processes)")

    pair = _Parser(add_help=False)  # a user's own model/guide pair
    g = pair.add_argument_group("your own model (instead of a zoo model)")
    g.add_argument("--model", dest="user_model", metavar="FILE.py[:MODEL,GUIDE[,LOG_EVIDENCE]]",
                   help="your Pyro model and guide: top-level names in FILE.py (default model "
                        "and guide; a guide may be an autoguide object). The exact reference "
                        "is LOG_EVIDENCE, else a top-level log_evidence(*data) if the file has "
                        "one: log p(data) as a number, or one value per datapoint. "
                        "A top-level networks = {name: module} saves what pyro.module "
                        f"registers. {RUNS_CODE} Needs --data.")
    g.add_argument("--columns", action="append", metavar="A,B,...",
                   help="CSV columns (header names or 1-based numbers) making one data tensor "
                        "(1-D for one column); repeat for the next argument of the model, e.g. "
                        "--columns x1,x2 --columns y. Default: a header naming the model's "
                        "arguments gives one column each; else every column, one tensor. An "
                        ".npz gives its arrays, by name where they name the arguments")
    g.add_argument("--data-plate", metavar="NAME",
                   help="the pyro.plate over datapoints (default \"data\", or the one plate "
                        "whose size is the number of datapoints)")
    g.add_argument("--scope", choices=("local", "global"),
                   help="local: log p(x_n) per datapoint; global: log p(X) (default: local "
                        "when every latent is in the data plate)")

    fitting = _Parser(add_help=False)
    fitting.add_argument("--steps", type=int, metavar="N", help="SVI steps (default: per model; "
                                                                "1000 for --model)")
    fitting.add_argument("--batch-size", type=int, metavar="B",
                         help="minibatch size (default: per model; all data for --model)")
    fitting.add_argument("--lr", type=float,
                         help="initial learning rate (default: per model; 0.01 for --model)")
    fitting.add_argument("--lr-decay", type=float, metavar="F",
                         help="learning rate at the last step as a fraction of --lr (default "
                              "0.1)")
    fitting.add_argument("--loss", metavar="L",
                         help="the ELBO: trace (sampled), meanfield (KL term in closed form "
                              "where one exists) or traceenum (default: per model)")
    fitting.add_argument("--kl-weight", type=float, metavar="BETA",
                         help="weight of the KL term while training (beta-VAE; default 1, the "
                              "ELBO); evidence estimates are of the model itself")

    estimating = _Parser(add_help=False)
    estimating.add_argument("--method", action="append", metavar="M",
                            help=f"{METHOD_NAMES} (see ppzoo list --methods); repeat for "
                                 "several (default: all)")
    estimating.add_argument("-K", action="append", type=int, metavar="K",
                            help="number of samples; repeat for several (default: 1 10 100 "
                                 "1000; compare: the model's job's)")
    estimating.add_argument("--seeds", type=int, metavar="N",
                            help="seeds 0..N-1 (default 3; compare: the model's job's)")

    f = sub.add_parser("fit", parents=[common, fitting, pair],
                       help="fit a model (a zoo model or --model FILE.py) by SVI and save it")
    f.add_argument("model", metavar="MODEL", nargs="?",
                   help=f"a registered model: {MODEL_NAMES} (see ppzoo list); or --model")
    f.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    f.add_argument("--data", metavar="PATH",
                   help="data file (default: the model's embedded data; --model: a .csv or .npz)")
    f.add_argument("--subset", type=int, metavar="N", help="use the first N datapoints")
    f.add_argument("--seed", type=int, default=0,
                   help="seeds the initialisation, the particles and the minibatch order "
                        "(default 0)")
    f.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="model constructor option, e.g. --option guide=gaussian K=4; with "
                        "--model, keyword arguments of every call of model, guide and "
                        "log_evidence")
    f.add_argument("--no-compile", action="store_true",
                   help="take every SVI step eagerly (default: after the first, the compiled "
                        "step where it applies, the same fit faster; the line after the fit "
                        "says which ran and why)")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit in DIR from its last checkpoint (same "
                        "settings; checkpoints every 10%% of the steps, at least 50)")

    e = sub.add_parser("estimate", parents=[common, estimating],
                       help="estimate log p(x) of a fitted run")
    e.add_argument("dir", metavar="DIR",
                   help="output directory of ppzoo fit (a fit of --model FILE.py loads FILE.py "
                        "again, running its code, once its SHA-256 is checked unchanged)")
    e.add_argument("--data", metavar="PATH",
                   help="evaluate the fitted model on this data file instead of its own (rows "
                        "in estimates-STEM-HASH.csv; e.g. a held-out set)")

    s = sub.add_parser("sample", help="draw new data from a fitted run of a zoo model")
    s.add_argument("dir", metavar="DIR", help="output directory of ppzoo fit (or compare's OUT/MODEL)")
    s.add_argument("-n", type=int, default=100, metavar="N", help="how many datapoints (default 100)")
    s.add_argument("--out", required=True, metavar="FILE", help="a .csv or .npz file to write")
    s.add_argument("--seed", type=int, default=0, help="seeds the draws (default 0)")
    s.add_argument("--mean", action="store_true",
                   help="the likelihood's mean (e.g. pixel probabilities) instead of draws")
    s.add_argument("--force", action="store_true",
                   help="replace --out if it exists (never a file of a run folder, nor the "
                        "data the run was fitted on)")

    c = sub.add_parser("compare", parents=[common, fitting, estimating, pair],
                       help="fit every model and compare every estimator (the full report); "
                            "--model FILE.py --data DATA: the same for your own pair",
                       description="Fit each model, run every estimator over the K grid and "
                                   "seeds, and write results.csv, summary.md and plots. The "
                                   "flags that set fit or estimate settings replace those of "
                                   "every model's job.")
    c.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"default: every registered model ({MODEL_NAMES})")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="new or empty output directory (or a previous run, with --resume)")
    c.add_argument("--data", metavar="PATH", help="--model's data: a .csv or .npz file")
    c.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="--model's keyword arguments (of every call of model, guide and "
                        "log_evidence)")
    c.add_argument("--test-fraction", type=float, metavar="F",
                   help="share of the datapoints held out of the fit, local scope only "
                        "(default: per model; 0.2 for --model; 0: none)")
    c.add_argument("--quick", action="store_true",
                   help="a quick look: short fits, K in (1, 10, 100), 2 seeds, data subsets")
    c.add_argument("--resume", action="store_true",
                   help="continue a previous run in DIR: skip fitted models and finished rows")

    b = sub.add_parser("bench", parents=[common],
                       help="every estimator on targets of known evidence: a leaderboard")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="new or empty output directory (or a previous run, with --resume)")
    b.add_argument("--quick", action="store_true",
                   help="a quick look: K in (10, 100), 2 seeds, fewer temperatures, the pack "
                        "and the zoo's fast references (a minute or two)")
    b.add_argument("--target", action="append", default=[], metavar="NAME",
                   help="a pack target (inference.pack.names()) or zoo:MODEL; repeat for "
                        "several (default: all)")
    b.add_argument("--method", action="append", default=[], metavar="M",
                   help="a registered estimator; repeat for several (default: every one but "
                        "the references)")
    b.add_argument("--resume", action="store_true",
                   help="continue a previous run in DIR: keep its rows, run the missing ones")

    k = sub.add_parser("calibrate", parents=[common],
                       help="how often each estimator's stderr covers a known truth")
    k.add_argument("--out", required=True, metavar="DIR",
                   help="new or empty output directory (or a previous run, with --resume)")
    k.add_argument("--quick", action="store_true",
                   help="a quick look: 20 seeds, small K, few temperatures (a few minutes)")
    k.add_argument("--target", action="append", default=[], metavar="NAME",
                   help="a pack target (inference.pack.names()), zoo:fa or zoo:map_l2; repeat "
                        "for several (default: all)")
    k.add_argument("--method", action="append", default=[], metavar="M",
                   help="a registered estimator; repeat for several (default: every one but "
                        "the references)")
    k.add_argument("--seeds", type=int, metavar="N",
                   help="estimates per target and method, and simulated data sets of the "
                        "Bayes-factor SBC (default 100; 20 with --quick)")
    k.add_argument("--resume", action="store_true",
                   help="continue a previous run in DIR: keep its rows, run the missing seeds")

    for name, fn in [("list", cmd_list), ("fit", cmd_fit), ("estimate", cmd_estimate),
                     ("sample", cmd_sample), ("compare", cmd_compare), ("bench", cmd_bench),
                     ("calibrate", cmd_calibrate)]:
        sub.choices[name].set_defaults(func=fn)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    starting = _interrupt_exits()  # first of all: Ctrl-C while the libraries load ends at once
    try:
        return _main(build_parser().parse_args(argv), starting)
    finally:
        _interrupt_raises(starting)


def _interrupt_exits() -> Any:
    """Until :func:`_interrupt_raises`, Ctrl-C ends the process at once, exit status 130 and
    one line: a ``KeyboardInterrupt`` inside ``import torch`` leaves a half-initialised module
    that crashes (a segfault) or prints a long traceback. Returns the handler to restore
    (``None`` where nothing was changed: SIGINT ignored, or not the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        return None

    def exit_now(signum, frame):
        os.write(2, f"\n{PROG}: interrupted while starting; nothing was done\n".encode())
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, exit_now)
    return previous


def _interrupt_raises(previous: Any) -> None:
    """Ctrl-C raises ``KeyboardInterrupt`` again (or does what it did before :func:`main`)."""
    import signal

    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace, starting: Any) -> int:
    threads = None
    try:
        import torch

        from inference.problem import ChecksFailed
        from inference.state import StateError
        from zoo.app.jobs import Agreed, UsageError, locks_held, release_locks

        _interrupt_raises(starting)  # loaded: from here Ctrl-C keeps what is finished
        threads, held = torch.get_num_threads(), locks_held()
        try:
            if getattr(args, "threads", None) is not None:
                if args.threads < 1:
                    raise UsageError(f"--threads must be >= 1, got {args.threads}")
                torch.set_num_threads(args.threads)
            return args.func(args)
        except (UsageError, StateError) as e:
            _refuse(str(e), heard=isinstance(e, Agreed))
            return EXIT_USAGE
        except ChecksFailed as e:  # e.g. a reference failing its own checks: no number, the fix
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        finally:
            release_locks(held)
            torch.set_num_threads(threads)
    except FloatingPointError as e:  # a fit diverged: say so in one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. ppzoo compare ... | head: stop quietly, files are kept
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except KeyboardInterrupt:
        what = {
            "compare": f"finished results are kept in {getattr(args, 'out', '')}; rerun with "
                       "--resume to continue",
            "bench": f"finished results are kept in {getattr(args, 'out', '')}; rerun with "
                     "--resume to continue",
            "calibrate": f"finished results are kept in {getattr(args, 'out', '')}; rerun "
                         "with --resume to continue",
            "fit": _fit_interrupted(getattr(args, "out", "")),
            "estimate": "finished estimates are kept in estimates.csv; rerun to continue",
        }.get(args.command, "")
        print(f"\n{PROG}: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or getattr(args, "debug", False):
            return _internal_error(args, e)
        again = {"fit": "rerun the same command with --resume (it continues from its last "
                        "checkpoint)",
                 "compare": "rerun the same command with --resume (finished results are kept)",
                 "estimate": "rerun the same command (finished rows are kept)",
                 }.get(args.command, "rerun the same command")
        print(f"{PROG}: error: no space left on the device writing {e.filename or 'a file'}; "
              f"free some space, then {again}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: one line and where the traceback is
        return _internal_error(args, e)


def _internal_error(args: argparse.Namespace, e: BaseException) -> int:
    """An unexpected error (a bug, not a usage error): with ``--debug`` the traceback, else
    one line naming the file that holds it."""
    import tempfile
    import traceback

    if getattr(args, "debug", False):
        raise e
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="ppzoo-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"{PROG} {' '.join(sys.argv[1:])}\n{text}")
        where = f"the full traceback is in {path}"
    except OSError:
        where = "rerun with --debug for the traceback"
    first = (str(e).strip().splitlines() or [""])[0][:200]
    print(f"{PROG}: internal error: {type(e).__name__}: {first}; {where} (please report it)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
