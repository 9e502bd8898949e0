"""Data-parallel fit and estimate on torch.distributed: 2 gloo processes on localhost (one
start-up for every check: tests/distributed_job.py) against the same work in this process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
import torch.distributed as dist
from pyro.infer.autoguide import AutoDelta

import inference
import toy
import zoo
from distributed_job import CURVE, hierarchical, params

JOB = Path(__file__).resolve().parent / "distributed_job.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 processes got, ``[rank0, rank1]``, and their output folder."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("distributed")
    try:
        port = free_port()
    except OSError as e:
        pytest.skip(f"no localhost port for the processes to meet at: {e}")
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               OMP_NUM_THREADS="1")
    try:
        procs = [subprocess.Popen([sys.executable, str(JOB), str(out)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
                 for r in range(2)]
    except OSError as e:
        pytest.skip(f"cannot start processes: {e}")
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the distributed job hung")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def same(a, b, rtol=1e-6):
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=rtol, atol=1e-7)


@pytest.mark.slow
def test_one_step_equals_full_batch(ranks):
    (r0, r1), _ = ranks
    x = toy.local_data(40)
    inference.fit((hierarchical, AutoDelta(hierarchical)), x, steps=1, lr=0.1)
    same(r0["one_step"], params())
    same(r0["one_step"], r1["one_step"], rtol=0)  # the same parameters on every rank


@pytest.mark.slow
def test_uneven_minibatch_shards_scale_to_the_global_batch(ranks):
    (r0, r1), _ = ranks  # batch 21 on 2 ranks: shards of 11 and 10
    x = toy.local_data(40)
    inference.fit((hierarchical, AutoDelta(hierarchical)), x, steps=3, batch_size=21,
                  optim=pyro.optim.ClippedAdam({"lr": 0.1}))
    same(r0["minibatch"], params())
    same(r0["minibatch"], r1["minibatch"], rtol=0)


@pytest.mark.slow
def test_loss_curve_follows_one_process(ranks):
    """gmm, global batch 50: the 2-process curve matches one process's in every window of 10
    steps, within 4 standard errors of the two windows' means (their steps' spread; a loss
    scaled wrongly by the number of processes is off by hundreds of them)."""
    (r0, _), _ = ranks
    one = inference.fit(zoo.get("gmm"), zoo.get("gmm").load_data(), **CURVE).losses
    a, b = one["loss"].to_numpy().reshape(-1, 10), r0["curve"].reshape(-1, 10)
    se = np.sqrt(a.var(1, ddof=1) / 10 + b.var(1, ddof=1) / 10)
    assert (np.abs(a.mean(1) - b.mean(1)) < 4 * se).all(), (a.mean(1), b.mean(1), se)


@pytest.mark.slow
def test_checkpoint_resume_under_two_ranks(ranks):
    (r0, _), out = ranks
    whole, resumed, whole_losses, resumed_losses = r0["resume"]
    assert len(resumed_losses) == 20
    np.testing.assert_array_equal(whole_losses, resumed_losses)
    same(whole, resumed, rtol=0)
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_cli_fit_under_torchrun_resumes_exactly(ranks):
    """``ppzoo fit vae`` interrupted after its checkpoint inside an epoch, then resumed:
    bitwise the weights and losses of the uninterrupted 2-process fit."""
    (r0, r1), out = ranks
    assert r0["cli resume"] == r1["cli resume"] == (0, 130, 0)
    whole, cut = (torch.load(out / d / "state.pt", weights_only=True)
                  for d in ("vae-whole", "vae-cut"))
    assert whole["networks"] and whole["networks"].keys() == cut["networks"].keys()
    for net in whole["networks"]:
        for k, w in whole["networks"][net].items():
            assert torch.equal(w, cut["networks"][net][k]), (net, k)
    pd.testing.assert_frame_equal(pd.read_csv(out / "vae-cut" / "losses.csv"),
                                  pd.read_csv(out / "vae-whole" / "losses.csv"), check_exact=True)
    assert not (out / "vae-cut" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_rank_refusing_its_input_stops_every_rank_with_one_line(ranks):
    """One rank refuses its input (before or after the others joined, argparse's own errors
    too), or every rank does, or one never reports: every rank exits 2 at once, rank 0 (local
    rank 0) prints the one line naming the rank and its problem, nothing is written."""
    (r0, r1), out = ranks
    g0, g1 = r0["refusals"], r1["refusals"]
    lines = {k: v[1] for k, v in g0.items()}
    assert all(rc == 2 for rc, _ in g0.values()) and all(rc == 2 for rc, _ in g1.values()), (g0, g1)
    assert all(err == "" for _, err in g1.values()), g1  # local rank 1 keeps quiet
    assert all(line.startswith("ppzoo: error: ") and line.count("\n") == 1
               for line in lines.values()), lines
    assert lines["steps"] == ("ppzoo: error: on rank 1 of 2: --steps must be an integer >= 1, "
                              "got -3\n")
    assert lines["data"].startswith(f"ppzoo: error: on rank 1 of 2: {out / 'no.csv'}")
    assert lines["parse"] == ("ppzoo: error: on rank 1 of 2: argument --steps: invalid int value: "
                              "'x'; see ppzoo fit --help\n")
    assert lines["kl"].startswith("ppzoo: error: --kl-weight 2 under torchrun: ")
    assert lines["every rank"] == "ppzoo: error: --steps must be an integer >= 1, got -3\n"
    assert lines["estimate"].startswith("ppzoo: error: on rank 1 of 2: -K must be an integer")
    assert lines["absent"].startswith("ppzoo: error: rank 1 of 2 did not report on its checks "
                                      "within 2 s")
    for name in ("steps", "data", "parse", "kl", "every", "absent"):
        assert not (out / name).exists(), name
    # torchrun's failure summary shows the line (its "traceback") on every rank
    for r in range(2):
        error = json.loads((out / f"error{r}.json").read_text())["message"]
        assert error["extraInfo"]["py_callstack"] == lines["steps"].strip()


@pytest.mark.slow
def test_a_rank_whose_partners_never_come_stops_after_the_timeout(tmp_path):
    """Rank 0 of 2 started alone (rank 1 crashed, or its machine never started it): one line
    after PPZOO_DIST_TIMEOUT seconds instead of torch's 30 minutes; a malformed timeout is
    refused in one line."""
    code = ("import json, os, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from clitools import run_main\n"
            "got = []\n"
            "for timeout in ('soon', '2'):\n"
            "    os.environ['PPZOO_DIST_TIMEOUT'] = timeout\n"
            f"    got.append(run_main(['fit', 'gmm', '--out', {str(tmp_path / 'run')!r}]))\n"
            "print(json.dumps(got))\n")
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (rc1, _, err1), (rc2, _, err2) = json.loads(done.stdout)
    assert rc1 == 2 and err1 == ("ppzoo: error: PPZOO_DIST_TIMEOUT must be a number of seconds > "
                                 "0, got 'soon'\n")
    assert rc2 == 2 and err2.startswith("ppzoo: error: the 2 processes did not meet at "
                                        "127.0.0.1:") and "within 2 s" in err2, err2
    assert err2.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_local_estimate_does_not_depend_on_the_number_of_processes(ranks):
    (r0, r1), _ = ranks
    x = toy.local_data(300)
    toy.set_local_guide(x, shrink=0.9, widen=1.3)
    exact = toy.local_exact(x)
    for method in ("is-guide", "elbo"):
        est = inference.estimate((toy.local_model, toy.local_guide), x, method, 64, seed=5,
                                 memory_budget=1 << 20, distributed=True)
        got = r0[f"local {method}"]
        assert got[4] < 300  # several blocks of datapoints, dealt to the ranks
        for mine, theirs, other in zip((est.per_datapoint, est.stderr_per_datapoint,
                                        est.khat_per_datapoint), got[:3], r1[f"local {method}"]):
            assert torch.equal(mine, theirs) and torch.equal(theirs, other)
        assert est.log_evidence == got[3]
    # and the is-guide values are right: within 4 standard errors of the closed form
    est = r0["local is-guide"]
    assert ((est[0] - exact).abs() < 4 * est[1] + 1e-9).all()


@pytest.mark.slow
def test_global_estimate_equals_one_process(ranks):
    (r0, r1), _ = ranks
    x = toy.local_data(300)[:60]
    toy.set_global_guide(x, widen=1.5)
    for method in ("is-guide", "is-prior"):
        est = inference.estimate((toy.global_model, toy.global_guide), x, method, 200, seed=2,
                                 scope="global")
        value, err = r0[f"global {method}"]
        # float32 log densities summed in another order: equal to float rounding
        assert value == pytest.approx(est.log_evidence, rel=1e-6)
        assert err == pytest.approx(est.stderr, rel=1e-5)
        assert r1[f"global {method}"][0] == value
    assert abs(value - toy.global_exact(x)) < 4 * err


@pytest.mark.slow
def test_cli_under_torchrun_writes_once(ranks, tmp_path):
    (r0, r1), out = ranks
    assert r0["cli"] == r1["cli"] == (0, 0)
    run = out / "run"
    assert {"config.json", "state.pt", "losses.csv", "loss.png", "estimates.csv"} <= \
        {p.name for p in run.iterdir()}
    assert not (run / "checkpoint.pt").exists()
    rows = pd.read_csv(run / "estimates.csv")
    assert sorted(rows["method"]) == ["elbo", "is-guide"]
    # the same estimates from one process on the 2-process fit
    from zoo.app import cli

    here = tmp_path / "run"
    shutil.copytree(run, here)
    (here / "estimates.csv").unlink()
    assert cli.main(["estimate", str(here), "--method", "is-guide", "--method", "elbo",
                     "-K", "20", "--seeds", "1", "--no-progress"]) == 0
    mine = pd.read_csv(here / "estimates.csv").sort_values("method")
    np.testing.assert_allclose(mine["estimate"], rows.sort_values("method")["estimate"],
                               rtol=1e-6)  # float32 rounding


def test_refusals():
    x = toy.local_data(20)
    toy.set_local_guide(x)
    pair = (toy.local_model, toy.local_guide)
    with pytest.raises(ValueError, match="cannot be sharded"):
        inference.estimate(pair, x, "exact", distributed=True)
    with pytest.raises(ValueError, match="per datapoint: in global scope"):
        inference.estimate(pair, x, "is-guide", 10, scope="global", distributed=True)
    with pytest.raises(ValueError, match="keep_weights"):
        inference.estimate(pair, x, "is-guide", 10, keep_weights=True, distributed=True)
