"""The estimators of ``log p(x)``, one file each, found through one registry.

An estimator is a subclass of :class:`Estimator` decorated with :func:`register`; its
:meth:`~Estimator.run` receives a :class:`Problem` -- the target, the checked data, the scope,
the globals held fixed, K and the memory budget, all settled by :func:`inference.estimate` --
and returns the fields of an :class:`inference.Estimate`. :func:`inference.estimate`,
:func:`inference.compare` and ``ppzoo`` dispatch by name through the registry, so adding an
estimator is writing one file (and importing it, which registers it)::

    from inference.estimators import Estimator, register
    from inference.sampling import sampled

    @register
    class PriorImportance(Estimator):          # inference/estimators/is_prior.py
        name = "is-prior"
        summary = "log mean of p(x | z) over K prior draws"

        def run(self, problem, **options):
            return sampled(problem, proposal="prior", statistic="log_mean")

Estimators that are exact references (``reference = True``) take no K and no seed: compare
runs them once, as the reference every other row's error is measured against. An estimator
that does not apply to a target raises :class:`NotApplicable` (compare then skips it and says
why); one whose result fails its own checks raises :class:`ChecksFailed` (an error).

The base types live in :mod:`inference.problem`, below this package, and are re-exported here.
"""

from inference.problem import (  # noqa: F401 (re-exported: the estimators' public names)
    Check, ChecksFailed, Estimator, NotApplicable, Problem, all_options, check_options, get,
    integer, names, number, one_of, register, unregister,
)

# Importing the built-in estimators registers them, in this order.
from inference.estimators import elbo, is_guide, is_prior, exact, ais, bdmc, smc  # noqa: E402,F401
from inference.estimators import laplace, harmonic_mean  # noqa: E402,F401
from inference.estimators import bridge, chib  # noqa: E402,F401
from inference.estimators import nested, stepping_stone  # noqa: E402,F401
