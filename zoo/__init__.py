"""ppzoo's model zoo: Pyro model/guide pairs with data and exact references.

>>> import zoo
>>> zoo.names()
('dlvm', 'fa', 'gmm', 'map_l2', 'vae')
>>> entry = zoo.get("map_l2")
>>> X, y = entry.load_data()
"""

from zoo.base import (
    Job, Simulated, ZooModel, check_shape, check_tensors, get, model_class, names, register,
    unregister,
)

# Importing the model modules registers them: adding a model is one file and one line here.
from zoo import gmm, dlvm, vae, map_l2, fa  # noqa: E402,F401

__all__ = ["ZooModel", "Simulated", "Job", "get", "names", "model_class", "register",
           "unregister", "check_tensors", "check_shape"]
