"""The benchmark pack: targets whose log evidence is known, for checking estimators against.

Each target is a plain Pyro model with a guide (an autoguide or a user-written one), its data,
its true ``log Z`` and where that number comes from. They are written as any user's model is
written, with nothing only the zoo knows, so every estimator that accepts a user's
``(model, guide)`` pair runs on them; ``ppzoo bench`` runs every registered estimator on every
target and writes a leaderboard. ::

    from inference import pack

    pack.names()                      # the registered targets
    b = pack.get("beta-bernoulli-flat")
    b.log_evidence                    # the true log Z of b.data()
    fit = b.fit(seed=0)               # the guide fitted with settings that work for it
    inference.estimate(fit, b.data(), method="is-guide", num_samples=1000)

Adding a target is one file: subclass :class:`Benchmark`, decorate it with :func:`register`
and import the file (the pack's own files are imported at the bottom of this one)::

    @pack.register
    class Coin(pack.Benchmark):
        name, summary, dims = "coin", "7 heads in 10 under Beta(2, 2)", 1
        source = "closed form: log B(2 + 7, 2 + 3) - log B(2, 2)"

        def data(self):
            return (torch.tensor([1., 1, 0, 1, 1, 0, 1, 1, 1, 0]),)

        def model(self, x):
            p = pyro.sample("p", dist.Beta(2.0, 2.0))
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Bernoulli(p), obs=x)

        def reference(self):
            return float(torch.lgamma(...) ...)   # the true log Z of data()

A target whose evidence has a closed form for *any* data set may also :meth:`~Benchmark.simulate`
data from the model -- the latents drawn from the prior, the data given them -- and give
:meth:`~Benchmark.evidence` of any data: the checks of :mod:`inference.calibrate` that need
new data sets (bdmc's reverse chains start at the simulating latents, an exact posterior draw;
Bayes-factor calibration draws a model, then data from it) run on such targets. Their guide
``"conjugate"`` is written from the closed-form posterior of the data it is given, widened,
with nothing to fit: it serves every simulated data set as it is.

A target's reference is computed by its own file (a closed form, quadrature, a sum of known
CDFs), never fitted; ``tests/test_pack.py`` checks each one by an independent computation
(scipy) and runs ``is-guide`` and ``is-prior`` on it, except where :attr:`Benchmark.fails`
documents why a method cannot work there.
"""

from inference.pack.benchmark import (  # noqa: F401 (re-exported)
    WIDEN, Benchmark, Simulated, get, names, register, simulating, unregister,
)

# Importing the pack's targets registers them, in this order.
from inference.pack import (beta_bernoulli, gaussian_shells, correlated_gaussian,  # noqa: E402,F401
                            loggamma, gaussian_32d, radiata, conjugate)
