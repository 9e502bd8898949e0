"""``ppzoo bench``: the leaderboard of estimators against targets of known evidence, on a small
subset (two pack targets, one zoo reference, a few methods) at its --quick settings. The rows
are checked against the pack's truths and the zoo's exact reference recomputed here, the
leaderboard against the rows, and the run folder for resumption and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

import inference
import zoo
from clitools import run_main
from inference import pack
from test_cli import figure_problems
from zoo.app import bench, jobs

TARGETS = ["beta-bernoulli-30", "gaussian-32d"]
METHODS = ["is-guide", "laplace", "ais"]
COLUMNS = ["target", "method", "K", "seed", "estimate", "stderr", "truth", "error", "z",
           "inside", "seconds", "evaluations", "vouched", "ess", "khat"]
FIGURES = {}


def run_checking_figures(module, args, figures):
    """``run_main(args)`` with ``module.save_figure`` recording each figure's problems in
    ``figures`` (path -> problems); asserts it succeeded and returns its stdout."""
    save = jobs.save_figure

    def checked(fig, path):
        figures[str(path)] = figure_problems(fig)
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "save_figure", checked)
        rc, stdout, stderr = run_main(args)
    assert rc == 0, stderr
    return stdout


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    args = ["bench", "--quick", "--no-progress", "--out", out]
    args += [a for t in TARGETS + ["zoo:map_l2"] for a in ("--target", t)]
    args += [a for m in METHODS for a in ("--method", m)]
    return out, run_checking_figures(bench, args, FIGURES), args


def test_rows_against_the_truth(bench_run):
    out, _, _ = bench_run
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == COLUMNS
    skipped = json.loads((out / "skipped.json").read_text())
    ks, seeds = bench.SETTINGS[True]["ks"], bench.SETTINGS[True]["seeds"]
    for name in TARGETS + ["zoo:map_l2"]:
        part = df[df["target"] == name]
        ran = [m for m in METHODS if m not in skipped.get(name, {})]
        expected = {(m, max(ks), 0) if m == "laplace" else (m, k, s)
                    for m in ran for k in ks for s in (range(1) if m == "laplace" else range(seeds))}
        assert set(zip(part["method"], part["K"], part["seed"])) == expected and \
            len(part) == len(expected), name
        if not name.startswith("zoo:"):
            assert (part["truth"] == pack.get(name).log_evidence).all()
    np.testing.assert_allclose(df["error"], df["estimate"] - df["truth"], rtol=0, atol=1e-9)
    sampled = df[df["stderr"] > 0]
    np.testing.assert_allclose(sampled["z"], sampled["error"] / sampled["stderr"])
    assert (df["inside"] == (df["z"].abs() < 3)).all()
    assert (df["evaluations"] > 0).all() and (df["seconds"] > 0).all()
    # the Gaussian posteriors: laplace is exact, and never vouched for
    lap = df[df["method"] == "laplace"].set_index("target")
    assert abs(lap.loc["gaussian-32d", "error"]) < 2e-3 and abs(lap.loc["zoo:map_l2", "error"]) < 2e-3
    assert not lap["vouched"].any()
    # AutoNormal has no density at given latents: ais (start='guide') does not apply, says why
    assert "use start='prior'" in skipped["beta-bernoulli-30"]["ais"]


def test_zoo_truth_is_its_exact_reference(bench_run):
    out, _, _ = bench_run
    df = pd.read_csv(out / "results.csv")
    entry = zoo.get("map_l2", **jobs.job_for("map_l2", True).options)
    data = jobs.load_data(entry, None, jobs.job_for("map_l2", True).subset)
    inference.load_fit(entry, out / "zoo-map_l2", data=data)
    exact = inference.estimate(entry, data, "exact").log_evidence
    assert (df.loc[df["target"] == "zoo:map_l2", "truth"] - exact).abs().max() < 1e-6


def test_leaderboard_reads_the_rows(bench_run):
    out, stdout, _ = bench_run
    text = (out / "leaderboard.md").read_text()
    df = pd.read_csv(out / "results.csv")
    table = bench.board_table(df)
    for r in table.itertuples():
        assert f"| {r.target} | {r.method}" in text and f"{r.error:+.4g}" in text
    assert "## Did not apply" in text and "- beta-bernoulli-30: **ais** --" in text
    assert "| gaussian-32d | 32-D Gaussian" in text  # the targets' table
    assert f"{len(df)} rows" in stdout
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["beta-bernoulli-30.png", "gaussian-32d.png", "zoo-map_l2.png"]
    assert all(not problems for problems in FIGURES.values()), FIGURES


def test_resume_runs_only_missing_rows(bench_run):
    out, _, args = bench_run
    df = pd.read_csv(out / "results.csv")
    df.iloc[:-2].to_csv(out / "results.csv", index=False)  # as if interrupted two rows early
    rc, stdout, stderr = run_main(args + ["--resume"])
    assert rc == 0, stderr
    again = pd.read_csv(out / "results.csv")
    assert len(again) == len(df)
    pd.testing.assert_frame_equal(again.iloc[:-2], df.iloc[:-2])
    assert set(zip(again["target"], again["method"], again["K"], again["seed"])) == \
        set(zip(df["target"], df["method"], df["K"], df["seed"]))


@pytest.mark.parametrize("extra,message", [
    (["--target", "nope"], "unknown target(s) nope; choose from beta-bernoulli-flat"),
    (["--method", "exact"], "exact is a reference"),
    (["--method", "nope"], "unknown method(s) nope"),
])
def test_bad_input_one_line_nothing_written(tmp_path, extra, message):
    out = tmp_path / "never"
    rc, _, stderr = run_main(["bench", "--quick", "--out", out] + extra)
    assert rc == 2 and message in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_a_previous_run_is_refused_without_resume(bench_run):
    out, _, args = bench_run
    rc, _, stderr = run_main(args)
    assert rc == 2 and "holds a previous run; pass --resume" in stderr
    rc, _, stderr = run_main([a for a in args if a != "--quick"] + ["--resume"])
    assert rc == 2 and "was run with --quick; resume it with --quick too" in stderr
