"""``ppzoo calibrate``: a small run (two conjugate pack targets, four methods, 3 seeds) at its
--quick settings. The rows are checked against the pack's truths, the table against the
engine's :class:`inference.calibrate.Calibration` of those rows, and the run folder for
resumption and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

import inference
from clitools import run_main
from inference import pack
from test_bench_cli import run_checking_figures
from zoo.app import calibrate

TARGETS = ["normal-mean", "normal-local"]
METHODS = ["is-guide", "elbo", "laplace", "bdmc"]
SEEDS = 3
FIGURES = {}


@pytest.fixture(scope="module")
def cal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrate") / "run"
    args = ["calibrate", "--quick", "--no-progress", "--seeds", SEEDS, "--out", out]
    args += [a for t in TARGETS for a in ("--target", t)]
    args += [a for m in METHODS for a in ("--method", m)]
    return out, run_checking_figures(calibrate, args, FIGURES), args


def test_rows_against_the_truth(cal_run):
    out, _, _ = cal_run
    df = pd.read_csv(out / "results.csv")
    for name in TARGETS:
        part = df[df["target"] == name]
        for method in METHODS:
            rows = part[part["method"] == method]
            seeds = 1 if method == "laplace" else SEEDS  # deterministic: once
            assert sorted(rows["seed"]) == list(range(seeds)), (name, method)
            assert (rows["K"] == calibrate.num_samples(method, True)).all()
        assert (part["truth"] == pack.get(name).log_evidence).all()
    np.testing.assert_allclose(df["error"], df["estimate"] - df["truth"], atol=1e-9)
    sampled = df[df["stderr"] > 0]
    np.testing.assert_allclose(sampled["z"], sampled["error"] / sampled["stderr"])
    # bdmc ran on data simulated from the model, from the prior (an autoguide has no density
    # at given latents), and reported its sandwich
    bdmc = df[df["method"] == "bdmc"]
    assert (bdmc["start"] == "prior").all()
    # the estimate is the forward (lower) bound; the upper one is noisy at --quick's T = 10,
    # K = 30 (either may cross the other by its stderr), so only its presence is checked here
    assert (bdmc["lower"] == bdmc["estimate"]).all()
    assert (bdmc["lower_stderr"] == bdmc["stderr"]).all()
    assert np.isfinite(bdmc[["upper", "upper_stderr"]].to_numpy()).all()
    assert df[df["method"] != "bdmc"]["lower"].isna().all()
    record = json.loads((out / "calibrate.json").read_text())
    assert record["seeds"] == SEEDS and record["targets"] == TARGETS


def test_table_is_the_engines_reading_of_the_rows(cal_run):
    out, stdout, _ = cal_run
    text = (out / "calibration.md").read_text()
    cals = calibrate.calibrations(pd.read_csv(out / "results.csv"))
    assert set(cals) == {(t, m) for t in TARGETS for m in METHODS}
    for (target, method), c in cals.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {target} | {method}"))
        assert line.endswith(f"| {c.verdict} |") and f"{int(c.vouched.sum())}/{len(c.seeds)}" in line
        assert f"{target}: {method} " in stdout
    assert "a bound: not expected to cover" in text  # the elbo
    assert "## Sandwiches" in text and "| normal-mean | bdmc (from the prior) |" in text
    # Bayes-factor SBC: every method but bdmc (it needs the latents of every model)
    sbc = pd.read_csv(out / "sbc.csv")
    assert set(sbc["method"]) == {"is-guide", "elbo", "laplace"}
    assert ((sbc["exact_0"] + sbc["exact_1"]).round(9) == 1).all()
    assert "## Bayes-factor SBC" in text and "- Bayes-factor SBC: **bdmc** --" in text
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == sorted(f"{m}.png" for m in METHODS)
    assert all(not problems for problems in FIGURES.values()), FIGURES


def test_resume_runs_only_the_missing_seeds(cal_run):
    out, _, args = cal_run
    df = pd.read_csv(out / "results.csv")
    df.iloc[:-2].to_csv(out / "results.csv", index=False)  # as if interrupted two rows early
    rc, stdout, stderr = run_main(args + ["--resume"])
    assert rc == 0, stderr
    again = pd.read_csv(out / "results.csv")
    assert len(again) == len(df)
    pd.testing.assert_frame_equal(again.iloc[:-2], df.iloc[:-2])
    key = ["target", "method", "K", "seed"]
    assert set(map(tuple, again[key].values)) == set(map(tuple, df[key].values))
    rc, _, stderr = run_main([a if a != SEEDS else 5 for a in args] + ["--resume"])
    assert rc == 2 and "was run with --seeds 3; resume it with the same --seeds" in stderr


def test_ctrl_c_keeps_finished_estimates_and_resume_finishes(tmp_path, monkeypatch):
    """Ctrl-C after the 4th estimate (inside is-guide's seeds, before a batch was due to be
    written): exit 130 naming --resume, the 4 finished rows on disk; --resume runs only the
    rest and keeps those 4 as they were."""
    real, done = inference.calibrate, []

    def stopping(*args, callback, **kwargs):
        def row(seed, est):
            callback(seed, est)
            done.append((kwargs.get("method", args[2]), seed))
            if len(done) == 4:
                raise KeyboardInterrupt

        return real(*args, callback=row, **kwargs)

    monkeypatch.setattr(calibrate, "FLUSH_SECONDS", 1e9)  # only the final flush writes
    monkeypatch.setattr(inference, "calibrate", stopping)
    out = tmp_path / "run"
    args = ["calibrate", "--quick", "--no-progress", "--seeds", 3, "--out", out,
            "--target", "normal-mean", "--method", "elbo", "--method", "is-guide"]
    rc, _, stderr = run_main(args)
    assert rc == 130 and "--resume" in stderr and str(out) in stderr
    before = pd.read_csv(out / "results.csv")
    assert list(zip(before["method"], before["seed"])) == done == [
        ("elbo", 0), ("elbo", 1), ("elbo", 2), ("is-guide", 0)]
    monkeypatch.setattr(inference, "calibrate", real)
    rc, _, stderr = run_main(args + ["--resume"])
    assert rc == 0, stderr
    after = pd.read_csv(out / "results.csv")
    assert sorted(zip(after["method"], after["seed"])) == [
        (m, s) for m in ("elbo", "is-guide") for s in range(3)]
    pd.testing.assert_frame_equal(after.iloc[:4], before)
    assert (out / "calibration.md").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--target", "nope"], "unknown target(s) nope; choose from beta-bernoulli-flat"),
    (["--method", "exact"], "exact is a reference"),
    (["--seeds", "1"], "--seeds must be an integer >= 2"),
])
def test_bad_input_one_line_nothing_written(tmp_path, extra, message):
    out = tmp_path / "never"
    rc, _, stderr = run_main(["calibrate", "--quick", "--out", out] + extra)
    assert rc == 2 and message in stderr and stderr.count("\n") == 1
    assert not out.exists()
