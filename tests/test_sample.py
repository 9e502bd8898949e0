"""entry.sample: new data from the *fitted* model, checked against the fitted parameters."""

import contextlib
import io

import numpy as np
import pandas as pd
import torch

import inference
import zoo


def test_gmm_draws_have_the_fitted_mixture_moments():
    entry = zoo.get("gmm", K=2, D=2)
    (x,) = entry.simulate(200, seed=0).data
    inference.fit(entry, (x,), steps=200, lr=0.05)
    p = {k: v.double() for k, v in entry.params_from_guide().items()}
    n = 20000
    (draws,) = entry.sample(n, seed=3)
    mean = (p["weights"][:, None] * p["locs"]).sum(0)
    second = (p["weights"][:, None] * (p["variances"] + p["locs"] ** 2)).sum(0)
    sd = (second - mean**2).sqrt()
    assert ((draws.double().mean(0) - mean).abs() < 4 * sd / n**0.5).all()
    (locs,) = entry.sample(n, seed=3, mean=True)
    assert set(map(tuple, locs.double().unique(dim=0).tolist())) <= set(map(tuple, p["locs"].float().double().tolist()))


def test_map_l2_responses_scatter_with_the_noise_around_the_fitted_line():
    entry = zoo.get("map_l2", guide="gaussian")
    X, y = entry.load_data()
    inference.fit(entry, (X, y), steps=100, lr=0.05)
    Xs, ys = entry.sample(400, seed=1)
    _, fitted = entry.sample(400, seed=1, mean=True)
    torch.testing.assert_close(Xs, X[:400])
    resid = (ys - fitted).double()
    # the residuals are N(0, noise^2): their variance within 4 standard errors (sqrt(2/n) relative)
    assert abs(float(resid.var()) / entry.noise**2 - 1) < 4 * (2 / 400) ** 0.5
    assert abs(float(resid.mean())) < 4 * entry.noise / 400**0.5


def test_vae_draws_are_bernoulli_around_the_decoder_means():
    entry = zoo.get("vae")
    (x,) = entry.load_data()
    inference.fit(entry, (x[:200],), steps=30)
    n = 4000
    (draws,) = entry.sample(n, seed=5)
    (means,) = entry.sample(n, seed=5, mean=True)  # the same z: the same seed
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    se = (means * (1 - means)).mean(0).sqrt() / n**0.5
    assert ((draws.mean(0) - means.mean(0)).abs() < 4 * se + 1e-6).all()


def test_ppzoo_sample_writes_draws_from_a_fitted_run(tmp_path):
    from zoo.app.cli import main

    def run(*argv):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return main([str(a) for a in argv]), err.getvalue()

    assert run("fit", "gmm", "--steps", "30", "--out", tmp_path / "fit")[0] == 0
    rc, _ = run("sample", tmp_path / "fit", "-n", "25", "--out", tmp_path / "d.csv", "--seed", "2")
    assert rc == 0
    df = pd.read_csv(tmp_path / "d.csv")
    assert list(df.columns) == ["x0", "x1", "x2", "x3"] and len(df) == 25
    rc, _ = run("sample", tmp_path / "fit", "-n", "25", "--out", tmp_path / "d.npz", "--seed", "2")
    np.testing.assert_allclose(np.load(tmp_path / "d.npz")["x"], df.to_numpy(), rtol=1e-6)
    rc, err = run("sample", tmp_path / "fit", "-n", "0", "--out", tmp_path / "e.csv")
    assert rc == 2 and "-n must be a positive integer" in err and not (tmp_path / "e.csv").exists()
    rc, err = run("sample", tmp_path / "fit", "--out", tmp_path / "e.txt")
    assert rc == 2 and ".csv or .npz" in err


def test_gaussian_decoder_reconstruction_term_is_squared_error():
    """With a Gaussian decoder of fixed sigma0, -log p(x | z) = ||x - x'||^2 / (2 sigma0^2)
    + (D / 2) log(2 pi sigma0^2), x' = E[x | z]: maximum likelihood is L2 reconstruction."""
    import math

    import pyro
    import pyro.poutine as poutine

    entry = zoo.get("vae", likelihood="gaussian", sigma0=0.2)
    (x,) = entry.load_data()
    x = x[:20]
    tr = poutine.trace(poutine.replay(entry.model, trace=poutine.trace(entry.guide).get_trace(x))
                       ).get_trace(x)
    site = tr.nodes["x"]
    recon = entry.mean_pixels(tr.nodes["z"]["value"])
    D = x.shape[1]
    by_hand = ((x - recon) ** 2).sum(-1) / (2 * 0.2**2) + D / 2 * math.log(2 * math.pi * 0.2**2)
    torch.testing.assert_close(-site["fn"].log_prob(site["value"]), by_hand, rtol=1e-5, atol=1e-4)
    pyro.clear_param_store()
