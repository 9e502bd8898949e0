"""Run folders survive what happens to them: a kill at every write point of a fit, a full disk,
two runs into one folder, and ``ppzoo estimate`` run again (rows are appended, never lost)."""

import importlib
import os
import subprocess

import pandas as pd
import pytest
import torch

import inference
from clitools import run_main
from zoo.app import jobs

io_module = importlib.import_module("inference.io")
compare_module = importlib.import_module("inference.compare")

FIT = ["fit", "map_l2", "--steps", 100, "--seed", 2, "--no-progress"]
#: the atomic writes of FIT, in order: config.json, checkpoint.pt at steps 50, 100 and the
#: final one, state.pt, losses.csv, config.json (with the timing), loss.png
WRITES = 8


class Killed(BaseException):
    """What SIGKILL does to the process, as an exception nothing in ppzoo catches."""


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    rc, _, err = run_main(FIT + ["--out", out])
    assert rc == 0, err
    return out


def assert_same_fit(a, b):
    assert (a / "state.pt").read_bytes() == (b / "state.pt").read_bytes()  # bytes reproducible
    pd.testing.assert_frame_equal(pd.read_csv(a / "losses.csv"), pd.read_csv(b / "losses.csv"))
    assert jobs.fit_finished(b)


@pytest.mark.parametrize("point", [f"inside write {i}" for i in range(1, WRITES + 1)]
                         + ["after the last write"])
def test_kill_at_every_write_point_then_resume_equals_an_uninterrupted_fit(
        point, whole, tmp_path, monkeypatch):
    real, calls = io_module._atomic, []
    n = int(point.split()[-1]) if point.startswith("inside") else WRITES

    def atomic(path, write):
        calls.append(path)
        if len(calls) == n and point.startswith("inside"):  # killed mid-write: a .tmp is left
            (path.parent / f".{path.name}.killed.tmp").write_bytes(b"half")
            raise Killed
        real(path, write)
        if len(calls) == n:
            raise Killed

    out = tmp_path / "run"
    monkeypatch.setattr(io_module, "_atomic", atomic)
    with pytest.raises(Killed):
        run_main(FIT + ["--out", out])
    monkeypatch.undo()
    assert not jobs.fit_finished(out)
    rc, _, err = run_main(FIT + ["--out", out, "--resume"])
    assert rc == 0, err
    assert_same_fit(whole, out)
    rc, stdout, _ = run_main(FIT + ["--out", out, "--resume"])
    assert rc == 0 and "nothing to do" in stdout


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=28k", "tmpfs", str(mnt)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_full_disk_is_one_line_and_resume_completes(small_disk, whole):
    out = small_disk / "run"
    rc, _, err = run_main(FIT + ["--out", out])
    assert rc == 1 and err.startswith("ppzoo: error: no space left") and err.count("\n") == 1
    assert "--resume" in err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
    rc, _, err = run_main(FIT + ["--out", out, "--resume"])
    assert rc == 0, err
    assert_same_fit(whole, out)


