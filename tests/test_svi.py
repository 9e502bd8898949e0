"""inference.fit: minibatch unbiasedness, checkpoints, save/load, errors."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import inference
from fittools import interrupted_after
from inference.state import StateError
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
    # Ctrl-C right after the checkpoint of step 28: inside an epoch (5 batches of 20), so the
    # resumed stream must pick up its permutation
    with interrupted_after(28), pytest.raises(KeyboardInterrupt):
        inference.fit(LOCAL, x, steps=60, batch_size=20, lr=0.05, seed=4, progress=False,
                      checkpoint=ckpt, checkpoint_every=7)
    # the checkpoint is plain tensors and data: it loads without running pickled code
    assert torch.load(ckpt, weights_only=True)["step"] == 28
    resumed = inference.fit(LOCAL, x, steps=60, batch_size=20, lr=0.05, seed=4, progress=False,
                            checkpoint=ckpt, checkpoint_every=7)
    torch.testing.assert_close(torch.tensor(resumed.losses["loss"].values),
                               torch.tensor(whole.losses["loss"].values), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_checkpoint_with_a_minibatch_position_outside_the_epoch_is_refused(tmp_path):
    x, ckpt = local_data(100), tmp_path / "ckpt.pt"
    inference.fit(LOCAL, x, steps=7, batch_size=20, checkpoint=ckpt, checkpoint_every=7)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["batches_taken"] == 2  # 7 steps of an epoch of 5 batches
    torch.save(dict(saved, batches_taken=6), ckpt)
    with pytest.raises(StateError, match=r"minibatch position 6 outside \[0, 5\]"):
        inference.fit(LOCAL, x, steps=7, batch_size=20, checkpoint=ckpt, checkpoint_every=7)


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


# ---------------------------------------------------------------------------- held-out tracking
def test_heldout_tracking_leaves_the_fit_bitwise_unchanged_and_is_the_exact_loss():
    # an autoregressive model has no latents: the held-out ELBO is exactly -log p(x_test), which
    # numpy computes from the fitted weights; tracking it must not touch the training stream.
    import numpy as np
    import zoo

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((120, 16), 0.3), generator=g)
    train, test = x[:90], x[90:]
    entry = zoo.get("nade", kind="fvsbn", data_dim=16)
    plain = inference.fit(entry, train, steps=40, lr=0.1, batch_size=30, progress=False)
    ref = {k: v.clone() for k, v in entry.net.state_dict().items()}
    entry = zoo.get("nade", kind="fvsbn", data_dim=16)  # fresh weights
    tracked = inference.fit(entry, train, steps=40, lr=0.1, batch_size=30, progress=False,
                            heldout=test, heldout_every=15)
    assert plain.heldout is None
    assert all(torch.equal(ref[k], v) for k, v in entry.net.state_dict().items())
    assert plain.losses["loss"].tolist() == tracked.losses["loss"].tolist()
    assert tracked.heldout["step"].tolist() == [15, 30, 40]
    # p(x_d = 1 | x_<d) = sigmoid(b_d + sum_{j<d} W_dj x_j), in float64 by numpy
    b = entry.net.b.detach().numpy().astype(np.float64)
    W = np.tril(entry.net.W.detach().numpy().astype(np.float64), -1)
    xt = test.numpy().astype(np.float64)
    a = b + xt @ W.T
    logp = (xt * -np.logaddexp(0, -a) + (1 - xt) * -np.logaddexp(0, a)).sum(1)
    assert tracked.heldout["heldout_loss_per_datapoint"].iloc[-1] == pytest.approx(
        -logp.mean(), rel=1e-5)


def test_heldout_tracking_with_latents_and_its_refusals():
    x = local_data(60)
    # a per-datapoint guide has no parameters for held-out rows: refused, naming the fix
    with pytest.raises(ValueError, match="per datapoint.*amortized"):
        inference.fit(LOCAL, x[:40], steps=2, heldout=x[40:], progress=False)
    with pytest.raises(ValueError, match="heldout_every"):
        inference.fit(LOCAL, x[:40], steps=2, heldout=x[40:], heldout_every=0, progress=False)
    # a global model: the held-out loss is a finite estimate, evaluated on schedule, and its
    # draws come from their own stream: the fit's sampled latents, hence params, are unchanged
    y = local_data(50, seed=1)
    pair = (global_model, global_guide)
    inference.fit(pair, y[:40], steps=25, progress=False)
    plain = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    res = inference.fit(pair, y[:40], steps=25, heldout=y[40:], heldout_every=10, progress=False)
    assert all(torch.equal(plain[k], v.detach()) for k, v in pyro.get_param_store().items())
    assert res.heldout["step"].tolist() == [10, 20, 25]
    assert res.heldout["heldout_loss"].map(math.isfinite).all()
    with pytest.raises(ValueError, match="form"):
        inference.fit((global_model, global_guide), y[:40], steps=2, heldout=y[40:, None],
                      progress=False)
