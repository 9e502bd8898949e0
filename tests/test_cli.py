"""The ppzoo command line: list, fit then estimate, the compare job end to end, interrupt and
resume, and every error path (one line on stderr, non-zero exit, before any long work)."""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

import inference
import zoo
from zoo.app import jobs, report
from inference.compare import COLUMNS
from zoo.app.cli import main

# the module (the package attribute inference.compare is the function, which tests patch)
compare_module = importlib.import_module("inference.compare")

RESULT_COLUMNS = ["model", "split", *COLUMNS, "finished"]
DEEP = {"latent", "decoded", "reconstructions", "samples"}
VIEWS = {"vae": DEEP, "dlvm": DEEP, "gmm": {"clusters"}, "map_l2": {"weights"}, "nade": {"samples"},
         "fvsbn": {"samples"}, "independent": {"samples"},
         "fa": {"loadings"}}


def run_main(argv):
    """``main(argv)`` with stdout and stderr captured: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def expected_cells(name, skipped=()):
    """(method, K, seed) rows the quick job owes for ``name``."""
    job = jobs.job_for(name, quick=True)
    methods = jobs.job_methods(job)
    cells = {(m, k, s) for m in methods if m != "exact" and m not in skipped
             for k in job.num_samples for s in range(job.seeds)}
    if "exact" in methods and "exact" not in skipped:
        cells.add(("exact", 0, 0))
    return cells


def cells_of(df, name=None, split="train"):
    part = df if name is None else df[df["model"] == name]
    part = part[part["split"] == split] if "split" in part else part  # estimates.csv: none
    return set(zip(part["method"], part["K"].astype(int), part["seed"].astype(int)))


# ---------------------------------------------------------------------------- compare --quick
FIGURES = {}  # path -> problems found in the figure saved there, by the quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``ppzoo compare --quick`` once for the module; every figure it saves is checked as a
    reader would look at it (:func:`figure_problems`) before it is written."""
    from zoo.app import jobs as app_jobs
    from zoo.app import report

    save = app_jobs.save_figure

    def checked(fig, path):
        FIGURES[str(path)] = figure_problems(fig)
        return save(fig, path)

    out = tmp_path_factory.mktemp("compare") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "save_figure", checked)
        mp.setattr(app_jobs, "save_figure", checked)
        rc, stdout, stderr = run_main(["compare", "--quick", "--no-progress", "--out", out])
    assert rc == 0, stderr
    return out, stdout


def figure_problems(fig):
    """What a reader would stumble on: a title outside the canvas, an axes that plots data
    without axis labels, a legend entry whose artist shows nothing inside the frame."""
    import matplotlib

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    problems = []
    titles = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax._left_title)]
    for t in titles:
        if t is not None and t.get_text() and t.get_visible():
            bb = t.get_window_extent(renderer)
            if bb.x0 < canvas.x0 - 1 or bb.x1 > canvas.x1 + 1 or bb.y1 > canvas.y1 + 1:
                problems.append(f"title {t.get_text()!r} leaves the canvas")
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None:
            continue  # a colorbar: labelled by its own label, checked with its image
        plotted = ax.lines or ax.collections or ax.patches
        if ax.axison and plotted and not ax.images and not (ax.get_xlabel() and ax.get_ylabel()):
            problems.append(f"axes {ax.get_title()!r} lacks an axis label")
        legend = ax.get_legend()
        if legend is None:
            continue
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        for text in legend.get_texts():
            label = text.get_text()
            artists = [a for a in ax.lines + ax.collections + ax.containers
                       if a.get_label() == label]
            points = []
            for a in artists:
                if isinstance(a, matplotlib.container.ErrorbarContainer):
                    a = a.lines[0]
                if isinstance(a, matplotlib.lines.Line2D):
                    points += [tuple(p) for p in a.get_xydata()]
            if label != "" and artists and points and not any(
                    np.isfinite(px) and np.isfinite(py) and x0 <= px <= x1 and y0 <= py <= y1
                    for px, py in points):
                problems.append(f"legend entry {label!r} is not drawn inside the frame")
    return problems