@pytest.mark.slow
def test_two_runs_into_one_folder_lose_no_rows(tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["compare", "map_l2", "--quick", "--no-progress", "--out", out]
    real, second = compare_module.compare, []

    def compare(entry, *args, on_row, **kwargs):
        def row(r):
            on_row(r)
            if not second:  # a second run starts while the first is writing its rows
                second.append(run_main(["compare", "map_l2", "gmm", "--quick", "--resume",
                                        "--no-progress", "--out", out]))
        return real(entry, *args, on_row=row, **kwargs)

    monkeypatch.setattr(inference, "compare", compare)
    rc, _, err = run_main(argv)
    assert rc == 0, err
    rc2, stdout2, err2 = second[0]
    assert rc2 == 2 and "another ppzoo command is writing to" in err2 and stdout2 == ""
    assert err2.count("\n") == 1
    rows = pd.read_csv(out / "results.csv")  # every row of the first run, once
    job = jobs.job_for("map_l2", quick=True)
    want = {(m, k, s) for m in jobs.job_methods(job) if m != "exact"
            for k in job.num_samples for s in range(job.seeds)} | {("exact", 0, 0)}
    assert list(zip(rows["method"], rows["K"], rows["seed"])) and len(rows) == len(want)
    assert set(zip(rows["method"], rows["K"], rows["seed"])) == want


def test_estimate_appends_and_resumes(whole, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whole, run)
    rc, _, err = run_main(["estimate", run, "--method", "exact", "--no-progress"])
    assert rc == 0, err
    first = pd.read_csv(run / "estimates.csv")
    assert len(first) == 1
    # a second method's rows are appended; an interrupted run keeps its finished rows
    real, seen = compare_module.compare, []

    def stop_after_two(entry, *args, on_row, **kwargs):
        def row(r):
            on_row(r)
            seen.append(r)
            if len(seen) == 2:
                raise KeyboardInterrupt
        return real(entry, *args, on_row=row, **kwargs)

    monkeypatch.setattr(inference, "compare", stop_after_two)
    argv = ["estimate", run, "--method", "exact", "--method", "is-prior", "-K", 1, "-K", 5,
            "--seeds", 2, "--no-progress"]
    rc, _, err = run_main(argv)
    assert rc == 130 and "kept" in err
    assert len(pd.read_csv(run / "estimates.csv")) == 3
    monkeypatch.undo()
    rc, stdout, err = run_main(argv)
    assert rc == 0, err
    df = pd.read_csv(run / "estimates.csv")
    assert len(df) == 5 and "2 new rows, 5 in all" in stdout
    pd.testing.assert_frame_equal(df.iloc[:1], first)  # the first run's row is kept as it was
    assert len(df.drop_duplicates(["method", "K", "seed"])) == 5
    assert torch.load(run / "state.pt", weights_only=True)["kind"] == "fit"


# ---------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("command", ["fit", "estimate", "sample"])
def test_disk_full_advises_resume_only_to_commands_that_have_it(command, whole, tmp_path,
                                                                 monkeypatch):
    import errno
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whole, run)
    argv = {"fit": FIT + ["--out", tmp_path / "new"],
            "estimate": ["estimate", run, "--method", "exact", "--no-progress"],
            "sample": ["sample", run, "-n", 3, "--out", tmp_path / "d.csv"]}[command]

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io_module, "_atomic", full)
    rc, _, err = run_main(argv)
    assert rc == 1 and err.startswith("ppzoo: error: no space left") and err.count("\n") == 1
    assert ("--resume" in err) == (command == "fit"), err


