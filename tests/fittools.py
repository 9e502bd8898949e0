"""What the fit tests share: a fit stopped as Ctrl-C would stop it, right after a checkpoint."""

import contextlib
import importlib

import pytest


@contextlib.contextmanager
def ctrl_c_after_checkpoint(step: int):
    """Inside, a fit raises ``KeyboardInterrupt`` right after writing its checkpoint of
    ``step``; the block must end with it."""
    svi = importlib.import_module("inference.svi")
    real = svi._checkpoint

    def stop(*args):
        real(*args)
        if args[4] == step:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m:
        m.setattr(svi, "_checkpoint", stop)
        with pytest.raises(KeyboardInterrupt):
            yield
