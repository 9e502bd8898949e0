"""What the command-line tests share: ``main`` run in-process, and a planted pickle."""

import contextlib
import io
import os

from zoo.app.cli import main


def run_main(argv):
    """``main(argv)`` with stdout and stderr captured: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the planted code a loader must never run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))
