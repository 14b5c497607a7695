"""``python -m shallow_ensembles.cli``: the console script (used to start drivers as children)."""

import sys

from . import main

sys.exit(main())
