"""``python -m zoo`` runs the ``ppzoo`` command line (see :mod:`zoo.cli`)."""

import sys

from zoo.cli import main

sys.exit(main())
