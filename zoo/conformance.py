"""The conformance suite every registered model must pass, as plain functions (like
scikit-learn's ``check_estimator``): a model passes when :func:`check_model` returns.

``tests/test_conformance.py`` runs every check on every registered model and its main variants;
a model written in a user's own file is checked with ``zoo.conformance.check_model(entry)``.
Each check clears Pyro's param store first and takes the entry and data simulated from it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

import inference
import zoo
from zoo.base import Data, ZooModel

NUM_DATA = 48


def _latents(trace) -> set:
    return {name for name, s in trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}


def _raises(exc: type, fn: Callable[[], Any], match: Optional[str] = None) -> None:
    try:
        fn()
    except exc as err:
        assert match is None or match in str(err), f"{exc.__name__} without {match!r}: {err}"
        return
    raise AssertionError(f"expected {exc.__name__}{f' ({match})' if match else ''}")


def check_protocol_attributes(entry: ZooModel, data: Data) -> None:
    assert entry.name in zoo.names() and entry.summary and entry.default_data
    assert entry.loss in ("trace", "traceenum")
    assert entry.data_plate is None or isinstance(entry.data_plate, str)
    for site, dim in entry.symmetries.items():
        assert isinstance(site, str) and dim < 0
    assert isinstance(entry.job, zoo.Job)


def check_default_data_loads_and_passes_checks(entry: ZooModel, data: Data) -> None:
    loaded = entry.load_data()
    assert isinstance(loaded, tuple) and all(isinstance(t, torch.Tensor) for t in loaded)
    entry.check_data(*loaded)


def check_model_and_guide_sites_match(entry: ZooModel, data: Data) -> None:
    guide_tr = poutine.trace(entry.guide).get_trace(*data)
    model_tr = poutine.trace(poutine.replay(entry.model, trace=guide_tr)).get_trace(*data)
    guide_latent, model_latent = _latents(guide_tr), _latents(model_tr)
    enumerated = {n for n in model_latent if model_tr.nodes[n]["infer"].get("enumerate")}
    assert guide_latent <= model_latent, f"guide sites not in the model: {guide_latent - model_latent}"
    assert model_latent - guide_latent <= enumerated, "model latents the guide does not sample"
    assert any(s["is_observed"] for s in model_tr.nodes.values() if s["type"] == "sample")
    # static structure: a second trace has the same sites
    assert _latents(poutine.trace(entry.guide).get_trace(*data)) == guide_latent


def check_elbo_and_gradients_finite_under_particle_plate(entry: ZooModel, data: Data) -> None:
    loss_cls = TraceEnum_ELBO if entry.loss == "traceenum" else Trace_ELBO
    elbo = loss_cls(num_particles=5, vectorize_particles=True,
                    max_plate_nesting=entry.max_plate_nesting)
    loss = elbo.differentiable_loss(entry.model, entry.guide, *data)
    assert torch.isfinite(loss)
    loss.backward()
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    params += [p for net in entry.networks().values() for p in net.parameters()]
    assert params, "nothing to optimise"
    for p in params:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def check_short_fit_lowers_the_loss(entry: ZooModel, data: Data) -> None:
    res = inference.fit(entry, data, steps=150, lr=0.02, num_particles=4, progress=False, seed=1)
    losses = res.losses["loss"].to_numpy()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-20:].mean() < losses[:20].mean()


def check_estimators_run(entry: ZooModel, data: Data) -> None:
    inference.fit(entry, data, steps=20, lr=0.02, progress=False)
    est = inference.estimate(entry, data, method="is-prior", num_samples=16)
    assert math.isfinite(est.log_evidence) and est.stderr >= 0


def check_bad_inputs_raise_before_work(entry: ZooModel, data: Data) -> None:
    nan = (data[0].clone().index_fill_(0, torch.tensor([0]), float("nan")),) + data[1:]
    _raises(ValueError, lambda: inference.fit(entry, nan, steps=1), "NaN")
    wrong = (data[0].unsqueeze(-1),) + data[1:]
    _raises(ValueError, lambda: inference.fit(entry, wrong, steps=1))
    if len(data) > 1:
        short = (data[0][:-1],) + data[1:]
        _raises(ValueError, lambda: inference.fit(entry, short, steps=1), "datapoints")
    assert len(pyro.get_param_store()) == 0, "a failed fit left params behind"


def check_simulate_is_seeded(entry: ZooModel, data: Data) -> None:
    a, b = entry.simulate(20, seed=3), entry.simulate(20, seed=3)
    c = entry.simulate(20, seed=4)
    for x, y in zip(a.data, b.data):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(a.data, c.data))
    entry.check_data(*a.data)


def check_sample_draws_from_the_fitted_model(entry: ZooModel, data: Data) -> None:
    inference.fit(entry, data, steps=5, lr=0.02, progress=False)
    a, b = entry.sample(7, seed=1), entry.sample(7, seed=1)
    assert isinstance(a, tuple) and all(torch.equal(s, t) for s, t in zip(a, b)), "not seeded"
    entry.check_data(*a)
    means = entry.sample(7, seed=1, mean=True)
    assert [t.shape for t in means] == [t.shape for t in a]


def check_views_draw(entry: ZooModel, data: Data) -> None:
    import matplotlib.pyplot as plt

    inference.fit(entry, data, steps=5, lr=0.02, progress=False)
    with torch.no_grad():
        figures = entry.views(*data)
    try:
        assert isinstance(figures, dict) and all(isinstance(k, str) for k in figures)
    finally:
        for fig in figures.values():
            plt.close(fig)


CHECKS: List[Callable[[ZooModel, Data], None]] = [
    check_protocol_attributes,
    check_default_data_loads_and_passes_checks,
    check_model_and_guide_sites_match,
    check_elbo_and_gradients_finite_under_particle_plate,
    check_short_fit_lowers_the_loss,
    check_estimators_run,
    check_bad_inputs_raise_before_work,
    check_simulate_is_seeded,
    check_sample_draws_from_the_fitted_model,
    check_views_draw,
]


def check_model(entry: ZooModel, checks: Optional[List[Callable]] = None) -> Tuple[str, ...]:
    """Run every conformance check on ``entry`` (data simulated from it, seed 0); raises
    ``AssertionError`` naming the first check that fails. Returns the names of the checks run."""
    done = []
    for check in checks or CHECKS:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        try:
            check(entry, entry.simulate(NUM_DATA, seed=0).data)
        except AssertionError as err:
            raise AssertionError(f"{entry.name}: {check.__name__} failed: {err}") from err
        done.append(check.__name__)
    pyro.clear_param_store()
    return tuple(done)
