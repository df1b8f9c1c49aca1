"""`python -m sam_edge.cli`: the `sam-edge` command."""

import sys

from . import main

sys.exit(main())