@pytest.mark.slow
def test_compare_quick_writes_tidy_results(quick_run):
    out, _ = quick_run
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == RESULT_COLUMNS
    assert list(dict.fromkeys(df["model"])) == list(zoo.names())
    for name in zoo.names():
        skipped = json.loads((out / name / "skipped.json").read_text())
        part = df[df["model"] == name]
        assert len(part) == len(cells_of(part)) + len(cells_of(part, split="test")), \
            f"{name}: duplicated rows"
        assert cells_of(part) == expected_cells(name, skipped), name
        # held-out rows: the job's test methods at its largest K, on the rows it did not fit
        job = jobs.job_for(name, quick=True)
        assert cells_of(part, split="test") == set(report.heldout_cells(job, skipped)), name
        config = json.loads((out / name / "config.json").read_text())
        if job.test_fraction:
            split = config["split"]
            assert split["n_test"] == round(job.test_fraction * (split["n_train"] + split["n_test"]))
        else:
            assert "split" not in config and not len(cells_of(part, split="test"))
        part = part[part["split"] == "train"]
        # every row carries the exact reference where one exists, and its error against it
        exact = part[part["method"] == "exact"]
        if len(exact):
            assert np.allclose(part["reference"], exact["estimate"].iloc[0])
            assert np.allclose(part["error"], part["estimate"] - part["reference"])
        else:
            assert part["reference"].isna().all()
        scope = "global" if name in ("gmm", "map_l2") else "local"
        assert (part["scope"] == scope).all()
    # gmm has no exact evidence (label switching aside): skipped, with the reason recorded
    assert "exact" in json.loads((out / "gmm" / "skipped.json").read_text())
    # map_l2's exact row is the closed form on the full diabetes data
    entry = zoo.get("map_l2", guide="gaussian")
    closed = float(entry.log_evidence(*entry.load_data()))
    got = df[(df["model"] == "map_l2") & (df["method"] == "exact")]["estimate"].item()
    assert got == pytest.approx(closed, rel=1e-6)
    # Same particles (same seed and K): log mean w >= mean log w (Jensen), equal at K = 1;
    # gmm's is-guide is symmetrised over relabellings, so the inequality need not hold there.
    for name in ("map_l2", "vae", "dlvm"):
        part = df[(df["model"] == name) & (df["split"] == "train")].set_index(["method", "K", "seed"])["estimate"]
        iwae, elbo = part["is-guide"], part["elbo"]
        assert (iwae >= elbo - 1e-6 * elbo.abs()).all(), name
        assert np.allclose(iwae.xs(1, level="K"), elbo.xs(1, level="K"), rtol=1e-9), name


@pytest.mark.slow
def test_every_figure_of_the_quick_run_keeps_its_contract(quick_run):
    assert len(FIGURES) >= 4 * 3
    bad = {path.split("/run/")[-1]: problems for path, problems in FIGURES.items() if problems}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


def test_figure_contract_catches_what_it_checks():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2], label="seen")
    ax.plot([1, 2], [50, 60], label="off the frame")
    ax.set_ylim(0, 3)
    ax.legend()
    ax.set_title("a title far too long to fit on this canvas " * 3)
    problems = figure_problems(fig)
    plt.close(fig)
    assert any("leaves the canvas" in p for p in problems)
    assert any("lacks an axis label" in p for p in problems)
    assert any("'off the frame'" in p for p in problems)


@pytest.mark.slow
def test_compare_quick_writes_plots_and_summary(quick_run):
    out, stdout = quick_run
    summary = (out / "summary.md").read_text()
    for name in zoo.names():
        pngs = {p.stem for p in (out / name).glob("*.png")}
        sampled = any(m != "exact" for m in jobs.job_methods(jobs.job_for(name, True)))
        # error vs cost wherever sampled rows meet an exact reference (gmm has none)
        cost = {"cost"} if sampled and name != "gmm" else set()
        assert pngs == ({"loss", "estimates"} | ({"diagnostics"} if sampled else set()) | cost
                        | VIEWS[name])
        for stem in pngs:
            img = mpimg.imread(out / name / f"{stem}.png")
            assert img.ndim == 3 and min(img.shape[:2]) > 100 and img.shape[2] in (3, 4)
            assert img[..., :3].std() > 0.01  # not blank
        # a markdown table per model, one row per (method, K)
        section = summary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        table = section.split("\n| method | K | log p(x)", 1)[1].split("\n\n", 1)[0]
        table = ["| method | K | log p(x)" + table.splitlines()[0]] + [
            ln for ln in table.splitlines()[1:] if ln.startswith("| ")]
        groups = {(m, k) for m, k, _ in expected_cells(name, json.loads(
            (out / name / "skipped.json").read_text()))}
        assert table[0].startswith("| method | K | log p(x) | stderr | spread |")
        if ("exact", 0) in groups:  # the reference first
            assert table[1].startswith("| exact | - | ")
        assert len(table) == 1 + len(groups)
        assert f"![{name} estimates]({name}/estimates.png)" in section
        # one summary line per fit and per finished (method, K) on stdout
        lines = [ln for ln in stdout.splitlines() if ln.startswith(f"{name}: ")]
        assert sum(" fitted " in ln for ln in lines) == 1
        assert sum("log p(x)" in ln for ln in lines) == len(groups)
    assert (out / "run.json").is_file()
    config = json.loads((out / "vae" / "config.json").read_text())
    assert config["subset"] == 300 and config["fit"]["steps"] == jobs.job_for("vae", True).steps


