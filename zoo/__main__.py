"""``python -m zoo`` runs the ``ppzoo`` command line (see :mod:`zoo.app.cli`)."""

import sys

from zoo.app.cli import main

sys.exit(main())
