"""Statistical tests of the estimators on user-written pairs with closed-form evidence.

Tolerances come from the estimators' own standard errors or from binomial/normal
sampling distributions, with the numbers stated where they are used.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
from inference.psis import psis_smooth
from inference.weights import WeightStats, pareto_khat, plan_chunks
from toy import (
    global_exact,
    global_guide,
    global_model,
    local_data,
    local_exact,
    local_guide,
    local_model,
    set_global_guide,
    set_local_guide,
)

LOCAL = (local_model, local_guide)
GLOBAL = (global_model, global_guide)


@pytest.mark.parametrize("shrink, widen", [(0.8, 1.5), (1.0, 300.0), (0.0, 1e5)])
def test_quadrature_matches_closed_form(shrink, widen):
    """The grid starts at the guide and moves to the posterior where it is far too coarse: a
    guide 300x or 10^5x too wide (and off centre) still gives the exact evidence."""
    x = local_data(100)
    set_local_guide(x, shrink=shrink, widen=widen)
    est = inference.estimate(LOCAL, x, method="exact")
    assert est.scope == "local"
    torch.testing.assert_close(est.per_datapoint, local_exact(x), atol=1e-5, rtol=0)
    assert est.diagnostics["halved_grid_diff_max"] < 1e-4
    assert est.diagnostics["boundary_mass_max"] < 1e-6


def test_is_guide_local_within_three_stderr():
    x = local_data(200)
    set_local_guide(x, shrink=0.9, widen=1.3)  # an imperfect guide: weights vary
    est = inference.estimate(LOCAL, x, method="is-guide", num_samples=500, seed=1)
    exact = float(local_exact(x).sum())
    assert est.stderr > 0
    assert abs(est.log_evidence - exact) < 3 * est.stderr + 1e-6
    assert est.per_datapoint.shape == (200,)


def test_stderr_is_calibrated_across_datapoints():
    # Each datapoint has its own independent particles, so the N per-datapoint 95% intervals
    # are N independent trials: coverage ~ Binomial(400, 0.95), mean 380, sd 4.4. We accept
    # 366..400 (about -3.2 sd); a stderr off by a factor 1.5 gives ~310 coverage. The ELBO's
    # log w is skewed (quadratic in z), so it needs K in the hundreds for the normal interval.
    x = local_data(400, seed=3)
    set_local_guide(x, shrink=0.8, widen=1.6)
    for method, K in [("is-guide", 200), ("is-prior", 2000), ("elbo", 400)]:
        est = inference.estimate(LOCAL, x, method=method, num_samples=K, seed=2)
        target = local_exact(x)
        if method == "elbo":  # the ELBO estimates E_q[log w], not log p(x): compare to it exactly
            big = inference.estimate(LOCAL, x, method="elbo", num_samples=20000, seed=9)
            target = big.per_datapoint
        covered = ((est.per_datapoint - target).abs() <= 1.96 * est.stderr_per_datapoint).sum()
        assert 366 <= int(covered) <= 400, (method, int(covered))


def test_is_prior_unbiased_in_probability_space():
    # p_hat = mean of K prior weights is unbiased for p(x_n). Over N datapoints, the ratio
    # p_hat / p has mean 1; its standard error is the sample sd / sqrt(N).
    x = local_data(300, seed=4)
    est = inference.estimate(LOCAL, x, method="is-prior", num_samples=5, seed=5)
    ratio = (est.per_datapoint - local_exact(x)).exp()
    se = ratio.std() / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1) < 3 * float(se)
    # log-space it is biased low (Jensen): a check that the test can tell the difference
    assert float((est.per_datapoint - local_exact(x)).mean()) < 0


def test_ordering_elbo_iwae_exact():
    x = local_data(300, seed=6)
    set_local_guide(x, shrink=0.7, widen=1.8)
    exact = float(local_exact(x).mean())
    vals, ses = [], []
    for method, K in [("elbo", 64), ("is-guide", 8), ("is-guide", 64)]:
        e = inference.estimate(LOCAL, x, method=method, num_samples=K, seed=7)
        vals.append(e.mean_per_datapoint)
        ses.append(e.stderr / len(x))
    for a, b, sa, sb in zip(vals, vals[1:], ses, ses[1:]):
        assert a < b + 3 * math.hypot(sa, sb)
    assert vals[-1] < exact + 3 * ses[-1]
    assert vals[0] < vals[-1] - 0.05  # the gaps are real here, not ties


def test_tiny_memory_budget_gives_the_right_answer():
    x = local_data(100)
    set_local_guide(x, shrink=0.9, widen=1.3)
    big = inference.estimate(LOCAL, x, method="is-guide", num_samples=400, seed=1)
    tiny = inference.estimate(LOCAL, x, method="is-guide", num_samples=400, seed=1, memory_budget=4096)
    exact = float(local_exact(x).sum())
    for est in (big, tiny):
        assert abs(est.log_evidence - exact) < 3 * est.stderr
    assert abs(tiny.stderr - big.stderr) < 0.3 * big.stderr


def test_streaming_stats_equal_one_pass_and_psis():
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(1000, 7, generator=g, dtype=torch.float64) * 2
    lw[:, 3] = torch.distributions.StudentT(1.5).sample((1000,)).double()  # a heavy tail
    one, many = WeightStats(1000), WeightStats(1000)
    one.update(lw)
    for chunk in lw.split(37):
        many.update(chunk)
    for f in ("log_mean", "ess", "is_stderr", "mean", "mean_stderr"):
        torch.testing.assert_close(getattr(one, f)(), getattr(many, f)())
    torch.testing.assert_close(one.log_mean(), lw.logsumexp(0) - math.log(1000))
    torch.testing.assert_close(one.mean_stderr(), lw.std(0) / math.sqrt(1000))
    w = (lw - lw.max(0).values).exp()
    torch.testing.assert_close(one.ess(), w.sum(0) ** 2 / (w**2).sum(0))
    khat = pareto_khat(many.top, 1000, budget_bytes=1 << 20)
    _, ref = psis_smooth(lw.T.numpy())
    np.testing.assert_allclose(khat.numpy(), ref, rtol=1e-10)
    assert khat[3] > khat[0]


@pytest.mark.parametrize("K", [5, 20, 25, 100, 3000])
def test_vectorized_khat_equals_psis_on_every_kind_of_row(K):
    """The batched GPD fit against PSIS row by row (``psis_smooth``, itself checked against a
    plain reference and arviz in test_psis.py), including the rows it hands to the per-row fit
    (ties at the cutoff, -inf weights, all-equal weights) and tiny tails."""
    g = torch.Generator().manual_seed(K)
    lw = torch.randn(K, 40, generator=g, dtype=torch.float64) * 2
    lw[:, 1] = torch.distributions.StudentT(1.5).sample((K,)).double()
    lw[:, 2] = lw[:, 2] * 300  # a tail far heavier than any guide should give
    lw[:, 3] = 1.0  # all tied
    lw[:, 4] = lw[:, 4].round()  # ties at the cutoff
    lw[: K // 2, 5] = -math.inf
    lw[:, 6] = lw[:, 6] * 1e-12  # nearly equal weights
    stats = WeightStats(K)
    for chunk in lw.split(7):
        stats.update(chunk)
    khat = pareto_khat(stats.top, K, budget_bytes=1 << 16).numpy()  # several row groups
    _, ref = psis_smooth(lw.T.numpy())
    np.testing.assert_allclose(khat, ref, rtol=1e-10)


def test_global_scope_is_guide_and_prior():
    x = local_data(50, seed=8) + 0.3
    set_global_guide(x, widen=1.2)
    exact = global_exact(x)
    for method in ("is-guide", "is-prior"):
        est = inference.estimate(GLOBAL, x, method=method, num_samples=4000, seed=3)
        assert est.scope == "global" and est.per_datapoint is None
        assert abs(est.log_evidence - exact) < 3 * est.stderr
    elbo = inference.estimate(GLOBAL, x, method="elbo", num_samples=4000, seed=3)
    assert elbo.log_evidence < exact


def test_bad_inputs_raise_clear_errors():
    x = local_data(20)
    set_local_guide(x)
    for K in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            inference.estimate(LOCAL, x, num_samples=K)
    with pytest.raises(ValueError, match="unknown method"):
        inference.estimate(LOCAL, x, method="no-such-method")
    with pytest.raises(ValueError, match="NaN"):
        inference.estimate(LOCAL, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="is global"):
        inference.estimate(GLOBAL, x, scope="local")
    with pytest.raises(RuntimeError, match="CUDA"):
        if torch.cuda.is_available():
            raise RuntimeError("CUDA present: nothing to check")
        inference.estimate(LOCAL, x, device="cuda")

    def empty_guide(x):
        pass

    with pytest.raises(ValueError, match="no site 'z'"):
        inference.estimate((local_model, empty_guide), x, method="is-guide")
    # the prior proposal needs no guide site
    inference.estimate((local_model, empty_guide), x, method="is-prior", num_samples=4)


def test_chunk_plan_fits_the_budget_and_is_even():
    rng = np.random.default_rng(0)
    for _ in range(500):
        K, N = int(rng.integers(1, 10**5)), int(rng.integers(1, 5000))
        per_unit, budget = float(rng.uniform(10, 1e4)), int(rng.integers(1, 1 << 28))
        for n in (N, None):
            kc, bc = plan_chunks(K, n, per_unit, budget)
            cells = kc * (bc if n else 1)
            assert 1 <= kc <= K and (n is None or 1 <= bc <= n)
            assert cells * per_unit <= budget or cells == 1
            for total, size in ((K, kc), (n, bc)):
                if total:  # every chunk but the last is full, and the last is not much smaller
                    count = -(-total // size)
                    assert total - (count - 1) * size > size - count


def _two_mode_model(x):
    with pyro.plate("data", x.shape[0]) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z**2, 1.0), obs=x[idx])


def _one_mode_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.clamp(min=0).sqrt(), 0.2))  # on the mode at +sqrt(x)


def test_quadrature_far_field_finds_the_mode_the_guide_misses():
    """x ~ N(z^2, 1): the posterior has modes at +-sqrt(x), the guide sits on one. The local
    grid alone would be low by up to log 2; the far field brings the second mode back. The
    reference is scipy's adaptive quadrature of the 1-D integral."""
    from scipy import integrate, stats

    x = torch.tensor([2.0, 3.0, 4.0, 6.0])
    est = inference.estimate((_two_mode_model, _one_mode_guide), x, method="exact")
    for xn, got in zip(x.tolist(), est.per_datapoint.tolist()):
        f = lambda z: stats.norm.pdf(z) * stats.norm.pdf(xn, z**2, 1.0)  # noqa: E731
        ref = math.log(integrate.quad(f, -10, 10, points=[-xn**0.5, xn**0.5], epsabs=0)[0])
        assert abs(got - ref) < 0.01, (xn, got, ref)
    assert est.diagnostics["far_field_mass_max"] > 0.3


