"""CUDA smoke tests: every model fits and every estimator runs with device="cuda".
Skipped cleanly on machines without a CUDA device."""

import math

import pytest
import torch

import inference
import zoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", zoo.names())
def test_fit_and_estimate_on_cuda(name):
    entry = zoo.get(name, **zoo.model_class(name).job.options)  # map_l2: a guide with a density
    data = entry.simulate(64, seed=0).data
    res = inference.fit(entry, data, steps=20, device="cuda", progress=False)
    assert math.isfinite(res.losses["loss"].iloc[-1])
    for t in entry.networks().values():
        assert all(p.is_cuda for p in t.parameters())
    for method in ("is-prior", "elbo"):
        est = inference.estimate(entry, data, method, 32, device="cuda")
        assert math.isfinite(est.log_evidence)
    # fitted on the GPU, estimated on the CPU: params and networks move back
    assert math.isfinite(inference.estimate(entry, data, "is-prior", 8).log_evidence)


def test_quadrature_on_cuda():
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    inference.fit(entry, (x[:64],), steps=5, device="cuda", progress=False)
    est = inference.estimate(entry, (x[:16],), "exact", device="cuda", quadrature_points=32)
    assert est.per_datapoint.is_cuda and torch.isfinite(est.per_datapoint).all()


def _within(est, ref, z=4.0):
    """``est`` (an Estimate) agrees with the float ``ref`` within ``z`` of its stderr."""
    return abs(est.log_evidence - ref) <= z * est.stderr + 1e-6 * abs(ref)


def test_annealing_on_cuda():
    """ais and bdmc (local) on factor analysis against its closed form, smc (global) on map_l2 against
    its closed form, both with every tensor on the device."""
    entry = zoo.get("fa", latent_dim=3, data_dim=6)
    sim = entry.simulate(32, seed=0)
    entry.set_params(sim.params["W"], sim.params["mu"], sim.params["psi"])  # bdmc: the simulating model
    entry.set_exact_guide(sim.data[0])  # AIS from the exact posterior: the weights are constant
    exact = inference.estimate(entry, sim.data, "exact", device="cuda")
    ais = inference.estimate(entry, sim.data, "ais", 16, seed=0, temperatures=30, device="cuda")
    assert ais.per_datapoint.is_cuda
    assert abs(ais.log_evidence - exact.log_evidence) < 0.01 * len(sim.data[0])
    bdmc = inference.estimate(entry, sim.data, "bdmc", 8, seed=0, temperatures=30, device="cuda",
                                latents=sim.params)
    d, rounding = bdmc.diagnostics, 1e-3 * len(sim.data[0])  # float32 sums of ~10 nats
    assert d["lower"] < exact.log_evidence + 4 * d["lower_stderr"] + rounding
    assert d["upper"] > exact.log_evidence - 4 * d["upper_stderr"] - rounding

    entry = zoo.get("map_l2", guide="gaussian")
    data = entry.simulate(50, seed=0).data
    exact = inference.estimate(entry, data, "exact", device="cuda")
    smc = inference.estimate(entry, data, "smc", 64, seed=0, runs=8, device="cuda")
    assert _within(smc, exact.log_evidence)


def test_cpu_and_cuda_agree():
    """The same importance-sampling estimate on both devices: the random streams differ, so
    the two agree within their combined standard error, not bit for bit."""
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    x = x[:64]
    inference.fit(entry, (x,), steps=50, progress=False)
    cpu = inference.estimate(entry, (x,), "is-guide", 256, seed=0)
    gpu = inference.estimate(entry, (x,), "is-guide", 256, seed=1, device="cuda")
    assert abs(cpu.log_evidence - gpu.log_evidence) <= 4 * math.hypot(cpu.stderr, gpu.stderr)
    samples = entry.sample(16, seed=0)
    assert torch.isfinite(samples[0]).all()

@pytest.mark.parametrize("K", [3, 10])  # a tail too short for a k-hat: NaN/inf on the device
def test_short_tail_khat_on_cuda(K):
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    est = inference.estimate(entry, (x[:16],), "is-guide", K, device="cuda")
    assert est.khat_per_datapoint.is_cuda and math.isfinite(est.log_evidence)


def test_compare_quick_on_cuda(tmp_path):
    """The application end to end on the device: fits, train and held-out estimates, and the
    report's plots (drawn on the CPU from the device's fitted state)."""
    from clitools import run_main

    rc, _, err = run_main(["compare", "--quick", "--no-progress", "--device", "cuda",
                           "--out", tmp_path, *zoo.names()])
    assert rc == 0, err
    assert (tmp_path / "results.csv").stat().st_size > 0 and (tmp_path / "summary.md").exists()
