"""``ppzoo fit|estimate|compare --model FILE.py --data DATA``: a user's own model/guide pair through
the whole job. The files are written the way Pyro's tutorials write them (an indexed plate with
per-datapoint guide parameters; a conjugate regression with ``AutoMultivariateNormal`` and its
closed-form evidence); the rows of ``results.csv`` are checked against closed forms computed
here, within ``Z`` standard errors. Every bad file, name or data file is refused in one line,
exit status 2, before anything is written.
"""

import hashlib
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from clitools import run_main

Z = 4.0  # a correct estimate is outside 4 stderr with probability 6e-5
SIGMA = 0.5

LOCAL = '''\
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

SIGMA = 0.5


def model(x):
    with pyro.plate("data", len(x)) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x[idx])


def guide(x):
    n = len(x)
    loc = pyro.param("loc", torch.zeros(n))
    scale = pyro.param("scale", torch.ones(n), constraint=constraints.positive)
    with pyro.plate("data", n) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))
'''

REGRESSION = '''\
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

NOISE = 0.5


def model(X, y, prior_scale=1.0):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), prior_scale).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal((X * w).sum(-1), NOISE), obs=y)


guide = AutoMultivariateNormal(model)


def evidence(X, y, prior_scale=1.0):
    X, y = X.double(), y.double()
    cov = prior_scale**2 * X @ X.T + NOISE**2 * torch.eye(len(y), dtype=torch.float64)
    return dist.MultivariateNormal(torch.zeros(len(y), dtype=torch.float64), cov).log_prob(y)
'''


def local_evidence(x):
    """log p(x) = sum_n log N(x_n | 0, 1 + SIGMA^2)."""
    return float(stats.norm(0, math.sqrt(1 + SIGMA**2)).logpdf(np.asarray(x, float)).sum())


