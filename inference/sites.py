"""What a Pyro trace holds: its sample sites, and where a site sits in the plates.

A leaf of the engine, shared by :mod:`inference.plates`, :mod:`inference.replay` and the
estimators (``from inference.replay import sample_sites, in_plate`` gives the same functions).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

from pyro.poutine.util import site_is_subsample


def sample_sites(trace, latent_only: bool = False) -> Iterable[Tuple[str, Dict[str, Any]]]:
    """``(name, site)`` of a trace's sample sites, plates' subsample sites left out; with
    ``latent_only``, the unobserved ones alone."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            if not (latent_only and site["is_observed"]):
                yield name, site


def in_plate(site: Dict[str, Any], plate: Optional[str]) -> Optional[int]:
    """The dim of plate ``plate`` in ``site``'s plate stack, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame.dim
    return None
