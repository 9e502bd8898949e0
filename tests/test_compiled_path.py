"""The compiled densities of the annealing estimators (inference/compiled_path.py): the default,
the same numbers as eager on fixed seeds, one graph per chunk shape, and eager wherever a graph
cannot be trusted.

"The same numbers" is asserted to 1e-12 relative: a compiled graph that differed from the eager
densities in the last bit would send every HMC trajectory elsewhere and move the estimate by
about its standard error (1e-3 relative here), as the optimising TorchScript executor did.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import inference
import zoo
from toy import SIGMA, local_data, local_guide, local_model, set_local_guide

OPTS = dict(temperatures=8, leapfrog_steps=2)


def _same(a, b):
    assert math.isclose(a.log_evidence, b.log_evidence, rel_tol=1e-12, abs_tol=1e-9)
    if a.per_datapoint is not None:
        assert torch.allclose(a.per_datapoint, b.per_datapoint, rtol=1e-12, atol=1e-9)


def _both(target, data, method, K, **options):
    compiled = inference.estimate(target, data, method, K, seed=3, **options)
    eager = inference.estimate(target, data, method, K, seed=3, jit=False, **options)
    assert eager.diagnostics["jit_chunks"] == 0
    return compiled, eager


def test_ais_compiled_by_default_equals_eager_with_one_graph_per_chunk_shape():
    # the digits vae (amortized guide: the start's tensors differ per chunk) in 2 chunks of
    # datapoints times 3 of chains (4, 4 and 2): every chunk runs compiled, from 2 graphs
    entry = zoo.get("vae", latent_dim=2, hidden=(16,))
    (x,) = entry.load_data()
    compiled, eager = _both(entry, x[:90], "ais", 10, memory_budget=2_000_000, **OPTS)
    d = compiled.diagnostics
    assert (d["chunk_particles"], d["chunk_datapoints"]) == (4, 45)
    assert d["jit_chunks"] == 6 and d["jit_fallbacks"] == 0 and d["jit_graphs"] == 2
    _same(compiled, eager)


def test_ais_and_bdmc_with_a_meanfield_guide_compiled_equal_eager():
    x = local_data(60)
    set_local_guide(x, shrink=0.8, widen=1.5)
    target = (local_model, local_guide)
    compiled, eager = _both(target, x, "ais", 8, memory_budget=20_000, **OPTS)
    assert compiled.diagnostics["jit_chunks"] >= 2 and compiled.diagnostics["jit_fallbacks"] == 0
    _same(compiled, eager)
    z = torch.randn(60, generator=torch.Generator().manual_seed(2))
    xs = z + SIGMA * torch.randn(60, generator=torch.Generator().manual_seed(3))
    set_local_guide(xs, shrink=0.8, widen=1.5)
    compiled, eager = _both(target, xs, "bdmc", 8, latents={"z": z}, **OPTS)
    assert compiled.diagnostics["jit_chunks"] >= 1
    _same(compiled, eager)
    assert compiled.diagnostics["upper"] == eager.diagnostics["upper"]


def _gamma_model(x):
    # a positive global latent: HMC moves log(rate), whose log-Jacobian enters the graph
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    with pyro.plate("data", len(x)) as idx:
        pyro.sample("x", dist.Exponential(rate), obs=x[idx])


def _gamma_guide(x):
    a = pyro.param("a", torch.tensor(3.0), constraint=constraints.positive)
    b = pyro.param("b", torch.tensor(2.0), constraint=constraints.positive)
    pyro.sample("rate", dist.Gamma(a, b))


def test_smc_and_a_constrained_latent_compiled_equal_eager():
    pyro.clear_param_store()
    x = torch.distributions.Exponential(1.5).sample((30,))
    target = (_gamma_model, _gamma_guide)
    compiled, eager = _both(target, x, "smc", 16, runs=2, moves=2, leapfrog_steps=2)
    assert compiled.diagnostics["jit_chunks"] >= 1 and compiled.diagnostics["jit_fallbacks"] == 0
    _same(compiled, eager)
    compiled, eager = _both(target, x, "ais", 16, **OPTS)
    assert compiled.diagnostics["jit_chunks"] == 1
    _same(compiled, eager)


def test_a_graph_that_baked_in_a_value_runs_eagerly_with_the_reason():
    # the likelihood's scale is a Python number read off the latent values: a graph records
    # the number of its recording point, and the check at a shifted point catches it
    x = local_data(20)
    set_local_guide(x)

    def model(x):
        with pyro.plate("data", x.shape[0]) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            scale = SIGMA * (1 + 0.1 * abs(float(z.detach().mean())))
            pyro.sample("x", dist.Normal(z, scale), obs=x[idx])

    compiled, eager = _both((model, local_guide), x, "ais", 8, **OPTS)
    d = compiled.diagnostics
    assert d["jit_chunks"] == 0 and d["jit_fallbacks"] == 1
    assert "differed" in d["jit_fallback_reason"]
    _same(compiled, eager)


def test_each_chunk_checks_a_shared_graph_against_its_own_densities():
    # a number read off the chunk's own data is a constant of the graph its first chunk
    # recorded; every later chunk of the same shape must catch that and run eagerly
    x = local_data(60)
    set_local_guide(x)

    def model(x):
        with pyro.plate("data", x.shape[0]) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            shift = float(x[idx].mean())
            pyro.sample("x", dist.Normal(z + 0.01 * shift, SIGMA), obs=x[idx])

    compiled, eager = _both((model, local_guide), x, "ais", 2, memory_budget=6_000, **OPTS)
    d = compiled.diagnostics
    assert (d["chunk_particles"], d["chunk_datapoints"]) == (1, 6) and d["jit_graphs"] == 1
    assert d["jit_chunks"] == 2 and d["jit_fallbacks"] == 18  # the first 6 datapoints compiled
    _same(compiled, eager)
