"""ppzoo's model zoo: Pyro model/guide pairs with data and exact references.

>>> import zoo
>>> zoo.names()
('dlvm', 'fa', 'fvsbn', 'gmm', 'independent', 'map_l2', 'nade', 'vae')
>>> entry = zoo.get("map_l2")
>>> X, y = entry.load_data()

The public names below come from :mod:`zoo.base`; the first use of any of them imports the model
modules, which registers them. (``import zoo`` alone imports neither torch nor Pyro, so that
``ppzoo --help`` answers at once.) Adding a model is one file and one line in ``MODELS`` (a
file may register several: ``nade`` holds nade, fvsbn and independent).
"""

import importlib
from typing import Any

#: the zoo's own model modules: importing one registers its model
MODELS = ("gmm", "dlvm", "vae", "map_l2", "nade", "fa")

__all__ = ["ZooModel", "Simulated", "Job", "get", "names", "model_class", "register",
           "unregister", "check_tensors", "check_shape"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    base = importlib.import_module("zoo.base")
    for module in MODELS:
        importlib.import_module(f"zoo.{module}")
    value = getattr(base, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
