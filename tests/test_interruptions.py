"""Run folders survive what happens to them: a kill at every write point of a fit, a full disk,
two runs into one folder, and ``ppzoo estimate`` run again (rows are appended, never lost)."""

import importlib
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
