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


@pytest.fixture(scope="session")
def trained_vae():
    """``(entry, x)``: a 2-D vae trained briefly on the first 200 digits ``x``, shared by every
    test that only reads it (test_annealing, test_teaching, test_export). Its weights live in
    its networks, so the per-test clearing of the param store leaves them; a test that trains
    it further or moves it to another device must build its own."""
    import inference
    import zoo

    entry = zoo.get("vae", latent_dim=2, hidden=(32,))
    x = entry.load_data()[0][:200]
    inference.fit(entry, x, steps=60, lr=0.03, batch_size=100, progress=False, seed=0)
    pyro.clear_param_store()
    return entry, x
