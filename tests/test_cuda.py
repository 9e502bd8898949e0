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
    entry = zoo.get(name)
    data = entry.simulate(64, seed=0).data
    res = inference.fit(entry, data, steps=20, device="cuda", progress=False)
    assert math.isfinite(res.losses["loss"].iloc[-1])
    for t in entry.networks().values():
        assert all(p.is_cuda for p in t.parameters())
    for method in ("is-prior", "elbo"):
        est = inference.estimate(entry, data, method, 32, device="cuda")
        assert math.isfinite(est.log_evidence)


def test_quadrature_on_cuda():
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    inference.fit(entry, (x[:64],), steps=5, device="cuda", progress=False)
    est = inference.estimate(entry, (x[:16],), "exact", device="cuda", quadrature_points=32)
    assert est.per_datapoint.is_cuda and torch.isfinite(est.per_datapoint).all()


@pytest.mark.parametrize("K", [3, 10])  # a tail too short for a k-hat: NaN/inf on the device
def test_short_tail_khat_on_cuda(K):
    entry = zoo.get("vae", latent_dim=2)
    (x,) = entry.load_data()
    est = inference.estimate(entry, (x[:16],), "is-guide", K, device="cuda")
    assert est.khat_per_datapoint.is_cuda and math.isfinite(est.log_evidence)
