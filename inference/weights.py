"""Streaming summaries of log importance weights, and the memory plan for chunking.

Weights arrive in chunks of particles, ``[k, B]`` at a time. :class:`WeightStats` keeps, per
datapoint and in float64, what the estimators need and nothing of size ``K``:

* ``logsumexp(log w)`` and ``logsumexp(2 log w)`` -- the IS estimate ``log mean w`` and the
  effective sample size ``ESS = (sum w)^2 / sum w^2`` [1];
* the sum and sum of squares of ``log w`` (shifted for accuracy) -- the ELBO and its spread;
* the ``M + 1`` largest log weights, ``M = ceil(min(K / 5, 3 sqrt K))`` -- all that PSIS needs
  for its Pareto k-hat [2], which :func:`pareto_khat` fits for all datapoints at once.

The standard error of ``log mean w`` is the delta method's ``sd(w) / (sqrt(K) mean w)``,
which in terms of the ESS is ``sqrt((K / ESS - 1) / (K - 1))``.

References

[1] Kong (1992), A note on importance sampling using standardized weights.
[2] Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto Smoothed Importance Sampling, JMLR.
[3] Zhang, Stephens (2009), A new and efficient estimation method for the generalized Pareto
    distribution, Technometrics.
[4] Nowozin (2018), Debiasing evidence approximations: on importance-weighted autoencoders
    and jackknife variational inference, ICLR.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from inference.distributed import derived_seed
from inference.psis import khat_from_top, tail_length  # noqa: F401 (tail_length: re-exported)


#: below this effective sample size a standard error from the weights is not trustworthy
MIN_ESS = 5.0


def khat_threshold(num_samples: int) -> float:
    """The k-hat above which a PSIS or IS estimate from ``S`` draws is unreliable,
    ``min(1 - 1 / log10(S), 0.7)`` [2]: with fewer draws, a lighter tail is already too heavy."""
    if num_samples <= 1:
        return -math.inf
    return min(1 - 1 / math.log10(num_samples), 0.7)


def stderr_caveats(khat: float, ess: float, num_samples: int) -> Tuple[str, ...]:
    """Why the standard error of an estimate from ``num_samples`` importance weights with this
    k-hat and ESS cannot be vouched for (empty where it can): a tail heavier than
    :func:`khat_threshold` allows [2], or fewer than ``MIN_ESS`` effective samples."""
    out = []
    if not math.isnan(khat) and khat > khat_threshold(num_samples):
        out.append(f"k-hat {khat:.2f} above {khat_threshold(num_samples):.2f}: the weights' tail "
                   "is too heavy for the stderr; read the spread across seeds")
    if not math.isnan(ess) and ess < MIN_ESS:
        out.append(f"ESS {ess:.3g} below {MIN_ESS:g}: too few effective samples for a stderr")
    return tuple(out)


def log_mean_bias(stderr_per_term: torch.Tensor, sign: float = 1.0) -> float:
    """The delta method's estimate of the bias of a sum of ``sign * log mean w`` over its terms
    (datapoints in local scope; one term in global scope). Per term [4]

        E[log mean w] - log E[w] ~ -Var(w) / (2 K E[w]^2) ~ -stderr^2 / 2

    with ``stderr^2 = (K / ESS - 1) / (K - 1)``, the delta method's variance of the term. Each
    term's bias is small, but they add up over N datapoints as ``N / K`` while the total's
    standard error grows as ``sqrt(N / K)``: past ``stderr > 2`` nats in all, the bias is the
    larger (:func:`bias_caveats`)."""
    return float(-0.5 * sign * stderr_per_term.double().pow(2).nansum())


def bias_caveats(bias: float, stderr: float) -> Tuple[str, ...]:
    """A sentence when the summed bias (:func:`log_mean_bias`) exceeds the standard error."""
    if not (math.isfinite(bias) and abs(bias) > stderr):
        return ()
    return (f"log mean w is biased by about {bias:+.3g} nats in all (delta method, summed over "
            f"datapoints), more than the stderr {stderr:.3g}: raise K (the bias falls as 1/K, "
            "the stderr as 1/sqrt(K)), or read log_evidence - diagnostics['bias']",)


class WeightStats:
    """Streaming per-datapoint statistics of log weights of total count ``num_samples``."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples
        self.keep = min(num_samples, tail_length(num_samples) + 1)
        self.count = 0
        self.lse = self.lse2 = self.shift = self.s1 = self.s2 = self._top = None
        self._pending: list = []  # chunks not yet merged into the tail (merging is a topk)

    def update(self, log_w: torch.Tensor) -> None:
        lw = log_w.detach().to(torch.float64)
        if lw.dim() == 1:
            lw = lw.unsqueeze(-1)
        if self.count == 0:
            self.shift = lw.mean(0)
            self.lse = torch.full_like(self.shift, -math.inf)
            self.lse2 = self.lse.clone()
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
            self._top = lw.new_empty((0,) + self.shift.shape)
        self.count += lw.shape[0]
        self.lse = torch.logaddexp(self.lse, lw.logsumexp(0))
        self.lse2 = torch.logaddexp(self.lse2, (2 * lw).logsumexp(0))
        d = lw - self.shift
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        self._pending.append(lw)
        if sum(len(p) for p in self._pending) >= 4 * self.keep:
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            merged = torch.cat([self._top] + self._pending, 0)
            self._top = merged.topk(min(self.keep, merged.shape[0]), dim=0).values
            self._pending = []

    @property
    def top(self) -> torch.Tensor:
        """The ``M + 1`` largest log weights per datapoint, ``[M+1, B]``, descending."""
        self._merge()
        return self._top

    def log_mean(self) -> torch.Tensor:
        return self.lse - math.log(self.count)

    def ess(self) -> torch.Tensor:
        return torch.exp(2 * self.lse - self.lse2)

    def is_stderr(self) -> torch.Tensor:
        k = self.count
        if k < 2:
            return torch.full_like(self.lse, math.nan)
        return ((k / self.ess() - 1).clamp(min=0) / (k - 1)).sqrt()

    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    def mean_stderr(self) -> torch.Tensor:
        k = self.count
        if k < 2:
            return torch.full_like(self.lse, math.nan)
        var = (self.s2 - self.s1**2 / k).clamp(min=0) / (k - 1)
        return (var / k).sqrt()


