"""ppzoo's model zoo: Pyro model/guide pairs with data and exact references.

>>> import zoo
>>> zoo.names()
('dlvm', 'gmm', 'map_l2', 'vae')
>>> entry = zoo.get("map_l2")
>>> X, y = entry.load_data()
"""

from zoo.base import Simulated, ZooModel, check_shape, check_tensors, get, names, register

# Importing the model modules registers them.
from zoo import gmm, dlvm, vae, map_l2  # noqa: E402,F401

__all__ = ["ZooModel", "Simulated", "get", "names", "register", "check_tensors", "check_shape"]