@pytest.mark.slow
def test_fitted_compare_folder_is_an_estimate_dir(quick_run, tmp_path):
    # OUT/MODEL of the compare job can be re-estimated with ppzoo estimate.
    out, _ = quick_run
    rc, stdout, stderr = run_main(["estimate", out / "map_l2", "--method", "exact",
                                   "--no-progress"])
    assert rc == 0, stderr
    est = pd.read_csv(out / "map_l2" / "estimates.csv")
    df = pd.read_csv(out / "results.csv")
    ref = df[(df["model"] == "map_l2") & (df["method"] == "exact")]["estimate"].item()
    assert est["estimate"].item() == pytest.approx(ref, rel=1e-9)
    (out / "map_l2" / "estimates.csv").unlink()  # leave the compare run as it was


LADDER = {"independent", "fvsbn", "nade", "dlvm", "vae"}


@pytest.mark.slow
def test_compare_quick_ladder_comes_from_results_csv(quick_run):
    # The baseline ladder: every binarised-digits model on the same held-out images, each
    # number the mean over seeds of results.csv's per-datapoint rows (never typed in).
    out, _ = quick_run
    df = pd.read_csv(out / "results.csv")
    summary = (out / "summary.md").read_text()
    section = summary.split("## Baseline ladder\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert lines[0].startswith("| model | method | K | train | test | gap | test vs independent |")
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]
    test = df[df["split"] == "test"]
    assert {(m, meth) for m, meth, *_ in rows} == {
        (m, meth) for m, meth in zip(test["model"], test["method"]) if m in LADDER}
    tests = [float(r[4]) for r in rows]
    assert tests == sorted(tests)  # worst first
    base = test[(test["model"] == "independent")]["per_datapoint"].item()
    for model, method, k, train, held, gap, above in rows:
        pick = df[(df["model"] == model) & (df["method"] == method)
                  & (df["K"] == (0 if k == "-" else int(k)))]
        mean = {s: pick[pick["split"] == s]["per_datapoint"].mean() for s in ("train", "test")}
        assert float(train) == pytest.approx(mean["train"], abs=5e-4)
        assert float(held) == pytest.approx(mean["test"], abs=5e-4)
        assert float(gap) == pytest.approx(mean["train"] - mean["test"], abs=1e-3)
        assert float(above) == pytest.approx(mean["test"] - base, abs=1e-3)
    # like with like: the same held-out images (hash) for every rung, and fa's are not them
    hashes = {m: json.loads((out / m / "config.json").read_text())["split"]["test_sha256"]
              for m in LADDER | {"fa"}}
    assert len({hashes[m] for m in LADDER}) == 1 and hashes["fa"] != hashes["nade"]


@pytest.mark.slow
def test_estimate_on_other_data_agrees_with_the_held_out_rows(quick_run, tmp_path):
    # ppzoo estimate DIR --data PATH on the compare job's own held-out rows gives its test rows;
    # for independent pixels, also numpy's log-likelihood under the fitted logits.
    out, _ = quick_run
    df = pd.read_csv(out / "results.csv")
    for name in ("independent", "dlvm"):
        entry = zoo.get(name)
        x = entry.load_data()[0][: jobs.job_for(name, quick=True).subset]
        _, (test,) = jobs.split_data((x,), 0.2, 0)
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=test.numpy())
        rc, stdout, stderr = run_main(["estimate", out / name, "--data", path, "--method",
                                       "exact", "--no-progress"])
        assert rc == 0, stderr
        (written,) = (out / name).glob(f"estimates-{name}-*.csv")
        got = pd.read_csv(written)["per_datapoint"].item()
        want = df[(df["model"] == name) & (df["split"] == "test")
                  & (df["method"] == "exact")]["per_datapoint"].item()
        assert got == pytest.approx(want, abs=1e-4)
        written.unlink()
    entry = zoo.get("independent")
    inference.load_fit(entry, out / "independent")
    b = entry.net.b.detach().double().numpy()
    t = test.double().numpy()  # dlvm's held-out images above are independent's too
    logp = (t * -np.logaddexp(0, -b) + (1 - t) * -np.logaddexp(0, b)).sum(1).mean()
    want = df[(df["model"] == "independent") & (df["split"] == "test")]["per_datapoint"].item()
    assert want == pytest.approx(logp, abs=1e-4)


