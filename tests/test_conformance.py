"""The conformance suite: every registered model (and its main variants) must pass it.

Adding a model to the zoo is writing it and registering it; this file then checks that
SVI and every estimator can run on it without knowing which model it is.
"""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

import inference
import zoo

VARIANTS = [(name, {}) for name in zoo.names()] + [
    ("gmm", {"assignments": "enumerate"}),
    ("gmm", {"assignments": "sample"}),
    ("gmm", {"guide": "map"}),
    ("vae", {"likelihood": "gaussian"}),
    ("map_l2", {"likelihood": "logistic"}),
    ("map_l2", {"guide": "gaussian"}),
]
IDS = [name + "".join(f"-{v}" for v in opts.values()) for name, opts in VARIANTS]


@pytest.fixture(params=VARIANTS, ids=IDS)
def case(request):
    name, opts = request.param
    entry = zoo.get(name, **opts)
    data = entry.simulate(48, seed=0).data
    return entry, data


def _latents(trace):
    return {
        name for name, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }


def test_registry():
    assert set(zoo.names()) >= {"gmm", "dlvm", "vae", "map_l2"}
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*gmm"):
        zoo.get("nope")


def test_protocol_attributes(case):
    entry, data = case
    assert entry.name in zoo.names() and entry.summary and entry.default_data
    assert entry.loss in ("trace", "traceenum")
    assert entry.data_plate is None or isinstance(entry.data_plate, str)
    for site, dim in entry.symmetries.items():
        assert isinstance(site, str) and dim < 0


def test_default_data_loads_and_passes_checks(case):
    entry, _ = case
    data = entry.load_data()
    assert isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data)
    entry.check_data(*data)


def test_model_and_guide_sites_match(case):
    entry, data = case
    guide_tr = poutine.trace(entry.guide).get_trace(*data)
    model_tr = poutine.trace(poutine.replay(entry.model, trace=guide_tr)).get_trace(*data)
    guide_latent, model_latent = _latents(guide_tr), _latents(model_tr)
    enumerated = {n for n in model_latent if model_tr.nodes[n]["infer"].get("enumerate")}
    assert guide_latent <= model_latent
    assert model_latent - guide_latent <= enumerated
    assert any(s["is_observed"] for s in model_tr.nodes.values() if s["type"] == "sample")
    # static structure: a second trace has the same sites
    assert _latents(poutine.trace(entry.guide).get_trace(*data)) == guide_latent


def test_elbo_and_gradients_finite_under_particle_plate(case):
    entry, data = case
    loss_cls = TraceEnum_ELBO if entry.loss == "traceenum" else Trace_ELBO
    elbo = loss_cls(num_particles=5, vectorize_particles=True, max_plate_nesting=entry.max_plate_nesting)
    loss = elbo.differentiable_loss(entry.model, entry.guide, *data)
    assert torch.isfinite(loss)
    loss.backward()
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    params += [p for net in entry.networks().values() for p in net.parameters()]
    assert params, "nothing to optimise"
    for p in params:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_short_fit_lowers_the_loss(case):
    entry, data = case
    res = inference.fit(entry, data, steps=150, lr=0.02, num_particles=4, progress=False, seed=1)
    losses = res.losses["loss"].to_numpy()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-20:].mean() < losses[:20].mean()


def test_estimators_run(case):
    entry, data = case
    inference.fit(entry, data, steps=20, lr=0.02, progress=False)
    est = inference.estimate(entry, data, method="is-prior", num_samples=16)
    assert math.isfinite(est.log_evidence) and est.stderr >= 0


def test_bad_inputs_raise_before_work(case):
    entry, data = case
    nan = (data[0].clone().index_fill_(0, torch.tensor([0]), float("nan")),) + data[1:]
    with pytest.raises(ValueError, match="NaN"):
        inference.fit(entry, nan, steps=1)
    wrong = (data[0].unsqueeze(-1),) + data[1:]
    with pytest.raises(ValueError):
        inference.fit(entry, wrong, steps=1)
    short = (data[0][:-1],) + data[1:] if len(data) > 1 else None
    if short is not None:
        with pytest.raises(ValueError, match="datapoints"):
            inference.fit(entry, short, steps=1)
    assert len(pyro.get_param_store()) == 0  # failed before any work


def test_simulate_is_seeded(case):
    entry, _ = case
    a, b = entry.simulate(20, seed=3), entry.simulate(20, seed=3)
    c = entry.simulate(20, seed=4)
    for x, y in zip(a.data, b.data):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(a.data, c.data))
    entry.check_data(*a.data)
