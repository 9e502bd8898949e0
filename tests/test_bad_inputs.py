"""Bad input, as an adversarial user types it: every case through the command line, in-process
(``zoo.app.cli.main``), and through the API where it applies. Each must end with exit status
2 and one line on stderr naming the problem and the fix, before any work: nothing written,
nothing changed in an existing folder, no planted code run."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import inference
import zoo
from clitools import Payload, run_main
from zoo.app import jobs


def snapshot(root):
    """Every file under ``root``: its bytes and mtime (what 'nothing changed' compares)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Small finished fits to break: map_l2 with two guides (estimate, fit --resume)."""
    root = tmp_path_factory.mktemp("fitted")
    for guide in ("gaussian", "map"):
        rc, _, err = run_main(["fit", "map_l2", "--steps", 20, "--option", f"guide={guide}",
                               "--no-progress", "--out", root / guide])
        assert rc == 0, err
    return root


def _copy(fitted, t, guide="gaussian"):
    shutil.copytree(fitted / guide, t / "run")
    return t / "run"


def _write(t, name, content):
    path = t / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _edit_config(fitted, t, **fields):
    run = _copy(fitted, t)
    config = json.loads((run / "config.json").read_text())
    config.update(fields)
    (run / "config.json").write_text(json.dumps(config))
    return run


def _planted(fitted, t, name="state.pt"):
    run = _copy(fitted, t)
    torch.save({"format": "ppzoo-state", "x": Payload(t / "pwned")}, run / name)
    return run


def _truncated(fitted, t):
    run = _copy(fitted, t)
    data = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(data[: len(data) // 2])
    return run


def _checkpointed(fitted, t, what):
    """A fit folder interrupted after its config: its checkpoint.pt is ``what``."""
    run = _copy(fitted, t)
    for f in ("state.pt", "losses.csv", "loss.png"):
        (run / f).unlink()
    if what == "planted":
        torch.save({"x": Payload(t / "pwned")}, run / jobs.CHECKPOINT_FILE)
    elif what == "foreign":  # the map guide's state, renamed
        shutil.copy(fitted / "map" / "state.pt", run / jobs.CHECKPOINT_FILE)
    else:
        (run / jobs.CHECKPOINT_FILE).write_bytes(what)
    return run


def _compare_run(fitted, t, state=None, results=None, guide="gaussian"):
    """A compare folder with map_l2 fitted (with ``guide``); its state.pt or results.csv
    replaced."""
    out = t / "cmp"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"ppzoo": "compare", "models": ["map_l2"],
                                              "quick": True}))
    shutil.copytree(fitted / guide, out / "map_l2")
    if state == "planted":
        torch.save({"x": Payload(t / "pwned")}, out / "map_l2" / "state.pt")
    if results is not None:
        (out / "results.csv").write_text(results)
    return out


def _locked(fitted, t, command):
    """A folder another ppzoo command holds (the lock is taken on the folder itself)."""
    import fcntl

    run = _copy(fitted, t)
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    LOCKED.append(fd)
    return run


LOCKED = []


def _images(t, array):
    path = t / "images.npz"
    np.savez(path, x=array)
    return path


FIT = ["fit", "--no-progress"]
O = "--option"
# name: (argv builder (tmp_path, fitted) -> argv, fragment the one line must contain)
CASES = {
    # ---- fit settings
    "subset -1": (lambda t, f: FIT + ["map_l2", "--subset", -1, "--out", t / "o"], "--subset must be"),
    "subset 0": (lambda t, f: FIT + ["map_l2", "--subset", 0, "--out", t / "o"], "--subset must be"),
    "subset > N": (lambda t, f: FIT + ["map_l2", "--subset", 10**6, "--out", t / "o"],
                   "pass at most 442"),
    "steps 0": (lambda t, f: FIT + ["map_l2", "--steps", 0, "--out", t / "o"], "--steps must be"),
    "batch 0": (lambda t, f: FIT + ["map_l2", "--batch-size", 0, "--out", t / "o"],
                "--batch-size must be"),
    "lr nan": (lambda t, f: FIT + ["map_l2", "--lr", "nan", "--out", t / "o"], "--lr must be"),
    "lr inf": (lambda t, f: FIT + ["map_l2", "--lr", "1e309", "--out", t / "o"], "--lr must be"),
    "lr 0": (lambda t, f: FIT + ["map_l2", "--lr", 0, "--out", t / "o"], "--lr must be"),
    "lr-decay 0": (lambda t, f: FIT + ["map_l2", "--lr-decay", 0, "--out", t / "o"],
                   "--lr-decay must be"),
    "lr-decay -0.5": (lambda t, f: FIT + ["map_l2", "--lr-decay", -0.5, "--out", t / "o"],
                      "--lr-decay must be"),
    "lr-decay nan": (lambda t, f: FIT + ["map_l2", "--lr-decay", "nan", "--out", t / "o"],
                     "--lr-decay must be"),
    "seed -1": (lambda t, f: FIT + ["map_l2", "--seed", -1, "--out", t / "o"], "--seed must be"),
    "seed 2^64": (lambda t, f: FIT + ["map_l2", "--seed", 2**64, "--out", t / "o"],
                  "--seed must be"),
    "seed 2**64": (lambda t, f: FIT + ["map_l2", "--seed", "2**64", "--out", t / "o"],
                   "invalid int value"),
    "threads 0": (lambda t, f: FIT + ["map_l2", "--threads", 0, "--out", t / "o"],
                  "--threads must be"),
    "device tpu": (lambda t, f: FIT + ["map_l2", "--device", "tpu", "--out", t / "o"],
                   "unknown device"),
    "no out": (lambda t, f: FIT + ["map_l2"], "--out"),
    # ---- model options
    "K=1.5": (lambda t, f: FIT + ["gmm", O, "K=1.5", "--out", t / "o"], "K must be an integer"),
    "K=0": (lambda t, f: FIT + ["gmm", O, "K=0", "--out", t / "o"], "positive integers"),
    "K=True": (lambda t, f: FIT + ["gmm", O, "K=True", "--out", t / "o"], "K must be an integer"),
    "K huge": (lambda t, f: FIT + ["gmm", O, "K=1000000000", "--out", t / "o"], "needs about"),
    "K huge for N": (lambda t, f: FIT + ["gmm", O, "K=100000000", "--out", t / "o"], "needs about"),
    "shared_variance=maybe": (lambda t, f: FIT + ["gmm", O, "shared_variance=maybe", "--out", t / "o"],
                              "True or False"),
    "alpha=nan": (lambda t, f: FIT + ["gmm", O, "alpha=nan", "--out", t / "o"], "finite number"),
    "alpha=1e400": (lambda t, f: FIT + ["gmm", O, "alpha=1e400", "--out", t / "o"], "finite number"),
    "alpha=-1": (lambda t, f: FIT + ["gmm", O, "alpha=-1", "--out", t / "o"], "must be positive"),
    "guide=nosuch": (lambda t, f: FIT + ["gmm", O, "guide=nosuch", "--out", t / "o"],
                     "use 'meanfield' or 'map'"),
    "unknown option": (lambda t, f: FIT + ["gmm", O, "nosuch=1", "--out", t / "o"],
                       "unknown option(s) nosuch"),
    "option not k=v": (lambda t, f: FIT + ["gmm", O, "K", "--out", t / "o"], "is not key=value"),
    "init_seed=-1": (lambda t, f: FIT + ["gmm", O, "init_seed=-1", "--out", t / "o"],
                     "a seed in [0, 2**32)"),
    "latent_dim=0": (lambda t, f: FIT + ["dlvm", O, "latent_dim=0", "--out", t / "o"],
                     "must all be positive"),
    "hidden=[-5]": (lambda t, f: FIT + ["vae", O, "hidden=[-5]", "--out", t / "o"],
                    "must all be positive"),
    "hidden=5": (lambda t, f: FIT + ["vae", O, "hidden=5", "--out", t / "o"], "a list"),
    "hidden huge": (lambda t, f: FIT + ["vae", O, "hidden=[1000000000]", "--out", t / "o"],
                    "needs about"),
    "seed=2**40": (lambda t, f: FIT + ["vae", O, f"seed={2**40}", "--out", t / "o"],
                   "a seed in [0, 2**32)"),
    "sigma0=0": (lambda t, f: FIT + ["vae", O, "sigma0=0", "--out", t / "o"], "sigma0 must be"),
    "noise=inf": (lambda t, f: FIT + ["map_l2", O, "noise=1e999", "--out", t / "o"],
                  "finite number"),
    "dataset=7": (lambda t, f: FIT + ["map_l2", O, "dataset=7", "--out", t / "o"], "a string"),
    # ---- data files
    "data missing": (lambda t, f: FIT + ["gmm", "--data", t / "nope.csv", "--out", t / "o"],
                     "no such file"),
    "data is a dir": (lambda t, f: FIT + ["gmm", "--data", t, "--out", t / "o"], "is a directory"),
    "data /dev/null": (lambda t, f: FIT + ["map_l2", "--data", "/dev/null", "--out", t / "o"],
                       "not a regular file"),
    "data empty": (lambda t, f: FIT + ["map_l2", "--data", _write(t, "e.csv", ""), "--out", t / "o"],
                   "is empty"),
    "gmm binary": (lambda t, f: FIT + ["gmm", "--data", _write(t, "b.csv", b"\x00\x01\xff" * 50),
                                       "--out", t / "o"], "binary file"),
    "map_l2 binary": (lambda t, f: FIT + ["map_l2", "--data", _write(t, "b.csv", b"1,\x00\xff\n"),
                                          "--out", t / "o"], "binary file"),
    "gmm nan cell": (lambda t, f: FIT + ["gmm", O, "D=2", "--data",
                                         _write(t, "n.csv", "1,2\n3,nan\n"), "--out", t / "o"],
                     "non-finite value 'nan'"),
    "gmm empty cell": (lambda t, f: FIT + ["gmm", O, "D=2", "--data",
                                           _write(t, "n.csv", "1,2\n3,\n"), "--out", t / "o"],
                       "an empty cell"),
    "gmm text cell": (lambda t, f: FIT + ["gmm", O, "D=2", "--data",
                                          _write(t, "n.csv", "1,2\n3,x\n"), "--out", t / "o"],
                      "non-numeric value 'x'"),
    "gmm 1e308": (lambda t, f: FIT + ["gmm", O, "D=2", "--data",
                                      _write(t, "n.csv", "1,2\n3,1e308\n"), "--out", t / "o"],
                  "too large for float32"),
    "map_l2 1e308": (lambda t, f: FIT + ["map_l2", "--data", _write(t, "n.csv", "1,2\n3,1e308\n"),
                                         "--out", t / "o"], "too large for float32"),
    "gmm header only": (lambda t, f: FIT + ["gmm", "--data", _write(t, "h.csv", "a,b\n"),
                                            "--out", t / "o"], "holds no data rows"),
    "gmm wrong D": (lambda t, f: FIT + ["gmm", "--data", _write(t, "d.csv", "1,2,3\n4,5,6\n"),
                                        "--out", t / "o"], "--option D=3"),
    "map_l2 ragged": (lambda t, f: FIT + ["map_l2", "--data", _write(t, "r.csv", "1,2\n3\n"),
                                          "--out", t / "o"], "could not parse"),
    "digit-scale uint8": (lambda t, f: FIT + ["vae", "--data", _images(
        t, np.random.default_rng(0).integers(0, 17, (20, 64)).astype(np.uint8)),
        "--out", t / "o"], "integer pixels range 0..16"),
    "images not numbers": (lambda t, f: FIT + ["vae", "--data", _write(t, "x.npz", b"PK junk"),
                                               "--out", t / "o"], "not a readable .npz"),
    # ---- fit --resume
    "resume planted checkpoint": (lambda t, f: FIT + ["map_l2", "--steps", 20, O, "guide=gaussian",
                                                      "--resume", "--out",
                                                      _checkpointed(f, t, "planted")],
                                  "not a readable ppzoo checkpoint"),
    "resume corrupt checkpoint": (lambda t, f: FIT + ["map_l2", "--steps", 20, O, "guide=gaussian",
                                                      "--resume", "--out",
                                                      _checkpointed(f, t, b"PK\x03\x04")],
                                  "not a readable ppzoo checkpoint"),
    "resume foreign checkpoint": (lambda t, f: FIT + ["map_l2", "--steps", 20, O, "guide=gaussian",
                                                      "--resume", "--out",
                                                      _checkpointed(f, t, "foreign")],
                                  "ppzoo state of kind 'fit'"),
    "resume other settings": (lambda t, f: FIT + ["map_l2", "--steps", 30, O, "guide=gaussian",
                                                  "--resume", "--out", _checkpointed(f, t, b"")],
                              "--steps was 20, now 30"),
    "resume locked": (lambda t, f: FIT + ["map_l2", "--steps", 20, O, "guide=gaussian", "--resume",
                                          "--out", _locked(f, t, "fit")], "another ppzoo command"),
    # ---- estimate
    "K 0": (lambda t, f: ["estimate", _copy(f, t), "-K", 0], "-K must be"),
    "K 1e20": (lambda t, f: ["estimate", _copy(f, t), "-K", 10**20], "-K must be"),
    "seeds 0": (lambda t, f: ["estimate", _copy(f, t), "--seeds", 0], "--seeds must be"),
    "method nosuch": (lambda t, f: ["estimate", _copy(f, t), "--method", "mcmc"],
                      "unknown method(s) mcmc"),
    "estimate a file": (lambda t, f: ["estimate", _write(t, "x", "x")], "is not a directory"),
    "planted state": (lambda t, f: ["estimate", _planted(f, t)], "not a readable ppzoo fitted state"),
    "truncated state": (lambda t, f: ["estimate", _truncated(f, t)], "not a readable"),
    "foreign state": (lambda t, f: ["estimate", _edit_config(f, t, options={"guide": "map"})],
                      "was fitted for model options"),
    "other data": (lambda t, f: ["estimate", _edit_config(f, t, subset=100)],
                   "fitted on other data"),
    "unfinished fit": (lambda t, f: ["estimate", _checkpointed(f, t, b"")], "no finished fit"),
    "config not json": (lambda t, f: ["estimate", _write(_copy(f, t), "config.json", "{").parent],
                        "is malformed"),
    "config scope": (lambda t, f: ["estimate", _edit_config(f, t, scope="everywhere")],
                     "'scope' must be"),
    "config options": (lambda t, f: ["estimate", _edit_config(f, t, options={"guide": 3})],
                       "guide must be a string"),
    "config subset": (lambda t, f: ["estimate", _edit_config(f, t, subset=-1)], "'subset' must be"),
    "config estimate_options": (lambda t, f: ["estimate", _edit_config(f, t, estimate_options=[1])],
                                "'estimate_options' must be"),
    "config unknown option": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"grid": 3})], "unknown estimate option 'grid'"),
    "quadrature_points=0": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"quadrature_points": 0})], "quadrature_points must be"),
    "config model": (lambda t, f: ["estimate", _edit_config(f, t, model=["map_l2"])],
                     "'model' must be"),
    "corrupt estimates.csv": (lambda t, f: ["estimate", _write(_copy(f, t), "estimates.csv",
                                                               "garbage\n\x01,\n").parent],
                              "unreadable"),
    "estimate locked": (lambda t, f: ["estimate", _locked(f, t, "estimate")], "another ppzoo command"),
    # ---- compare --resume
    "compare planted state": (lambda t, f: ["compare", "map_l2", "--quick", "--resume", "--out",
                                            _compare_run(f, t, state="planted")],
                              "not a readable ppzoo fitted state"),
    "compare corrupt results": (lambda t, f: ["compare", "map_l2", "--quick", "--resume", "--out",
                                              _compare_run(f, t, results="a,b\n1,2\n")],
                                "results.csv is unreadable"),
    "compare quick mismatch": (lambda t, f: ["compare", "map_l2", "--resume", "--out",
                                             _compare_run(f, t)], "was run with --quick"),
    "compare foreign state": (lambda t, f: ["compare", "map_l2", "--quick", "--resume", "--out",
                                            _compare_run(f, t, guide="map")],
                              "was fitted for model options"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, fitted):
    make_argv, fragment = CASES[case]
    argv = make_argv(tmp_path, fitted)
    before = snapshot(tmp_path)
    try:
        rc, stdout, stderr = run_main(argv)
    finally:
        while LOCKED:
            os.close(LOCKED.pop())
    assert rc == 2, (stdout, stderr)
    assert stderr.startswith("ppzoo: error: ") and stderr.count("\n") == 1, stderr
    assert fragment in stderr, stderr
    assert stdout == ""  # failed before any work
    assert snapshot(tmp_path) == before  # nothing written or changed
    assert not (tmp_path / "pwned").exists()  # no planted code ran
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ---------------------------------------------------------------------------- API
API = {
    "K=1.5": lambda: zoo.get("gmm", K=1.5),
    "shared_variance=maybe": lambda: zoo.get("gmm", shared_variance="maybe"),
    "alpha=nan": lambda: zoo.get("gmm", alpha=float("nan")),
    "latent_dim=0": lambda: zoo.get("vae", latent_dim=0),
    "hidden=[-5]": lambda: zoo.get("vae", hidden=[-5]),
    "hidden huge": lambda: zoo.get("dlvm", hidden=[10**9]),
    "compare K=1.7": lambda: inference.compare(zoo.get("map_l2"), zoo.get("map_l2").load_data(),
                                               methods=["elbo"], num_samples=[1.7]),
}


@pytest.mark.parametrize("case", list(API))
def test_bad_api_input_raises_value_error(case):
    with pytest.raises(ValueError):
        API[case]()


def test_bom_csv_and_binary_uint8_images_are_read_right(tmp_path):
    rows = "1.5,2.0,0.5\n0.5,1.0,1.5\n2.5,0.0,1.0\n"
    for text in (rows, "a,b,y\n" + rows):
        path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + text.encode())
        X, y = zoo.get("map_l2").load_data(str(path))
        assert X.shape == (3, 2) and y.tolist() == [0.5, 1.5, 1.0]
        (x,) = zoo.get("gmm", D=3).load_data(str(path))
        assert x.shape == (3, 3) and x[0].tolist() == [1.5, 2.0, 0.5]
    bits = np.random.default_rng(0).integers(0, 2, (5, 64)).astype(np.uint8)
    (x,) = zoo.get("vae").load_data(str(_images(tmp_path, bits)))
    assert torch.equal(x, torch.as_tensor(bits, dtype=torch.float32))


def test_api_refuses_k_above_the_maximum_before_any_work():
    import inference
    from inference.estimate import MAX_SAMPLES

    entry = zoo.get("map_l2")
    data = entry.load_data()
    for method in ("is-prior", "elbo"):
        with pytest.raises(ValueError, match="above the maximum"):
            inference.estimate(entry, data, method, MAX_SAMPLES + 1)
        with pytest.raises(ValueError, match="above the maximum"):
            inference.compare(entry, data, methods=[method], num_samples=[10**20])
