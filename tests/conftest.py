import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """No global state leaks between tests: empty param store, fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