@pytest.mark.slow
def test_estimate_on_other_data_refuses_bad_data_writing_nothing(quick_run, tmp_path):
    out, _ = quick_run
    before = sorted(p.name for p in (out / "nade").iterdir())
    wrong = tmp_path / "wide.npz"
    np.savez(wrong, x=np.zeros((5, 10), dtype=np.float32))
    for path, match in ((tmp_path / "nosuch.npz", "no such file"), (wrong, "10")):
        rc, stdout, stderr = run_main(["estimate", out / "nade", "--data", path])
        assert rc == 2 and stderr.count("\n") == 1 and match in stderr, stderr
    assert sorted(p.name for p in (out / "nade").iterdir()) == before


def test_a_per_datapoint_guide_without_for_new_data_is_refused_on_other_data():
    from zoo.dlvm import DLVM

    class Plain(DLVM):  # the free guide, without dlvm's way to fit new ones
        for_new_data = zoo.ZooModel.for_new_data

    x = zoo.get("dlvm").load_data()[0][:5]
    with pytest.raises(jobs.UsageError, match="per datapoint.*z_loc"):
        jobs.evaluation_entry(Plain(), (x,))
    assert jobs.evaluation_entry(zoo.get("vae"), (x,)).name == "vae"  # amortized: itself


# ---------------------------------------------------------------------------- interrupt, resume
def stop_after(rows_before_stop, record):
    """An ``inference.compare`` that records every row's (model, method, K, seed) and raises
    KeyboardInterrupt (what Ctrl-C raises) after ``rows_before_stop`` rows, as if the user
    pressed it there."""
    real = compare_module.compare  # the unpatched function

    def compare(entry, *args, on_row, **kwargs):
        def row(r):
            on_row(r)
            record.append((entry.name, r["method"], r["K"], r["seed"]))
            if len(record) == rows_before_stop:
                raise KeyboardInterrupt

        return real(entry, *args, on_row=row, **kwargs)

    return compare


@pytest.mark.slow
def test_interrupt_then_resume_finishes_without_recomputing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["compare", "--quick", "--no-progress", "gmm", "map_l2", "--out", out]
    n_gmm = len(expected_cells("gmm", skipped={"exact"}))
    first = []
    monkeypatch.setattr(inference, "compare", stop_after(n_gmm + 5, first))
    rc, stdout, stderr = run_main(argv)
    assert rc == 130
    assert "interrupted" in stderr and "--resume" in stderr and str(out) in stderr
    before = pd.read_csv(out / "results.csv")
    assert len(before) == n_gmm + 5 == len(first)
    assert cells_of(before, "gmm") == expected_cells("gmm", skipped={"exact"})
    states = {m: (out / m / "state.pt").stat().st_mtime_ns for m in ("gmm", "map_l2")}

    # Without --resume the folder is refused; with it, only the missing rows are computed.
    rc, _, stderr = run_main(argv)
    assert rc == 2 and "--resume" in stderr
    second = []
    monkeypatch.setattr(inference, "compare", stop_after(-1, second))
    rc, stdout, stderr = run_main(argv + ["--resume"])
    assert rc == 0, stderr
    assert "gmm: fitted state found" in stdout and "map_l2: fitted state found" in stdout
    assert {m: (out / m / "state.pt").stat().st_mtime_ns for m in states} == states
    after = pd.read_csv(out / "results.csv")
    assert not set(first) & set(second)
    assert len(after) == len(before) + len(second)
    assert cells_of(after, "map_l2") == expected_cells("map_l2")
    # rows finished before the interruption are kept as they were (same finish time)
    key = ["model", "method", "K", "seed"]
    kept = before.merge(after, on=key, suffixes=("", "_after"))
    assert len(kept) == len(before)
    assert (kept["finished"] == kept["finished_after"]).all()
    assert (kept["estimate"] == kept["estimate_after"]).all()

    # A finished run resumes to nothing: no estimator runs at all.
    third = []
    monkeypatch.setattr(inference, "compare", stop_after(-1, third))
    rc, stdout, _ = run_main(argv + ["--resume"])
    assert rc == 0 and third == []
    assert stdout.count("nothing left to estimate") == 2
    assert pd.read_csv(out / "results.csv").equals(after)


