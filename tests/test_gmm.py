"""Tests of zoo/gmm.py: parameter recovery, the exact likelihood against scikit-learn,
agreement of the three treatments of the assignments, particle vectorization, input checks."""

import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture as SkGMM

import inference
import zoo

FORMS = ["marginal", "enumerate", "sample"]
GUIDES = ["meanfield", "map"]



def elbo_for(form, **kw):
    return (TraceEnum_ELBO if form == "enumerate" else Trace_ELBO)(max_plate_nesting=1, **kw)


def set_map(values):
    """Put MAP guide values into the param store (constrained values)."""
    pyro.clear_param_store()
    cons = {"weights": pyro.distributions.constraints.simplex,
            "variances": pyro.distributions.constraints.positive}
    for site, v in values.items():
        con = cons.get(site, pyro.distributions.constraints.real)
        pyro.param(f"{site}_map", v.clone(), constraint=con)


# ---- recovery ---------------------------------------------------------------------------
@pytest.mark.parametrize("guide,steps", [("map", 150), ("meanfield", 300)])
@pytest.mark.parametrize("shared", [False, True])
def test_recovers_simulated_parameters(guide, steps, shared):
    N, K, D = 600, 3, 2
    entry = zoo.get("gmm", K=K, D=D, guide=guide, shared_variance=shared)
    sim = entry.simulate(N, seed=0)
    (x,) = sim.data
    res = inference.fit(entry, x, steps=steps,
                        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99}))
    assert res.losses["loss"].iloc[-20:].mean() <= res.losses["loss"].iloc[0] + 1.0
    est, true = entry.params_from_guide(), sim.params
    # Match fitted components to true ones (label switching).
    _, perm = linear_sum_assignment(torch.cdist(true["locs"], est["locs"]).numpy())
    w = true["weights"]
    n_k = N * w[:, None]  # expected points per component
    var_true = true["variances"].expand(K, D)
    # Standard errors of a cluster mean, a proportion, a sample variance (per coordinate).
    loc_tol = 4 * (var_true / n_k).sqrt()
    locs = est["locs"][perm]
    assert ((locs - true["locs"]).abs() <= loc_tol).all(), (locs, true["locs"])
    assert ((est["weights"][perm] - w).abs() <= 4 * (w * (1 - w) / N).sqrt()).all(), est["weights"]
    if shared:
        var_est, var_tol = est["variances"], 4 * true["variances"] * math.sqrt(2 / N)
        assert ((var_est - true["variances"]).abs() <= var_tol).all(), var_est
    else:
        var_est, var_tol = est["variances"][perm], 4 * var_true * (2 / n_k).sqrt()
        assert ((var_est - var_true).abs() <= var_tol).all(), (var_est, var_true)


# ---- exact likelihood ---------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
def test_log_likelihood_matches_sklearn(shared):
    entry = zoo.get("gmm", guide="map", shared_variance=shared)
    (x,) = entry.load_data()
    inference.fit(entry, x, steps=50, lr=0.05)
    params = {k: v.double() for k, v in entry.params_from_guide().items()}
    ours = entry.log_likelihood(x.double(), params)
    assert ours.shape == (x.shape[0],)
    var = params["variances"].expand(entry.K, entry.D).numpy()
    sk = SkGMM(n_components=entry.K, covariance_type="diag")
    sk.weights_, sk.means_ = params["weights"].numpy(), params["locs"].numpy()
    sk.covariances_, sk.precisions_cholesky_ = var, 1 / np.sqrt(var)
    np.testing.assert_allclose(ours.numpy(), sk.score_samples(x.double().numpy()), rtol=1e-5)
    # Batched params give one row per batch element.
    batched = {k: torch.stack([v, v]) for k, v in params.items()}
    torch.testing.assert_close(entry.log_likelihood(x.double(), batched), torch.stack([ours, ours]))


# ---- the three forms agree ----------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
def test_enumeration_equals_marginalisation(shared):
    marg = zoo.get("gmm", guide="map", shared_variance=shared)
    enum = zoo.get("gmm", guide="map", assignments="enumerate", shared_variance=shared)
    (x,) = marg.load_data()
    inference.fit(marg, x, steps=30, lr=0.05)  # params from the marginal form ...
    exact = -marg.log_likelihood(x, marg.params_from_guide()).sum()
    l_marg = Trace_ELBO(max_plate_nesting=1).loss(marg.model, marg.guide, x)
    l_enum = TraceEnum_ELBO(max_plate_nesting=1).loss(enum.model, enum.guide, x)  # ... reused
    l_vec = TraceEnum_ELBO(max_plate_nesting=1, num_particles=4,
                           vectorize_particles=True).loss(enum.model, enum.guide, x)
    assert l_enum == pytest.approx(l_marg, rel=1e-6)
    assert l_vec == pytest.approx(l_marg, rel=1e-6)
    # The Delta guide contributes nothing; the prior term is the rest.
    assert l_marg > exact.item()


