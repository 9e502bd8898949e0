"""The refusal check shared by the annealing-family estimators' tests: bad options, too few
chains and a discrete latent each stop in one line naming the fix, before any work."""

import pyro
import pyro.distributions as dist
import pytest

import inference
import toy


def coin(x):
    p = pyro.sample("p", dist.Bernoulli(0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(p, 1.0), obs=x)


def assert_refused_in_one_line(method: str, cases, too_few: str) -> None:
    """``cases``: ``(options, message)`` pairs; ``too_few``: the message for K = 1."""
    x = toy.local_data(5)
    pair = (toy.global_model, toy.global_guide)
    calls = [(pair, dict(options), message, 10) for options, message in cases]
    calls += [(pair, {}, too_few, 1), ((coin, lambda x: None), {}, "latent site 'p' is discrete", 10)]
    for target, options, message, K in calls:
        with pytest.raises(ValueError, match=message) as err:
            inference.estimate(target, (x,), method, K, **options)
        assert "\n" not in str(err.value)