def pareto_khat(top: torch.Tensor, num_samples: int, budget_bytes: int) -> torch.Tensor:
    """PSIS k-hat per datapoint from the ``M + 1`` largest log weights (``top``, ``[M+1, B]``).

    PSIS fits a generalized Pareto distribution to the ``M`` weights above the cutoff (the
    ``(M+1)``-th largest) with Zhang and Stephens' empirical-Bayes estimator [3] and shrinks its
    shape towards 0.5 as a weak prior does [2]; this runs it for all rows at once, in groups of
    rows that fit ``budget_bytes``, and equals :func:`inference.psis.psis_smooth` (and arviz
    0.2x's ``psislw``) to rounding. Rows it does not cover -- ties at the cutoff, infinite
    weights, a cutoff below the smallest float -- go to :func:`inference.psis.khat_from_top`
    one by one. ``K < 5`` gives NaN; a tail of 4 or fewer weights ``inf``, as in PSIS.
    """
    top = top.to(torch.float64)
    num_tail, num_rows = top.shape[0] - 1, top.shape[1]
    if num_samples < 5:
        return torch.full((num_rows,), math.nan, dtype=torch.float64, device=top.device)
    if num_tail <= 4:
        return torch.full((num_rows,), math.inf, dtype=torch.float64, device=top.device)
    shifted = top - top[:1]  # log w - max log w, descending
    cutoff = shifted[num_tail]
    regular = (
        torch.isfinite(top).all(0)
        & (shifted[num_tail - 1] > cutoff)
        & (cutoff > math.log(torch.finfo(torch.float64).tiny))
    )
    out = torch.empty(num_rows, dtype=torch.float64, device=top.device)
    # the [rows, m, M] grid of the fit, a few float64 copies of it
    grid = num_tail * (30 + int(num_tail**0.5))
    rows = max(1, budget_bytes // (32 * grid))
    index = regular.nonzero().squeeze(-1)
    for chunk in index.split(rows):
        tail = shifted[:num_tail, chunk].T.flip(-1)  # [rows, M], ascending
        low = cutoff[chunk].unsqueeze(-1)
        excess = low.exp() * (tail - low).expm1()  # no cancellation (inference.psis.excess)
        out[chunk] = _gpd_shape(excess)
    irregular = (~regular).nonzero().squeeze(-1)
    if len(irregular):
        out[irregular] = _irregular_khat(top[:, irregular], num_samples).to(top.device)
    return out


def _gpd_shape(y: torch.Tensor) -> torch.Tensor:
    """Shape k of a generalized Pareto fit to each row of ``y`` (``[rows, n]``, ascending,
    positive): the posterior mean of ``b = -k / sigma`` over a grid of ``m`` quantile-based
    values, weighted by profile likelihood [3], then ``k`` at that ``b``, shrunk by a prior worth
    10 observations at 0.5 [2]."""
    n = y.shape[-1]
    m = 30 + int(n**0.5)
    j = torch.arange(1, m + 1, dtype=y.dtype, device=y.device)
    quartile = y[:, int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)]
    b = 1 / y[:, -1:] + (1 - (m / (j - 0.5)).sqrt()) / (3 * quartile)  # [rows, m]
    k = (b.unsqueeze(-1) * -y.unsqueeze(-2)).log1p_().mean(-1)  # [rows, m]
    profile = n * ((-b / k).log() - k - 1)
    weight = profile.softmax(-1)  # 1 / sum_i exp(profile_i - profile_j)
    weight = torch.where(weight >= 10 * torch.finfo(y.dtype).eps, weight, 0.0)
    b_post = (b * weight).sum(-1) / weight.sum(-1)
    k_post = torch.log1p(-b_post.unsqueeze(-1) * y).mean(-1)
    return (n * k_post + 5) / (n + 10)


