"""The autoregressive models (zoo/nade.py): exact likelihoods against a brute-force sum over every
image, samples against the model's own pixel marginals, and the exact estimator on them."""

import itertools

import pytest
import torch

import inference
import zoo


@pytest.mark.parametrize("kind", ["nade", "fvsbn", "independent"])
def test_likelihood_sums_to_one_over_every_image(kind):
    entry = zoo.get("nade", kind=kind, hidden=5, data_dim=8, seed=3)
    with torch.no_grad():  # non-trivial weights for every kind
        for p in entry.net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)))
    with torch.no_grad():
        lp = entry.log_prob(every).double()
    assert float(lp.logsumexp(0)) == pytest.approx(0.0, abs=1e-5)
    # the chain rule by hand for one image: p(x_d | x_<d) from the conditionals' own logits
    x = every[77]
    manual = 0.0
    with torch.no_grad():
        for d in range(8):
            prefix = torch.cat([x[:d], torch.zeros(8 - d)])  # later pixels must not matter
            logit = entry.net(prefix.unsqueeze(0))[0, d]
            manual += float(torch.distributions.Bernoulli(logits=logit).log_prob(x[d]))
    assert float(lp[77]) == pytest.approx(manual, abs=1e-5)


def test_samples_have_the_models_pixel_marginals():
    entry = zoo.get("nade", hidden=4, data_dim=6, seed=1)
    with torch.no_grad():
        for p in entry.net.parameters():
            p.mul_(3.0)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)))
    with torch.no_grad():
        probs = entry.log_prob(every).exp()
    marginal = (probs[:, None] * every).sum(0)  # exact P(x_d = 1)
    n = 20000
    (draws,) = entry.sample(n, seed=0)
    se = (marginal * (1 - marginal) / n).sqrt()
    assert ((draws.mean(0) - marginal).abs() < 4 * se + 1e-9).all()
    assert torch.equal(draws, entry.sample(n, seed=0)[0])


def test_fit_and_exact_estimate_are_the_likelihood():
    entry = zoo.get("nade", hidden=16)
    (x,) = entry.load_data()
    x = x[:200]
    fit = inference.fit(entry, (x,), steps=100, lr=0.02)
    assert fit.losses["loss"].iloc[-10:].mean() < fit.losses["loss"].iloc[:10].mean()
    with torch.no_grad():
        truth = entry.log_prob(x).double()
    est = inference.estimate(entry, (x,), "exact", memory_budget=1 << 16)
    torch.testing.assert_close(est.per_datapoint, truth, rtol=0, atol=1e-4)
    isg = inference.estimate(entry, (x,), "is-prior", 10)
    assert isg.log_evidence == pytest.approx(float(truth.sum()), abs=1e-2)  # no latents: exact
    assert entry.num_parameters() == 2 * 64 * 16 + 64 + 16
    assert zoo.get("nade", kind="fvsbn").num_parameters() == 64 * 64 + 64  # (W's upper half unused)


def test_independent_pixels_reach_their_closed_form_optimum():
    """The ladder's bottom rung: the maximum-likelihood independent-pixel model has
    p(x_d = 1) = mean of x_d, so its log-likelihood per image is sum_d of the binary entropy's
    negative."""
    (x,) = zoo.get("nade").load_data()
    m = x.double().mean(0).clamp(1e-12, 1 - 1e-12)
    best = float((m * m.log() + (1 - m) * (1 - m).log()).sum())
    entry = zoo.get("nade", kind="independent")
    inference.fit(entry, (x,), steps=600, lr=0.1)
    with torch.no_grad():
        got = float(entry.log_prob(x).double().mean())
    assert best - 0.05 < got <= best + 1e-6