def regression_evidence(X, y, prior_scale):
    """log N(y | 0, s^2 X X^T + 0.25 I)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    cov = prior_scale**2 * X @ X.T + 0.25 * np.eye(len(y))
    return float(stats.multivariate_normal(np.zeros(len(y)), cov).logpdf(y))


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def local_data(folder, n=60):
    x = np.random.default_rng(0).normal(size=n) * math.sqrt(1 + SIGMA**2)
    path = folder / "x.csv"
    np.savetxt(path, x[:, None], header="x", comments="", delimiter=",")
    return path, torch.as_tensor(x, dtype=torch.float32)  # the values the model sees


def regression_data(folder, n=40):
    g = np.random.default_rng(1)
    X = g.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * g.normal(size=n)
    npz, csv = folder / "reg.npz", folder / "reg.csv"
    np.savez(npz, X=X, y=y)
    np.savetxt(csv, np.c_[X, y], header="a,b,c,y", comments="", delimiter=",")
    as32 = (torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    return npz, csv, as32


def ok(argv):
    rc, stdout, stderr = run_main(argv + ["--no-progress"])
    assert rc == 0, stderr
    return stdout


def refused(argv, message):
    """One line on stderr naming ``message``, exit status 2, nothing on stdout."""
    rc, stdout, stderr = run_main(argv)
    assert rc == 2, (rc, stderr)
    assert stderr.startswith("ppzoo: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr, stderr
    assert stdout == ""
    return stderr


def within_stderr(rows, reference):
    for r in rows.itertuples():
        assert math.isfinite(r.stderr) and r.stderr > 0
        assert abs(r.estimate - reference) < Z * r.stderr, (r.method, r.K, r.estimate, reference)


# ---------------------------------------------------------------------------- the whole job
@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    model = write(folder, "local.py", LOCAL)
    csv, x = local_data(folder)
    out = folder / "run"
    stdout = ok(["compare", "--model", model, "--data", csv, "--out", out, "--steps", 400,
                 "--lr", 0.05, "--method", "exact", "--method", "is-guide", "--method", "elbo",
                 "-K", 100, "--seeds", 2])
    return out, model, x, stdout


def test_compare_on_a_local_model_matches_the_closed_form(local_run):
    out, model, x, stdout = local_run
    ref = local_evidence(x)
    df = pd.read_csv(out / "results.csv")
    assert set(df["model"]) == {"local"} and set(df["split"]) == {"train"}
    exact = df[df["method"] == "exact"]
    assert len(exact) == 1 and abs(exact["estimate"].item() - ref) < 1e-3  # 1-D quadrature
    within_stderr(df[df["method"] == "is-guide"], ref)
    elbo = df[df["method"] == "elbo"]
    assert len(elbo) == 2 and (elbo["estimate"] < ref + Z * elbo["stderr"]).all()  # a bound
    np.testing.assert_allclose(df["error"], df["estimate"] - exact["estimate"].item(), atol=1e-9)
    assert "local: exact reference" in stdout


def test_compare_on_a_user_model_writes_the_report_and_records_the_file(local_run):
    out, model, x, _ = local_run
    folder = out / "local"
    for png in ("loss.png", "estimates.png", "diagnostics.png", "cost.png"):
        assert (folder / png).stat().st_size > 0, png
    config = json.loads((folder / "config.json").read_text())
    assert config["source"]["file"] == str(model)
    assert config["source"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert (config["source"]["model"], config["source"]["guide"]) == ("model", "guide")
    assert config["source"]["log_evidence"] is None
    text = (out / "summary.md").read_text()
    assert "## local" in text and f"from `{model}`" in text
    # the guide keeps a loc and scale per datapoint: nothing to evaluate held-out rows with
    assert "Held out: nothing -- local's guide keeps parameters per datapoint" in text


def test_estimate_and_resume_read_a_user_run(local_run, tmp_path):
    out, model, x, _ = local_run
    stdout = ok(["estimate", out / "local", "--method", "is-guide", "-K", 10, "--seeds", 1])
    rows = pd.read_csv(out / "local" / "estimates.csv")
    assert list(zip(rows["method"], rows["K"])) == [("is-guide", 10)]
    stdout = ok(["compare", "--model", model, "--data", out.parent / "x.csv", "--out", out,
                 "--resume", "--steps", 400, "--lr", 0.05, "--method", "exact", "--method",
                 "is-guide", "--method", "elbo", "-K", 100, "--seeds", 2])
    assert "not refitting" in stdout and "nothing left to estimate" in stdout
    before = (out / "results.csv").read_bytes()
    refused(["compare", "--out", out, "--resume"], f"resume it with --model {model}:model,guide")
    assert (out / "results.csv").read_bytes() == before


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    model = write(folder, "regression.py", REGRESSION)
    npz, _, data = regression_data(folder)
    out = folder / "run"
    ok(["compare", "--model", f"{model}:model,guide,evidence", "--data", npz, "--out", out,
        "--option", "prior_scale=2.0", "--steps", 600, "--lr", 0.05, "--method", "exact",
        "--method", "is-guide", "-K", 1000, "--seeds", 2])
    return out, data


def test_compare_on_a_global_regression_matches_its_closed_form(regression_run):
    out, (X, y) = regression_run
    ref = regression_evidence(X, y, prior_scale=2.0)  # --option reaches model, guide, evidence
    df = pd.read_csv(out / "results.csv")
    exact = df[df["method"] == "exact"]
    assert exact["estimate"].item() == pytest.approx(ref, abs=1e-6 * abs(ref))
    guide = df[df["method"] == "is-guide"]
    assert len(guide) == 2 and (guide["scope"] == "global").all()
    within_stderr(guide, ref)
    text = (out / "summary.md").read_text()
    assert "exact reference: `evidence(*data)` from the file" in text
    assert "keyword arguments prior_scale=2.0" in text
    assert "Held out: nothing (global scope" in text


def test_fit_then_estimate_a_csv_by_columns_and_refuse_the_file_once_changed(tmp_path):
    model = write(tmp_path, "regression.py", REGRESSION.replace("def evidence", "def log_evidence"))
    _, csv, (X, y) = regression_data(tmp_path)
    run = tmp_path / "fit"
    ok(["fit", "--model", model, "--data", csv, "--columns", "a,b,3", "--columns", "y",
        "--steps", 300, "--lr", 0.05, "--out", run])
    ok(["estimate", run, "--method", "exact", "--method", "is-guide", "-K", 1000, "--seeds", 1])
    df = pd.read_csv(run / "estimates.csv")
    ref = regression_evidence(X, y, prior_scale=1.0)  # log_evidence found by its name
    assert df.loc[df["method"] == "exact", "estimate"].item() == pytest.approx(ref, rel=1e-6)
    within_stderr(df[df["method"] == "is-guide"], ref)

    before = sorted(os.listdir(run)), (run / "estimates.csv").read_bytes()
    model.write_text(REGRESSION.replace("NOISE = 0.5", "NOISE = 0.7"))
    for argv in (["estimate", run, "-K", 10], ["sample", run, "--out", tmp_path / "d.csv"],
                 ["fit", "--model", model, "--data", csv, "--columns", "a,b,3", "--columns", "y",
                  "--steps", 300, "--lr", 0.05, "--out", run, "--resume"]):
        refused(argv, f"{model} changed since")
    assert (sorted(os.listdir(run)), (run / "estimates.csv").read_bytes()) == before
    assert not (tmp_path / "d.csv").exists()
    model.unlink()
    refused(["estimate", run], f"{model} is gone")


def test_sample_refuses_a_user_pair_in_one_line(local_run, tmp_path):
    out, _, _, _ = local_run
    refused(["sample", out / "local", "--out", tmp_path / "d.csv"], "pyro.infer.Predictive")
    assert not (tmp_path / "d.csv").exists()


def test_other_data_for_a_guide_with_per_datapoint_parameters_is_one_line(local_run, tmp_path):
    # its guide's loc and scale are the training rows' own: refused before any output
    out, _, _, _ = local_run
    other, _ = local_data(tmp_path, n=20)
    before = sorted(os.listdir(out / "local"))
    refused(["estimate", out / "local", "--data", other, "--method", "exact"],
            "it cannot evaluate other data")
    assert sorted(os.listdir(out / "local")) == before


def test_help_says_that_loading_a_file_runs_its_code():
    for command in ("fit", "compare"):
        rc, stdout, _ = run_main([command, "--help"])
        assert rc == 0 and "runs its code" in " ".join(stdout.split())


# ---------------------------------------------------------------------------- data files
@pytest.fixture
def two_arguments(tmp_path):
    from zoo.app import usermodel

    text = "def model(x, y, scale=1.0):\n    pass\n\n\ndef guide(x, y, scale=1.0):\n    pass\n"
    return usermodel.load(str(write(tmp_path, "two.py", text))), tmp_path


def test_a_header_naming_the_arguments_gives_one_column_each(two_arguments):
    entry, folder = two_arguments
    path = write(folder, "d.csv", "y,x\n1,2\n3,4\n5,6\n")
    x, y = entry.load_data(path)
    assert x.tolist() == [2.0, 4.0, 6.0] and y.tolist() == [1.0, 3.0, 5.0]
    assert x.dtype == torch.get_default_dtype()
    refused_columns = write(folder, "e.csv", "p,q,r\n1,2,3\n")
    with pytest.raises(ValueError, match=r"gives 1 \(all 3 columns as one tensor\).*--columns"):
        entry.load_data(refused_columns)


def test_columns_and_npz_arrays_become_the_arguments(two_arguments):
    from zoo.app import usermodel

    entry, folder = two_arguments
    path = write(folder, "d.csv", "a,b,c\n1,2,3\n4,5,6\n")
    picked = usermodel.load(entry.spec.file, columns=["c,1", "b"])
    x, y = picked.load_data(path)
    assert x.tolist() == [[3.0, 1.0], [6.0, 4.0]] and y.tolist() == [2.0, 5.0]
    npz = folder / "d.npz"
    np.savez(npz, y=np.arange(3), x=np.ones((3, 2)))  # by name, whatever the order
    x, y = entry.load_data(npz)
    assert x.shape == (3, 2) and y.dtype == torch.int64 and y.tolist() == [0, 1, 2]
    np.savez(npz, np.ones(3), np.zeros(3))  # unnamed: in the archive's order
    x, y = entry.load_data(npz)
    assert x.tolist() == [1.0] * 3 and y.tolist() == [0.0] * 3


# ---------------------------------------------------------------------------- bad files
def _bad_files(folder):
    """``{case: (model spec, data file, message)}``, files written into ``folder``."""
    csv, _ = local_data(folder)
    local = write(folder, "local.py", LOCAL)
    np.savez(folder / "two.npz", np.zeros(3), np.ones(3))
    bad = {
        "missing file": (folder / "nope.py", csv, "nope.py: no such file"),
        "not python": (write(folder, "model.txt", LOCAL), csv, "expected a Python file"),
        "syntax error": (write(folder, "syntax.py", "def model(x:\n    pass\n"), csv,
                         "line 1: SyntaxError"),
        "raises on load": (write(folder, "raises.py", "import math\nmath.nope()\n"), csv,
                           "running it raised AttributeError"),
        "exits on load": (write(folder, "exits.py", "import sys\nsys.exit(1)\n"), csv,
                          "if __name__ == '__main__'"),
        "missing guide": (write(folder, "noguide.py", LOCAL.split("def guide")[0]), csv,
                          "defines no guide 'guide' (its functions and objects: model)"),
        "missing name": (f"{local}:model,my_guide", csv, "defines no guide 'my_guide'"),
        "missing log_evidence": (f"{local}:model,guide,exact", csv,
                                 "defines no log_evidence 'exact'"),
        "not callable": (write(folder, "notcallable.py", LOCAL + "guide = 3\n"), csv,
                         "'guide' (the guide) is of type int, not a function"),
        "bad names": (f"{local}:model", csv, "name the model and guide after the file"),
        "does not trace": (write(folder, "shape.py", LOCAL.replace("obs=x[idx]", "obs=x[:7]")),
                           csv, "Value is not broadcastable"),
        "bad log_evidence": (write(folder, "badref.py", LOCAL + "def log_evidence(x):\n"
                                   "    return x[:3]\n"), csv,
                             "return log p(data) as a number, or one value per datapoint"),
        "wrong data kind": (local, write(folder, "x.txt", "1\n2\n"), "not .txt"),
        "non-numeric data": (local, write(folder, "words.csv", "x\n1\nfoo\n"),
                             "non-numeric value 'foo'"),
        "too many tensors": (local, folder / "two.npz", "model(x) takes the data tensors x"),
        "wrong shape": (local, write(folder, "two.csv", "a,b\n1,2\n"),  # x is [1, 2]
                        "invalid log_prob shape Expected [1], actual [2]"),
        "unknown column": (local, csv, "has no column 'w'"),
        "no data": (local, None, "needs --data FILE"),
    }
    return bad


BAD = ["missing file", "not python", "syntax error", "raises on load", "exits on load",
       "missing guide", "missing name", "missing log_evidence", "not callable", "bad names",
       "does not trace", "bad log_evidence", "wrong data kind", "non-numeric data",
       "too many tensors", "wrong shape", "unknown column", "no data"]


def test_every_bad_case_is_run(tmp_path):
    assert sorted(_bad_files(tmp_path)) == sorted(BAD)


@pytest.mark.parametrize("command", ["fit", "compare"])
@pytest.mark.parametrize("case", BAD)
def test_a_bad_file_is_one_line_exit_2_and_nothing_written(case, command, tmp_path):
    spec, data, message = _bad_files(tmp_path)[case]
    argv = [command, "--model", spec, "--out", tmp_path / "run"]
    argv += [] if data is None else ["--data", data]
    argv += ["--columns", "w"] if case == "unknown column" else []
    before = sorted(os.listdir(tmp_path))
    refused(argv, message)
    assert sorted(os.listdir(tmp_path)) == before  # no run folder, no stray file


MISUSE = {
    "zoo model and --model": (["fit", "gmm", "--model", "{model}", "--data", "{csv}"],
                              "name one model: gmm or --model"),
    "neither": (["fit", "--data", "{csv}"], "name one model: a zoo model"),
    "both in compare": (["compare", "gmm", "--model", "{model}", "--data", "{csv}"],
                        "not both; compare them in two runs"),
    "--columns for a zoo model": (["fit", "gmm", "--columns", "x"], "--columns describes your own"),
    "--option in a zoo compare": (["compare", "gmm", "--option", "K=2"], "--option goes with --model"),
    "--data in a zoo compare": (["compare", "gmm", "--data", "{csv}"], "--data goes with --model"),
    "bad -K": (["compare", "--model", "{model}", "--data", "{csv}", "-K", 0], "-K must be"),
    "bad --test-fraction": (["compare", "gmm", "--test-fraction", 1.0], "--test-fraction must be"),
    "bad --steps": (["compare", "gmm", "--steps", 0], "--steps must be"),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_flags_of_the_other_kind_of_model_are_refused_in_one_line(case, tmp_path):
    model = write(tmp_path, "local.py", LOCAL)
    csv, _ = local_data(tmp_path)
    argv, message = MISUSE[case]
    argv = [str(a).format(model=model, csv=csv) for a in argv] + ["--out", tmp_path / "run"]
    refused(argv, message)
    assert not (tmp_path / "run").exists()


def test_compare_flags_replace_a_zoo_models_job(tmp_path):
    out = tmp_path / "run"
    ok(["compare", "map_l2", "--quick", "--steps", 40, "--method", "exact", "--method",
        "is-guide", "-K", 7, "--seeds", 1, "--out", out])
    df = pd.read_csv(out / "results.csv")
    assert sorted(zip(df["method"], df["K"], df["seed"])) == [("exact", 0, 0), ("is-guide", 7, 0)]
    assert json.loads((out / "map_l2" / "config.json").read_text())["fit"]["steps"] == 40
