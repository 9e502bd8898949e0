"""The conformance suite: every registered model (and its main variants) must pass it.

The checks live in :mod:`zoo.conformance` (so a model in a user's own file can be checked the
same way); this file runs each of them on every registered model. Adding a model to the zoo is
writing it and registering it; the suite then picks it up.
"""

import pytest

import zoo
from zoo import conformance

VARIANTS = [(name, {}) for name in zoo.names()] + [
    ("gmm", {"assignments": "enumerate"}),
    ("gmm", {"assignments": "sample"}),
    ("gmm", {"guide": "map"}),
    ("vae", {"likelihood": "gaussian"}),
    ("map_l2", {"likelihood": "logistic"}),
    ("map_l2", {"guide": "gaussian"}),
]
IDS = [name + "".join(f"-{v}" for v in opts.values()) for name, opts in VARIANTS]


@pytest.fixture(params=VARIANTS, ids=IDS)
def case(request):
    name, opts = request.param
    entry = zoo.get(name, **opts)
    data = entry.simulate(conformance.NUM_DATA, seed=0).data
    return entry, data


def test_registry():
    assert set(zoo.names()) >= {"gmm", "dlvm", "vae", "map_l2"}
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*gmm"):
        zoo.get("nope")


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__[len("check_"):])
def test_conformance(case, check):
    check(*case)