# ---------------------------------------------------------------------------- list, fit, estimate
@pytest.mark.slow
def test_fit_interrupted_then_resumed_equals_an_uninterrupted_fit(tmp_path, monkeypatch):
    argv = ["fit", "map_l2", "--steps", "200", "--seed", "3", "--no-progress"]
    rc, _, stderr = run_main(argv + ["--out", tmp_path / "whole"])
    assert rc == 0, stderr

    # Ctrl-C right after the first checkpoint (step 50 of 200)
    svi_module = importlib.import_module("inference.svi")
    real = svi_module._checkpoint

    def checkpoint_then_stop(*args):
        real(*args)
        raise KeyboardInterrupt

    out = tmp_path / "cut"
    monkeypatch.setattr(svi_module, "_checkpoint", checkpoint_then_stop)
    rc, _, stderr = run_main(argv + ["--out", out])
    monkeypatch.undo()
    assert rc == 130 and "--resume" in stderr and str(out) in stderr
    assert (out / jobs.CHECKPOINT_FILE).is_file() and not (out / "state.pt").exists()

    rc, _, stderr = run_main(argv + ["--out", out])
    assert rc == 2 and "--resume" in stderr
    rc, _, stderr = run_main(["fit", "map_l2", "--steps", "300", "--seed", "3", "--out", out,
                              "--resume"])
    assert rc == 2 and "--steps was 200, now 300" in stderr and len(stderr.splitlines()) == 1
    steps = []  # the checkpoints the resumed fit writes: it starts at step 50, not at 0

    def record(*args):
        steps.append(args[4])
        real(*args)

    monkeypatch.setattr(svi_module, "_checkpoint", record)
    rc, stdout, stderr = run_main(argv + ["--out", out, "--resume"])
    monkeypatch.undo()
    assert rc == 0, stderr
    assert "continuing from" in stdout and not (out / jobs.CHECKPOINT_FILE).exists()
    assert steps[0] == 100 and steps[-1] == 200

    whole, cut = (torch.load(d / "state.pt", weights_only=True)
                  for d in (tmp_path / "whole", out))
    assert whole["params"].keys() == cut["params"].keys() and whole["params"]
    for key in whole["params"]:
        torch.testing.assert_close(cut["params"][key], whole["params"][key], rtol=0, atol=0)
    pd.testing.assert_frame_equal(pd.read_csv(out / "losses.csv"),
                                  pd.read_csv(tmp_path / "whole" / "losses.csv"))
    rc, stdout, _ = run_main(argv + ["--out", out, "--resume"])
    assert rc == 0 and "nothing to do" in stdout


def test_list_prints_every_model():
    rc, stdout, _ = run_main(["list"])
    assert rc == 0
    lines = stdout.splitlines()
    assert [ln for ln in lines if not ln.startswith(" ")] == list(zoo.names())
    assert max(map(len, lines)) <= 100  # wrapped to the terminal (at most 100 columns)
    blocks = " ".join(ln.strip() if ln.startswith(" ") else "\n" for ln in lines).split("\n")[1:]
    for name, block in zip(zoo.names(), blocks):
        entry = zoo.get(name)
        text = " ".join(block.split())
        assert entry.summary in text and entry.default_data in text
        assert all(ref in text for ref in entry.references)


