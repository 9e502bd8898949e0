"""The HMC kernel of the annealing estimators: it leaves a known Gaussian invariant."""

import math

import torch

from inference.hmc import transition


def test_hmc_leaves_a_gaussian_invariant():
    # C x B independent chains start at exact draws of N(m, S) (D = 3, correlated, a different
    # scale per datapoint); after 10 transitions they must still be exact draws. Per coordinate
    # the mean has sd sqrt(S_ii / n) and the variance sd S_ii sqrt(2 / n) (n = C B draws).
    g = torch.Generator().manual_seed(0)
    C, B, D = 2000, 2, 3
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    L = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.3, 0.5, 0.4]], dtype=torch.float64)
    S = L @ L.T
    P = torch.linalg.inv(S)

    def potential(x):
        d = x - m
        return -0.5 * ((d @ P) * d).sum(-1), -(d @ P), torch.zeros(x.shape[:2], dtype=x.dtype)

    torch.manual_seed(1)
    x = m + torch.randn(C, B, D, generator=g, dtype=torch.float64) @ L.T
    f, grad, aux = potential(x)
    step = torch.tensor([0.3, 0.6], dtype=torch.float64)
    accepted = []
    for _ in range(10):
        x, f, grad, aux, prob = transition(x, f, grad, aux, potential, step, 4)
        accepted.append(float(prob.mean()))
    assert 0.2 < min(accepted) and max(accepted) < 1.0  # it moved, and not trivially
    flat = x.reshape(-1, D)
    n = flat.shape[0]
    sd = S.diagonal().sqrt()
    assert ((flat.mean(0) - m).abs() < 3.5 * sd / math.sqrt(n)).all()
    assert ((flat.var(0) - S.diagonal()).abs() < 3.5 * S.diagonal() * math.sqrt(2 / n)).all()
    cov = torch.cov(flat.T)
    assert (cov - S).abs().max() < 0.05  # off-diagonals: sd about sqrt(2/n) ~ 0.016
