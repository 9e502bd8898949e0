"""The ELBO's two terms recorded by inference.fit, the analytic-KL loss, the KL weight (beta),
and the Gaussian decoder's reconstruction term as a squared error (issue 15, items 2 and 5)."""

import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch

import inference
import zoo
from inference.elbo_terms import particle_terms
from toy import local_data, local_guide, local_model

#: float32 sums: recon - kl and -loss agree to a few float32 ulps of the terms' magnitudes
EPS = 1e-6


def digits(n, **options):
    entry = zoo.get("vae", hidden=(32,), **options)
    (x,) = entry.load_data()
    return entry, x[:n]


def closed_form_kl(loc, scale):
    """KL(N(mu, sigma^2) || N(0, 1)) summed, from the guide's mu, sigma, in float64."""
    mu, s = loc.double().numpy(), scale.double().numpy()
    return 0.5 * np.sum(mu**2 + s**2 - np.log(s**2) - 1)


@pytest.mark.parametrize("case", ["vae, fused Adam, 2 vectorized particles, minibatch",
                                  "user pair, pyro optim, 2 sequential particles",
                                  "vae, meanfield"])
def test_terms_add_up_to_minus_the_loss(case):
    if case.startswith("user"):
        x = local_data(40)
        res = inference.fit((local_model, local_guide), x, steps=20, num_particles=2,
                            vectorize_particles=False, optim=pyro.optim.Adam({"lr": 0.05}),
                            progress=False)
    else:
        entry, x = digits(60)
        kw = (dict(loss="meanfield") if "meanfield" in case
              else dict(num_particles=2, batch_size=20))
        res = inference.fit(entry, (x,), steps=20, progress=False, **kw)
    df = res.losses
    assert list(df.columns) == ["step", "loss", "loss_per_datapoint", "recon", "kl"]
    scale = df.recon.abs() + df.kl.abs()
    assert ((df.recon - df.kl + df.loss).abs() <= EPS * scale).all()
    assert df.kl.abs().max() > 1e-2 * scale.max() and (df.recon < 0).all()  # both terms there


def test_analytic_kl_is_the_closed_form_and_the_sampled_kl_its_unbiased_estimate():
    entry, x = digits(30)
    loc, scale = entry.encode(x)
    exact = closed_form_kl(loc.detach(), scale.detach())
    # one step reads the terms at the initial weights (the step's update comes after)
    analytic = inference.fit(entry, (x,), steps=1, loss="meanfield", progress=False)
    assert analytic.losses.kl[0] == pytest.approx(exact, rel=EPS)
    # the sampled KL of Trace_ELBO, the guide held fixed (an optimiser of step size 0, on
    # purpose: fit(lr=0) is refused) where that step left it: a mean of iid single-sample
    # estimates, within 4 standard errors of the closed form
    exact = closed_form_kl(*(t.detach() for t in entry.encode(x)))
    sampled = inference.fit(entry, (x,), steps=300, optim=pyro.optim.SGD({"lr": 0.0}),
                            loss="trace", progress=False)
    kl = sampled.losses.kl.to_numpy()
    assert abs(kl.mean() - exact) < 4 * kl.std(ddof=1) / math.sqrt(len(kl))
    assert kl.std() > 0.1  # really sampled


def test_kl_weight_scales_only_the_kl_term_in_training():
    entry, x = digits(30)
    loc, scale = entry.encode(x)
    exact = closed_form_kl(loc.detach(), scale.detach())
    res = inference.fit(entry, (x,), steps=1, loss="meanfield", kl_weight=3.0, progress=False)
    row = res.losses.iloc[0]
    assert row.kl == pytest.approx(exact, rel=EPS)  # recorded unweighted
    assert row.objective == pytest.approx(3.0 * row.kl - row.recon, rel=EPS)
    assert row.loss == pytest.approx(row.kl - row.recon, rel=EPS)  # loss is -ELBO
    with pytest.raises(ValueError, match="kl_weight must be a finite number > 0"):
        inference.fit(entry, (x,), steps=1, kl_weight=0.0)
    gmm = zoo.get("gmm", assignments="enumerate")
    with pytest.raises(ValueError, match="needs loss='trace' or 'meanfield'"):
        inference.fit(gmm, gmm.load_data(), steps=1, kl_weight=2.0)