# ---------------------------------------------------------------------------- what a kill leaves
def test_a_fit_stopped_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or an error) before the first checkpoint: no config.json left behind, nor the
    folders the command made."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "fit", stopped)
    rc, _, err = run_main(FIT + ["--out", tmp_path / "a" / "b" / "run"])
    assert rc == 130 and "no fitted state was written" in err
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(inference, "fit", lambda *a, **k: 1 / 0)
    (tmp_path / "mine").mkdir()
    rc, _, err = run_main(FIT + ["--out", tmp_path / "mine"])
    assert rc == 1 and "internal error" in err
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_resume_removes_what_a_killed_write_left(whole, tmp_path):
    """SIGKILL in an atomic write leaves its temporary file: the next command on the folder
    removes it (holding the folder's lock, so no other command is writing it)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whole, run)
    left = [run / ".checkpoint.pt.k2ab9x1q.tmp", run / ".config.json.0k3sj1ab.tmp",
            run / ".state.pt.a1b2c3d4.tmp"]
    for p in left:
        p.write_bytes(b"half")
    rc, stdout, err = run_main(FIT + ["--out", run, "--resume"])
    assert rc == 0 and "nothing to do" in stdout, err
    assert not [p for p in left if p.exists()]


# ---------------------------------------------------------------------------- Ctrl-C
def _child(argv):
    """``python -m zoo ARGV`` with Ctrl-C's default handling (a test runner may ignore it)."""
    import signal
    import sys

    return subprocess.Popen([sys.executable, "-m", "zoo", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_torch(proc, timeout=120.0):
    """Until the child has mapped libtorch (``import torch`` is under way), or ended."""
    import time

    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            with open(f"/proc/{proc.pid}/maps") as f:
                if "libtorch" in f.read():
                    return
        except OSError:
            return
        time.sleep(0.005)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_ctrl_c_while_the_libraries_load_is_exit_130_and_one_line(tmp_path):
    """Ctrl-C in the first second of a command (a segfault, or a 79-line traceback, when it
    hit ``import torch``): exit status 130, one line, nothing written -- at any moment."""
    import random
    import signal
    import time

    rng = random.Random(10)
    for i, delay in enumerate([0.0] + [rng.uniform(0, 1.5) for _ in range(3)]):
        out = tmp_path / f"run{i}"
        proc = _child(["fit", "map_l2", "--steps", 10**6, "--no-progress", "--out", out])
        _wait_for_torch(proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 130, (delay, proc.returncode, stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("ppzoo: interrupted"), (delay, stderr)
        assert not out.exists()  # nothing was fitted: nothing is left


# ---------------------------------------------------------------------------- compare --resume
def test_summary_of_train_rows_without_held_out_rows_yet(tmp_path):
    """A compare run stopped after a model's train rows, before its held-out ones: every
    later ``--resume`` died in the summary ("cannot join with no overlapping index names")."""
    import json
    import math

    from zoo.app import summary

    (tmp_path / "independent").mkdir()
    split = {"test_fraction": 0.2, "seed": 0, "n_train": 240, "n_test": 60, "test_sha256": "ab"}
    (tmp_path / "independent" / "config.json").write_text(json.dumps({"split": split}))
    row = {"model": "independent", "split": "train", "method": "exact", "K": 0, "seed": 0,
           "estimate": -24.0, "stderr": 0.0, "per_datapoint": -0.1, "ess": math.nan,
           "khat": math.nan, "seconds": 0.1, "reference": -24.0, "error": 0.0, "vouched": True}
    summary.write_summary(tmp_path, pd.DataFrame([row]), {"models": ["independent"]})
    text = (tmp_path / "summary.md").read_text()
    assert "Held out: 60 of 300 datapoints" in text and "| exact | - | -24.00 |" in text


#: a global model with many rows, then a local one with held-out rows, both quick
COMPARE = ["compare", "map_l2", "independent", "--quick", "--no-progress"]


def _rows(out):
    df = pd.read_csv(out / "results.csv").drop(columns=["seconds", "finished"])
    return df.sort_values(["model", "split", "method", "K", "seed"]).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_compare_killed_at_random_moments_resumes_to_the_uninterrupted_rows(tmp_path):
    """``ppzoo compare --quick`` stopped by Ctrl-C or SIGKILL at random moments (after a
    random number of its output lines, then a random delay), then ``--resume``d: the rows
    and fitted states are bitwise those of an uninterrupted run, and nothing temporary is
    left. One kill aims at the moment a stuck resume came from (6 of 11 such trials): the
    last model's train rows written, its held-out rows not yet."""
    import random
    import signal
    import time

    whole = tmp_path / "whole"
    rc, stdout, err = run_main(COMPARE + ["--out", whole])
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    want = _rows(whole)
    rng = random.Random(26)
    cuts = [(sig, rng.randrange(len(lines)), rng.uniform(0, 1.5))
            for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGINT)]
    train_done = next(i for i, line in enumerate(lines) if "independent: exact" in line) + 1
    cuts.append((signal.SIGKILL, train_done, 0.0))
    for i, (sig, after, delay) in enumerate(cuts):
        out = tmp_path / f"cut{i}"
        proc = _child(COMPARE + ["--out", out])
        _wait_for_torch(proc)
        for _ in range(after):
            if not proc.stdout.readline():
                break
        time.sleep(delay)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=600)
        where = (sig.name, after, round(delay, 2), proc.returncode)
        assert proc.returncode in (0, 130, -signal.SIGKILL), (where, stderr[-2000:])
        if proc.returncode == 130:
            assert len(stderr.strip().splitlines()) == 1, (where, stderr)
        rc, _, err = run_main(COMPARE + ["--out", out, "--resume"])
        assert rc == 0, (where, err)
        pd.testing.assert_frame_equal(_rows(out), want, check_exact=True, obj=str(where))
        for model in ("independent", "map_l2"):
            assert (out / model / "state.pt").read_bytes() == \
                (whole / model / "state.pt").read_bytes(), where
        assert not list(out.rglob("*.tmp")), where
        assert (out / "summary.md").is_file()