def test_version_and_help_answer_without_importing_torch():
    code = ("import sys, contextlib, io\n"
            "from zoo.app.cli import main\n"
            "for argv in (['--version'], ['--help'], ['compare', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit as e:\n"
            "            assert e.code == 0\n"
            "    assert out.getvalue().strip()\n"
            "print('torch' in sys.modules, 'pyro' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_fit_then_estimate_on_a_user_csv(tmp_path):
    sim = zoo.get("map_l2", num_features=3).simulate(80, seed=1)
    X, y = sim.data
    csv = tmp_path / "data.csv"
    np.savetxt(csv, torch.cat([X, y[:, None]], 1).numpy(), delimiter=",", header="a,b,c,y",
               comments="")
    run = tmp_path / "fit"
    rc, stdout, stderr = run_main(["fit", "map_l2", "--data", csv, "--steps", 300, "--lr", 0.05,
                                   "--option", "guide=gaussian", "noise=0.5", "--out", run])
    assert rc == 0, stderr
    assert {"config.json", "state.pt", "losses.csv", "loss.png"} <= set(os.listdir(run))
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "map_l2" and config["data"] == str(csv)
    assert config["options"] == {"guide": "gaussian", "noise": 0.5}
    assert len(pd.read_csv(run / "losses.csv")) == 300
    assert "map_l2: fitted 300 steps" in stdout

    rc, stdout, stderr = run_main(["estimate", run, "--method", "is-guide", "--method", "exact",
                                   "-K", 1, "-K", 50, "--seeds", 2, "--no-progress"])
    assert rc == 0, stderr
    df = pd.read_csv(run / "estimates.csv")
    assert list(df.columns) == COLUMNS
    assert sorted(cells_of(df)) == [("exact", 0, 0), ("is-guide", 1, 0), ("is-guide", 1, 1),
                                    ("is-guide", 50, 0), ("is-guide", 50, 1)]
    exact = float(zoo.get("map_l2", noise=0.5).log_evidence(X, y))
    assert df.loc[df["method"] == "exact", "estimate"].item() == pytest.approx(exact, rel=1e-6)
    assert np.allclose(df["reference"], exact, rtol=1e-6)
    assert "is-guide" in stdout and "wrote" in stdout


# ---------------------------------------------------------------------------- errors
def _nonempty(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("mine\n")
    return d


def _previous(tmp_path, quick=False):
    d = tmp_path / "old"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"ppzoo": "compare", "models": ["gmm"], "quick": quick}))
    return d


def _file(tmp_path, text, name="data.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


ERRORS = {
    "unknown model": (lambda t: ["compare", "gmm", "nosuch", "--out", t / "o"],
                      "unknown model(s) nosuch; known models: dlvm, fa, fvsbn, gmm, independent, map_l2, nade, vae"),
    "unknown method": (lambda t: ["estimate", t, "--method", "is-guide", "--method", "mcmc"],
                       "unknown method(s) mcmc"),
    "foreign out dir": (lambda t: ["compare", "gmm", "--out", _nonempty(t)],
                        "is not empty and holds no previous run"),
    "previous run": (lambda t: ["compare", "gmm", "--out", _previous(t)],
                     "holds a previous run; pass --resume"),
    "quick mismatch": (lambda t: ["compare", "gmm", "--resume", "--out", _previous(t, quick=True)],
                       "was run with --quick"),
    "out under a file": (lambda t: ["compare", "gmm", "--out", _file(t, "x") / "run"],
                         "is not a directory"),
    "cuda": (lambda t: ["compare", "gmm", "--device", "cuda", "--out", t / "o"],
             "no CUDA device is available"),
    "missing data": (lambda t: ["fit", "map_l2", "--data", t / "nope.csv", "--out", t / "o"],
                     "nope.csv: no such file"),
    "malformed data": (lambda t: ["fit", "map_l2", "--data", _file(t, "a,b\n1,x\n2\n"),
                                  "--out", t / "o"], "could not parse"),
    "bad option": (lambda t: ["fit", "gmm", "--option", "K=0", "--out", t / "o"],
                   "cannot build model 'gmm'"),
    "not a fitted run": (lambda t: ["estimate", t], "holds no config.json"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_nonzero(case, tmp_path):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    make_argv, message = ERRORS[case]
    rc, stdout, stderr = run_main(make_argv(tmp_path))
    assert rc == 2
    assert stderr.startswith("ppzoo: error: ") and stderr.count("\n") == 1
    assert message in stderr
    assert stdout == ""  # failed before any work
    assert not (tmp_path / "o" / "state.pt").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_out_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, _, stderr = run_main(["compare", "gmm", "--out", locked / "run"])
    finally:
        locked.chmod(0o700)
    assert rc == 2 and "permission denied" in stderr


def test_python_dash_m_zoo_reports_errors(tmp_path):
    argv = [sys.executable, "-m", "zoo", "compare", "nosuch", "--out", tmp_path / "o"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ppzoo: error: unknown model(s) nosuch; known models: dlvm, fa, fvsbn, gmm, independent, map_l2, nade, vae "
        "(see ppzoo list)"]
    assert not (tmp_path / "o").exists()