def test_kl_weight_one_is_the_plain_fit_bitwise():
    def run(**kw):
        entry, x = digits(40)
        res = inference.fit(entry, (x,), steps=15, batch_size=20, progress=False, **kw)
        return res.losses, res.state["networks"]

    (plain, nets), (beta1, nets1) = run(), run(kl_weight=1.0)
    assert plain.equals(beta1)
    assert all(torch.equal(nets[m][k], nets1[m][k]) for m in nets for k in nets[m])


def test_evidence_of_a_beta_trained_model_is_the_models_own():
    # A dlvm trained with beta = 4: the estimators see the model itself (no scaled sites, so
    # no refusal), and is-guide agrees with the exact quadrature within its standard error.
    entry = zoo.get("dlvm", hidden=(16,))
    (x,) = entry.load_data()
    x = x[:20]
    res = inference.fit(entry, (x,), steps=150, lr=0.05, kl_weight=4.0, progress=False)
    assert res.target.model == entry.model and res.losses.kl.iloc[-1] > 0
    exact = inference.estimate(entry, (x,), "exact", quadrature_points=64)
    is_guide = inference.estimate(entry, (x,), "is-guide", 2000)
    quadrature_error = len(x) * exact.diagnostics["halved_grid_diff_max"]
    assert abs(is_guide.log_evidence - exact.log_evidence) < 4 * is_guide.stderr + quadrature_error
    elbo = inference.estimate(entry, (x,), "elbo", 2000)
    assert elbo.log_evidence < exact.log_evidence


def test_gaussian_decoder_reconstruction_term_is_the_squared_error():
    # log p(x | z) = -||x - x'||^2 / (2 sigma0^2) - (D / 2) log(2 pi sigma0^2) per image, with
    # x' = E[x | z] the decoder's mean: the recorded recon term is minus the L2 loss + constant.
    sigma0 = 0.2
    entry, x = digits(25, likelihood="gaussian", sigma0=sigma0)
    guide = poutine.trace(entry.guide).get_trace(x)
    model = poutine.trace(poutine.replay(entry.model, trace=guide)).get_trace(x)
    model.compute_log_prob()
    guide.compute_log_prob()
    recon, _ = particle_terms(model, guide)
    z = guide.nodes["z"]["value"].detach()
    with torch.no_grad():
        x_mean = entry.decoder(z).double().numpy()
    xn = x.double().numpy()
    N, D = xn.shape
    l2 = np.sum((xn - x_mean) ** 2) / (2 * sigma0**2)
    assert float(recon) == pytest.approx(-(l2 + N * D / 2 * math.log(2 * math.pi * sigma0**2)),
                                         rel=EPS)


def test_cli_fit_loss_and_kl_weight(tmp_path):
    import json

    import pandas as pd
    from clitools import run_main

    out = tmp_path / "beta"
    argv = ["fit", "vae", "--subset", "40", "--steps", "5", "--loss", "meanfield",
            "--kl-weight", "2", "--option", "hidden=(16,)", "--no-progress", "--out", out]
    rc, _, stderr = run_main(argv)
    assert rc == 0, stderr
    assert list(pd.read_csv(out / "losses.csv").columns) == [
        "step", "loss", "loss_per_datapoint", "recon", "kl", "objective"]
    fit = json.loads((out / "config.json").read_text())["fit"]
    assert (fit["loss"], fit["kl_weight"]) == ("meanfield", 2.0)
    rc, _, stderr = run_main(argv[:9] + ["3"] + argv[10:] + ["--resume"])
    assert rc == 2 and "--kl-weight was 2.0, now 3.0" in stderr
    for bad, message in ((["gmm", "--option", "assignments=enumerate", "--kl-weight", "2"],
                          "--kl-weight 2 needs --loss trace or meanfield; gmm trains with "
                          "traceenum"),
                         (["vae", "--loss", "renyi", "--kl-weight", "0"],
                          "--loss must be one of trace, traceenum, meanfield, got 'renyi'; "
                          "--kl-weight must be a finite number > 0")):
        rc, stdout, stderr = run_main(["fit", *bad, "--out", tmp_path / "o"])
        assert rc == 2 and message in stderr and stderr.count("\n") == 1 and stdout == ""
