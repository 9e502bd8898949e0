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


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The suite's tensors are small: one intra-op thread is faster than two on the 2-core
    CI machine (thread hand-off dominates) and keeps timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