def test_enumeration_equals_marginalisation_meanfield():
    """Same seed -> same guide draws -> equal ELBO estimates for every particle."""
    marg = zoo.get("gmm")
    enum = zoo.get("gmm", assignments="enumerate")
    (x,) = marg.load_data()
    kw = dict(max_plate_nesting=1, num_particles=4, vectorize_particles=True)
    pyro.set_rng_seed(1)
    l_marg = Trace_ELBO(**kw).loss(marg.model, marg.guide, x)
    pyro.set_rng_seed(1)
    l_enum = TraceEnum_ELBO(**kw).loss(enum.model, enum.guide, x)
    assert l_enum == pytest.approx(l_marg, rel=1e-6)


def test_sample_form_with_exact_posterior_proposal_is_exact():
    """With q(z_n) = p(z_n | x_n, globals), log p(x, z) - log q(z) = log p(x) for every draw."""
    samp = zoo.get("gmm", guide="map", assignments="sample")
    marg = zoo.get("gmm", guide="map")
    (x,) = samp.load_data()
    init = samp.initial_values(x)
    params = {k: init[k] for k in ("weights", "locs", "variances")}
    set_map(params)
    comp = pyro.distributions.Normal(params["locs"], params["variances"].sqrt()).to_event(1)
    joint = params["weights"].log() + comp.log_prob(x[:, None, :])  # [N, K]
    pyro.param("assignment_logits", joint - joint.logsumexp(-1, keepdim=True))
    l_marg = Trace_ELBO(max_plate_nesting=1).loss(marg.model, marg.guide, x)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        l_samp = Trace_ELBO(max_plate_nesting=1).loss(samp.model, samp.guide, x)
        assert l_samp == pytest.approx(l_marg, rel=1e-6)


def test_sample_form_traces():
    entry = zoo.get("gmm", assignments="sample")
    (x,) = entry.load_data()
    N, K = x.shape[0], entry.K
    guide_tr = poutine.trace(entry.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(entry.model, trace=guide_tr)).get_trace(x)
    z = guide_tr.nodes["z"]
    assert z["value"].shape == (N,)
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert pyro.param("assignment_logits").shape == (N, K)
    assert torch.equal(model_tr.nodes["z"]["value"], z["value"])
    assert math.isfinite(Trace_ELBO(max_plate_nesting=1).loss(entry.model, entry.guide, x))
    # A subsample set from outside: the guide's logits and z follow the plate's indices.
    idx = torch.tensor([3, 70, 140])
    sub_tr = poutine.trace(poutine.condition(entry.guide, {"data": idx})).get_trace(x)
    assert sub_tr.nodes["z"]["value"].shape == (3,)
    # A minibatch step updates only the minibatch's rows of the logits.
    res = inference.fit(entry, x, steps=1, lr=0.1, batch_size=50)
    assert res.losses["loss"].map(math.isfinite).all()
    assert (pyro.param("assignment_logits") != 0).any(-1).sum() == 50


