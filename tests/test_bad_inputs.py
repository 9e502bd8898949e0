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
    """Every file under ``root``: a hash of its bytes, and its mtime (what 'nothing changed'
    compares)."""
    import hashlib

    def digest(p):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    return {str(p.relative_to(root)): (digest(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


#: a small data file for map_l2 (two features, then the target)
TRAIN_CSV = "x1,x2,y\n0.5,1.0,0.2\n-1.0,0.3,-0.4\n0.1,-0.7,0.9\n1.2,0.4,0.3\n-0.3,-0.2,-1.1\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Small finished fits to break: map_l2 with two guides (estimate, fit --resume), and
    one fitted on a data file, ``data`` (``train.csv`` beside it)."""
    root = tmp_path_factory.mktemp("fitted")
    for guide in ("gaussian", "map"):
        rc, _, err = run_main(["fit", "map_l2", "--steps", 20, "--option", f"guide={guide}",
                               "--no-progress", "--out", root / guide])
        assert rc == 0, err
    (root / "train.csv").write_text(TRAIN_CSV)
    rc, _, err = run_main(["fit", "map_l2", "--steps", 20, "--data", root / "train.csv",
                           "--no-progress", "--out", root / "data"])
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


def _data_run(fitted, t):
    """The run fitted on a data file, with that file (the same bytes) beside it in ``t``."""
    run = _copy(fitted, t, "data")
    shutil.copy(fitted / "train.csv", t / "train.csv")
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(t / "train.csv")
    (run / "config.json").write_text(json.dumps(config))
    return run


def _fifo(path):
    os.mkfifo(path)
    return path


def _link(target, path):
    os.symlink(target, path)
    return path


def _sparse(path, size):
    """A file of ``size`` bytes that takes no disk (zeros): big to read, cheap to make."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _with_estimates(fitted, t):
    run = _copy(fitted, t)
    (run / "estimates.csv").write_text("method,K,seed,estimate\nexact,0,0,-1.0\n")
    return run


def _images(t, array):
    path = t / "images.npz"
    np.savez(path, x=array)
    return path


def _linked_estimates(fitted, t):
    """estimates.csv a link to another run's (it would be read and appended to)."""
    other = _with_estimates(fitted, t)
    run = shutil.copytree(fitted / "gaussian", t / "second")
    os.symlink(other / "estimates.csv", run / "estimates.csv")
    return run


def _linked(folder, name, t):
    """``folder/name`` moved to ``t`` and a symbolic link to it left in its place."""
    shutil.move(folder / name, t / f"moved-{name}")
    os.symlink(t / f"moved-{name}", folder / name)
    return folder


def _huge(folder, name, size):
    """``folder/name`` replaced by a sparse file of ``size`` bytes."""
    (folder / name).unlink(missing_ok=True)
    _sparse(folder / name, size)
    return folder


def _linked_results(fitted, t):
    out = _compare_run(fitted, t)
    (t / "other.csv").write_text("model,split,method,K,seed\n")
    os.symlink(t / "other.csv", out / "results.csv")
    return out


def _fifo_run(fitted, t):
    out = _compare_run(fitted, t)
    (out / "run.json").unlink()
    os.mkfifo(out / "run.json")
    return out


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
    "estimates.csv a FIFO": (lambda t, f: ["estimate", _fifo(_copy(f, t) / "estimates.csv").parent,
                                           "--method", "exact"], "not a regular file"),
    "estimates.csv a link": (lambda t, f: ["estimate", _linked_estimates(f, t), "--method",
                                           "exact"], "is a symbolic link"),
    "state.pt a link": (lambda t, f: ["estimate", _linked(_copy(f, t), "state.pt", t)],
                         "is a symbolic link"),
    "config.json huge": (lambda t, f: ["estimate", _huge(_copy(f, t), "config.json", 2 << 20)],
                         "more than the"),
    "estimates.csv huge": (lambda t, f: ["estimate", _huge(_copy(f, t), "estimates.csv", 300 << 20)],
                           "more than the"),
    "other data, wrong columns": (lambda t, f: ["estimate", _copy(f, t), "--data", _write(
        t, "w.csv", "1,2,3\n4,5,6\n7,8,9\n")], "its datapoints have shape"),
    "estimate start=bogus": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"start": "bogus"}), "--method", "exact"], "start must be one of"),
    "estimate leapfrog_steps=1.5": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"leapfrog_steps": 1.5})], "leapfrog_steps must be an integer"),
    "estimate runs=1.5": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"runs": 1.5})], "runs must be an integer"),
    "estimate target_accept=1": (lambda t, f: ["estimate", _edit_config(
        f, t, estimate_options={"target_accept": 1})], "target_accept must be a number in (0, 1)"),
    # ---- sample
    "sample over estimates.csv": (lambda t, f: ["sample", _with_estimates(f, t), "-n", 5, "--out",
                                                t / "run" / "estimates.csv", "--force"],
                                  "inside the run folder"),
    "sample over losses.csv": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                             t / "run" / "losses.csv"], "inside the run folder"),
    "sample into the run": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                          t / "run" / "draws.csv"], "inside the run folder"),
    "sample over results.csv": (lambda t, f: ["sample", _compare_run(f, t, results="a\n1\n") /
                                              "map_l2", "-n", 5, "--out", t / "cmp" / "results.csv",
                                              "--force"], "inside the run folder"),
    "sample over its data": (lambda t, f: ["sample", _data_run(f, t), "-n", 5, "--out",
                                           t / "train.csv", "--force"],
                             "the data file the run was fitted on"),
    "sample over a file": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                         _write(t, "mine.csv", "keep me\n")], "pass --force"),
    "sample to a link": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                       _link(t / "elsewhere.csv", t / "l.csv")], "symbolic link"),
    "sample to a dir": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out", t], "is a directory"),
    "sample to no folder": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                          t / "nosuch" / "d.csv"], "no folder"),
    "sample to a FIFO": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                       _fifo(t / "p.csv"), "--force"], "not a regular file"),
    "sample long name": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--out",
                                       t / ("c" * 250 + ".csv")], "bytes long"),
    "sample seed 2**64": (lambda t, f: ["sample", _copy(f, t), "-n", 5, "--seed", 2**64,
                                        "--out", t / "d.csv"], "--seed must be"),
    "sample n 10**12": (lambda t, f: ["sample", _copy(f, t), "-n", 10**12, "--out", t / "d.csv"],
                        "ask for at most"),
    "sample other data": (lambda t, f: ["sample", _edit_config(f, t, subset=100), "-n", 5,
                                        "--out", t / "d.csv"], "fitted on other data"),
    "sample foreign state": (lambda t, f: ["sample", _edit_config(f, t, options={"guide": "map"}),
                                           "-n", 5, "--out", t / "d.csv"], "was fitted for"),
    "sample unfinished fit": (lambda t, f: ["sample", _checkpointed(f, t, b""), "-n", 5, "--out",
                                            t / "d.csv"], "no finished fit"),
    # ---- paths no file system takes, special and huge data files
    "fit long --out": (lambda t, f: FIT + ["map_l2", "--out", t / ("a" * 300)], "bytes long"),
    "compare long --out": (lambda t, f: ["compare", "map_l2", "--quick", "--out",
                                         t / ("a" * 300)], "bytes long"),
    "fa data /dev/zero": (lambda t, f: FIT + ["fa", "--data", "/dev/zero", "--out", t / "o"],
                          "not a regular file"),
    "fa data FIFO": (lambda t, f: FIT + ["fa", "--data", _fifo(t / "p.csv"), "--out", t / "o"],
                     "not a regular file"),
    "fa data empty": (lambda t, f: FIT + ["fa", "--data", _write(t, "e.csv", ""), "--out", t / "o"],
                      "is empty"),
    "fa data blank": (lambda t, f: FIT + ["fa", "--data", _write(t, "e.csv", "\n\n"),
                                          "--out", t / "o"], "holds no data rows"),
    "gmm data huge": (lambda t, f: FIT + ["gmm", "--data", _sparse(t / "h.csv", 300 << 20),
                                          "--out", t / "o"], "more than the"),
    # ---- compare --resume
    "compare results.csv a link": (lambda t, f: ["compare", "map_l2", "--quick", "--resume",
                                                  "--out", _linked_results(f, t)],
                                   "is a symbolic link"),
    "compare run.json a FIFO": (lambda t, f: ["compare", "map_l2", "--quick", "--resume", "--out",
                                              _fifo_run(f, t)], "not a regular file"),
    "compare model folder a link": (lambda t, f: ["compare", "map_l2", "--quick", "--resume",
                                                  "--out", _linked(_compare_run(f, t), "map_l2", t)],
                                    "is a symbolic link"),
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


