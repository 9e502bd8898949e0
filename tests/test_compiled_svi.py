"""The compiled SVI step (inference.compiled): the same fit as the eager step, bit for bit, on the
zoo's models and users' pairs; the default where it applies; and where it does not, an eager fit
with the reason in FitResult.diagnostics."""

import json
import math
import random

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import inference
import zoo
from fittools import interrupted_after
from inference.compiled import MIN_STEPS
from toy import global_model, local_data, local_guide, local_model

STEPS = MIN_STEPS + 5


def _both(make, data, **options):
    """The same fit eager and compiled, each of a new target ``make()`` (networks and
    autoguides start afresh) from a cleared param store and the same seed."""
    eager = inference.fit(make(), data, steps=STEPS, progress=False, compile=False, **options)
    fast = inference.fit(make(), data, steps=STEPS, progress=False, **options)
    return eager, fast


def _assert_same_fit(eager, fast, compiled_steps=STEPS - 1):
    assert fast.diagnostics["not_compiled"] is None, fast.diagnostics
    assert fast.diagnostics["compiled_steps"] == compiled_steps
    assert eager.diagnostics == {"compiled_steps": 0, "not_compiled": "compile=False"}
    # bitwise: the compiled step runs the eager step's operations on the same values and draws
    pd.testing.assert_frame_equal(eager.losses, fast.losses, check_exact=True)
    for kind in ("params", "networks"):
        a, b = eager.state[kind], fast.state[kind]
        assert a.keys() == b.keys()
        for k in a:
            pairs = [(a[k], b[k])] if kind == "params" else [(a[k][w], b[k][w]) for w in a[k]]
            assert all(torch.equal(x, y) for x, y in pairs), (kind, k)


def _rows(entry, n):
    return tuple(t[:n] for t in entry.load_data())


@pytest.mark.parametrize("name, options, rows, fit_options", [
    ("vae", {}, 256, dict(batch_size=64)),
    ("dlvm", {}, 60, dict(batch_size=20)),  # a guide with parameters per datapoint
    ("gmm", {"assignments": "enumerate"}, None, {}),  # TraceEnum_ELBO
    ("gmm", {"assignments": "sample"}, None, {}),  # a discrete guide site: score-function terms
    ("map_l2", {}, None, {}),
    ("fa", {}, 300, dict(batch_size=100, loss="meanfield")),
])
def test_zoo_models_fit_the_same_compiled(name, options, rows, fit_options):
    entry = zoo.get(name, **options)
    data = entry.load_data() if rows is None else _rows(entry, rows)
    eager, fast = _both(lambda: zoo.get(name, **options), data, lr=0.01, **fit_options)
    if name == "gmm" and options["assignments"] == "enumerate":
        assert "recon" not in fast.losses  # TraceEnum_ELBO records no terms
    _assert_same_fit(eager, fast)


def linreg(X, y):
    """The unindexed-plate idiom with an autoguide: minibatches are passed as sliced tensors."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal((X * w.unsqueeze(-2)).sum(-1) + b, 0.5), obs=y)


def _regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g)
    return X, X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(60, generator=g)


@pytest.mark.parametrize("options", [
    dict(batch_size=15),
    dict(batch_size=15, optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99})),
    dict(num_particles=4),
])
def test_user_autoguide_pair_fits_the_same_compiled(options):
    eager, fast = _both(lambda: (linreg, AutoNormal(linreg)), _regression(), lr=0.05, **options)
    _assert_same_fit(eager, fast)


def lightning_model(batch, size=60):
    """Pyro's Lightning example: the model is called on a minibatch and subsamples its plate
    itself (a random subsample the graph must draw as the eager step does)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", size=size, subsample_size=len(batch)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=batch)


def test_minibatch_as_argument_idiom_fits_the_same_compiled():
    eager, fast = _both(lambda: (lightning_model, AutoNormal(lightning_model)), local_data(60),
                        lr=0.05, batch_size=12)
    _assert_same_fit(eager, fast)


@pytest.mark.parametrize("options", [dict(kl_weight=0.3), dict(loss="meanfield"),
                                     dict(num_particles=3, vectorize_particles=False),
                                     dict(distributed=True)])  # one process: the reducer's path
def test_local_pair_with_minibatches_kl_weight_and_losses(options):
    eager, fast = _both(lambda: (local_model, local_guide), local_data(80), lr=0.05,
                        batch_size=20, **options)
    _assert_same_fit(eager, fast)


def test_heldout_tracking_and_checkpoint_resume(tmp_path):
    """Held-out losses and the checkpoints of a compiled fit are the eager fit's; a compiled
    fit interrupted at step 63 (inside an epoch of 5 minibatches) resumes to the same fit."""
    x, held = local_data(100), local_data(40, seed=1)

    def run(**kw):
        return inference.fit((global_model, AutoNormal(global_model)), x,
                             steps=120, batch_size=20, lr=0.05, seed=4, progress=False,
                             heldout=held, heldout_every=7, **kw)

    eager = run(compile=False)
    ckpt = tmp_path / "ckpt.pt"
    with interrupted_after(63), pytest.raises(KeyboardInterrupt):
        run(checkpoint=ckpt, checkpoint_every=7)
    resumed = run(checkpoint=ckpt, checkpoint_every=7)
    assert resumed.diagnostics["compiled_steps"] == 56  # steps 64..119; step 63 eager
    pd.testing.assert_frame_equal(eager.losses, resumed.losses, check_exact=True)
    pd.testing.assert_frame_equal(eager.heldout, resumed.heldout, check_exact=True)
    for k, v in eager.state["params"].items():
        assert torch.equal(v, resumed.state["params"][k]), k


