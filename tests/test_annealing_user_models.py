"""The annealing estimators on a model written the way Pyro users write it: an unindexed data
plate (subsets of datapoints passed as sliced tensors) and keyword arguments. The reference is
the closed form; tolerances are 3 of the estimates' own standard errors. (Enumerated discrete
latents: tests/test_annealing.py.)"""

import math

import pyro
import pyro.distributions as dist
import torch
from scipy import stats

import inference
from test_user_models import Encoder  # x -> (loc, scale) of q(z | x), one Linear layer


def test_ais_and_bdmc_unindexed_plate_with_keyword_arguments_in_chunks():
    # z ~ N(0, 1), x ~ N(z, noise): log p(x_n) = log N(x_n; 0, 1 + noise^2). The model uses its
    # data whole (obs=x) and takes noise as a keyword; a small memory budget makes the
    # estimators run the datapoints in chunks, each passed to model and guide as a slice.
    encoder = Encoder()

    def model(x, noise=1.0):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, noise), obs=x)

    def guide(x, noise=1.0):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, scale))

    # a poor guide: the posterior mean 0.8 x, but twice the posterior sd sqrt(0.2)
    with torch.no_grad():
        encoder.net.weight.copy_(torch.tensor([[0.8], [0.0]]))
        sd = 2 * math.sqrt(0.2) - 1e-3
        encoder.net.bias.copy_(torch.tensor([0.0, math.log(math.expm1(sd))]))
    x = torch.linspace(-3, 3, 40)
    tgt = inference.Target(model, guide, networks={"encoder": encoder}, kwargs={"noise": 0.5})
    ref = stats.norm(0, math.sqrt(1.25)).logpdf(x.numpy())
    opts = dict(temperatures=10, leapfrog_steps=2, memory_budget=25_000)
    est = inference.estimate(tgt, x, "ais", 8, seed=0, **opts)
    assert est.scope == "local" and est.diagnostics["chunk_datapoints"] < len(x)
    assert abs(est.log_evidence - ref.sum()) < 3 * est.stderr
    # bdmc on the same data (simulated from this model: x_n = z_n + noise * e_n)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, generator=g)
    xs = z + 0.5 * torch.randn(40, generator=g)
    ref = float(stats.norm(0, math.sqrt(1.25)).logpdf(xs.numpy()).sum())
    d = inference.estimate(tgt, xs, "bdmc", 8, seed=0, latents={"z": z}, **opts).diagnostics
    assert d["lower"] < ref + 3 * d["lower_stderr"] and d["upper"] > ref - 3 * d["upper_stderr"]