def assert_refused(argv, fragment, tmp_path):
    """``argv`` ends with exit status 2 and one line holding ``fragment``, before any work,
    nothing under ``tmp_path`` written or changed."""
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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, fitted):
    make_argv, fragment = CASES[case]
    assert_refused(make_argv(tmp_path, fitted), fragment, tmp_path)


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


# ---------------------------------------------------------------------------- bounded reads
@pytest.mark.parametrize("kind", ["gz", "npz"])
def test_compressed_data_is_bounded_before_it_is_inflated(kind, tmp_path, monkeypatch):
    """A gzip (or zip) bomb: a small file that inflates past the bound is refused before it
    is inflated past it (the bound lowered to 1 MiB so that the bomb stays small here)."""
    import gzip

    from zoo import base

    monkeypatch.setattr(base, "MAX_DATA_BYTES", 1 << 20)
    images = np.zeros((65536, 64), dtype=np.uint8)  # 4 MiB of pixels
    path = tmp_path / f"bomb.{kind}"
    if kind == "gz":
        header = b"\x00\x00\x08\x02" + (65536).to_bytes(4, "big") + (64).to_bytes(4, "big")
        path.write_bytes(gzip.compress(header + images.tobytes()))
        fragment = "decompresses to at least"
    else:
        np.savez_compressed(path, x=images)
        fragment = "holds an array 'x' of 4194304 bytes"
    assert path.stat().st_size < 100_000
    assert_refused(FIT + ["vae", "--data", path, "--out", tmp_path / "o"], fragment, tmp_path)