def _irregular_khat(top: torch.Tensor, num_samples: int) -> torch.Tensor:
    """PSIS's k-hat row by row (numpy, :mod:`inference.psis`) for the rows of ``top`` that the
    batched fit does not cover."""
    tail = top.T.cpu().numpy()  # [B, M+1], descending
    return torch.tensor([khat_from_top(row, num_samples) for row in tail], dtype=torch.float64)


#: per operation: whether its outputs are fresh tensors (no alias of an input: not a view, not
#: in place), read once from its schema
_FRESH: dict = {}


class _AllocationCounter(TorchDispatchMode):
    """Counts bytes of every fresh tensor an operation allocates (views and in-place ops excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fresh = _FRESH.get(func)
        if fresh is None:
            fresh = _FRESH[func] = all(r.alias_info is None for r in func._schema.returns)
        if fresh:
            for t in (out,) if type(out) is torch.Tensor else tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def bytes_allocated(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """Run ``fn`` and count the bytes its tensor operations allocate: an upper bound on its peak
    memory, on any device."""
    with _AllocationCounter() as counter:
        out = fn()
    return out, counter.bytes


MIN_DATA_CHUNK = 64


def plan_chunks(
    num_samples: int, num_datapoints: Optional[int], bytes_per_unit: float, budget: int
) -> Tuple[int, int]:
    """``(particles, datapoints)`` per chunk so that a chunk's allocations fit ``budget``.

    ``bytes_per_unit`` is per particle-datapoint pair (local) or per particle (global,
    ``num_datapoints=None``). Local chunks hold at least ``MIN_DATA_CHUNK`` datapoints (where
    the budget allows) and give the rest to particles: the guide runs once per chunk, so an
    amortized encoder is shared by all the chunk's particles. Chunks are then evened out
    (1000 as 334 + 333 + 333, not 461 + 461 + 78), which leaves room for fewer, larger chunks
    along the other axis: each chunk costs a fixed amount of tracing.
    """
    units = max(1, int(budget // max(bytes_per_unit, 1.0)))
    if num_datapoints is None:
        return _even(num_samples, min(num_samples, units)), 0
    particles = min(num_samples, max(1, units // min(num_datapoints, MIN_DATA_CHUNK)))
    particles = _even(num_samples, particles)
    datapoints = _even(num_datapoints, min(num_datapoints, max(1, units // particles)))
    return _even(num_samples, min(num_samples, max(1, units // datapoints))), datapoints


def _even(total: int, size: int) -> int:
    """The smallest chunk size that covers ``total`` in as few chunks as ``size`` does."""
    return -(-total // -(-total // size))


def stream(weights, K: int, N: Optional[int], budget: int, device: torch.device,
           indices: Optional[torch.Tensor] = None, dealt: Optional[Tuple[Any, int]] = None):
    """Run ``weights(start, count, idx)`` over all K particles in chunks planned from a measured
    pilot, one :class:`WeightStats` per chunk of datapoints (local, ``N`` given) or one in all.
    ``indices`` restricts the datapoints to those (default: all ``N``). With ``dealt =
    (world, seed)`` (local), this rank runs its share of the chunks of datapoints,
    ``chunks[rank::size]``, each seeded from ``(seed, its first index)``: the plan is the same
    on any number of processes, so is every datapoint's value.
    Returns the list of stats and the chunk plan ``(particles, datapoints)``."""
    if N is not None and indices is None:
        indices = torch.arange(N, device=device)
    if indices is not None:
        N = len(indices)
    k0 = min(K, 8)
    idx0 = None if N is None else indices[:64]
    _, nbytes = bytes_allocated(lambda: weights(0, k0, idx0))
    per_unit = nbytes / (k0 * (1 if N is None else len(idx0)))
    kc, bc = plan_chunks(K, N, per_unit, budget)
    out = []
    blocks = [None] if N is None else list(indices.split(bc))
    if dealt is not None:
        blocks = blocks[dealt[0].rank :: dealt[0].size]
    # The pilot ran with Pyro's argument validation; the chunks repeat it on the same shapes,
    # so they skip it (it re-checks every observed value's support: ~30% of the time).
    with pyro.validation_enabled(False):
        for idx in blocks:
            if dealt is not None:
                torch.manual_seed(derived_seed(dealt[1], int(idx[0])))
            st = WeightStats(K)
            for start in range(0, K, kc):
                st.update(weights(start, min(kc, K - start), idx))
            out.append(st)
    return out, (kc, bc)