def test_estimate_says_whether_its_stderr_is_vouched_for():
    """A guide far too narrow gives heavy-tailed weights: the estimate carries a caveat and is
    not vouched for; the exact posterior as guide gives light weights and no caveat. The
    caveats are the engine's (one rule), and compare's rows carry them as ``vouched``."""
    x = local_data(50)
    set_local_guide(x, widen=0.2)  # q 5x too narrow: w has infinite variance (k-hat > 0.7)
    bad = inference.estimate(LOCAL, x, method="is-guide", num_samples=1000, seed=0)
    assert bad.khat > 0.7 and not bad.vouched
    assert any("k-hat" in c for c in bad.caveats)
    assert "not vouched for" in repr(bad)
    set_local_guide(x)
    good = inference.estimate(LOCAL, x, method="is-guide", num_samples=1000, seed=0)
    assert good.vouched and good.caveats == ()
    elbo = inference.estimate(LOCAL, x, method="elbo", num_samples=1000, seed=0)
    assert elbo.vouched  # its stderr is that of an average of log w: no tail rule
    rows = inference.compare(LOCAL, x, methods=["is-guide"], num_samples=[1000], seeds=[0])
    assert rows["vouched"].tolist() == [True]
    summary = inference.summarise(rows.assign(vouched=[False]))
    assert summary["vouched"].tolist() == [False]
    legacy = inference.summarise(rows.drop(columns="vouched").assign(khat=0.9))
    assert legacy["vouched"].tolist() == [False]  # old files: judged by the same rule