# ---------------------------------------------------------------------------- read-only places
@pytest.fixture
def read_only(tmp_path, fitted):
    """A read-only file system holding a fitted run (tmpfs, remounted read-only)."""
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(fitted / "gaussian", mnt / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_estimate_on_a_read_only_folder_is_refused_before_any_work(read_only, tmp_path):
    assert_refused(["estimate", read_only / "run", "--method", "exact", "--no-progress"],
                   "Read-only file system", tmp_path)


def test_sample_to_a_read_only_folder_is_refused_before_any_work(read_only, tmp_path, fitted):
    assert_refused(["sample", _copy(fitted, tmp_path), "-n", 5, "--out", read_only / "d.csv"],
                   "cannot write to", tmp_path)


# ---------------------------------------------------------------------------- right, not refused
def test_valid_annealing_options_in_a_config_are_accepted(fitted, tmp_path):
    """``target_accept`` 0.8 and ``step_size`` 0.05 are valid (once refused as '>= 1')."""
    run = _edit_config(fitted, tmp_path, estimate_options={"target_accept": 0.8,
                                                            "step_size": 0.05})
    rc, _, err = run_main(["estimate", run, "--method", "exact", "--no-progress"])
    assert rc == 0, err


def test_a_one_row_data_file_fits_and_estimates(tmp_path):
    """One row of a CSV is a strided slice whose bytes must still hash (once an internal
    error after config.json was written)."""
    data = _write(tmp_path, "one.csv", "a,b,y\n1,2,3\n")
    rc, _, err = run_main(FIT + ["map_l2", "--steps", 5, "--data", data, "--out", tmp_path / "o"])
    assert rc == 0, err
    rc, _, err = run_main(["estimate", tmp_path / "o", "--method", "exact", "--no-progress"])
    assert rc == 0, err
    X, y = zoo.get("map_l2").load_data(str(data))
    saved = json.loads(torch.load(tmp_path / "o" / "state.pt", weights_only=True)["meta"])
    dense = tuple(torch.tensor(t.tolist()) for t in (X, y))
    assert saved["data"] == inference.state.fingerprint(dense) and saved["data"]["n"] == 1


def test_estimate_on_data_with_a_long_name_writes_a_short_file_name(fitted, tmp_path):
    run = _copy(fitted, tmp_path)
    stem = "d" * 240
    data = _write(tmp_path, f"{stem}.csv", "1,2,3,4,5,6,7,8,9,10,11\n" * 3)
    rc, _, err = run_main(["estimate", run, "--data", data, "--method", "elbo", "-K", 2,
                           "--seeds", 1, "--no-progress"])
    assert rc == 0, err
    (written,) = run.glob("estimates-*.csv")
    assert written.name.startswith(f"estimates-{'d' * 64}-") and len(written.name) < 90


def test_sample_force_replaces_a_file_outside_the_run(fitted, tmp_path):
    run = _copy(fitted, tmp_path)
    old = _write(tmp_path, "d.csv", "old\n")
    rc, _, err = run_main(["sample", run, "-n", 7, "--out", old, "--force"])
    assert rc == 0, err
    import pandas as pd

    assert len(pd.read_csv(old)) == 7


# ---------------------------------------------------------------------------- the API
def _map_l2():
    entry = zoo.get("map_l2")
    return entry, entry.load_data()


API_TOO = {
    "fit lr=0": (lambda e, d: inference.fit(e, d, steps=3, lr=0), "lr must be"),
    "fit lr=nan": (lambda e, d: inference.fit(e, d, steps=3, lr=float("nan")), "lr must be"),
    "fit num_particles=1.5": (lambda e, d: inference.fit(e, d, steps=3, num_particles=1.5),
                              "num_particles must be an integer"),
    "fit steps=2.5": (lambda e, d: inference.fit(e, d, steps=2.5), "steps must be an integer"),
    "fit seed=2**32": (lambda e, d: inference.fit(e, d, steps=2, seed=2**32), "seed must be"),
    "ais leapfrog_steps=1.5": (lambda e, d: inference.estimate(e, d, "ais", 4, leapfrog_steps=1.5),
                               "leapfrog_steps must be an integer"),
    "smc runs=1.5": (lambda e, d: inference.estimate(e, d, "smc", 4, runs=1.5),
                     "runs must be an integer"),
    "ais start=bogus": (lambda e, d: inference.estimate(e, d, "ais", 4, start="bogus"),
                        "start must be one of 'guide', 'prior'"),
    "fixed in global scope": (lambda e, d: inference.estimate(e, d, "is-prior", 4,
                                                              fixed={"w": torch.zeros(10)}),
                              "drop fixed"),
}


@pytest.mark.parametrize("case", list(API_TOO))
def test_api_refuses_what_it_would_round_or_ignore(case):
    call, fragment = API_TOO[case]
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("*", r"\*")):
        call(*_map_l2())


def test_fixed_names_only_global_sites():
    """``fixed={"bogus": ...}`` was ignored: now refused, naming the model's global sites."""
    entry = zoo.get("gmm", K=2)
    data = entry.load_data()
    with pytest.raises(ValueError, match=r"names \['bogus'\].*those are \[") as err:
        inference.estimate(entry, data, "is-guide", 2, scope="local",
                           fixed={"bogus": torch.zeros(2)})
    assert "locs" in str(err.value)


def test_compare_checks_every_method_option_before_the_first_row():
    """A bad option of one method (ais's start) was found after other methods' rows."""
    entry, data = _map_l2()
    rows = []
    with pytest.raises(ValueError, match="start must be"):
        inference.compare(entry, data, methods=["exact", "is-prior", "ais"], num_samples=[2],
                          seeds=[0], on_row=rows.append, start="bogus")
    assert rows == []
