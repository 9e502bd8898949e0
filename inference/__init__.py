"""ppzoo inference: SVI and marginal-likelihood estimators for any model/guide pair.

Every function takes a zoo entry (``zoo.get(name)``), a plain ``(model, guide)`` pair of
Pyro callables, an :class:`inference.Target` describing a user's pair, or any object with the
target protocol's attributes (:mod:`inference.target`). The engine imports nothing from ``zoo``;
the estimators live one per file in :mod:`inference.estimators`, found through its registry.
"""

from inference.calibrate import Calibration, calibrate
from inference.compare import compare, summarise
from inference.estimate import METHODS, estimate, methods
from inference.results import Estimate, FitResult
from inference.svi import fit, load_fit, save_fit
from inference.target import Target, as_target

__all__ = [
    "Target", "as_target", "fit", "FitResult", "save_fit", "load_fit",
    "estimate", "Estimate", "METHODS", "methods", "compare", "summarise",
    "calibrate", "Calibration",
]