def test_compare_runs_each_method_at_the_k_it_takes():
    # K = 1 is in every job's grid; bridge and chib need K >= 4, nested and stepping-stone
    # K >= 2. Their rows start at the K they take (the default job crashed at K = 1), and
    # a method that takes no K of the grid is skipped with its reason.
    x = local_data(6)
    set_global_guide(x)
    least = {m: inference.estimators.get(m).min_samples for m in inference.methods()}
    assert least["bridge"] == least["chib"] == 4 and least["nested"] == least["stepping-stone"] == 2
    for m, k in least.items():  # the refusal the attribute stands for
        if k > 1:
            with pytest.raises(ValueError, match=f"K >= {k}"):
                inference.estimate(GLOBAL, x, m, k - 1, warmup=2, temperatures=2,
                                   **({"mcmc_steps": 1} if m == "nested" else {}))
    methods = ["is-guide", "nested", "bridge"]
    rows = inference.compare(GLOBAL, x, methods=methods, num_samples=[1, 2], seeds=[0],
                             mcmc_steps=2, warmup=4)
    assert sorted(zip(rows["method"], rows["K"])) == [("is-guide", 1), ("is-guide", 2),
                                                      ("nested", 2)]
    assert rows.attrs["skipped"] == {"bridge": "bridge needs K >= 4, the largest K asked for is 2"}