def test_subsampled_plate_scales_the_likelihood():
    entry = zoo.get("gmm", guide="map")
    (x,) = entry.load_data()
    init = entry.initial_values(x)
    params = {k: init[k] for k in ("weights", "locs", "variances")}
    set_map(params)
    idx = torch.tensor([0, 5, 77, 149])
    guide_tr = poutine.trace(poutine.condition(entry.guide, {"data": idx})).get_trace(x)
    model_tr = poutine.trace(poutine.replay(poutine.condition(entry.model, {"data": idx}),
                                            trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    site = model_tr.nodes["x"]
    assert site["scale"] == x.shape[0] / len(idx)
    got = site["log_prob_sum"]  # Pyro stores it scaled
    want = x.shape[0] / len(idx) * entry.log_likelihood(x, params)[idx].sum()
    torch.testing.assert_close(got, want)


# ---- vectorized particles -------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("guide", GUIDES)
@pytest.mark.parametrize("shared", [False, True])
def test_vectorized_particles(form, guide, shared):
    entry = zoo.get("gmm", K=3, D=2, assignments=form, guide=guide, shared_variance=shared)
    (x,) = entry.simulate(50, seed=1).data
    P = 8
    elbo = elbo_for(form, num_particles=P, vectorize_particles=True)
    loss = elbo.loss(entry.model, entry.guide, x)
    assert math.isfinite(loss)
    vec = poutine.trace(pyro.plate("particles", P, dim=-2)(entry.guide)).get_trace(x)
    assert vec.nodes["weights"]["value"].shape == (P, 1, 3)
    assert vec.nodes["locs"]["value"].shape == (P, 1, 3, 2)
    assert vec.nodes["variances"]["value"].shape == ((P, 1, 2) if shared else (P, 1, 3, 2))
    if guide == "map" and form != "sample":  # deterministic: every particle equals one
        assert loss == pytest.approx(elbo_for(form).loss(entry.model, entry.guide, x), rel=1e-5)


# ---- data, simulation, input checks ---------------------------------------------------
def test_default_and_bundled_data(tmp_path):
    entry = zoo.get("gmm")
    (x,) = entry.load_data()
    assert x.shape == (150, 4) and x.dtype == torch.get_default_dtype()
    torch.testing.assert_close(x.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    (f,) = zoo.get("gmm", D=2).load_data("faithful")
    assert f.shape == (272, 2)
    raw = np.loadtxt(zoo.gmm.FAITHFUL_CSV, delimiter=",", skiprows=1)
    assert raw.shape == (272, 2) and raw[0].tolist() == [3.6, 79.0]
    # A user CSV with and without a header.
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3,4.5\n")
    (u,) = zoo.get("gmm", D=2).load_data(str(path))
    assert u.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    path.write_text("1,2\n3,4.5\n")
    assert zoo.get("gmm", D=2).load_data(str(path))[0].shape == (2, 2)


def test_load_data_errors(tmp_path):
    entry = zoo.get("gmm", D=2)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        entry.load_data(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(ValueError, match="non-numeric"):
        entry.load_data(str(bad))
    bad.write_text("a,b\n1,2\n3,\n")
    with pytest.raises(ValueError, match="data row 2, column 2 holds an empty cell"):
        entry.load_data(str(bad))
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"zoo.get\('gmm', D=3\)"):
        entry.load_data(str(bad))


def test_simulate_is_seeded_and_private():
    entry = zoo.get("gmm", K=3, D=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = entry.simulate(100, seed=0), entry.simulate(100, seed=0), entry.simulate(100, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.data[0], b.data[0]) and not torch.equal(a.data[0], c.data[0])
    assert set(a.params) == {"weights", "locs", "variances"}
    assert a.params["weights"].sum().item() == pytest.approx(1.0)
    assert zoo.get("gmm", D=1).simulate(10).data[0].shape == (10, 1)


def test_initialisation_is_deterministic():
    entry = zoo.get("gmm")
    (x,) = entry.load_data()
    a, b = entry.initial_values(x), entry.initial_values(x)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_loss_names_the_elbo():
    assert zoo.get("gmm").loss == "trace"
    assert zoo.get("gmm", assignments="sample").loss == "trace"
    assert zoo.get("gmm", assignments="enumerate").loss == "traceenum"


def test_symmetries():
    assert zoo.get("gmm").symmetries == {"weights": -1, "locs": -2, "variances": -2}
    assert zoo.get("gmm", shared_variance=True).symmetries == {"weights": -1, "locs": -2}


def test_bad_input():
    entry = zoo.get("gmm")  # D = 4
    with pytest.raises(ValueError, match=r"zoo.get\('gmm', D=2\)"):
        entry.check_data(torch.zeros(10, 2))
    x = torch.zeros(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        entry.check_data(x)
    with pytest.raises(ValueError, match="2-D"):
        entry.check_data(torch.zeros(10))
    with pytest.raises(ValueError, match="assignments"):
        zoo.get("gmm", assignments="gibbs")
    with pytest.raises(ValueError, match="guide"):
        zoo.get("gmm", guide="auto")


@pytest.mark.parametrize("guide", GUIDES)
def test_one_component_has_no_weight_latent(guide):
    # K=1: a Dirichlet over one component is a point mass; a guide over it used to random-walk
    # its concentration to NaN. The weight is now the constant 1 and the fit is a Gaussian fit.
    entry = zoo.get("gmm", K=1, D=2, guide=guide)
    (x,) = zoo.get("gmm", K=2, D=2).simulate(100, seed=0).data
    res = inference.fit(entry, (x,), steps=600, lr=0.02, num_particles=4, progress=False)
    assert res.losses["loss"].map(math.isfinite).all()
    tr = pyro.poutine.trace(entry.guide).get_trace(x)
    assert "weights" not in tr.nodes and "weights_concentration" not in pyro.get_param_store()
    params = entry.params_from_guide()
    assert torch.equal(params["weights"], torch.ones(1))
    # the one-component mixture likelihood is the diagonal Gaussian's
    gauss = pyro.distributions.Normal(params["locs"][0], params["variances"][0].sqrt()).to_event(1)
    torch.testing.assert_close(entry.log_likelihood(x, params), gauss.log_prob(x))
