"""What the fit tests share: a fit stopped as Ctrl-C would stop it, right after a checkpoint
(used by the pytest tests and by ``distributed_job.py`` on every rank)."""

import contextlib

from inference import svi as svi_module


@contextlib.contextmanager
def interrupted_after(step: int):
    """Ctrl-C (``KeyboardInterrupt``) right after a fit writes its checkpoint of ``step``."""
    real = svi_module._checkpoint

    def stop(*args):
        real(*args)
        if args[4] == step:
            raise KeyboardInterrupt

    svi_module._checkpoint = stop
    try:
        yield
    finally:
        svi_module._checkpoint = real
