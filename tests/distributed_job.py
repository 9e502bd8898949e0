"""The work of tests/test_distributed.py on each of its processes, started as ``torchrun``
starts them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment), or
alone with ``WORLD_SIZE=1`` for the single-process references. Every check shares one start-up
(each costs seconds); each rank saves what it got to ``OUT/rank{r}.pt``.

    python tests/distributed_job.py OUT
"""

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy  # noqa: E402
from fittools import interrupted_after  # noqa: E402

import inference  # noqa: E402
from inference import distributed as parallel  # noqa: E402


def hierarchical(x):
    """mu ~ N(0, 1), z_n ~ N(mu, 1), x_n ~ N(z_n, 0.5): a global and a local latent."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


#: the loss-curve fit (tests/test_distributed.py runs it in one process too)
CURVE = dict(steps=60, batch_size=50, lr=0.05, seed=1)


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def fits(out: Path, rank: int) -> dict:
    got = {}
    x = toy.local_data(40)
    # one full-batch step, deterministic loss (AutoDelta): the default fused Adam
    inference.fit((hierarchical, AutoDelta(hierarchical)), x, steps=1, lr=0.1, distributed=True)
    got["one_step"] = params()
    # three minibatch steps of an uneven global batch (shards of 11 and 10), Pyro's optimiser
    inference.fit((hierarchical, AutoDelta(hierarchical)), x, steps=3, batch_size=21,
                  optim=pyro.optim.ClippedAdam({"lr": 0.1}), distributed=True)
    got["minibatch"] = params()
    # a zoo model's loss curve, global batch 50 of 150
    import zoo

    r = inference.fit(zoo.get("gmm"), zoo.get("gmm").load_data(), **CURVE, distributed=True)
    got["curve"] = r.losses["loss"].to_numpy()
    # checkpoint and resume: Ctrl-C right after the checkpoint of step 10, then rerun; 3
    # batches of 12 an epoch, so step 10 is inside an epoch (its permutation half used)
    pair = (toy.local_model, toy.local_guide)
    settings = dict(steps=20, batch_size=12, lr=0.05, seed=3, checkpoint_every=5, distributed=True)
    whole = inference.fit(pair, x, checkpoint=out / "whole.pt", **settings)
    with interrupted_after(10):
        try:
            inference.fit(pair, x, checkpoint=out / "cut.pt", **settings)
        except KeyboardInterrupt:
            pass
    resumed = inference.fit(pair, x, checkpoint=out / "cut.pt", **settings)
    got["resume"] = (whole.state["params"], resumed.state["params"],
                     whole.losses["loss"].to_numpy(), resumed.losses["loss"].to_numpy())
    return got


#: ``ppzoo fit vae`` of 60 steps: checkpoints at step 50, inside an epoch of 3 batches
VAE = ["fit", "vae", "--subset", "30", "--batch-size", "10", "--steps", "60", "--seed", "3",
       "--no-progress"]


def cli_resume(out: Path) -> tuple:
    """``ppzoo fit vae`` whole; the same, Ctrl-C on every rank after its checkpoint of step
    50 (as torchrun passes SIGINT on), then ``--resume``: the exit statuses."""
    from zoo.app import cli

    whole = cli.main(VAE + ["--out", str(out / "vae-whole")])
    with interrupted_after(50):
        cut = cli.main(VAE + ["--out", str(out / "vae-cut")])
    return whole, cut, cli.main(VAE + ["--out", str(out / "vae-cut"), "--resume"])


def refused(argv, env=None) -> tuple:
    """``ppzoo argv`` on this rank (with ``env`` set meanwhile): (exit status, stderr)."""
    from zoo.app import cli

    err, env = io.StringIO(), env or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(err):
            try:
                rc = cli.main([str(a) for a in argv])
            except SystemExit as e:  # argparse's own errors
                rc = e.code
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return rc, err.getvalue()


def refusals(out: Path, rank: int) -> dict:
    """ppzoo commands refused by one rank, or by every rank: each rank's (exit status,
    stderr). A rank that stops must not leave the others waiting (tests/test_distributed.py)."""
    fit = ["fit", "gmm", "--steps", "5", "--no-progress", "--out"]
    alone = ["--steps", "-3"] if rank else []
    got = {"steps": refused(fit + [out / "steps"] + alone,
                            {"TORCHELASTIC_ERROR_FILE": str(out / f"error{rank}.json")}),
           "data": refused(fit + [out / "data"] + (["--data", out / "no.csv"] if rank else [])),
           "parse": refused(fit + [out / "parse"] + (["--steps", "x"] if rank else [])),
           "kl": refused(fit + [out / "kl", "--kl-weight", "2"]),
           "every rank": refused(fit + [out / "every", "--steps", "-3"]),
           "estimate": refused(["estimate", out / "run", "-K", "0" if rank else "5",
                                "--no-progress"])}
    # rank 1 stops before its checks: rank 0 waits 2 s for its word, not forever
    if rank == 0:
        got["absent"] = refused(fit + [out / "absent"], {"PPZOO_DIST_TIMEOUT": "2"})
    torch.distributed.barrier()
    if rank == 1:
        parallel.agree(None)  # the round rank 0 waited for in vain: the ranks in step again
    return got


def estimates() -> dict:
    got = {}
    x = toy.local_data(300)
    toy.set_local_guide(x, shrink=0.9, widen=1.3)
    pair = (toy.local_model, toy.local_guide)
    for method in ("is-guide", "elbo"):  # 1 MiB chunks: several blocks of datapoints
        est = inference.estimate(pair, x, method, 64, seed=5, memory_budget=1 << 20,
                                 distributed=True)
        got[f"local {method}"] = (est.per_datapoint, est.stderr_per_datapoint,
                                  est.khat_per_datapoint, est.log_evidence,
                                  est.diagnostics["chunk_datapoints"])
    xg = x[:60]
    toy.set_global_guide(xg, widen=1.5)
    for method in ("is-guide", "is-prior"):
        est = inference.estimate((toy.global_model, toy.global_guide), xg, method, 200, seed=2,
                                 scope="global", distributed=True)
        got[f"global {method}"] = (est.log_evidence, est.stderr)
    return got


def main(out: Path) -> None:
    torch.set_num_threads(1)
    w = parallel.setup(torch.device("cpu"))[0]
    got = {"world": w.size}
    t = [time.perf_counter()]
    got.update(fits(out, w.rank))
    t.append(time.perf_counter())
    got.update(estimates())
    t.append(time.perf_counter())
    from zoo.app import cli

    run = str(out / "run")
    got["cli"] = (cli.main(["fit", "gmm", "--out", run, "--steps", "10", "--no-progress"]),
                  cli.main(["estimate", run, "--method", "is-guide", "--method", "elbo",
                            "-K", "20", "--seeds", "1", "--no-progress"]))
    got["cli resume"] = cli_resume(out)
    got["refusals"] = refusals(out, w.rank)
    t.append(time.perf_counter())
    got["seconds"] = list(np.diff(t))
    torch.save(got, out / f"rank{w.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
