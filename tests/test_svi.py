"""inference.fit: minibatch unbiasedness, checkpoints, save/load, errors."""

import importlib
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import inference
from inference.target import SubsampleAt, subsampled
from toy import global_guide, global_model, local_data, local_guide, local_model, set_local_guide

LOCAL = (local_model, local_guide)


def test_minibatch_elbo_is_unbiased_for_full_data_elbo():
    # With the guide fixed, E[minibatch loss] over random minibatches and particles equals the
    # full-data loss. Both are Monte Carlo means: compare within 4 combined standard errors.
    x = local_data(100)
    set_local_guide(x, shrink=0.5, widen=2.0)
    elbo = Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    full = torch.tensor([elbo.loss(local_model, local_guide, x) for _ in range(40)])
    handler = SubsampleAt("data")
    model, guide = subsampled(local_model, handler), subsampled(local_guide, handler)
    g = torch.Generator().manual_seed(1)
    mini = []
    for _ in range(400):
        handler.indices = torch.randperm(100, generator=g)[:10]
        mini.append(elbo.loss(model, guide, x))
    mini = torch.tensor(mini)
    se = math.hypot(mini.std() / math.sqrt(len(mini)), full.std() / math.sqrt(len(full)))
    assert abs(mini.mean() - full.mean()) < 4 * se
    # and the minibatch estimate is scaled: without N/B scaling it would be ~10x smaller
    assert abs(mini.mean() - full.mean()) < 0.2 * abs(full.mean())


def test_fit_lowers_loss_and_records_history():
    x = local_data(200)
    res = inference.fit(LOCAL, x, steps=300, lr=0.05, batch_size=50, progress=False)
    assert list(res.losses.columns) == ["step", "loss", "loss_per_datapoint", "recon", "kl"]
    assert len(res.losses) == 300
    first, last = res.losses["loss"][:30].mean(), res.losses["loss"][-30:].mean()
    assert last < first - 50
    # the guide's means moved toward the exact posterior means x / (1 + sigma^2)
    corr = torch.corrcoef(torch.stack([pyro.param("loc").detach(), x]))[0, 1]
    assert corr > 0.9


def test_minibatch_updates_only_the_batch_rows():
    x = local_data(50)
    inference.fit(LOCAL, x, steps=1, batch_size=50, progress=False)  # creates params
    before = pyro.param("loc").detach().clone()
    handler = SubsampleAt("data", torch.tensor([3, 7]))
    svi = pyro.infer.SVI(subsampled(local_model, handler), subsampled(local_guide, handler),
                         pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(x)
    changed = (pyro.param("loc").detach() != before).nonzero().flatten().tolist()
    assert changed == [3, 7]


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    x = local_data(100)
    whole = inference.fit(LOCAL, x, steps=60, batch_size=20, lr=0.05, seed=4, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    svi_module = importlib.import_module("inference.svi")
    real = svi_module._checkpoint

    def stop_at_30(*args):  # Ctrl-C right after the checkpoint of step 30
        real(*args)
        if args[4] == 30:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m:
        m.setattr(svi_module, "_checkpoint", stop_at_30)
        with pytest.raises(KeyboardInterrupt):
            inference.fit(LOCAL, x, steps=60, batch_size=20, lr=0.05, seed=4, progress=False,
                          checkpoint=ckpt, checkpoint_every=10)
    # the checkpoint is plain tensors and data: it loads without running pickled code
    assert torch.load(ckpt, weights_only=True)["step"] == 30
    resumed = inference.fit(LOCAL, x, steps=60, batch_size=20, lr=0.05, seed=4, progress=False,
                            checkpoint=ckpt, checkpoint_every=10)
    torch.testing.assert_close(torch.tensor(resumed.losses["loss"].values),
                               torch.tensor(whole.losses["loss"].values))
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_save_and_load_roundtrip(tmp_path):
    x = local_data(30)
    res = inference.fit(LOCAL, x, steps=50, lr=0.05, progress=False)
    res.save(tmp_path / "run")
    loc = pyro.param("loc").detach().clone()
    pyro.clear_param_store()
    inference.load_fit(LOCAL, tmp_path / "run")
    torch.testing.assert_close(pyro.param("loc").detach(), loc)
    assert (tmp_path / "run" / "losses.csv").read_text().startswith("step,loss")
    with pytest.raises(FileNotFoundError, match="no fitted state"):
        inference.load_fit(LOCAL, tmp_path / "nothing")


def test_fits_do_not_leak():
    x = local_data(30)
    inference.fit(LOCAL, x, steps=5, progress=False)
    assert "loc" in pyro.get_param_store()
    inference.fit((global_model, global_guide), x, steps=1, progress=False)
    assert "loc" not in pyro.get_param_store() and "mu_loc" in pyro.get_param_store()


def test_fit_bad_inputs():
    x = local_data(30)
    with pytest.raises(ValueError, match="unknown loss"):
        inference.fit(LOCAL, x, loss="renyi")
    with pytest.raises(ValueError, match="batch_size"):
        inference.fit(LOCAL, x, batch_size=0)
    with pytest.raises(ValueError, match="NaN"):
        inference.fit(LOCAL, torch.full((3,), float("nan")))
    with pytest.raises(TypeError, match="pair"):
        inference.fit(local_model, x)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            inference.fit(LOCAL, x, device="cuda")
