"""ppzoo inference: SVI and marginal-likelihood estimators for any model/guide pair.

Every function takes a zoo entry (``zoo.get(name)``), a plain ``(model, guide)`` pair of
Pyro callables, or an :class:`inference.Target` describing a user's pair.
"""

from inference.compare import compare, summarise
from inference.estimate import METHODS, Estimate, estimate
from inference.svi import FitResult, fit, load_fit, save_fit
from inference.target import Target, as_target

__all__ = [
    "Target", "as_target", "fit", "FitResult", "save_fit", "load_fit",
    "estimate", "Estimate", "METHODS", "compare", "summarise",
]