# ---- where it does not apply: eager, the reason recorded -----------------------------------


def branchy_guide(x):
    """Python that depends on values: the minibatch's indices turned into a Python list, which
    a trace would freeze."""
    n = x.shape[0]
    loc = pyro.param("loc", lambda: x.new_zeros(n))
    with pyro.plate("data", n) as idx:
        pyro.sample("z", dist.Normal(loc[idx.tolist()], 1.0))


def valued_guide(x):
    """Python arithmetic on a sampled value (a trace freezes its result)."""
    loc = pyro.param("m", lambda: x.new_zeros(()))
    u = pyro.sample("u", dist.Normal(loc, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, math.exp(u.detach().item() / 4)))


def drawing_guide(x):
    """Python's own RNG (seeded by pyro.set_rng_seed): a trace freezes the number drawn."""
    loc = pyro.param("m", lambda: x.new_zeros(()))
    pyro.sample("u", dist.Normal(loc + random.gauss(0.0, 0.1), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def noisy_model(x):
    """A draw no site or loss uses (a trace drops it): the eager step draws it, a graph would
    not, so every later draw would differ from the eager fit's."""
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])
    torch.rand(3)


def valued_model(x):
    u = pyro.sample("u", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(u, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


class LateGuide:
    """Creates a parameter on its third call (the fit's second step; a trace, if it is one)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        late = pyro.param("late", lambda: torch.randn(())) if self.calls >= 3 else 0.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("loc", lambda: x.new_zeros(())) + late, 1.0))


class NoTerms(Trace_ELBO):
    """Another class: the compiled step does not know what it computes."""


OUTSIDE = torch.nn.Linear(1, 1)  # trained weights the model uses without pyro.module


def unregistered_model(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(OUTSIDE(z.unsqueeze(-1)).squeeze(-1), 0.5), obs=x[idx])


@pytest.mark.parametrize("target, options, reason", [
    (lambda: (local_model, branchy_guide), dict(batch_size=20),
     "the model's Python reads a tensor's value (test_compiled_svi.py:"),
    (lambda: (valued_model, valued_guide), dict(batch_size=20),
     "the model's Python reads a tensor's value (test_compiled_svi.py:"),
    (lambda: (valued_model, drawing_guide), dict(batch_size=20),
     "the compiled step differed from the eager one at its check"),
    (lambda: (noisy_model, local_guide), dict(batch_size=20),
     "the compiled step drew other random numbers than the eager one at its check"),
    (lambda: (local_model, LateGuide()), {},
     "the model or guide created parameters after its first step"),
    (lambda: (local_model, local_guide), dict(loss=NoTerms(max_plate_nesting=1)),
     "the loss is a NoTerms"),
    (lambda: (unregistered_model, AutoNormal(unregistered_model)), {},
     "tracing the step failed (RuntimeError: Cannot insert a Tensor that requires grad"),
])
def test_what_cannot_be_compiled_runs_eagerly_with_the_reason(target, options, reason):
    x = local_data(60)
    eager = inference.fit(target(), x, steps=STEPS, lr=0.05, progress=False, compile=False,
                          **options)
    fit = inference.fit(target(), x, steps=STEPS, lr=0.05, progress=False, **options)
    assert fit.diagnostics["not_compiled"].startswith(reason), fit.diagnostics
    assert fit.diagnostics["compiled_steps"] == 0
    assert f"eager: {reason}" in repr(fit)
    pd.testing.assert_frame_equal(eager.losses, fit.losses, check_exact=True)


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False, got 'no'"):
        inference.fit((local_model, local_guide), local_data(10), steps=STEPS, compile="no")


def test_networks_with_buffers_and_short_fits_stay_eager():
    net = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.BatchNorm1d(2))

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(net(z.unsqueeze(-1)).sum(-1), 1.0), obs=x[idx])

    x = local_data(40)
    fit = inference.fit(inference.Target(model, local_guide, networks={"net": net}), x,
                         steps=STEPS, progress=False)
    assert fit.diagnostics["not_compiled"].startswith("network 'net' has buffers")
    short = inference.fit((local_model, local_guide), x, steps=MIN_STEPS - 1, progress=False)
    assert short.diagnostics["not_compiled"].startswith(f"{MIN_STEPS - 1} steps to take")
    assert short.diagnostics["compiled_steps"] == 0


def test_ppzoo_fit_compiles_by_default_and_no_compile_is_the_same_fit(tmp_path):
    from clitools import run_main

    lines, files = {}, {}
    for flag in ("", "--no-compile"):
        out = tmp_path / (flag or "default")
        rc, stdout, stderr = run_main(["fit", "map_l2", "--steps", STEPS, "--no-progress",
                                       "--out", out] + ([flag] if flag else []))
        assert rc == 0, stderr
        lines[flag] = stdout.splitlines()[0]
        files[flag] = (out / "losses.csv").read_bytes(), json.loads((out / "config.json").read_text())
    assert "(compiled)" in lines[""] and "(eager: compile=False)" in lines["--no-compile"]
    assert files[""][1]["fit"]["not_compiled"] is None
    assert files["--no-compile"][1]["fit"]["not_compiled"] == "compile=False"
    assert files[""][0] == files["--no-compile"][0]
